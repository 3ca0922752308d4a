//! The reference evaluator: decides a verdict straight from the policy definitions, without
//! compiling. The property tests check the compiled map against it; `explain` uses it for
//! reasons.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::identity::{is_workload, Identity};
use crate::matching::{
    flatten, peer_covers_pod_address, peer_matches, resolve_named, selects_pod_addresses, EndpointId, PolicyInput,
};
use crate::model::{proto_name, Direction, PeerKind, PortMatch, PortSpec, Protocol, RuleRef, Verdict};

/// A rule that matched a flow, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    pub rule: RuleRef,
    pub verdict: Verdict,
    pub reason: String,
    /// The rule matched the peer pod by its address (a Kubernetes NetworkPolicy `ipBlock`), not
    /// by identity: the datapath decides it in lookup step 3 (see [`crate::compile`](mod@crate::compile)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_address: bool,
}

/// The reference evaluator's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceResult {
    pub verdict: Verdict,
    /// The deciding rule: the first (lowest ordinal) matching deny rule, else — when enforced —
    /// the first allow rule matching the peer by identity, else the first matching the peer pod
    /// by address. None for a default verdict.
    pub rule: Option<RuleRef>,
    pub enforced: bool,
    /// Policy specs selecting the endpoint, as `Kind ns/name spec`.
    pub selected_by: Vec<String>,
    /// Every matching rule.
    pub matched: Vec<RuleMatch>,
}

impl ReferenceResult {
    /// Whether the deciding rule matched the peer pod by address (lookup step 3).
    #[must_use]
    pub fn decided_by_address(&self) -> bool {
        self.rule.as_ref().is_some_and(|r| self.matched.iter().any(|m| m.by_address && &m.rule == r))
    }
}

/// Whether a port match covers (protocol, port). Named ports of egress rules resolve against the
/// endpoints of identity `named_peer`; None (a pod reached by address) resolves them against
/// nothing.
fn port_matches(
    pm: &PortMatch,
    input: &PolicyInput<'_>,
    endpoint: EndpointId,
    direction: Direction,
    named_peer: Option<Identity>,
    protocol: u8,
    port: u16,
) -> bool {
    match &pm.port {
        PortSpec::All => pm.protocol.numbers().contains(&protocol),
        PortSpec::Number(n) => {
            let lo = *n;
            let hi = pm.end_port.unwrap_or(lo);
            pm.protocol.numbers().contains(&protocol) && (lo..=hi).contains(&i64::from(port))
        }
        PortSpec::Named(name) => {
            let mut eps = input.endpoints.iter().filter(|e| match direction {
                Direction::Ingress => e.id == endpoint,
                Direction::Egress => Some(e.identity) == named_peer,
            });
            eps.any(|e| resolve_named(e, name, pm.protocol).any(|(p, n)| p == protocol && n == port))
        }
    }
}

/// Evaluates the policies for one flow of `endpoint` in `direction` with `peer`.
///
/// `peer_ip` is the peer's address when known. It matters only for a pod peer (a workload
/// identity): Kubernetes NetworkPolicy `ipBlock` peers select it when the address lies inside
/// the block's cidr and inside none of its excepts, whatever its identity. Every other peer kind
/// decides by identity.
#[must_use]
pub fn reference_verdict(
    input: &PolicyInput<'_>,
    endpoint: EndpointId,
    direction: Direction,
    peer: Identity,
    peer_ip: Option<Ipv4Addr>,
    protocol: u8,
    port: u16,
) -> ReferenceResult {
    let mut res = ReferenceResult {
        verdict: Verdict::Allow,
        rule: None,
        enforced: false,
        selected_by: Vec::new(),
        matched: Vec::new(),
    };
    let Some(ep) = input.endpoints.iter().find(|e| e.id == endpoint) else {
        return res;
    };
    for p in input.policies {
        for s in &p.specs {
            if s.subject.matches(&ep.labels) {
                res.selected_by.push(format!("{} {}", p.label(), s.path));
                res.enforced |= match direction {
                    Direction::Ingress => s.enforce_ingress,
                    Direction::Egress => s.enforce_egress,
                };
            }
        }
    }
    let peer_labels = input.identities.labels(peer);
    let pod_ip = peer_ip.filter(|_| is_workload(peer));
    let port_reason = |pm: &PortMatch| {
        let what = if matches!(pm.protocol, Protocol::Icmp | Protocol::Icmpv6) { "type" } else { "port" };
        format!("{} ({pm}) covers {} {what} {port}", pm.path, proto_name(protocol))
    };
    for fr in flatten(input.policies) {
        let spec = &fr.policy.specs[fr.spec];
        if fr.rule.direction != direction || !spec.subject.matches(&ep.labels) {
            continue;
        }
        let ports_match = |named_peer: Option<Identity>| match &fr.rule.ports {
            None => Some("any protocol and port".to_owned()),
            Some(list) => list
                .iter()
                .find(|pm| port_matches(pm, input, endpoint, direction, named_peer, protocol, port))
                .map(port_reason),
        };
        // By identity first: that is what lookup steps 1-2 decide.
        let by_identity = match &fr.rule.peers {
            None => Some("any peer".to_owned()),
            Some(list) => list
                .iter()
                .find(|pe| peer_matches(&pe.kind, false, peer, peer_labels.as_ref(), input.identities))
                .map(|pe| match &pe.kind {
                    PeerKind::Selector(sel) => {
                        format!("{} selects identity {peer} ({sel})", pe.path)
                    }
                    PeerKind::Cidr { cidr, .. } => {
                        format!("{} ({cidr}) covers identity {peer}", pe.path)
                    }
                    PeerKind::Entity(e) => {
                        format!("{} (entity {}) covers identity {peer}", pe.path, e.as_str())
                    }
                }),
        };
        if let Some(peer_reason) = by_identity {
            if let Some(ports) = ports_match(Some(peer)) {
                res.matched.push(RuleMatch {
                    rule: fr.rule_ref.clone(),
                    verdict: fr.rule.verdict,
                    reason: format!("{peer_reason}; {ports}"),
                    by_address: false,
                });
                continue;
            }
        }
        // Then a pod peer by address (Kubernetes NetworkPolicy ipBlock): lookup step 3.
        let Some(ip) = pod_ip.filter(|_| selects_pod_addresses(fr.policy.kind, fr.rule)) else {
            continue;
        };
        let by_address = fr.rule.peers.iter().flatten().find(|pe| peer_covers_pod_address(&pe.kind, ip)).map(|pe| {
            let block = match &pe.kind {
                PeerKind::Cidr { cidr, except } if except.is_empty() => format!("ipBlock {cidr}"),
                PeerKind::Cidr { cidr, except } => {
                    let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
                    format!("ipBlock {cidr} except {}", ex.join(", "))
                }
                _ => String::new(),
            };
            format!("{} ({block}) covers pod address {ip}", pe.path)
        });
        if let (Some(peer_reason), Some(ports)) = (by_address, ports_match(None)) {
            res.matched.push(RuleMatch {
                rule: fr.rule_ref.clone(),
                verdict: fr.rule.verdict,
                reason: format!("{peer_reason}; {ports}"),
                by_address: true,
            });
        }
    }
    let first = |v: Verdict, by_address: bool| {
        res.matched.iter().find(|m| m.verdict == v && m.by_address == by_address).map(|m| m.rule.clone())
    };
    // Deny rules never match by address (NetworkPolicy has no deny).
    if let Some(r) = res.matched.iter().find(|m| m.verdict == Verdict::Deny).map(|m| m.rule.clone()) {
        res.verdict = Verdict::Deny;
        res.rule = Some(r);
    } else if res.enforced {
        res.rule = first(Verdict::Allow, false).or_else(|| first(Verdict::Allow, true));
        res.verdict = if res.rule.is_some() { Verdict::Allow } else { Verdict::Deny };
    }
    res
}
