//! `myelin perf`: Myelin's eBPF datapath measured side by side with the
//! alternatives on the same machine, in the same run, interleaved so drift cancels.
//!
//! - [`topo`]: the configurations (bare veth, kernel routing, iptables with N rules,
//!   the Myelin lab with and without an N-rule policy), each in namespaces of its own,
//!   torn down on drop, each with the counters that prove the path it takes;
//! - [`load`]: TCP_STREAM via iperf3; TCP_RR and TCP_CRR by our own generator on
//!   dedicated setns() threads, latencies in a log-linear histogram;
//! - [`stats`]: medians, spreads, ratios; [`rules`]: the same policy as iptables
//!   rules and as a CiliumNetworkPolicy; [`report`]: tables, JSON, goals;
//! - [`bench`]: the run that ties them together; [`cross`]: the cross-node configurations
//!   (`--cross-node`); [`propagation`]: how fast a new pod reaches the other nodes
//!   (`--propagation`).
#![forbid(unsafe_code)]

pub mod bench;
pub mod cross;
mod error;
pub mod load;
pub mod propagation;
pub mod report;
pub mod rules;
pub mod stats;
pub mod sys;
pub mod topo;

pub use bench::{run, Options, ProgressFn, Suite, Workload};
pub use error::{PerfError, Result};
pub use report::{goals_markdown, render, GoalStatus, Report};
