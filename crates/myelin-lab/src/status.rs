//! What `myelin lab status -o json` prints.

use myelin_api::Labels;
use serde::{Deserialize, Serialize};

/// A lab as seen from its state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
    pub external: Vec<ExternalStatus>,
    /// How pods on different nodes reach each other: `native`, `vxlan` or `geneve`.
    pub routing: String,
    /// The cluster's kvstore.
    pub kvstore: KvstoreStatus,
    /// Directory holding lab.json and per-node agent files.
    pub state_dir: String,
}

/// The lab's kvstore: `{"kind": "etcd", "endpoints": [...], "members": [...]}`, or kind `none`
/// with no endpoints and no members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvstoreStatus {
    /// `etcd` or `none`.
    pub kind: String,
    /// Client URLs, as the agents are configured with (`http://172.30.0.250:2379`, ...).
    pub endpoints: Vec<String>,
    pub members: Vec<KvMemberStatus>,
}

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvMemberStatus {
    /// etcd member name: `kv0`, `kv1`, `kv2`.
    pub name: String,
    /// Underlay address (no prefix length).
    pub address: String,
    pub pid: Option<i32>,
    pub running: bool,
    /// The member's log file.
    pub log: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    /// Underlay addresses of the node (no prefix length).
    pub addresses: Vec<String>,
    pub agent_socket: String,
    /// Unix socket of the agent's Observer API (Hubble's gRPC `observer.Observer`).
    pub observer_socket: String,
    /// Full URL of the agent's Prometheus endpoint, e.g. `http://172.30.0.10:9965/metrics`
    /// (the node's underlay address: reachable from the lab's fabric and nodes).
    pub metrics_url: String,
    pub pod_cidr: String,
    pub netns: String,
    pub agent_pid: Option<i32>,
    pub agent_running: bool,
    pub agent_log: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Option<String>,
    pub endpoint_id: Option<u32>,
    pub labels: Labels,
    pub netns: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalStatus {
    pub name: String,
    pub ip: String,
    pub netns: String,
}
