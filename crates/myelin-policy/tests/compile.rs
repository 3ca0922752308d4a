#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::*;
use myelin_policy::*;
use Direction::{Egress, Ingress};
use Verdict::{Allow, Deny};

fn cnp(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n")
}

struct World {
    c: Cluster,
    policies: Vec<Policy>,
    table: IdentityTable,
}

impl World {
    fn new(c: Cluster, yaml: &str) -> Self {
        let mut c = c;
        let policies = parse(yaml);
        c.cidrs_for(&policies);
        let table = c.table();
        World { c, policies, table }
    }
    fn input(&self) -> PolicyInput<'_> {
        PolicyInput { policies: &self.policies, endpoints: &self.c.endpoints, identities: &self.table }
    }
}

#[test]
fn deny_precedence_l3_allow_plus_port_deny() {
    let mut c = Cluster::new();
    let web = c.pod(1, "default", &[("app", "web")], &[]);
    let fe = c.pod(2, "default", &[("app", "fe")], &[]);
    let other = c.pod(3, "default", &[("app", "other")], &[]);
    let w = World::new(
        c,
        &cnp(
            "default",
            "p",
            "  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: fe}}]\n  ingressDeny:\n    - toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n",
        ),
    );
    let input = w.input();
    let comp = compile(&input);
    let v = |peer, proto, port| check(&input, &comp, 1, Ingress, peer, proto, port);
    assert_eq!(v(fe, TCP, 81), Allow);
    assert_eq!(v(fe, TCP, 80), Deny);
    assert_eq!(v(fe, ICMP, 8), Allow);
    assert_eq!(v(fe, UDP, 80), Allow);
    assert_eq!(v(other, TCP, 81), Deny);
    assert_eq!(v(other, TCP, 80), Deny);
    // Egress is not enforced.
    assert_eq!(check(&input, &comp, 1, Egress, other, TCP, 80), Allow);
    // X:80 is an explicit deny entry for fe: the wildcard deny was folded in.
    let entries = &comp.endpoints[&1].ingress.entries;
    assert!(entries.iter().any(|e| e.identity == fe
        && e.protocol == TCP
        && e.port == 80
        && e.port_prefix_len == 16
        && e.verdict == Deny));
    assert_eq!(entries.len(), 3, "{entries:#?}");
    let _ = web;
}

#[test]
fn specific_allow_does_not_hide_wildcard_allow() {
    let mut c = Cluster::new();
    c.pod(1, "default", &[("app", "web")], &[]);
    let x = c.pod(2, "default", &[("app", "x")], &[]);
    let w = World::new(
        c,
        &cnp(
            "default",
            "p",
            "  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: x}}]\n      toPorts: [{ports: [{port: \"81\", protocol: TCP}]}]\n    - toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n",
        ),
    );
    let input = w.input();
    let comp = compile(&input);
    let v = |peer, port| check(&input, &comp, 1, Ingress, peer, TCP, port);
    assert_eq!(v(x, 80), Allow);
    assert_eq!(v(x, 81), Allow);
    assert_eq!(v(x, 82), Deny);
    assert_eq!(v(2, 80), Allow);
    assert_eq!(v(2, 81), Deny);
}

#[test]
fn endport_ranges_and_icmp() {
    let mut c = Cluster::new();
    c.pod(1, "default", &[("app", "web")], &[]);
    let x = c.pod(2, "default", &[("app", "x")], &[]);
    let w = World::new(
        c,
        &cnp(
            "default",
            "p",
            "  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n    - toPorts: [{ports: [{port: \"8000\", endPort: 8099, protocol: TCP}]}]\n    - icmps: [{fields: [{type: 8}]}]\n",
        ),
    );
    let input = w.input();
    let comp = compile(&input);
    for port in [7999u16, 8000, 8001, 8050, 8063, 8064, 8099, 8100] {
        let want = if (8000..=8099).contains(&port) { Allow } else { Deny };
        assert_eq!(check(&input, &comp, 1, Ingress, x, TCP, port), want, "port {port}");
    }
    assert_eq!(check(&input, &comp, 1, Ingress, x, UDP, 8000), Deny);
    assert_eq!(check(&input, &comp, 1, Ingress, x, ICMP, 8), Allow);
    assert_eq!(check(&input, &comp, 1, Ingress, x, ICMP, 0), Deny);
    let blocks = port_range_blocks(8000, 8099).len();
    assert_eq!(comp.endpoints[&1].ingress.entries.len(), blocks + 1);
}

#[test]
fn named_ports_resolve_per_destination() {
    let mut c = Cluster::new();
    let web = c.pod(1, "default", &[("app", "web")], &[("http", Protocol::Tcp, 8080)]);
    let api = c.pod(2, "default", &[("app", "api")], &[("http", Protocol::Tcp, 9090)]);
    let api2 = c.pod(3, "default", &[("app", "api")], &[("http", Protocol::Tcp, 9091)]);
    let db = c.pod(4, "default", &[("app", "db")], &[("sql", Protocol::Tcp, 5432)]);
    assert_eq!(api, api2);
    let w = World::new(
        c,
        &(cnp(
            "default",
            "in",
            "  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n    - toPorts: [{ports: [{port: http}]}]\n",
        ) + &cnp(
            "default",
            "out",
            "  endpointSelector: {matchLabels: {app: web}}\n  egress:\n    - toPorts: [{ports: [{port: http, protocol: TCP}]}]\n",
        )),
    );
    let input = w.input();
    let comp = compile(&input);
    assert_eq!(check(&input, &comp, 1, Ingress, api, TCP, 8080), Allow);
    assert_eq!(check(&input, &comp, 1, Ingress, api, TCP, 9090), Deny);
    // Egress: resolved against each peer's own ports (both api pods share an identity).
    assert_eq!(check(&input, &comp, 1, Egress, api, TCP, 9090), Allow);
    assert_eq!(check(&input, &comp, 1, Egress, api, TCP, 9091), Allow);
    assert_eq!(check(&input, &comp, 1, Egress, api, TCP, 8080), Deny);
    assert_eq!(check(&input, &comp, 1, Egress, web, TCP, 8080), Allow);
    assert_eq!(check(&input, &comp, 1, Egress, db, TCP, 9090), Deny);
    assert_eq!(check(&input, &comp, 1, Egress, db, TCP, 5432), Deny);
}

#[test]
fn knp_peers_and_vs_or_and_ipblock_except() {
    let mut c = Cluster::new();
    c.namespace("shop", &[]);
    c.namespace("team-a", &[("team", "a")]);
    c.namespace("team-b", &[("team", "b")]);
    c.pod(1, "shop", &[("app", "api")], &[("http", Protocol::Tcp, 8080)]);
    let shop_fe = c.pod(2, "shop", &[("role", "frontend")], &[]);
    let a_fe = c.pod(3, "team-a", &[("role", "frontend")], &[]);
    let a_be = c.pod(4, "team-a", &[("role", "backend")], &[]);
    let b_fe = c.pod(5, "team-b", &[("role", "frontend")], &[]);
    let knp = |name: &str, from: &str| {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n    - from:\n{from}---\n")
    };
    // AND: one peer with both selectors.
    let and = knp("and", "        - namespaceSelector: {matchLabels: {team: a}}\n          podSelector: {matchLabels: {role: frontend}}\n");
    let w = World::new(Cluster { ..clone_cluster(&c) }, &and);
    let input = w.input();
    let comp = compile(&input);
    let v = |input: &PolicyInput<'_>, comp: &CompiledPolicy, peer| check(input, comp, 1, Ingress, peer, TCP, 80);
    assert_eq!([shop_fe, a_fe, a_be, b_fe].map(|p| v(&input, &comp, p)), [Deny, Allow, Deny, Deny]);
    // OR: two peers.
    let or = knp("or", "        - namespaceSelector: {matchLabels: {team: a}}\n        - podSelector: {matchLabels: {role: frontend}}\n");
    let w = World::new(clone_cluster(&c), &or);
    let input = w.input();
    let comp = compile(&input);
    assert_eq!([shop_fe, a_fe, a_be, b_fe].map(|p| v(&input, &comp, p)), [Allow, Allow, Allow, Deny]);
    // namespaceSelector {} = all pods of all namespaces, but not the host or the world.
    let all_ns = knp("allns", "        - namespaceSelector: {}\n");
    let w = World::new(clone_cluster(&c), &all_ns);
    let input = w.input();
    let comp = compile(&input);
    assert_eq!([shop_fe, b_fe, 1, 2].map(|p| v(&input, &comp, p)), [Allow, Allow, Deny, Deny]);
    // ipBlock with except.
    let ip = knp("ip", "        - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}\n");
    let mut c2 = clone_cluster(&c);
    let policies = parse(&ip);
    c2.cidrs_for(&policies);
    let outside = c2.cidr("10.0.0.0/8");
    let w = World { table: c2.table(), c: c2, policies };
    let input = w.input();
    let comp = compile(&input);
    let big = w.c.cidrs.lookup("172.17.0.0/16".parse().unwrap()).unwrap();
    let exc = w.c.cidrs.lookup("172.17.1.0/24".parse().unwrap()).unwrap();
    assert_eq!([big, exc, outside, 2].map(|p| v(&input, &comp, p)), [Allow, Deny, Deny, Deny]);
    // And through the ipcache: 172.17.1.5 resolves to the except prefix's identity.
    let ipc = IpCache::build(&[], &[], &[], &w.c.cidrs);
    assert_eq!(ipc.lookup("172.17.1.5".parse().unwrap()), exc);
    assert_eq!(ipc.lookup("172.17.2.5".parse().unwrap()), big);
}

fn clone_cluster(c: &Cluster) -> Cluster {
    Cluster {
        alloc: c.alloc.clone(),
        cidrs: c.cidrs.clone(),
        endpoints: c.endpoints.clone(),
        ns_labels: c.ns_labels.clone(),
    }
}

#[test]
fn knp_empty_rules_deny_all_and_empty_peer_allows_all() {
    let mut c = Cluster::new();
    c.pod(1, "shop", &[("app", "api")], &[]);
    let x = c.pod(2, "shop", &[("app", "x")], &[]);
    let deny_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: []\n  egress: []\n";
    let w = World::new(clone_cluster(&c), deny_all);
    let input = w.input();
    let comp = compile(&input);
    assert_eq!(check(&input, &comp, 1, Ingress, x, TCP, 80), Deny);
    assert_eq!(check(&input, &comp, 1, Egress, 2, UDP, 53), Deny);
    assert!(comp.endpoints[&1].ingress.entries.is_empty());
    let allow_all = format!("{deny_all}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a, namespace: shop}}\nspec:\n  podSelector: {{}}\n  ingress: [{{}}]\n");
    let w = World::new(c, &allow_all);
    let input = w.input();
    let comp = compile(&input);
    assert_eq!(check(&input, &comp, 1, Ingress, 2, TCP, 80), Allow);
    assert_eq!(check(&input, &comp, 1, Ingress, x, ICMP, 8), Allow);
    assert_eq!(check(&input, &comp, 1, Egress, x, TCP, 80), Deny);
}

#[test]
fn entities_map_to_identities() {
    let mut c = Cluster::new();
    c.pod(1, "default", &[("app", "web")], &[]);
    let pod = c.pod(2, "default", &[("app", "x")], &[]);
    let cidr = c.cidr("8.8.8.0/24");
    let w = World::new(
        c,
        &cnp(
            "default",
            "p",
            "  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n    - fromEntities: [cluster]\n      toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n    - fromEntities: [world]\n      toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n    - fromEntities: [host, remote-node]\n  egress:\n    - toEntities: [all]\n      toPorts: [{ports: [{port: \"53\", protocol: UDP}]}]\n",
        ),
    );
    let input = w.input();
    let comp = compile(&input);
    let v = |peer, port| check(&input, &comp, 1, Ingress, peer, TCP, port);
    assert_eq!([pod, 1, 6, 4, 2, cidr].map(|p| v(p, 80)), [Allow, Allow, Allow, Allow, Deny, Deny]);
    assert_eq!([pod, 1, 6, 2, 9, cidr].map(|p| v(p, 443)), [Deny, Allow, Allow, Allow, Allow, Allow]);
    assert_eq!(v(1, 22), Allow);
    assert_eq!(v(2, 22), Deny);
    // `all` compiles to the wildcard identity.
    assert!(comp.endpoints[&1].egress.entries.iter().all(|e| e.identity == 0));
    assert_eq!(check(&input, &comp, 1, Egress, 123_456, UDP, 53), Allow);
    assert_eq!(check(&input, &comp, 1, Egress, 2, UDP, 54), Deny);
}

#[test]
fn default_deny_on_and_off() {
    let mut c = Cluster::new();
    c.pod(1, "default", &[("app", "web")], &[]);
    c.pod(2, "default", &[("app", "other")], &[]);
    let x = c.pod(3, "default", &[("app", "x")], &[]);
    let yaml = cnp(
        "default",
        "audit",
        "  endpointSelector: {matchLabels: {app: web}}\n  enableDefaultDeny: {ingress: false}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: x}}]\n  ingressDeny:\n    - toPorts: [{ports: [{port: \"23\", protocol: TCP}]}]\n",
    ) + &cnp("default", "cilium-empty-rule", "  endpointSelector: {matchLabels: {app: other}}\n  ingress:\n    - {}\n");
    let w = World::new(c, &yaml);
    let input = w.input();
    let comp = compile(&input);
    // Not enforced: anything not denied is allowed.
    assert!(!comp.endpoints[&1].ingress.enforced);
    assert_eq!(check(&input, &comp, 1, Ingress, 2, TCP, 80), Allow);
    assert_eq!(check(&input, &comp, 1, Ingress, x, TCP, 23), Deny);
    // Cilium's `ingress: [{}]` selects no peer: default deny.
    assert!(comp.endpoints[&2].ingress.enforced);
    assert_eq!(check(&input, &comp, 2, Ingress, x, TCP, 80), Deny);
    // Not selected at all: no entry, not enforced.
    assert!(!comp.endpoints.contains_key(&3));
    assert_eq!(check(&input, &comp, 3, Ingress, 2, TCP, 80), Allow);
}

#[test]
fn testdata_compiles_and_explains() {
    let read = |n: &str| std::fs::read_to_string(format!("{}/testdata/{n}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (a, b, k) = (read("cnp-web.yaml"), read("ccnp-baseline.yaml"), read("knp-db.yaml"));
    let policies = parse_files(&[("cnp-web.yaml", &a), ("ccnp-baseline.yaml", &b), ("knp-db.yaml", &k)])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c = Cluster::new();
    c.namespace("monitoring", &[]);
    let web = c.pod(1, "shop", &[("app", "web")], &[("metrics", Protocol::Tcp, 9090)]);
    let fe = c.pod(2, "shop", &[("app", "frontend")], &[]);
    let prom = c.pod(3, "monitoring", &[("app", "prometheus")], &[]);
    let db = c.pod(4, "shop", &[("app", "db")], &[]);
    c.cidrs_for(&policies);
    let table = c.table();
    let input = PolicyInput { policies: &policies, endpoints: &c.endpoints, identities: &table };
    let comp = compile(&input);
    assert_eq!(check(&input, &comp, 1, Ingress, fe, TCP, 80), Allow);
    assert_eq!(check(&input, &comp, 1, Ingress, fe, TCP, 8443), Deny);
    assert_eq!(check(&input, &comp, 1, Ingress, prom, TCP, 9090), Allow);
    assert_eq!(check(&input, &comp, 1, Ingress, prom, TCP, 80), Deny);
    assert_eq!(check(&input, &comp, 1, Egress, db, TCP, 5432), Allow);
    assert_eq!(check(&input, &comp, 1, Egress, db, UDP, 5432), Allow);
    assert_eq!(check(&input, &comp, 1, Egress, 7, TCP, 443), Allow);
    assert_eq!(check(&input, &comp, 1, Egress, 2, ICMP, 8), Allow);
    let meta = c.cidr("169.254.169.254/32");
    let table = c.table();
    let input = PolicyInput { policies: &policies, endpoints: &c.endpoints, identities: &table };
    let comp = compile(&input);
    assert_eq!(check(&input, &comp, 4, Egress, meta, TCP, 80), Deny);
    let _ = web;

    let ipc =
        IpCache::build(&[("10.0.1.1".parse().unwrap(), web), ("10.0.1.2".parse().unwrap(), fe)], &[], &[], &c.cidrs);
    let e = explain(&input, &ipc, FlowPeer::Ip("10.0.1.2".parse().unwrap()), FlowPeer::Endpoint(1), TCP, 8443);
    assert_eq!((e.egress_verdict, e.ingress_verdict, e.final_verdict), (Allow, Deny, Deny));
    let text = e.to_string();
    assert!(text.contains("ingress of endpoint 1: deny by CiliumNetworkPolicy shop/web spec.ingressDeny[0]"), "{text}");
    assert!(text.contains("final verdict: deny"), "{text}");
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["final_verdict"], "deny");
    let e = explain(&input, &ipc, FlowPeer::Endpoint(2), FlowPeer::Ip("10.0.1.1".parse().unwrap()), TCP, 80);
    assert_eq!(e.final_verdict, Allow, "{e}");
    assert_eq!(e.ingress.as_ref().unwrap().result.matched.len(), 1, "{e}");
}

#[test]
fn compiles_ten_thousand_rules() {
    let mut c = Cluster::new();
    c.pod(1, "default", &[("app", "web")], &[]);
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(c.pod(100 + i, "default", &[("app", &format!("c{i}"))], &[]));
    }
    let mut yaml = String::new();
    for p in 0..100 {
        let mut spec = String::from("  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n");
        for r in 0..100 {
            let n = p * 100 + r;
            spec += &format!(
                "    - fromEndpoints: [{{matchLabels: {{app: c{}}}}}]\n      toPorts: [{{ports: [{{port: \"{}\", endPort: {}, protocol: TCP}}]}}]\n",
                n % 500,
                1000 + n,
                1000 + n + (n % 7)
            );
        }
        if p % 10 == 0 {
            spec += &format!(
                "  ingressDeny:\n    - toPorts: [{{ports: [{{port: \"{}\", protocol: TCP}}]}}]\n",
                1000 + p * 100 + 3
            );
        }
        yaml += &cnp("default", &format!("p{p}"), &spec);
    }
    let w = World::new(c, &yaml);
    let input = w.input();
    let start = std::time::Instant::now();
    let comp = compile(&input);
    let took = start.elapsed();
    let n = comp.endpoints[&1].ingress.entries.len();
    assert!(n < 100_000, "{n} entries");
    for (i, id) in ids.iter().enumerate().take(20) {
        for port in [1000 + i as u16, 1003, 1503, 9999] {
            check(&input, &comp, 1, Ingress, *id, TCP, port);
        }
    }
    eprintln!("10k rules: {n} entries in {took:?}");
}
