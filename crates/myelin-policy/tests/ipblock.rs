//! Kubernetes NetworkPolicy `ipBlock` selects any address in the block, pod addresses included,
//! exactly per address; CiliumNetworkPolicy CIDR rules select no cluster endpoint.
//!
//! The first cases mirror the Kubernetes e2e suite (test/e2e/network/netpol/network_policy.go),
//! with its policies as it writes them, on a matrix of namespaces x, y, z and pods a, b, c. Every
//! verdict is checked twice: the compiled map looked up the datapath's way (three steps, the
//! third with the pod-in-CIDR identity of the peer's address) and the reference evaluator
//! (which decides ipBlock by the address directly) must agree.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use std::net::Ipv4Addr;

use common::*;
use myelin_policy::*;
use Direction::{Egress, Ingress};
use Verdict::{Allow, Deny};

/// The e2e matrix: x/a, x/b, x/c, y/a, ... with labels `pod: <name>`, endpoint ids 1..=9 and
/// addresses 10.244.0.11..=19 (x/a is .11, x/b .12, y/b .15, ...).
fn matrix() -> Cluster {
    let mut c = Cluster::new();
    let mut id = 0;
    for ns in ["x", "y", "z"] {
        c.namespace(ns, &[]);
        for pod in ["a", "b", "c"] {
            id += 1;
            c.pod_at(id, ns, &[("pod", pod)], &format!("10.244.0.{}", 10 + id));
        }
    }
    c
}

fn ep_id(name: &str) -> u64 {
    let (ns, pod) = name.split_once('/').unwrap();
    let n = ["x", "y", "z"].iter().position(|x| *x == ns).unwrap() * 3
        + ["a", "b", "c"].iter().position(|p| *p == pod).unwrap();
    n as u64 + 1
}

fn ip_of(name: &str) -> String {
    format!("10.244.0.{}", 10 + ep_id(name))
}

fn name_of(id: u64) -> String {
    let i = (id - 1) as usize;
    format!("{}/{}", ["x", "y", "z"][i / 3], ["a", "b", "c"][i % 3])
}

struct World {
    c: Cluster,
    policies: Vec<Policy>,
    table: IdentityTable,
}

impl World {
    /// Policies parsed from YAML; every prefix they name gets a CIDR identity (as the agent does).
    fn new(mut c: Cluster, yaml: &str) -> Self {
        let policies = parse(yaml);
        c.cidrs_for(&policies);
        let table = c.table();
        World { c, policies, table }
    }

    fn input(&self) -> PolicyInput<'_> {
        PolicyInput { policies: &self.policies, endpoints: &self.c.endpoints, identities: &self.table }
    }

    /// Whether `from` reaches `to` (endpoint ids) on proto/port: the sender's egress and the
    /// receiver's ingress both allow, compiled and reference agreeing on each.
    fn reach(&self, comp: &CompiledPolicy, from: u64, to: u64, proto: u8, port: u16) -> bool {
        let input = self.input();
        let egress = check_ip(&input, comp, from, Egress, self.c.peer(to), proto, port);
        let ingress = check_ip(&input, comp, to, Ingress, self.c.peer(from), proto, port);
        egress == Allow && ingress == Allow
    }

    /// Checks the whole matrix (loopback aside, as the e2e suite ignores it) on 80 and 81 over
    /// TCP and UDP against `expect(from, to)`.
    fn check_matrix(&self, case: &str, expect: impl Fn(&str, &str) -> bool) {
        let comp = compile(&self.input());
        let ids: Vec<u64> = self.c.endpoints.iter().map(|e| e.id).collect();
        let mut wrong = Vec::new();
        for &from in &ids {
            for &to in &ids {
                if from == to {
                    continue;
                }
                for (proto, port) in [(TCP, 80), (TCP, 81), (UDP, 80), (UDP, 81)] {
                    let got = self.reach(&comp, from, to, proto, port);
                    let want = expect(&name_of(from), &name_of(to));
                    if got != want {
                        wrong.push(format!(
                            "  {} -> {} {proto}/{port}: want {want}, got {got}",
                            name_of(from),
                            name_of(to)
                        ));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "case {case:?}:\n{}", wrong.join("\n"));
    }
}

/// `GenNetworkPolicyWithNameAndPodMatchLabel(name, {pod: a}, SetSpecEgressRules(rule))` in
/// namespace x, with one egress rule to one ipBlock.
fn e2e_egress_ipblock(name: &str, ip_block: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  \
         podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {ip_block}\n"
    )
}

/// The e2e suite's `makeLargeCIDRForIP`: the /4 holding the address.
fn large_cidr_for(ip: &str) -> String {
    let ip: Ipv4Addr = ip.parse().unwrap();
    format!("{}", ipnet::Ipv4Net::new(ip, 4).unwrap().trunc())
}

#[test]
fn e2e_should_allow_egress_access_to_server_in_cidr_block() {
    let yaml = e2e_egress_ipblock("allow-client-a-via-cidr-egress-rule", &format!("{{cidr: {}/32}}", ip_of("y/b")));
    let w = World::new(matrix(), &yaml);
    w.check_matrix("egress from x/a only to y/b's /32", |from, to| from != "x/a" || to == "y/b");
}

#[test]
fn e2e_should_enforce_except_clause_while_egress_access_to_server_in_cidr_block() {
    let cidr = large_cidr_for(&ip_of("x/b"));
    assert_eq!(cidr, "0.0.0.0/4");
    let yaml = e2e_egress_ipblock(
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{cidr: {cidr}, except: [{}/32]}}", ip_of("x/b")),
    );
    let w = World::new(matrix(), &yaml);
    w.check_matrix("x/a reaches every pod in the /4 but x/b", |from, to| !(from == "x/a" && to == "x/b"));
}

#[test]
fn e2e_should_ensure_an_ip_overlapping_both_ipblock_cidr_and_ipblock_except_is_allowed() {
    let name = "allow-client-a-via-cidr-egress-rule";
    let first = e2e_egress_ipblock(
        name,
        &format!("{{cidr: {}, except: [{}/32]}}", large_cidr_for(&ip_of("x/b")), ip_of("x/b")),
    );
    let w = World::new(matrix(), &first);
    w.check_matrix("first policy: all but x/b", |from, to| !(from == "x/a" && to == "x/b"));
    // The suite then updates the policy of the same name to x/b's /32.
    let second = e2e_egress_ipblock(name, &format!("{{cidr: {}/32}}", ip_of("x/b")));
    let w = World::new(matrix(), &second);
    w.check_matrix("updated: x/a reaches x/b only", |from, to| from != "x/a" || to == "x/b");
    // And the overlap as two policies side by side: the union allows the excepted address.
    let both = first + "---\n" + &e2e_egress_ipblock("allow-xb", &format!("{{cidr: {}/32}}", ip_of("x/b")));
    let w = World::new(matrix(), &both);
    w.check_matrix("union: x/b is in one block's except and the other's cidr", |_, _| true);
}

#[test]
fn zero_slash_zero_except_one_pod_allows_every_other_pod() {
    let yaml = e2e_egress_ipblock("p", &format!("{{cidr: 0.0.0.0/0, except: [{}/32]}}", ip_of("y/c")));
    let w = World::new(matrix(), &yaml);
    w.check_matrix("0.0.0.0/0 except y/c", |from, to| !(from == "x/a" && to == "y/c"));
    // The pods outside every policy prefix take step 3 with pod_in_cidr(world).
    let (prefix, id) = w.table.pod_cidr_lookup(ip_of("z/a").parse().unwrap());
    assert_eq!((prefix.to_string(), id), ("0.0.0.0/0".to_owned(), pod_in_cidr(ReservedIdentity::World.id())));
}

#[test]
fn twins_sharing_an_identity_are_told_apart_by_address() {
    let mut c = matrix();
    let twin1 = c.pod_at(20, "x", &[("pod", "twin")], "10.244.1.1");
    let twin2 = c.pod_at(21, "x", &[("pod", "twin")], "10.244.1.2");
    assert_eq!(twin1, twin2, "same labels, same identity");
    let xa = ep_id("x/a");
    // Egress to twin1's /32 only.
    let w = World::new(clone(&c), &e2e_egress_ipblock("p", "{cidr: 10.244.1.1/32}"));
    let comp = compile(&w.input());
    assert!(w.reach(&comp, xa, 20, TCP, 80));
    assert!(!w.reach(&comp, xa, 21, TCP, 80));
    assert!(!w.reach(&comp, xa, ep_id("y/b"), TCP, 80));
    // No entry names the twins' identity: the block's CIDR identity (addresses outside pods)
    // and the pseudo-identity of twin1's /32 (pods at that address).
    let c1 = w.table.pod_cidr_lookup("10.244.1.1".parse().unwrap()).1;
    let mut ids: Vec<Identity> = comp.endpoints[&xa].egress.entries.iter().map(|e| e.identity).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![pod_in_cidr_base(c1).unwrap(), c1]);
    assert_eq!(pod_in_cidr_base(c1), w.c.cidrs.lookup("10.244.1.1/32".parse().unwrap()));

    // A block holding both, except twin2.
    let w = World::new(clone(&c), &e2e_egress_ipblock("p", "{cidr: 10.244.1.0/24, except: [10.244.1.2/32]}"));
    let comp = compile(&w.input());
    assert!(w.reach(&comp, xa, 20, TCP, 80));
    assert!(!w.reach(&comp, xa, 21, TCP, 80));

    // Ingress: from twin2's address only.
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: in, namespace: x}\nspec:\n  \
                podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.244.1.2/32}}]\n    \
                ports: [{port: 80}]\n";
    let w = World::new(c, yaml);
    let comp = compile(&w.input());
    assert!(!w.reach(&comp, 20, xa, TCP, 80));
    assert!(w.reach(&comp, 21, xa, TCP, 80));
    assert!(!w.reach(&comp, 21, xa, TCP, 81));
    assert!(!w.reach(&comp, ep_id("x/b"), xa, TCP, 80));
}

fn clone(c: &Cluster) -> Cluster {
    Cluster {
        alloc: c.alloc.clone(),
        cidrs: c.cidrs.clone(),
        endpoints: c.endpoints.clone(),
        ns_labels: c.ns_labels.clone(),
    }
}

fn cnp(name: &str, spec: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n{spec}---\n")
}

#[test]
fn cilium_cidr_rules_select_no_pod_even_inside_the_cidr() {
    let yb = ip_of("y/b");
    let cases = [
        ("toCIDR /32", format!("  egress:\n  - toCIDR: [{yb}/32]\n")),
        ("toCIDR /4", "  egress:\n  - toCIDR: [0.0.0.0/4]\n".to_owned()),
        ("toCIDRSet with except", format!("  egress:\n  - toCIDRSet: [{{cidr: 10.0.0.0/8, except: [{yb}/32]}}]\n")),
        ("toCIDRSet 0.0.0.0/0", "  egress:\n  - toCIDRSet: [{cidr: 0.0.0.0/0}]\n".to_owned()),
    ];
    for (case, spec) in cases {
        let w = World::new(matrix(), &cnp("p", &spec));
        w.check_matrix(case, |from, _| from != "x/a");
    }
    let cases = [
        ("fromCIDR /32", format!("  ingress:\n  - fromCIDR: [{yb}/32]\n")),
        (
            "fromCIDRSet with except",
            format!("  ingress:\n  - fromCIDRSet: [{{cidr: 10.0.0.0/8, except: [{}/32]}}]\n", ip_of("y/c")),
        ),
    ];
    for (case, spec) in cases {
        let w = World::new(matrix(), &cnp("p", &spec));
        w.check_matrix(case, |_, to| to != "x/a");
    }
    // A clusterwide policy too, and no pod-in-CIDR entry anywhere.
    let ccnp = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: c}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{pod: a}}}}\n  egress:\n  - toCIDR: [{yb}/32]\n"
    );
    let w = World::new(matrix(), &ccnp);
    w.check_matrix("CCNP toCIDR (selects pod a of every namespace)", |from, _| !from.ends_with("/a"));
    let comp = compile(&w.input());
    assert!(comp.endpoints.values().flat_map(|e| e.egress.entries.iter()).all(|e| !is_pod_in_cidr(e.identity)));
}

#[test]
fn cilium_cidr_deny_does_not_touch_pods_but_identity_deny_beats_ipblock() {
    let yb = ip_of("y/b");
    // A CNP CIDR deny of y/b's /32 selects no pod: the NetworkPolicy ipBlock allow stands.
    let yaml = e2e_egress_ipblock("k", &format!("{{cidr: {yb}/32}}"))
        + "---\n"
        + &cnp("d", &format!("  egressDeny:\n  - toCIDR: [{yb}/32]\n"));
    let w = World::new(matrix(), &yaml);
    w.check_matrix("CNP CIDR deny ignores pods", |from, to| from != "x/a" || to == "y/b");
    // A CNP deny by selector does select y/b: deny beats the ipBlock allow.
    let yaml = e2e_egress_ipblock("k", &format!("{{cidr: {yb}/32}}"))
        + "---\n"
        + &cnp(
            "d",
            "  egressDeny:\n  - toEndpoints: [{matchLabels: {pod: b, k8s:io.kubernetes.pod.namespace: 'y'}}]\n",
        );
    let w = World::new(matrix(), &yaml);
    w.check_matrix("identity deny beats ipBlock allow", |from, _| from != "x/a");
    let comp = compile(&w.input());
    let v = evaluate(
        &comp,
        ep_id("x/a"),
        Egress,
        w.c.peer(ep_id("y/b")).0,
        Some(w.table.pod_cidr_lookup(yb.parse().unwrap()).1),
        TCP,
        80,
    );
    assert_eq!(v.verdict, Deny);
    assert_eq!(v.rule.unwrap().policy, "x/d");
}

#[test]
fn identity_rule_is_reported_when_both_an_identity_rule_and_an_ipblock_allow() {
    let yb = ip_of("y/b");
    let yaml = e2e_egress_ipblock("k", &format!("{{cidr: {yb}/32}}"))
        + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: sel, namespace: x}\nspec:\n  \
           podSelector: {matchLabels: {pod: a}}\n  egress:\n  - to: [{namespaceSelector: {}}]\n    ports: [{port: 80}]\n";
    let w = World::new(matrix(), &yaml);
    let comp = compile(&w.input());
    let input = w.input();
    let xa = ep_id("x/a");
    // 80: both rules allow y/b; steps 1-2 decide by identity.
    check_ip(&input, &comp, xa, Egress, w.c.peer(ep_id("y/b")), TCP, 80);
    let r = reference_verdict(&input, xa, Egress, w.c.peer(ep_id("y/b")).0, w.c.peer(ep_id("y/b")).1, TCP, 80);
    assert_eq!(r.rule.as_ref().unwrap().policy, "x/sel");
    assert!(!r.decided_by_address());
    assert_eq!(r.matched.len(), 2, "{r:#?}");
    // 81: only the ipBlock allows: step 3.
    assert_eq!(check_ip(&input, &comp, xa, Egress, w.c.peer(ep_id("y/b")), TCP, 81), Allow);
    let r = reference_verdict(&input, xa, Egress, w.c.peer(ep_id("y/b")).0, w.c.peer(ep_id("y/b")).1, TCP, 81);
    assert_eq!(r.rule.as_ref().unwrap().policy, "x/k");
    assert!(r.decided_by_address());
    assert_eq!(check_ip(&input, &comp, xa, Egress, w.c.peer(ep_id("y/a")), TCP, 81), Deny);
}

#[test]
fn step_three_only_for_pods_and_only_when_steps_one_and_two_do_not_decide() {
    let yb = ip_of("y/b");
    let w = World::new(matrix(), &e2e_egress_ipblock("k", &format!("{{cidr: {yb}/32}}")));
    let comp = compile(&w.input());
    let xa = ep_id("x/a");
    let step3 = Some(w.table.pod_cidr_lookup(yb.parse().unwrap()).1);
    let yb_id = w.c.peer(ep_id("y/b")).0;
    assert_eq!(evaluate(&comp, xa, Egress, yb_id, step3, TCP, 80).verdict, Allow);
    assert_eq!(evaluate(&comp, xa, Egress, yb_id, None, TCP, 80).verdict, Deny);
    // A non-pod peer never takes step 3, whatever the caller passes.
    let host = ReservedIdentity::Host.id();
    assert_eq!(evaluate(&comp, xa, Egress, host, step3, TCP, 80).verdict, Deny);
    // The address outside any pod: the CIDR identity itself is allowed (the block's old meaning).
    let cidr_id = w.c.cidrs.lookup(format!("{yb}/32").parse().unwrap()).unwrap();
    assert_eq!(check(&w.input(), &comp, xa, Egress, cidr_id, TCP, 80), Allow);
}

#[test]
fn pod_cidr_prefixes_are_every_cidr_identity_plus_the_default() {
    let w = World::new(
        matrix(),
        &e2e_egress_ipblock("k", &format!("{{cidr: 10.244.0.0/16, except: [{}/32]}}", ip_of("x/b"))),
    );
    let lpm = w.table.pod_cidr_prefixes();
    let want: Vec<(String, Identity)> = vec![
        ("0.0.0.0/0".into(), pod_in_cidr(ReservedIdentity::World.id())),
        ("10.244.0.0/16".into(), pod_in_cidr(w.c.cidrs.lookup("10.244.0.0/16".parse().unwrap()).unwrap())),
        (
            format!("{}/32", ip_of("x/b")),
            pod_in_cidr(w.c.cidrs.lookup(format!("{}/32", ip_of("x/b")).parse().unwrap()).unwrap()),
        ),
    ];
    assert_eq!(lpm.iter().map(|(p, id)| (p.to_string(), *id)).collect::<Vec<_>>(), want);
    for id in lpm.values() {
        assert!(is_pod_in_cidr(*id) && !is_workload(*id) && !myelin_policy::identity::is_local_scope(*id));
        assert!(w.table.labels(*id).unwrap().iter().any(|(k, _)| k.starts_with("pod-in-cidr:")));
    }
    assert_eq!(w.table.pod_cidr_lookup(ip_of("x/b").parse().unwrap()).0.to_string(), format!("{}/32", ip_of("x/b")));
    assert_eq!(w.table.pod_cidr_lookup(ip_of("x/c").parse().unwrap()).0.to_string(), "10.244.0.0/16");
}

#[test]
fn explain_shows_step_three() {
    let yb = ip_of("y/b");
    let w =
        World::new(matrix(), &e2e_egress_ipblock("allow-client-a-via-cidr-egress-rule", &format!("{{cidr: {yb}/32}}")));
    let input = w.input();
    let pods: Vec<(Ipv4Addr, Identity)> = w.c.endpoints.iter().map(|e| (e.ipv4.unwrap(), e.identity)).collect();
    let ipc = IpCache::build(&pods, &[], &[], &w.c.cidrs);
    let xa = ep_id("x/a");
    for to in [FlowPeer::Endpoint(ep_id("y/b")), FlowPeer::Ip(yb.parse().unwrap())] {
        let e = explain(&input, &ipc, FlowPeer::Endpoint(xa), to, TCP, 80);
        assert_eq!(e.final_verdict, Allow, "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("decided in lookup step 3 (by pod address): {yb} is in policy prefix {yb}/32")),
            "{text}"
        );
        assert!(
            text.contains("allow NetworkPolicy x/allow-client-a-via-cidr-egress-rule spec.egress[0] (by pod address)"),
            "{text}"
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["egress"]["pod_cidr"]["prefix"], format!("{yb}/32"));
        assert_eq!(json["egress"]["matched"][0]["by_address"], true);
    }
    // y/a: denied, no step 3.
    let e = explain(&input, &ipc, FlowPeer::Endpoint(xa), FlowPeer::Endpoint(ep_id("y/a")), TCP, 80);
    assert_eq!(e.final_verdict, Deny);
    assert!(e.egress.as_ref().unwrap().pod_cidr.is_none());
    assert!(!e.to_string().contains("step 3"), "{e}");
}

#[test]
fn networkpolicy_deny_rules_are_rejected_when_built_in_code() {
    let mut p = parse(&e2e_egress_ipblock("k", "{cidr: 10.0.0.0/8}")).remove(0);
    p.specs[0].rules[0].verdict = Deny;
    let err = p.validate().unwrap_err().to_string();
    assert!(err.contains("spec.egress[0]") && err.contains("allow rules only"), "{err}");
}
