//! Flow observability: every event of the datapath becomes a flow, named by
//! pod, identity and the policy that decided it.
//!
//! ```text
//!  events ring (BPF) -> [ingest thread] decode + name (dictionary) -> FlowRecord
//!                            |-> Ring (in memory, snapshots)  -> Observer gRPC (GetFlows, follow)
//!                            |-> History (append-only segments of LZ4 blocks, retention) -> GetFlows since/until
//!                            '-> Metrics (Prometheus, Hubble's names)
//! ```
#![forbid(unsafe_code)]

pub mod decode;
pub mod dict;
pub mod directory;
pub mod filter;
pub mod flowpb;
pub mod history;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod proto;
pub mod record;
pub mod ring;
pub mod server;
#[doc(hidden)]
pub mod testing;
