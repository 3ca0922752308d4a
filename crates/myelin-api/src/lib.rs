//! The agent's local API: JSON over HTTP/1.1 on a root-only unix socket.
//!
//! Routes (all bodies JSON):
//! - `GET    /v1/status`                              -> [`Status`]
//! - `GET    /v1/endpoints`                           -> `Vec<Endpoint>`
//! - `POST   /v1/endpoints`        [`EndpointAddRequest`] -> [`Endpoint`]
//! - `GET    /v1/endpoints/{id}`                      -> [`Endpoint`]
//! - `GET    /v1/endpoints/by-container/{cid}/{ifname}` -> [`Endpoint`]
//! - `DELETE /v1/endpoints/by-container/{cid}/{ifname}` -> [`Deleted`]
//! - `POST   /v1/endpoints/by-container/{cid}/{ifname}/check` -> [`Endpoint`]
//! - `PUT    /v1/endpoints/{id}/labels`  [`LabelsUpdate`] -> [`Endpoint`]
//! - `GET    /v1/metrics/datapath`                    -> `Vec<DatapathMetric>`
//! - `GET    /v1/ipam`                                -> [`IpamState`]
//! - `GET    /v1/cgroup-traffic`                      -> `Vec<CgroupTraffic>`
//! - `GET    /v1/policies`                            -> `Vec<AppliedPolicy>`
//! - `POST   /v1/policies`         [`PolicyApply`]    -> [`PolicyChange`] (all or nothing)
//! - `POST   /v1/policies/delete`  [`PolicyDelete`]   -> [`PolicyChange`] (all or nothing)
//! - `POST   /v1/policies/explain` [`ExplainRequest`] -> [`ExplainResponse`]
//! - `GET    /v1/identities`                          -> `Vec<IdentityInfo>`
//! - `GET    /v1/identities/{id}`                     -> [`IdentityInfo`]
//! - `PUT    /v1/namespaces/{name}` [`NamespaceLabels`] -> [`NamespaceLabels`]
//! - `GET    /v1/endpoints/{id}/policy`               -> [`EndpointPolicy`]
//! - `GET    /v1/metrics/policy`                      -> `Vec<PolicyStat>`
//!
//! Errors come back with a non-2xx status and an [`ApiError`] body.
#![forbid(unsafe_code)]

mod client;

pub use client::{Client, ClientError};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Environment variable naming the agent socket for the CLI.
pub const AGENT_SOCKET_ENV: &str = "MYELIN_AGENT_SOCKET";
/// Default agent socket path.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/myelin/agent.sock";

/// Labels of a workload, `key -> value`, ordered for stable output.
pub type Labels = BTreeMap<String, String>;

/// A named container port, for named-port policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

/// Body of `POST /v1/endpoints`: what a CNI ADD carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointAddRequest {
    pub container_id: String,
    /// Path of the container's network namespace (CNI_NETNS).
    pub netns: String,
    /// Interface name inside the container (CNI_IFNAME).
    pub ifname: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// The pod's labels are not known yet (an orchestrator will set them with
    /// `PUT /v1/endpoints/{id}/labels`): until then the endpoint has the `init`
    /// identity and the built-in init policy (DNS out, nothing in).
    #[serde(default)]
    pub labels_pending: bool,
}

/// Body of `PUT /v1/endpoints/{id}/labels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsUpdate {
    pub labels: Labels,
    /// Replace the named ports too, when given.
    #[serde(default)]
    pub ports: Option<Vec<NamedPort>>,
}

/// An endpoint: one pod interface plumbed into the datapath.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: u32,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// Pod address, without prefix length (the pod has it as a /32).
    pub ipv4: String,
    pub gateway: String,
    pub mac: String,
    pub host_mac: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// Security identity (0 until the policy layer assigns one).
    #[serde(default)]
    pub identity: u32,
    /// Unix seconds of creation.
    pub created: u64,
    /// Its labels are not known yet: identity `init` until they are set.
    #[serde(default)]
    pub labels_pending: bool,
}

/// Body of a successful DELETE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// False when there was nothing to delete (DEL is idempotent).
    pub existed: bool,
}

/// One kernel capability the agent probed at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub available: bool,
    #[serde(default)]
    pub detail: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub healthy: bool,
    pub version: String,
    pub pod_cidr: String,
    pub gateway: String,
    pub node_ip: String,
    pub bpf_dir: String,
    pub endpoints: usize,
    pub features: Vec<Feature>,
    /// Unix seconds the agent process started.
    pub started: u64,
    /// Endpoints found in the store and adopted at start (not re-plumbed).
    pub adopted_endpoints: usize,
    #[serde(default)]
    pub datapath: DatapathStatus,
    /// Flow observability (None: not started).
    #[serde(default)]
    pub flows: Option<FlowStatus>,
    /// The kvstore link (None: no kvstore configured).
    #[serde(default)]
    pub cluster: Option<ClusterStatus>,
}

/// The node's link to the cluster's shared state in etcd (part of [`Status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Connected to etcd now, lease kept alive.
    pub connected: bool,
    pub endpoints: Vec<String>,
    /// "native", "vxlan" or "geneve".
    pub routing: String,
    /// Sessions established since start (more than 1: it reconnected).
    pub sessions: u64,
    /// Why the last session ended or the last connect failed.
    pub last_error: Option<String>,
    /// Other nodes, cluster identities and other nodes' pod addresses known now.
    pub nodes: usize,
    pub identities: usize,
    pub remote_ips: usize,
}

/// The observer's buffers and counters (part of [`Status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatus {
    /// Flows the in-memory ring holds, and can hold.
    pub ring_flows: usize,
    pub ring_capacity: usize,
    /// Flows seen since the agent started.
    pub seen: u64,
    /// Events the datapath could not queue (ring buffer full), since the maps were created.
    pub lost: u64,
    /// The durable history (None: flows are kept in memory only).
    pub history: Option<FlowHistoryStatus>,
}

/// The durable flow history (part of [`FlowStatus`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowHistoryStatus {
    pub dir: String,
    /// Flows stored in blocks on disk.
    pub stored: u64,
    /// Flows appended but still in the open block (on disk within a second).
    pub buffered: u64,
    /// Bytes of the history's files.
    pub disk_bytes: u64,
    /// Time range stored (unix ns).
    pub oldest_ns: Option<u64>,
    pub newest_ns: Option<u64>,
    /// The newest stored sequence number.
    pub last_seq: u64,
}

/// What the datapath loader found and did (part of [`Status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathStatus {
    /// eBPF objects loaded (lxc, netdev, xdp, sock).
    pub objects: Vec<String>,
    /// Objects this kernel could not take, with the reason.
    #[serde(default)]
    pub unavailable: Vec<Feature>,
    /// "tcx" or "tc" (clsact).
    pub attach_mode: String,
    /// The ABI of this build, and of the maps found pinned at start (None: fresh).
    pub abi: u32,
    #[serde(default)]
    pub previous_abi: Option<u32>,
    /// Maps migrated at start: "name: how (copied N, skipped M)".
    #[serde(default)]
    pub migrated: Vec<String>,
    /// Live links switched to this build's programs at start.
    pub links_updated: usize,
    /// Conntrack garbage collection: runs and entries removed since start.
    pub gc_runs: u64,
    pub gc_removed: u64,
}

/// A rule id and what it stands for (`GET /v1/rules/{id}`): rule ids are
/// stable for the rule's content and resolvable after the rule was edited or
/// deleted (`retired`), for as long as flow history may name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub id: u32,
    /// Policy kind (CiliumNetworkPolicy, NetworkPolicy, ...).
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// The policy's uid (assigned at its first apply, kept across edits).
    pub policy_uid: String,
    /// The policy's revision when the rule first appeared in this form.
    pub revision: u64,
    /// Field path of the rule, e.g. `spec.ingress[0]`.
    pub path: String,
    /// Unix seconds the id was created.
    pub created: u64,
    /// Unix seconds it stopped being enforced (None: in force).
    pub retired: Option<u64>,
}

impl RuleInfo {
    /// `Kind namespace/name path` (the form flows and counters show).
    #[must_use]
    pub fn describe(&self) -> String {
        let policy = match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        };
        format!("{} {policy} {}", self.kind, self.path)
    }
}

/// Body of `POST /v1/debug/stall` (only with `debug_api = true`): keep a
/// component busy, to show that nothing else waits for it. Answered as soon
/// as the component is busy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stall {
    /// "policy", "endpoints" or "ipam".
    pub component: String,
    pub millis: u64,
}

/// One row of the datapath's per-endpoint counters, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathMetric {
    pub endpoint_id: u32,
    /// "ingress" or "egress", from the endpoint's point of view.
    pub direction: String,
    pub reason: u8,
    pub reason_name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// One address handed out by the node's IPAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: String,
    /// `container_id/ifname`.
    pub owner: String,
}

/// One row of `GET /v1/cgroup-traffic`: what the sockets of one cgroup under the agent's
/// `cgroup_root` sent and received (counted by the cgroup_skb programs), and the pod it belongs
/// to when the agent can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupTraffic {
    /// The cgroup v2 id (the inode number of its directory).
    pub cgroup_id: u64,
    /// Its directory, relative to `cgroup_root` (None: it is gone).
    pub cgroup: Option<String>,
    /// The endpoint it belongs to: the directory name contains the endpoint's container id, or
    /// one of its processes is in the endpoint's network namespace.
    pub endpoint_id: Option<u32>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub ingress_packets: u64,
    pub ingress_bytes: u64,
    pub egress_packets: u64,
    pub egress_bytes: u64,
}

/// `GET /v1/ipam`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamState {
    pub cidr: String,
    pub gateway: String,
    pub capacity: usize,
    pub allocations: Vec<Allocation>,
}

/// Machine-readable error codes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    NotFound,
    PoolExhausted,
    NetnsNotFound,
    AlreadyExists,
    Internal,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// One file of a policy apply: its name (for error messages) and its YAML text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub name: String,
    pub content: String,
}

/// Body of `POST /v1/policies`: applied all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyApply {
    pub files: Vec<PolicyFile>,
}

/// Answer of an apply or delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    /// `Kind/namespace/name` of every policy applied or deleted.
    pub policies: Vec<String>,
    /// Accepted but not enforced (e.g. L7 rules), with field paths.
    #[serde(default)]
    pub warnings: Vec<String>,
    pub endpoints_updated: usize,
}

/// Body of `POST /v1/policies/delete`: by `namespace/name`, `name` or `Kind/namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDelete {
    pub ids: Vec<String>,
}

/// An applied policy (`GET /v1/policies`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// The document as it was applied.
    pub yaml: String,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Body of `POST /v1/policies/explain`. A peer is `namespace/pod` (a local
/// endpoint), an IPv4 address, or a CIDR (its network address is used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    pub from: String,
    pub to: String,
    /// "TCP", "UDP", "SCTP", "ICMP" or a protocol number.
    pub protocol: String,
    /// Destination port; the ICMP type for ICMP.
    pub port: u16,
}

/// Answer of explain: the verdict in words and as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainResponse {
    pub verdict: String,
    pub text: String,
    pub detail: serde_json::Value,
}

/// A security identity (`GET /v1/identities`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInfo {
    pub id: u32,
    pub labels: Labels,
    /// "workload", "reserved" or "cidr".
    pub scope: String,
    pub endpoints: Vec<u32>,
    pub refcount: u64,
}

/// Body of `PUT /v1/namespaces/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceLabels {
    pub labels: Labels,
}

/// One entry of an endpoint's installed policy map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntryInfo {
    pub direction: String,
    pub identity: u32,
    pub protocol: u8,
    pub port: u16,
    pub port_prefix_len: u8,
    pub verdict: String,
    pub rule_id: u32,
    #[serde(default)]
    pub rule: Option<String>,
}

/// `GET /v1/endpoints/{id}/policy`: what the datapath enforces for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub endpoint_id: u32,
    pub identity: u32,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub entries: Vec<PolicyEntryInfo>,
}

/// One row of `GET /v1/metrics/policy`: packets a rule decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStat {
    pub endpoint_id: u32,
    pub direction: String,
    pub verdict: String,
    pub rule_id: u32,
    #[serde(default)]
    pub rule: Option<String>,
    pub packets: u64,
    pub bytes: u64,
}

/// A process event with the pod it ran in (`GET /v1/process-events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEventInfo {
    /// "exec" or "exit".
    pub kind: String,
    /// Unix nanoseconds when the agent read it.
    pub time_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    /// Exec: the file executed.
    pub filename: String,
    /// Exit: `status << 8 | signal`.
    pub exit_code: u32,
    pub cgroup_id: u64,
    /// The pod (`namespace/name`) the process runs in, when it runs in one of this node's pods.
    pub pod: Option<String>,
    pub endpoint_id: Option<u32>,
}
