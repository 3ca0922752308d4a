//! The normalized policy model that CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and
//! Kubernetes NetworkPolicy documents are parsed into. Namespace scoping is already applied:
//! every selector here is matched as is against identity labels.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::labels::LabelSelector;

/// Kind of a policy document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl PolicyKind {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Self::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }

    #[must_use]
    pub const fn is_namespaced(self) -> bool {
        !matches!(self, Self::CiliumClusterwideNetworkPolicy)
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Traffic direction, seen from the selected endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// Value of the direction byte in the policy map key.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Ingress => 0,
            Self::Egress => 1,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// Verdict of a rule or a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// Cilium entities usable in fromEntities/toEntities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    World,
    WorldIpv4,
    WorldIpv6,
    Host,
    RemoteNode,
    Cluster,
    All,
    Init,
    Health,
    Unmanaged,
    KubeApiserver,
    Ingress,
}

impl Entity {
    pub const ALL: [Entity; 12] = [
        Self::World,
        Self::WorldIpv4,
        Self::WorldIpv6,
        Self::Host,
        Self::RemoteNode,
        Self::Cluster,
        Self::All,
        Self::Init,
        Self::Health,
        Self::Unmanaged,
        Self::KubeApiserver,
        Self::Ingress,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::World => "world",
            Self::WorldIpv4 => "world-ipv4",
            Self::WorldIpv6 => "world-ipv6",
            Self::Host => "host",
            Self::RemoteNode => "remote-node",
            Self::Cluster => "cluster",
            Self::All => "all",
            Self::Init => "init",
            Self::Health => "health",
            Self::Unmanaged => "unmanaged",
            Self::KubeApiserver => "kube-apiserver",
            Self::Ingress => "ingress",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// L4 protocol of a port match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// TCP, UDP and SCTP (Cilium's `ANY` in toPorts).
    Any,
    /// ICMP (IPv4); the port field holds the ICMP type.
    Icmp,
    /// ICMPv6; the port field holds the ICMPv6 type.
    Icmpv6,
}

impl Protocol {
    /// IP protocol numbers this match covers.
    #[must_use]
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Self::Tcp => &[PROTO_TCP],
            Self::Udp => &[PROTO_UDP],
            Self::Sctp => &[PROTO_SCTP],
            Self::Any => &[PROTO_TCP, PROTO_UDP, PROTO_SCTP],
            Self::Icmp => &[PROTO_ICMP],
            Self::Icmpv6 => &[PROTO_ICMPV6],
        }
    }
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Name of an IP protocol number, for messages.
#[must_use]
pub fn proto_name(p: u8) -> String {
    match p {
        0 => "any".to_owned(),
        PROTO_ICMP => "ICMP".to_owned(),
        PROTO_TCP => "TCP".to_owned(),
        PROTO_UDP => "UDP".to_owned(),
        PROTO_ICMPV6 => "ICMPv6".to_owned(),
        PROTO_SCTP => "SCTP".to_owned(),
        n => format!("proto-{n}"),
    }
}

/// The port part of a port match, as written (validated separately).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PortSpec {
    /// Every port of the protocol.
    All,
    /// A port number (or ICMP type), possibly the start of a range.
    Number(i64),
    /// A named container port, resolved against endpoints.
    Named(String),
}

/// One port (range) of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMatch {
    /// Field path, e.g. `spec.ingress[0].toPorts[0].ports[1]`.
    pub path: String,
    pub protocol: Protocol,
    pub port: PortSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Any => "ANY",
            Protocol::Icmp => "ICMP type",
            Protocol::Icmpv6 => "ICMPv6 type",
        };
        match (&self.port, self.end_port) {
            (PortSpec::All, _) => write!(f, "{proto} all ports"),
            (PortSpec::Number(p), Some(e)) => write!(f, "{proto} {p}-{e}"),
            (PortSpec::Number(p), None) => write!(f, "{proto} {p}"),
            (PortSpec::Named(n), _) => write!(f, "{proto} named port {n:?}"),
        }
    }
}

/// One peer of a rule (the rule's peers are a union).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Field path, e.g. `spec.ingress[0].fromEndpoints[1]`.
    pub path: String,
    pub kind: PeerKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerKind {
    /// Identities whose labels match (namespace scoping already applied). Shared: rules of
    /// large policies repeat a few selectors, see [`share_selectors`].
    Selector(Arc<LabelSelector>),
    /// CIDR identities whose prefix lies inside `cidr` and inside none of `except`
    /// (a /0 also covers `world`).
    Cidr {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
    Entity(Entity),
}

/// One rule: peers x ports, with a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    pub direction: Direction,
    pub verdict: Verdict,
    /// Field path of the rule, e.g. `spec.ingressDeny[1]`.
    pub section: String,
    /// None: any peer. Some(empty): no peer (the rule selects nothing).
    pub peers: Option<Vec<Peer>>,
    /// None: any protocol and port. Some(list): union of the listed ports.
    pub ports: Option<Vec<PortMatch>>,
    /// L7 rule kinds present (accepted, not enforced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l7: Vec<String>,
}

/// One `spec` (a CNP may have several in `specs`; a KNP has one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// `spec` or `specs[i]`.
    pub path: String,
    /// Endpoints this spec applies to (namespace scoping applied).
    pub subject: LabelSelector,
    /// Whether selected endpoints become default-deny for ingress / egress.
    pub enforce_ingress: bool,
    pub enforce_egress: bool,
    pub rules: Vec<PolicyRule>,
}

/// A parsed policy document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub kind: PolicyKind,
    pub name: String,
    /// None for cluster-wide policies.
    pub namespace: Option<String>,
    /// Source file name and 1-based document index.
    pub file: String,
    pub document: usize,
    pub specs: Vec<PolicySpec>,
    /// Accepted but not enforced parts (L7 rules), as messages with field paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Policy {
    /// `namespace/name` or `name`.
    #[must_use]
    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// `Kind namespace/name`, as used in messages.
    #[must_use]
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.id())
    }
}

/// A reference to the rule that produced an entry or a verdict.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleRef {
    /// `namespace/name` or `name`.
    pub policy: String,
    pub kind: PolicyKind,
    /// Field path of the rule, e.g. `spec.ingress[0]`.
    pub section: String,
    /// Ordinal of the rule among all rules of the compiled input (policy order, then spec,
    /// then section order): stable for a given input, usable as a numeric rule id.
    pub index: u32,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, self.policy, self.section)
    }
}

/// Make equal peer selectors of `policies` one allocation. A selector is the largest part of a
/// parsed rule (its labels are a map), and the rules of a large policy name a few selectors
/// over and over: a 10,000-rule policy with two selectors shrinks by half. Run after parsing
/// and after reading policies back from storage (deserializing shares nothing).
pub fn share_selectors(policies: &mut [Policy]) {
    let mut seen: HashSet<Arc<LabelSelector>> = HashSet::new();
    for peer in policies
        .iter_mut()
        .flat_map(|p| p.specs.iter_mut())
        .flat_map(|s| s.rules.iter_mut())
        .flat_map(|r| r.peers.iter_mut().flatten())
    {
        if let PeerKind::Selector(sel) = &mut peer.kind {
            match seen.get(sel) {
                Some(shared) => *sel = shared.clone(),
                None => {
                    seen.insert(sel.clone());
                }
            }
        }
    }
}
