//! Kubernetes NetworkPolicy semantics, checked like the upstream e2e suite:
//! namespaces x, y, z; pods a, b, c serving 80 and 81 over TCP and UDP; each
//! case probes the full 9x9x2x2 matrix with real connections through the
//! eBPF datapath. Several cases share one lab, applied and deleted in turn. Every case runs
//! twice: on one node, and with the pods spread over three nodes (VXLAN, identities from etcd,
//! each policy applied on every node), where the verdict is taken at the destination with the
//! sender's identity from the VNI and at the source with the destination's from the ipcache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_e2e::netpol::{Matrix, Pod, Proto};

/// NetworkPolicy `x/p` selecting pod x/a; `rest` is the rest of its spec.
fn xa(rest: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n{}",
        rest.trim_start_matches('\n')
    )
}

fn all(_: &Pod, _: &Pod, _: u16, _: Proto) -> bool {
    true
}

const DENY_ALL_INGRESS_X: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

fn default_deny_ingress_egress_and_update_delete_case(m: &Matrix) {
    m.check("no policy: everything reaches everything", all);

    m.apply(DENY_ALL_INGRESS_X);
    m.check("deny all ingress in x", |_, to, _, _| to.ns != "x");

    // Update in place (same name): now only ingress from inside x is allowed.
    m.apply(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {}}]
",
    );
    m.check("update: allow ingress within x only", |from, to, _, _| to.ns != "x" || from.ns == "x");

    m.delete(&["x/deny-ingress"]);
    m.check("deleted: everything reaches everything again", all);

    m.apply(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: []
",
    );
    m.check("deny all egress from x", |from, _, _, _| from.ns != "x");

    // Default-deny both ways for x/a with an egress allow to namespace y only.
    m.delete(&["x/deny-egress"]);
    m.apply(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-egress-to-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]
",
    );
    m.check("x/a: no ingress; egress to y only", |from, to, _, _| {
        if to.is("x/a") {
            return false;
        }
        if from.is("x/a") {
            return to.ns == "y";
        }
        true
    });
}

fn pod_and_namespace_selectors_and_or_and_expressions_case(m: &Matrix) {
    m.apply(&xa(r"
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
"));
    m.check("podSelector alone = same namespace", |from, to, _, _| !to.is("x/a") || from.is("x/b"));

    m.apply(&xa(r"
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]
"));
    m.check("namespaceSelector alone = all pods of y", |from, to, _, _| !to.is("x/a") || from.ns == "y");

    m.apply(&xa(r"
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: 'y'}}, podSelector: {matchLabels: {pod: b}}}]
"));
    m.check("both in one peer = AND", |from, to, _, _| !to.is("x/a") || from.is("y/b"));

    m.apply(&xa(r"
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}, {podSelector: {matchLabels: {pod: b}}}]
"));
    m.check("separate peers = OR", |from, to, _, _| !to.is("x/a") || from.ns == "y" || from.is("x/b"));

    m.apply(&xa(r"
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: NotIn, values: ['x', 'z']}]
      podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b, c]}]
"));
    m.check("matchExpressions In / NotIn", |from, to, _, _| !to.is("x/a") || (from.ns == "y" && from.name != "a"));

    m.apply(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: DoesNotExist}]}}]
",
    );
    m.check("Exists selects all of x; DoesNotExist matches no namespace", |_, to, _, _| to.ns != "x");
}

fn ports_named_ranges_protocols_and_stacking_case(m: &Matrix) {
    m.apply(&xa(r"
  ingress:
  - ports: [{port: serve-80-tcp}]
"));
    m.check("named port: 80/TCP only, from anyone", |_, to, port, proto| {
        !to.is("x/a") || (port == 80 && proto == Proto::Tcp)
    });

    m.apply(&xa(r"
  ingress:
  - ports: [{protocol: UDP, port: 80}]
"));
    m.check("protocol-specific: 80/UDP only", |_, to, port, proto| {
        !to.is("x/a") || (port == 80 && proto == Proto::Udp)
    });

    m.apply(&xa(r"
  ingress:
  - ports: [{protocol: TCP, port: 81, endPort: 90}]
"));
    m.check("port range 81-90/TCP", |_, to, port, proto| !to.is("x/a") || (port == 81 && proto == Proto::Tcp));

    // Stacked policies: the union of what each allows.
    m.apply(&xa(r"
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: q, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: 'y'}}}]
    ports: [{port: 81, protocol: UDP}]
"));
    m.check("stacked: x/b on 80/TCP, or y/* on 81/UDP", |from, to, port, proto| {
        !to.is("x/a")
            || (from.is("x/b") && port == 80 && proto == Proto::Tcp)
            || (from.ns == "y" && port == 81 && proto == Proto::Udp)
    });
    m.delete(&["x/q"]);
    m.check("one of the stack deleted", |from, to, port, proto| {
        !to.is("x/a") || (from.is("x/b") && port == 80 && proto == Proto::Tcp)
    });
}

fn ip_block_with_except_towards_the_world_case(m: &Matrix) {
    let (w1, w2) = (m.external("w1").clone(), m.external("w2").clone());
    m.apply(&format!(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: egress-world, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: 198.51.100.0/24, except: [{}/32]}}}}]
",
        w2.ip
    ));
    m.check_to_host("ipBlock allows w1", &w1, |_, _, _| true);
    m.check_to_host("except carves out w2 for x/a", &w2, |from, _, _| !from.is("x/a"));
    m.check("x/a may reach no pod (egress only to the block)", |from, _, _, _| !from.is("x/a"));
}

/// A NetworkPolicy as the upstream suite builds it for its ipBlock cases:
/// `GenNetworkPolicyWithNameAndPodMatchLabel(name, {pod: a}, SetSpecEgressRules(rule))` in
/// namespace x, the rule's one peer being `ipBlock: <block>`.
fn egress_ip_block(name: &str, block: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  \
         - to:\n    - ipBlock: {block}\n"
    )
}

/// The upstream suite's `makeLargeCIDRForIP`: the /4 that holds the address.
fn large_cidr_for(ip: std::net::Ipv4Addr) -> String {
    let net = u32::from(ip) & 0xf000_0000;
    format!("{}/4", std::net::Ipv4Addr::from(net))
}

// The three upstream ipBlock cases with pod addresses (Cilium skips them, cilium#9209): a
// NetworkPolicy ipBlock selects any address in the block, pods included.

fn should_allow_egress_access_to_server_in_cidr_block_case(m: &Matrix) {
    let server = m.pod("y/b").ip;
    m.apply(&egress_ip_block("allow-client-a-via-cidr-egress-rule", &format!("{{cidr: {server}/32}}")));
    m.check("should allow egress access to server in CIDR block: x/a reaches y/b only", |from, to, _, _| {
        !from.is("x/a") || to.is("y/b")
    });
}

fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block_case(m: &Matrix) {
    let server = m.pod("x/b").ip;
    m.apply(&egress_ip_block(
        "allow-client-a-via-cidr-egress-rule",
        &format!("{{cidr: {}, except: [{server}/32]}}", large_cidr_for(server)),
    ));
    m.check("should enforce except clause: x/a reaches every pod of the /4 but x/b", |from, to, _, _| {
        !(from.is("x/a") && to.is("x/b"))
    });
}

fn should_ensure_an_ip_overlapping_both_ipblock_cidr_and_ipblock_except_is_allowed_case(m: &Matrix) {
    let server = m.pod("x/b").ip;
    let name = "allow-client-a-via-cidr-egress-rule";
    m.apply(&egress_ip_block(name, &format!("{{cidr: {}, except: [{server}/32]}}", large_cidr_for(server))));
    m.check("overlap, first policy: x/a reaches every pod of the /4 but x/b", |from, to, _, _| {
        !(from.is("x/a") && to.is("x/b"))
    });
    // As upstream: the policy of the same name is updated to x/b's own /32.
    m.apply(&egress_ip_block(name, &format!("{{cidr: {server}/32}}")));
    m.check("overlap, updated to x/b's /32: x/a reaches x/b only", |from, to, _, _| !from.is("x/a") || to.is("x/b"));
}

// ---- the cases, on one node and across three ----

#[test]
fn default_deny_ingress_egress_and_update_delete() {
    default_deny_ingress_egress_and_update_delete_case(&Matrix::up("kdd", &[]));
}

#[test]
fn default_deny_ingress_egress_and_update_delete_across_three_nodes() {
    default_deny_ingress_egress_and_update_delete_case(&Matrix::up_on("kdd3", &[], 3));
}

#[test]
fn pod_and_namespace_selectors_and_or_and_expressions() {
    pod_and_namespace_selectors_and_or_and_expressions_case(&Matrix::up("ksel", &[]));
}

#[test]
fn pod_and_namespace_selectors_and_or_and_expressions_across_three_nodes() {
    pod_and_namespace_selectors_and_or_and_expressions_case(&Matrix::up_on("kse3", &[], 3));
}

#[test]
fn ports_named_ranges_protocols_and_stacking() {
    ports_named_ranges_protocols_and_stacking_case(&Matrix::up("kport", &[]));
}

#[test]
fn ports_named_ranges_protocols_and_stacking_across_three_nodes() {
    ports_named_ranges_protocols_and_stacking_case(&Matrix::up_on("kpo3", &[], 3));
}

#[test]
fn ip_block_with_except_towards_the_world() {
    ip_block_with_except_towards_the_world_case(&Matrix::up("kipb", &["w1", "w2"]));
}

#[test]
fn ip_block_with_except_towards_the_world_across_three_nodes() {
    ip_block_with_except_towards_the_world_case(&Matrix::up_on("kip3", &["w1", "w2"], 3));
}

#[test]
fn should_allow_egress_access_to_server_in_cidr_block() {
    should_allow_egress_access_to_server_in_cidr_block_case(&Matrix::up("kipa", &[]));
}

#[test]
fn should_allow_egress_access_to_server_in_cidr_block_across_three_nodes() {
    should_allow_egress_access_to_server_in_cidr_block_case(&Matrix::up_on("kip3", &[], 3));
}

#[test]
fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block() {
    should_enforce_except_clause_while_egress_access_to_server_in_cidr_block_case(&Matrix::up("kipe", &[]));
}

#[test]
fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block_across_three_nodes() {
    should_enforce_except_clause_while_egress_access_to_server_in_cidr_block_case(&Matrix::up_on("kip3", &[], 3));
}

#[test]
fn should_ensure_an_ip_overlapping_both_ipblock_cidr_and_ipblock_except_is_allowed() {
    should_ensure_an_ip_overlapping_both_ipblock_cidr_and_ipblock_except_is_allowed_case(&Matrix::up("kipo", &[]));
}

#[test]
fn should_ensure_an_ip_overlapping_both_ipblock_cidr_and_ipblock_except_is_allowed_across_three_nodes() {
    should_ensure_an_ip_overlapping_both_ipblock_cidr_and_ipblock_except_is_allowed_case(&Matrix::up_on(
        "kip3",
        &[],
        3,
    ));
}
