//! Definitions shared by the compiler and the reference evaluator: which identities a peer
//! covers, which endpoints a spec selects, and how named ports resolve.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::identity::{is_local_scope, is_workload, pod_in_cidr_base, Identity, IdentityTable, ReservedIdentity};
use crate::labels::Labels;
use crate::model::{Entity, PeerKind, Policy, PolicyKind, PolicyRule, Protocol, RuleRef, Verdict};

/// Numeric id of a local endpoint.
pub type EndpointId = u64;

/// A named container port of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A local endpoint (pod) as the policy engine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: EndpointId,
    pub namespace: String,
    /// Security labels (see [`crate::labels::security_labels`]).
    pub labels: Labels,
    pub identity: Identity,
    #[serde(default)]
    pub named_ports: Vec<NamedPort>,
    /// The pod's IPv4 address, when known. The compiler does not read it (compiled entries do
    /// not depend on pod addresses); `explain` uses it to decide Kubernetes NetworkPolicy
    /// `ipBlock` peers for this pod by address.
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
}

/// Everything the compiler and the evaluators need.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    pub policies: &'a [Policy],
    /// Endpoints of this node (policies are compiled for them) and, for named-port resolution of
    /// egress rules, any other endpoints known.
    pub endpoints: &'a [Endpoint],
    pub identities: &'a IdentityTable,
}

/// A rule with its ordinal and reference.
pub(crate) struct FlatRule<'a> {
    pub policy: &'a Policy,
    /// Index of `policy` in the input's policies.
    pub policy_index: usize,
    pub spec: usize,
    pub rule: &'a PolicyRule,
    pub rule_ref: RuleRef,
}

/// Every rule of every policy, numbered in order (the numbering of [`RuleRef::index`]).
pub(crate) fn flatten(policies: &[Policy]) -> Vec<FlatRule<'_>> {
    let mut out = Vec::new();
    for (pi, p) in policies.iter().enumerate() {
        let id = p.id();
        for (si, spec) in p.specs.iter().enumerate() {
            for rule in &spec.rules {
                let index = u32::try_from(out.len()).unwrap_or(u32::MAX);
                out.push(FlatRule {
                    policy: p,
                    policy_index: pi,
                    spec: si,
                    rule,
                    rule_ref: RuleRef { policy: id.clone(), kind: p.kind, section: rule.section.clone(), index },
                });
            }
        }
    }
    out
}

/// Whether the table knows `id` (reserved ids other than unknown, workloads, CIDRs).
pub(crate) fn known(id: Identity, table: &IdentityTable) -> bool {
    match ReservedIdentity::from_id(id) {
        Some(r) => r != ReservedIdentity::Unknown,
        None => table.workloads.contains_key(&id) || table.cidrs.contains_key(&id),
    }
}

/// Whether an entity covers an identity. `all` covers every identity (compiled as wildcard).
#[must_use]
pub fn entity_matches(entity: Entity, id: Identity, table: &IdentityTable) -> bool {
    use ReservedIdentity as R;
    if entity == Entity::All {
        return true;
    }
    if !known(id, table) {
        return false;
    }
    let r = |x: R| id == x.id();
    match entity {
        Entity::All => true,
        Entity::World => r(R::World) || r(R::WorldIpv4) || r(R::WorldIpv6) || is_local_scope(id),
        Entity::WorldIpv4 => r(R::World) || r(R::WorldIpv4) || is_local_scope(id),
        Entity::WorldIpv6 => r(R::WorldIpv6),
        Entity::Host => r(R::Host),
        Entity::RemoteNode => r(R::RemoteNode),
        Entity::Init => r(R::Init),
        Entity::Health => r(R::Health),
        Entity::Unmanaged => r(R::Unmanaged),
        Entity::KubeApiserver => r(R::KubeApiserver),
        Entity::Ingress => r(R::Ingress),
        Entity::Cluster => {
            is_workload(id)
                || [R::Host, R::RemoteNode, R::Init, R::Health, R::Unmanaged, R::KubeApiserver, R::Ingress]
                    .into_iter()
                    .any(r)
        }
    }
}

/// Whether a CIDR peer covers an identity by its CIDR semantics: a CIDR identity whose prefix
/// lies inside `cidr` and inside none of `except`; `world` (and `world-ipv4`) for a /0.
fn cidr_matches(cidr: &Ipv4Net, except: &[Ipv4Net], id: Identity, table: &IdentityTable) -> bool {
    if let Some(p) = table.cidrs.get(&id) {
        cidr.contains(p) && !except.iter().any(|e| e.contains(p))
    } else {
        cidr.prefix_len() == 0 && (id == ReservedIdentity::World.id() || id == ReservedIdentity::WorldIpv4.id())
    }
}

/// Whether a rule's CIDR peers select pod addresses too: Kubernetes NetworkPolicy `ipBlock`
/// (allow rules: NetworkPolicy has no others). CiliumNetworkPolicy CIDR rules select no cluster
/// endpoint, as in Cilium.
pub(crate) fn selects_pod_addresses(kind: PolicyKind, rule: &PolicyRule) -> bool {
    kind == PolicyKind::NetworkPolicy && rule.verdict == Verdict::Allow
}

/// Whether a peer covers an identity with the given labels. `pods_by_address` is
/// [`selects_pod_addresses`] of the peer's rule: only then do CIDR peers cover the
/// [`crate::identity::pod_in_cidr`] pseudo-identities; nothing else ever covers them.
pub(crate) fn peer_matches(
    kind: &PeerKind,
    pods_by_address: bool,
    id: Identity,
    labels: Option<&Labels>,
    table: &IdentityTable,
) -> bool {
    if let Some(base) = pod_in_cidr_base(id) {
        return match kind {
            PeerKind::Cidr { cidr, except } => pods_by_address && cidr_matches(cidr, except, base, table),
            PeerKind::Selector(_) | PeerKind::Entity(_) => false,
        };
    }
    match kind {
        PeerKind::Entity(e) => entity_matches(*e, id, table),
        PeerKind::Selector(sel) => known(id, table) && labels.is_some_and(|l| sel.matches(l)),
        PeerKind::Cidr { cidr, except } => cidr_matches(cidr, except, id, table),
    }
}

/// Whether a CIDR peer covers a pod address: inside `cidr` and inside none of `except`. Only
/// for [`selects_pod_addresses`] rules (the reference evaluator's direct answer; the compiler
/// gets the same through the [`crate::identity::pod_in_cidr`] pseudo-identities).
pub(crate) fn peer_covers_pod_address(kind: &PeerKind, ip: Ipv4Addr) -> bool {
    match kind {
        PeerKind::Cidr { cidr, except } => cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip)),
        PeerKind::Selector(_) | PeerKind::Entity(_) => false,
    }
}

/// Whether a rule's peers are "any identity".
pub(crate) fn is_wildcard_peer(rule: &PolicyRule) -> bool {
    match &rule.peers {
        None => true,
        Some(list) => list.iter().any(|p| matches!(p.kind, PeerKind::Entity(Entity::All))),
    }
}

/// Ports (protocol number, port) a named port resolves to on one endpoint.
pub(crate) fn resolve_named<'a>(
    ep: &'a Endpoint,
    name: &str,
    protocol: Protocol,
) -> impl Iterator<Item = (u8, u16)> + 'a {
    let protos = protocol.numbers();
    let name = name.to_owned();
    ep.named_ports.iter().filter_map(move |np| {
        let p = np.protocol.numbers().first().copied()?;
        (np.name == name && protos.contains(&p)).then_some((p, np.port))
    })
}
