//! `myelin lab`: a hermetic local cluster made of network namespaces.
//!
//! ```text
//!   fabric netns myl-<lab>-fab (ip_forward=1, no route out)
//!     bridge "underlay" 172.30.0.254/24          bridge "world" 198.51.100.254/24
//!       |  u0 <-veth-> eth0 of node 0 (.10)        |  w0 <-veth-> eth0 of external 0 (.10)
//!       |  u1 <-veth-> eth0 of node 1 (.11)        |  ...
//!       |  k0 <-veth-> eth0 of kvstore netns myl-<lab>-kv: etcd at .250 (.251, .252)
//!   node netns myl-<lab>-<node>: myelin-agent --netns ..., pod CIDR 10.244.<i+1>.0/24
//!     (routing native: routes to the other nodes' pod CIDRs; vxlan/geneve: the agent's tunnel)
//!     pod netns myl-<lab>-p-<ns>-<pod>: plumbed by the real myelin-cni (ADD/DEL),
//!     plus a cgroup v2 dir <cgroup2>/myelin/<lab>/<ns>_<pod> for processes run in it
//! ```
//!
//! Everything created is recorded in `/run/myelin/lab/<lab>/lab.json` *before*
//! it is created, so [`Lab::down_by_name`] can remove a half-built lab.
#![forbid(unsafe_code)]

mod agents;
mod error;
mod kvstore;
mod lab;
pub mod naming;
mod plan;
mod pods;
mod procs;
mod spec;
mod status;
mod sys;
mod teardown;
mod topology;

pub use error::{LabError, Result};
pub use lab::{ExecTarget, Lab, LabOptions, ProgressFn};
pub use plan::{ExternalInfo, NodeInfo, PodInfo, BPF_ROOT, ETCD_CLIENT_PORT, ETCD_PEER_PORT, METRICS_PORT, STATE_ROOT};
pub use spec::{
    ExternalSpec, KvstoreKind, LabSpec, NamespaceSpec, NodeSpec, PodSpec, Routing, MAX_HOST_NAME, MAX_OBJECT_NAME,
};
pub use status::{ExternalStatus, KvMemberStatus, KvstoreStatus, LabStatus, NodeStatus, PodStatus};
pub use sys::{bin_dirs, cgroup2_mount, find_binary, BIN_DIR_ENV};
