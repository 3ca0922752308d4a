//! Property tests: the compiled map, looked up the datapath's way, equals the reference
//! evaluator for random policies, peers (pods with addresses among them) and ports; port range
//! expansion is exact and minimal.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::*;
use myelin_policy::*;
use proptest::prelude::*;

/// Small deterministic generator driven by a proptest seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const PORTS: [i64; 9] = [1, 79, 80, 81, 82, 443, 1024, 8080, 65535];

fn selector(r: &mut Rng) -> LabelSelector {
    let mut s = LabelSelector::default();
    if r.chance(60) {
        s.match_labels.insert("app".into(), (*r.pick(&["a", "b", "c"])).into());
    }
    if r.chance(30) {
        let op = *r.pick(&[Operator::In, Operator::NotIn, Operator::Exists, Operator::DoesNotExist]);
        let values = match op {
            Operator::In | Operator::NotIn => vec![(*r.pick(&["x", "y"])).to_owned()],
            _ => vec![],
        };
        s.match_expressions.push(Requirement { key: "tier".into(), operator: op, values });
    }
    if r.chance(20) {
        s.match_labels.insert("io.kubernetes.pod.namespace".into(), (*r.pick(&["ns1", "ns2"])).into());
    }
    s
}

/// Pod addresses of the generated clusters: inside and outside the generated blocks and excepts.
const POD_IPS: [&str; 8] =
    ["10.1.2.3", "10.1.2.4", "10.1.3.9", "10.2.0.5", "192.168.0.7", "172.16.0.1", "10.1.2.200", "8.8.4.4"];

fn cidr_peer(r: &mut Rng) -> PeerKind {
    let (cidr, except): (&str, &[&str]) = *r.pick(&[
        ("10.0.0.0/8", &["10.1.0.0/16"][..]),
        ("10.0.0.0/8", &[][..]),
        ("10.1.0.0/16", &[][..]),
        ("0.0.0.0/0", &["10.0.0.0/8"][..]),
        ("192.168.0.0/24", &[][..]),
        // Blocks around the pods' addresses.
        ("10.1.2.3/32", &[][..]),
        ("10.1.2.0/24", &["10.1.2.4/32"][..]),
        ("10.0.0.0/8", &["10.1.2.0/24", "10.2.0.5/32"][..]),
        ("0.0.0.0/0", &["10.1.2.3/32"][..]),
        ("0.0.0.0/0", &[][..]),
        ("10.1.2.0/25", &["10.1.2.3/32"][..]),
    ]);
    PeerKind::Cidr { cidr: cidr.parse().unwrap(), except: except.iter().map(|e| e.parse().unwrap()).collect() }
}

fn peer(r: &mut Rng) -> PeerKind {
    match r.below(3) {
        0 => PeerKind::Selector(std::sync::Arc::new(selector(r))),
        1 => cidr_peer(r),
        _ => PeerKind::Entity(*r.pick(&Entity::ALL)),
    }
}

/// A NetworkPolicy peer: a selector or an ipBlock (which selects pods by address too).
fn knp_peer(r: &mut Rng) -> PeerKind {
    if r.chance(35) {
        PeerKind::Selector(std::sync::Arc::new(selector(r)))
    } else {
        cidr_peer(r)
    }
}

fn port_match(r: &mut Rng) -> PortMatch {
    let protocol = *r.pick(&[Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Any, Protocol::Icmp]);
    let (port, end_port) = if protocol == Protocol::Icmp {
        (PortSpec::Number(*r.pick(&[0, 8, 80])), None)
    } else {
        match r.below(5) {
            0 => (PortSpec::All, None),
            1 => (PortSpec::Named((*r.pick(&["http", "dns"])).into()), None),
            2 => {
                let p = *r.pick(&PORTS);
                (PortSpec::Number(p), Some((p + r.below(600) as i64).min(65535)))
            }
            _ => (PortSpec::Number(*r.pick(&PORTS)), None),
        }
    };
    PortMatch { path: "p".into(), protocol, port, end_port }
}

/// Clusterwide Cilium policies (deny rules, entities, CIDRs selecting no pod) mixed with
/// Kubernetes NetworkPolicies (allow rules, selectors and ipBlocks selecting pods by address).
fn random_policies(r: &mut Rng) -> Vec<Policy> {
    let n = 1 + r.below(4);
    (0..n)
        .map(|i| {
            let knp = r.chance(40);
            let specs = (0..if knp { 1 } else { 1 + r.below(2) })
                .map(|si| PolicySpec {
                    path: format!("specs[{si}]"),
                    subject: selector(r),
                    enforce_ingress: r.chance(70),
                    enforce_egress: r.chance(50),
                    rules: (0..r.below(6))
                        .map(|ri| PolicyRule {
                            direction: if r.chance(50) { Direction::Ingress } else { Direction::Egress },
                            verdict: if !knp && r.chance(30) { Verdict::Deny } else { Verdict::Allow },
                            section: format!("rule[{ri}]"),
                            peers: if r.chance(25) {
                                None
                            } else {
                                Some(
                                    (0..r.below(3))
                                        .map(|_| Peer {
                                            path: "peer".into(),
                                            kind: if knp { knp_peer(r) } else { peer(r) },
                                        })
                                        .collect(),
                                )
                            },
                            ports: if r.chance(30) {
                                None
                            } else {
                                Some((0..1 + r.below(3)).map(|_| port_match(r)).collect())
                            },
                            l7: vec![],
                        })
                        .collect(),
                })
                .collect();
            Policy {
                kind: if knp { PolicyKind::NetworkPolicy } else { PolicyKind::CiliumClusterwideNetworkPolicy },
                name: format!("p{i}"),
                namespace: knp.then(|| "ns1".to_owned()),
                file: "gen".into(),
                document: i as usize + 1,
                specs,
                warnings: vec![],
            }
        })
        .collect()
}

/// Six pods over a few label sets (so pods often share an identity), most with distinct
/// addresses from [`POD_IPS`].
fn cluster(r: &mut Rng) -> Cluster {
    let mut c = Cluster::new();
    let mut ips: Vec<&str> = POD_IPS.to_vec();
    for i in 0..6u64 {
        let ns = *r.pick(&["ns1", "ns2"]);
        let mut labels = vec![("app", *r.pick(&["a", "b", "c"]))];
        if r.chance(50) {
            labels.push(("tier", *r.pick(&["x", "y"])));
        }
        let mut ports = vec![];
        if r.chance(60) {
            ports.push(("http", Protocol::Tcp, *r.pick(&[80u16, 81, 8080])));
        }
        if r.chance(40) {
            ports.push(("dns", Protocol::Udp, 53u16));
        }
        c.pod(i + 1, ns, &labels, &ports);
        if r.chance(90) {
            let ip = ips.remove(r.below(ips.len() as u64) as usize);
            c.endpoints.last_mut().unwrap().ipv4 = Some(ip.parse().unwrap());
        }
    }
    for p in ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24", "10.1.2.0/24"] {
        c.cidr(p);
    }
    c
}

/// Every peer to check: each identity the table knows (no address), each pod (identity and
/// address), and pods of other nodes (a known workload identity at an address no local pod has).
fn peers(c: &Cluster, table: &IdentityTable) -> Vec<(Identity, Option<std::net::Ipv4Addr>)> {
    let mut out: Vec<(Identity, Option<std::net::Ipv4Addr>)> =
        table.all_ids().into_iter().map(|id| (id, None)).collect();
    out.push((99_999, None));
    out.push((0, None));
    for e in &c.endpoints {
        out.push((e.identity, e.ipv4));
    }
    let local: Vec<_> = c.endpoints.iter().filter_map(|e| e.ipv4).collect();
    let workloads: Vec<Identity> = table.workloads.keys().copied().collect();
    for (i, ip) in POD_IPS.iter().chain(["10.1.2.77", "10.200.0.1"].iter()).enumerate() {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        if !local.contains(&ip) {
            out.push((workloads[i % workloads.len()], Some(ip)));
        }
    }
    // An address given with a non-pod identity changes nothing.
    out.push((ReservedIdentity::Host.id(), Some("10.1.2.3".parse().unwrap())));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    /// The three-step lookup of the compiled map (the third with the pod-in-CIDR identity of a
    /// pod peer's address, found by LPM over the CIDR prefixes) equals the reference, which
    /// decides NetworkPolicy ipBlocks for pods by address — with pods sharing identities.
    fn compiled_lookup_equals_reference(seed in 1u64..u64::MAX) {
        let mut r = Rng(seed);
        let mut c = cluster(&mut r);
        let policies = random_policies(&mut r);
        for p in &policies {
            prop_assert!(p.validate().is_ok(), "{:?}", p.validate());
        }
        c.cidrs_for(&policies);
        let table = c.table();
        let input = PolicyInput { policies: &policies, endpoints: &c.endpoints, identities: &table };
        let compiled = compile(&input);
        let peers = peers(&c, &table);
        let mut ports: Vec<u16> = vec![0, 8, 53, 78, 83, 300, 444, 1023, 1025, 1100, 8079, 8081, 65534, 65535];
        ports.extend(PORTS.iter().map(|p| *p as u16));
        for ep in &c.endpoints {
            for dir in [Direction::Ingress, Direction::Egress] {
                for &peer in &peers {
                    for proto in [1u8, 6, 17, 132, 47] {
                        for &port in &ports {
                            check_ip(&input, &compiled, ep.id, dir, peer, proto, port);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn port_range_blocks_cover_exactly(lo in 0u16..=65535, len in 0u32..70_000) {
        let hi = (u32::from(lo) + len).min(65535) as u16;
        let blocks = port_range_blocks(lo, hi);
        prop_assert!(blocks.len() <= 32);
        let mut next = u32::from(lo);
        for (start, plen) in &blocks {
            let size = 1u32 << (16 - u32::from(*plen));
            prop_assert_eq!(u32::from(*start), next, "blocks must be contiguous and ordered");
            prop_assert_eq!(u32::from(*start) % size, 0, "block must be aligned");
            next += size;
        }
        prop_assert_eq!(next, u32::from(hi) + 1);
        // Minimality: no two neighbours could merge into one aligned block.
        for w in blocks.windows(2) {
            let (a, pa) = w[0];
            let (_, pb) = w[1];
            let size = 1u32 << (16 - u32::from(pa));
            prop_assert!(!(pa == pb && u32::from(a) % (2 * size) == 0), "{:?} not minimal", blocks);
        }
    }
}

/// `compiled` restricted to the endpoints `keep` says yes to.
fn restricted(compiled: &CompiledPolicy, keep: impl Fn(EndpointId) -> bool) -> CompiledPolicy {
    CompiledPolicy {
        endpoints: compiled.endpoints.iter().filter(|(id, _)| keep(**id)).map(|(id, p)| (*id, p.clone())).collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Compiling a subset of the endpoints equals the full compile restricted to that subset
    /// (named ports of egress rules still resolve against every endpoint).
    #[test]
    fn compile_for_a_subset_equals_full_compile_restricted(seed in 1u64..u64::MAX) {
        let mut r = Rng(seed);
        let c = cluster(&mut r);
        let policies = random_policies(&mut r);
        let table = c.table();
        let input = PolicyInput { policies: &policies, endpoints: &c.endpoints, identities: &table };
        let full = compile(&input);
        let subset: std::collections::BTreeSet<EndpointId> =
            c.endpoints.iter().map(|e| e.id).filter(|_| r.chance(40)).collect();
        let part = compile_for(&input, &subset);
        prop_assert_eq!(part, restricted(&full, |id| subset.contains(&id)));
        prop_assert_eq!(compile_for(&input, &c.endpoints.iter().map(|e| e.id).collect()), full);
    }

    /// What the agent's incremental sync relies on: when an endpoint without named ports joins,
    /// leaves or moves to an identity that exists already (the identity set is unchanged), no
    /// other endpoint's compiled policy changes.
    #[test]
    fn membership_changes_within_existing_identities_touch_only_that_endpoint(seed in 1u64..u64::MAX) {
        let mut r = Rng(seed);
        let mut c = cluster(&mut r);
        let policies = random_policies(&mut r);
        let n = c.endpoints.len();
        let moved = r.below(n as u64) as usize;
        let model = r.below(n as u64) as usize;
        c.endpoints[moved].named_ports.clear();
        let table = c.table();
        let before = compile(&PolicyInput { policies: &policies, endpoints: &c.endpoints, identities: &table });
        let moved_id = c.endpoints[moved].id;
        let others = |id: EndpointId| id != moved_id;

        // Relabelled to another endpoint's (existing) identity.
        let mut relabelled = c.endpoints.clone();
        relabelled[moved].labels = c.endpoints[model].labels.clone();
        relabelled[moved].namespace = c.endpoints[model].namespace.clone();
        relabelled[moved].identity = c.endpoints[model].identity;
        let after = compile(&PolicyInput { policies: &policies, endpoints: &relabelled, identities: &table });
        prop_assert_eq!(restricted(&after, others), restricted(&before, others));

        // Removed (its identity kept alive by a copy with another id).
        let mut removed = c.endpoints.clone();
        let mut twin = removed[moved].clone();
        twin.id = 1000;
        removed.remove(moved);
        removed.push(twin);
        let after = compile(&PolicyInput { policies: &policies, endpoints: &removed, identities: &table });
        prop_assert_eq!(
            restricted(&after, |id| others(id) && id != 1000),
            restricted(&before, others)
        );
    }
}
