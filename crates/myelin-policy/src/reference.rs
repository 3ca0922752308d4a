//! The reference evaluator: decides a verdict straight from the policy definitions, without
//! compiling. The property tests check the compiled map against it; `explain` uses it for
//! reasons.

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::matching::{flatten, peer_matches, resolve_named, EndpointId, PolicyInput};
use crate::model::{proto_name, Direction, PeerKind, PortMatch, PortSpec, Protocol, RuleRef, Verdict};

/// A rule that matched a flow, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatch {
    pub rule: RuleRef,
    pub verdict: Verdict,
    pub reason: String,
}

/// The reference evaluator's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceResult {
    pub verdict: Verdict,
    /// The deciding rule: the first (lowest ordinal) matching deny rule, else — when enforced —
    /// the first matching allow rule. None for a default verdict.
    pub rule: Option<RuleRef>,
    pub enforced: bool,
    /// Policy specs selecting the endpoint, as `Kind ns/name spec`.
    pub selected_by: Vec<String>,
    /// Every matching rule.
    pub matched: Vec<RuleMatch>,
}

fn port_matches(
    pm: &PortMatch,
    input: &PolicyInput<'_>,
    endpoint: EndpointId,
    direction: Direction,
    peer: Identity,
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
                Direction::Egress => e.identity == peer,
            });
            eps.any(|e| resolve_named(e, name, pm.protocol).any(|(p, n)| p == protocol && n == port))
        }
    }
}

/// Evaluates the policies for one flow of `endpoint` in `direction` with `peer`.
#[must_use]
pub fn reference_verdict(
    input: &PolicyInput<'_>,
    endpoint: EndpointId,
    direction: Direction,
    peer: Identity,
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
    for fr in flatten(input.policies) {
        let spec = &fr.policy.specs[fr.spec];
        if fr.rule.direction != direction || !spec.subject.matches(&ep.labels) {
            continue;
        }
        let peer_reason = match &fr.rule.peers {
            None => Some("any peer".to_owned()),
            Some(list) => list
                .iter()
                .find(|pe| peer_matches(&pe.kind, peer, peer_labels.as_ref(), input.identities))
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
        let Some(peer_reason) = peer_reason else {
            continue;
        };
        let port_reason = match &fr.rule.ports {
            None => Some("any protocol and port".to_owned()),
            Some(list) => {
                list.iter().find(|pm| port_matches(pm, input, endpoint, direction, peer, protocol, port)).map(|pm| {
                    let what = if matches!(pm.protocol, Protocol::Icmp | Protocol::Icmpv6) { "type" } else { "port" };
                    format!("{} ({pm}) covers {} {what} {port}", pm.path, proto_name(protocol))
                })
            }
        };
        let Some(port_reason) = port_reason else {
            continue;
        };
        res.matched.push(RuleMatch {
            rule: fr.rule_ref.clone(),
            verdict: fr.rule.verdict,
            reason: format!("{peer_reason}; {port_reason}"),
        });
    }
    let first = |v: Verdict| res.matched.iter().find(|m| m.verdict == v).map(|m| m.rule.clone());
    if let Some(r) = first(Verdict::Deny) {
        res.verdict = Verdict::Deny;
        res.rule = Some(r);
    } else if res.enforced {
        res.rule = first(Verdict::Allow);
        res.verdict = if res.rule.is_some() { Verdict::Allow } else { Verdict::Deny };
    }
    res
}
