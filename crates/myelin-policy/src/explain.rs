//! `myelin policy explain`: why would a flow from A to B be allowed or denied?

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::identity::{is_workload, Identity, IpCache};
use crate::matching::{EndpointId, PolicyInput};
use crate::model::{proto_name, Direction, Verdict};
use crate::reference::{reference_verdict, ReferenceResult};

/// One side of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowPeer {
    /// A local endpoint.
    Endpoint(EndpointId),
    /// An address, resolved through the ipcache (a local endpoint's address counts as that
    /// endpoint).
    Ip(Ipv4Addr),
}

/// Verdict of one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionExplanation {
    /// The endpoint whose policy applies.
    pub endpoint: EndpointId,
    pub peer_identity: Identity,
    /// The peer's address, when known (a pod's decides NetworkPolicy `ipBlock` peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<Ipv4Addr>,
    /// Set when the verdict came from lookup step 3: a NetworkPolicy `ipBlock` rule matched the
    /// peer pod by its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<PodCidrStep>,
    #[serde(flatten)]
    pub result: ReferenceResult,
}

/// Lookup step 3 of a pod peer (see [`crate::compile`](mod@crate::compile)): the longest policy prefix holding the
/// pod's address and the pseudo-identity the datapath looks up for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCidrStep {
    pub prefix: Ipv4Net,
    /// [`crate::identity::pod_in_cidr`] of the prefix's CIDR identity.
    pub identity: Identity,
}

/// Why a flow is allowed or denied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub source_identity: Identity,
    pub destination_identity: Identity,
    pub protocol: u8,
    pub port: u16,
    /// Egress policy of the source, when it is a local endpoint.
    pub egress: Option<DirectionExplanation>,
    /// Ingress policy of the destination, when it is a local endpoint.
    pub ingress: Option<DirectionExplanation>,
    pub egress_verdict: Verdict,
    pub ingress_verdict: Verdict,
    pub final_verdict: Verdict,
}

/// (local endpoint, identity, address) of a flow side.
fn resolve(
    input: &PolicyInput<'_>,
    ipcache: &IpCache,
    p: FlowPeer,
) -> (Option<EndpointId>, Identity, Option<Ipv4Addr>) {
    match p {
        FlowPeer::Endpoint(id) => {
            let ep = input.endpoints.iter().find(|e| e.id == id);
            (Some(id), ep.map_or(0, |e| e.identity), ep.and_then(|e| e.ipv4))
        }
        FlowPeer::Ip(ip) => {
            let identity = ipcache.lookup(ip);
            // An address is a local endpoint when it has a /32 with that endpoint's identity
            // (the endpoint with that very address, when the endpoints carry addresses).
            let ep = ipcache
                .lookup_prefix(ip)
                .filter(|(n, _)| n.prefix_len() == 32)
                .and_then(|(_, id)| {
                    let same = || input.endpoints.iter().filter(move |e| e.identity == id);
                    same().find(|e| e.ipv4 == Some(ip)).or_else(|| same().next())
                })
                .map(|e| e.id);
            (ep, identity, Some(ip))
        }
    }
}

/// One direction's explanation, with step 3 when it decided.
fn direction(
    input: &PolicyInput<'_>,
    endpoint: EndpointId,
    dir: Direction,
    peer: (Identity, Option<Ipv4Addr>),
    protocol: u8,
    port: u16,
) -> DirectionExplanation {
    let (peer_identity, peer_ip) = peer;
    let result = reference_verdict(input, endpoint, dir, peer_identity, peer_ip, protocol, port);
    let pod_cidr = peer_ip.filter(|_| is_workload(peer_identity) && result.decided_by_address()).map(|ip| {
        let (prefix, identity) = input.identities.pod_cidr_lookup(ip);
        PodCidrStep { prefix, identity }
    });
    DirectionExplanation { endpoint, peer_identity, peer_ip, pod_cidr, result }
}

/// Explains a flow from `from` to `to` with (protocol, destination port or ICMP type).
#[must_use]
pub fn explain(
    input: &PolicyInput<'_>,
    ipcache: &IpCache,
    from: FlowPeer,
    to: FlowPeer,
    protocol: u8,
    port: u16,
) -> Explanation {
    let (src_ep, src_id, src_ip) = resolve(input, ipcache, from);
    let (dst_ep, dst_id, dst_ip) = resolve(input, ipcache, to);
    let egress = src_ep.map(|ep| direction(input, ep, Direction::Egress, (dst_id, dst_ip), protocol, port));
    let ingress = dst_ep.map(|ep| direction(input, ep, Direction::Ingress, (src_id, src_ip), protocol, port));
    let v = |d: &Option<DirectionExplanation>| d.as_ref().map_or(Verdict::Allow, |d| d.result.verdict);
    let egress_verdict = v(&egress);
    let ingress_verdict = v(&ingress);
    Explanation {
        source_identity: src_id,
        destination_identity: dst_id,
        protocol,
        port,
        final_verdict: if egress_verdict == Verdict::Deny || ingress_verdict == Verdict::Deny {
            Verdict::Deny
        } else {
            Verdict::Allow
        },
        egress,
        ingress,
        egress_verdict,
        ingress_verdict,
    }
}

fn write_dir(f: &mut fmt::Formatter<'_>, name: &str, d: Option<&DirectionExplanation>) -> fmt::Result {
    let Some(d) = d else {
        return writeln!(f, "{name}: allow (not a local endpoint: no {name} policy applies)");
    };
    let r = &d.result;
    write!(f, "{name} of endpoint {}: {}", d.endpoint, r.verdict)?;
    match (&r.rule, r.enforced) {
        (Some(rule), _) => writeln!(f, " by {rule}")?,
        (None, true) => writeln!(f, " (default deny: no rule allows it)")?,
        (None, false) => writeln!(f, " (not enforced: no policy enables default deny)")?,
    }
    if let (Some(step), Some(ip)) = (&d.pod_cidr, d.peer_ip) {
        writeln!(
            f,
            "  decided in lookup step 3 (by pod address): {ip} is in policy prefix {}, looked up as pod-in-CIDR \
             identity {}",
            step.prefix, step.identity
        )?;
    }
    if r.selected_by.is_empty() {
        writeln!(f, "  selected by no policy")?;
    }
    for s in &r.selected_by {
        writeln!(f, "  selected by {s}")?;
    }
    for m in &r.matched {
        let how = if m.by_address { " (by pod address)" } else { "" };
        writeln!(f, "  {} {}{how}: {}", m.verdict, m.rule, m.reason)?;
    }
    Ok(())
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "flow: identity {} -> identity {} {} {}",
            self.source_identity,
            self.destination_identity,
            proto_name(self.protocol),
            self.port
        )?;
        write_dir(f, "egress", self.egress.as_ref())?;
        write_dir(f, "ingress", self.ingress.as_ref())?;
        writeln!(f, "final verdict: {}", self.final_verdict)
    }
}
