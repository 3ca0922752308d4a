//! Test helpers: a small cluster of namespaces and pods with identities.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use myelin_policy::*;

pub struct Cluster {
    pub alloc: IdentityAllocator,
    pub cidrs: CidrIdentityAllocator,
    pub endpoints: Vec<Endpoint>,
    pub ns_labels: BTreeMap<String, Labels>,
}

impl Cluster {
    pub fn new() -> Self {
        Cluster {
            alloc: IdentityAllocator::new(),
            cidrs: CidrIdentityAllocator::new(),
            endpoints: Vec::new(),
            ns_labels: BTreeMap::new(),
        }
    }

    pub fn namespace(&mut self, ns: &str, labels: &[(&str, &str)]) {
        self.ns_labels.insert(ns.to_owned(), labels.iter().copied().collect());
    }

    pub fn pod(&mut self, id: u64, ns: &str, labels: &[(&str, &str)], ports: &[(&str, Protocol, u16)]) -> Identity {
        let nsl = self.ns_labels.get(ns).cloned().unwrap_or_default();
        let sec = security_labels(&labels.iter().copied().collect(), ns, &nsl);
        let identity = self.alloc.acquire(&sec).unwrap();
        self.endpoints.push(Endpoint {
            id,
            namespace: ns.to_owned(),
            labels: sec,
            identity,
            named_ports: ports
                .iter()
                .map(|(n, p, port)| NamedPort { name: (*n).to_owned(), protocol: *p, port: *port })
                .collect(),
            ipv4: None,
        });
        identity
    }

    /// A pod with an address.
    pub fn pod_at(&mut self, id: u64, ns: &str, labels: &[(&str, &str)], ip: &str) -> Identity {
        let identity = self.pod(id, ns, labels, &[]);
        self.endpoints.last_mut().unwrap().ipv4 = Some(ip.parse().unwrap());
        identity
    }

    /// (identity, address) of endpoint `id`.
    pub fn peer(&self, id: u64) -> (Identity, Option<Ipv4Addr>) {
        let e = self.endpoints.iter().find(|e| e.id == id).unwrap_or_else(|| panic!("no endpoint {id}"));
        (e.identity, e.ipv4)
    }

    /// Allocates CIDR identities for every prefix the policies use.
    pub fn cidrs_for(&mut self, policies: &[Policy]) {
        for p in cidr_prefixes(policies) {
            self.cidrs.allocate(p).unwrap();
        }
    }

    pub fn cidr(&mut self, s: &str) -> Identity {
        self.cidrs.allocate(s.parse().unwrap()).unwrap()
    }

    pub fn table(&self) -> IdentityTable {
        IdentityTable::from_allocators(&self.alloc, &self.cidrs)
    }
}

pub fn parse(yaml: &str) -> Vec<Policy> {
    parse_documents("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}"))
}

pub fn parse_err(yaml: &str) -> String {
    match parse_documents("test.yaml", yaml) {
        Ok(p) => panic!("expected an error, parsed {} policies", p.len()),
        Err(e) => e.to_string(),
    }
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// Compiled and reference verdicts must agree; returns the verdict. For a peer whose address
/// does not matter (not a pod, or no NetworkPolicy ipBlock involved).
pub fn check(
    input: &PolicyInput<'_>,
    compiled: &CompiledPolicy,
    ep: EndpointId,
    dir: Direction,
    peer: Identity,
    proto: u8,
    port: u16,
) -> Verdict {
    check_ip(input, compiled, ep, dir, (peer, None), proto, port)
}

/// Compiled and reference verdicts must agree for a peer (identity, address); returns the
/// verdict. The compiled side gets the datapath's step-3 identity from an LPM of the address
/// over the table's CIDR prefixes; the reference decides ipBlock by the address directly.
pub fn check_ip(
    input: &PolicyInput<'_>,
    compiled: &CompiledPolicy,
    ep: EndpointId,
    dir: Direction,
    peer: (Identity, Option<Ipv4Addr>),
    proto: u8,
    port: u16,
) -> Verdict {
    let (id, ip) = peer;
    let step3 = ip.map(|ip| input.identities.pod_cidr_lookup(ip).1);
    let c = evaluate(compiled, ep, dir, id, step3, proto, port);
    let r = reference_verdict(input, ep, dir, id, ip, proto, port);
    assert_eq!(
        (c.verdict, c.rule.as_ref().map(|r| r.index)),
        (r.verdict, r.rule.as_ref().map(|r| r.index)),
        "ep {ep} {dir} peer {id} ({ip:?}) proto {proto} port {port}: compiled {c:?} vs reference {r:?}"
    );
    c.verdict
}
