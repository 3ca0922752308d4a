//! `myelin policy explain`: why would a flow from A to B be allowed or denied?

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IpCache};
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
    #[serde(flatten)]
    pub result: ReferenceResult,
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

fn resolve(input: &PolicyInput<'_>, ipcache: &IpCache, p: FlowPeer) -> (Option<EndpointId>, Identity) {
    match p {
        FlowPeer::Endpoint(id) => (Some(id), input.endpoints.iter().find(|e| e.id == id).map_or(0, |e| e.identity)),
        FlowPeer::Ip(ip) => {
            let identity = ipcache.lookup(ip);
            // An address is a local endpoint when it has a /32 with that endpoint's identity.
            let ep = ipcache
                .lookup_prefix(ip)
                .filter(|(n, _)| n.prefix_len() == 32)
                .and_then(|(_, id)| input.endpoints.iter().find(|e| e.identity == id))
                .map(|e| e.id);
            (ep, identity)
        }
    }
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
    let (src_ep, src_id) = resolve(input, ipcache, from);
    let (dst_ep, dst_id) = resolve(input, ipcache, to);
    let egress = src_ep.map(|ep| DirectionExplanation {
        endpoint: ep,
        peer_identity: dst_id,
        result: reference_verdict(input, ep, Direction::Egress, dst_id, protocol, port),
    });
    let ingress = dst_ep.map(|ep| DirectionExplanation {
        endpoint: ep,
        peer_identity: src_id,
        result: reference_verdict(input, ep, Direction::Ingress, src_id, protocol, port),
    });
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
    if r.selected_by.is_empty() {
        writeln!(f, "  selected by no policy")?;
    }
    for s in &r.selected_by {
        writeln!(f, "  selected by {s}")?;
    }
    for m in &r.matched {
        writeln!(f, "  {} {}: {}", m.verdict, m.rule, m.reason)?;
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
