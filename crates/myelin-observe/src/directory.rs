//! What enrichment needs to know about the node: implemented by the agent
//! over its published snapshots (never a lock the agent's components share).

use std::net::IpAddr;

use crate::dict::EndpointDesc;

/// A policy rule as flows name it (`flow.Policy`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyName {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    /// The rule's field path (Myelin addition, shown by `myelin observe`).
    pub path: String,
}

pub trait Directory: Send + Sync {
    /// Bumped whenever any answer below may have changed (cached answers are
    /// dropped when it moves).
    fn generation(&self) -> u64;

    /// The description of the local endpoint owning `ip` (None: not local).
    fn endpoint_by_ip(&self, ip: IpAddr) -> Option<EndpointDesc>;

    /// Cilium-style labels of a security identity (reserved, CIDR or workload).
    fn identity_labels(&self, identity: u32) -> Vec<String>;

    /// The rule behind a rule id, also after the rule was edited or deleted.
    fn rule(&self, rule_id: u32) -> Option<PolicyName>;

    /// This node's name.
    fn node_name(&self) -> String;

    /// The name of an interface of the node.
    fn ifname(&self, ifindex: u32) -> Option<String>;
}
