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

/// `GET /v1/ipam`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
