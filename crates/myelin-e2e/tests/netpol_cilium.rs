//! CiliumNetworkPolicy specifics, with real connections: deny precedence,
//! entities against an external host, CIDR with except, L4-only rules, ICMP
//! rules, rule attribution, and what a policy change does to established
//! connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_e2e::netpol::{Matrix, Proto};
use myelin_e2e::{classify_io_error, ping, wait_for, Probe};
use std::io::{Read, Write};
use std::time::Duration;

/// CiliumNetworkPolicy `x/<name>` selecting pod x/a; `rest` is the rest of its spec.
fn cnp_xa(name: &str, rest: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{pod: a}}}}\n{}",
        rest.trim_start_matches('\n')
    )
}

#[test]
fn deny_beats_allow_l4_only_and_icmp_rules() {
    let m = Matrix::up("cden", &[]);
    // An L3 allow of x/b plus an explicit deny of port 80 from x/b.
    m.apply(&cnp_xa(
        "deny-80",
        r"
  ingress:
  - fromEndpoints: [{matchLabels: {pod: b}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {pod: b}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
",
    ));
    m.check("L3 allow + deny 80: 81 allowed, 80/TCP denied", |from, to, port, proto| {
        !to.is("x/a") || (from.is("x/b") && !(port == 80 && proto == Proto::Tcp))
    });
    let lab = m.lab.lab();
    let xa = m.pod("x/a").ip.to_string();
    assert!(ping(lab, "x/b", &xa), "ICMP from x/b is allowed by the L3 rule");
    assert!(!ping(lab, "x/c", &xa), "ICMP from x/c is not allowed");

    // The drop was counted with Cilium's reason 181 (explicit deny) and 133 (default deny).
    let rows: Vec<myelin_api::DatapathMetric> = lab.client("node1").unwrap().get("/v1/metrics/datapath").unwrap();
    assert!(rows.iter().any(|r| r.reason == 181 && r.packets > 0), "explicit deny counted as 181: {rows:?}");
    assert!(rows.iter().any(|r| r.reason == 133 && r.packets > 0), "default deny counted as 133");
    // And the deciding rules are named.
    let stats: Vec<myelin_api::PolicyStat> = lab.client("node1").unwrap().get("/v1/metrics/policy").unwrap();
    assert!(
        stats.iter().any(|s| s.verdict == "deny"
            && s.rule.as_deref().is_some_and(|r| r.contains("x/deny-80") && r.contains("ingressDeny[0]"))),
        "the deny rule is named in the policy counters: {stats:?}"
    );
    assert!(stats
        .iter()
        .any(|s| s.verdict == "allow" && s.rule.as_deref().is_some_and(|r| r.contains("spec.ingress[0]"))));

    // L4-only: any peer on 81/UDP, nothing else.
    m.apply(&cnp_xa(
        "deny-80",
        r"
  ingress:
  - toPorts: [{ports: [{port: '81', protocol: UDP}]}]
",
    ));
    m.check("L4-only rule: any peer, 81/UDP", |_, to, port, proto| {
        !to.is("x/a") || (port == 81 && proto == Proto::Udp)
    });
    assert!(!ping(lab, "x/b", &xa), "no ICMP rule: echo dropped");

    // ICMP rule: echo requests (type 8) allowed, nothing else.
    m.apply(&cnp_xa(
        "deny-80",
        r"
  ingress:
  - icmps: [{fields: [{type: 8, family: IPv4}]}]
",
    ));
    assert!(ping(lab, "y/c", &xa), "ICMP echo allowed by the icmps rule");
    m.check("ICMP rule allows no TCP/UDP", |_, to, _, _| !to.is("x/a"));
}

#[test]
fn entities_and_cidr_with_except_against_external_hosts() {
    let m = Matrix::up("cent", &["w1", "w2"]);
    let (w1, w2) = (m.external("w1").clone(), m.external("w2").clone());
    let lab = m.lab.lab();
    let node_ip = lab.node("node1").unwrap().address;

    m.apply(&cnp_xa(
        "egress",
        r"
  egress:
  - toEntities: [cluster]
",
    ));
    m.check_to_host("toEntities cluster: the world is out", &w1, |from, _, _| !from.is("x/a"));
    m.check("toEntities cluster: every pod is in", |_, _, _, _| true);
    assert!(ping(lab, "x/a", &node_ip), "the node is part of the cluster entity (host)");

    m.apply(&cnp_xa(
        "egress",
        r"
  egress:
  - toEntities: [world]
",
    ));
    m.check_to_host("toEntities world: w1 reachable", &w1, |_, _, _| true);
    m.check("toEntities world: pods are not the world", |from, _, _, _| !from.is("x/a"));
    assert!(!ping(lab, "x/a", &node_ip), "the node is not the world");

    m.apply(&cnp_xa(
        "egress",
        r"
  egress:
  - toEntities: [host]
",
    ));
    assert!(ping(lab, "x/a", &node_ip), "toEntities host: the node is reachable");
    m.check_to_host("toEntities host: the world is not", &w1, |from, _, _| !from.is("x/a"));

    m.apply(&format!(
        r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: egress, namespace: x}}
spec:
  endpointSelector: {{matchLabels: {{pod: a}}}}
  egress:
  - toCIDRSet: [{{cidr: 198.51.100.0/24, except: [{}/32]}}]
    toPorts: [{{ports: [{{port: '80', protocol: ANY}}]}}]
",
        w2.ip
    ));
    m.check_to_host("toCIDRSet: w1 on port 80 (TCP and UDP)", &w1, |from, port, _| !from.is("x/a") || port == 80);
    m.check_to_host("except: w2 carved out", &w2, |from, _, _| !from.is("x/a"));

    // Ingress from the world: fromEntities world lets w1 in, fromCIDR narrows it.
    m.delete(&["x/egress"]);
    m.apply(&format!(
        r"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: ingress, namespace: x}}
spec:
  endpointSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - fromCIDR: [{}/32]
",
        w1.ip
    ));
    let xa = m.pod("x/a").ip;
    // The lab's fabric routes pod CIDRs to their nodes: external hosts reach pods unNATed.
    assert!(m.reach(&w1.netns, xa, 80, Proto::Tcp), "fromCIDR w1/32 may connect");
    assert!(!m.reach(&w2.netns, xa, 80, Proto::Tcp), "w2 may not");
}

#[test]
fn revoking_an_allow_cuts_established_connections_and_replies_need_no_rule() {
    let m = Matrix::up("cest", &[]);
    let (xa, xb) = (m.pod("x/a").clone(), m.pod("x/b").clone());
    // Default-deny both ways on both ends; only x/b -> x/a:80 is allowed, at
    // x/b's egress and at x/a's ingress. Replies pass by connection tracking.
    m.apply(&cnp_xa(
        "conv",
        r"
  ingress:
  - fromEndpoints: [{matchLabels: {pod: b}}]
    toPorts: [{ports: [{port: '7000', protocol: TCP}]}]
  egress: []
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: conv-b, namespace: x}
spec:
  endpointSelector: {matchLabels: {pod: b}}
  egress:
  - toEndpoints: [{matchLabels: {pod: a}}]
    toPorts: [{ports: [{port: '7000', protocol: TCP}]}]
",
    ));
    // A long-lived echo conversation on 7000.
    let l = myelin_e2e::tcp_listen(&xa.netns, xa.ip);
    let addr = std::net::SocketAddr::from((xa.ip, 7000));
    drop(l);
    let l = myelin_e2e::in_ns(&xa.netns, move || std::net::TcpListener::bind(addr).expect("bind 7000"));
    let srv = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut b = [0u8; 1];
        while let Ok(1) = s.read(&mut b) {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut c = myelin_e2e::tcp_connect(&xb.netns, addr).expect("allowed connection");
    c.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    // One byte there and back: reached, blocked (no echo within the read timeout), or a
    // harness error (the server went away, an unexpected error): never counted as blocked.
    let echo = |c: &mut std::net::TcpStream| -> Probe {
        let mut b = [0u8; 1];
        if let Err(e) = c.write_all(b"k") {
            return classify_io_error("writing to the established connection", &e);
        }
        match c.read(&mut b) {
            Ok(1) => Probe::Reached,
            Ok(_) => Probe::HarnessError("the echo server closed the connection".into()),
            Err(e) => classify_io_error("reading the echo", &e),
        }
    };
    for _ in 0..20 {
        assert!(echo(&mut c).reached("echo"), "echo over the allowed connection (replies need no reverse rule)");
    }

    // Revoke x/a's ingress allow: the established connection is cut at once
    // (policy is checked on every packet of the original direction).
    m.apply(&cnp_xa(
        "conv",
        r"
  ingress: []
  egress: []
",
    ));
    assert!(
        !echo(&mut c).reached("echo after the revoke"),
        "the established connection no longer passes after the revoke"
    );

    // Restore: the same connection works again (TCP retransmits get through).
    m.apply(&cnp_xa(
        "conv",
        r"
  ingress:
  - fromEndpoints: [{matchLabels: {pod: b}}]
    toPorts: [{ports: [{port: '7000', protocol: TCP}]}]
  egress: []
",
    ));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 2];
    // The byte written during the revoke is retransmitted and echoed, then ours.
    wait_for("the connection to recover", Duration::from_secs(15), || {
        (c.write_all(b"z").is_ok() && c.read(&mut b).is_ok_and(|n| n >= 1)).then_some(())
    });
    drop(c);
    srv.join().unwrap();
}

#[test]
fn malformed_policies_are_rejected_whole_and_the_applied_one_keeps_enforcing() {
    let m = Matrix::up("cbad", &[]);
    m.apply(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: keep, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
",
    );
    let good_doc = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: extra, namespace: y}\nspec:\n  endpointSelector: {}\n  ingress: []\n";
    let cnp = |spec: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: bad, namespace: x}}\nspec:\n{spec}"
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '70000'}]}]}]\n"), "70000"),
        (cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '0'}]}]}]\n"), "ports[0].port"),
        (cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '90', endPort: 80}]}]}]\n"), "endPort"),
        (cnp("  endpointSelector: {}\n  ingress: [{fromCIDR: [10.0.0.0/33]}]\n"), "fromCIDR[0]"),
        (cnp("  endpointSelector: {}\n  ingress: [{fromEntities: [galaxy]}]\n"), "galaxy"),
        (cnp("  endpointSelector: {}\n  ingress: [{fromEndpoints: [{matchExpressions: [{key: a, operator: Near, values: [b]}]}]}]\n"), "Near"),
        (cnp("  endpointSelector: {}\n  ingress: [{fromEndpoints: [{matchExpressions: [{key: a, operator: In, values: []}]}]}]\n"), "values"),
        (cnp("  endpointSelector: {}\n  ingres: []\n"), "ingres"),
        (cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80', protocol: TCPX}]}]}]\n"), "TCPX"),
        (cnp("  endpointSelector: {}\n  ingress: [{fromCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]}]\n"), "except"),
        (cnp("  endpointSelector: {matchLabels: 7}\n"), "matchLabels"),
        ("apiVersion: v9\nkind: Banana\nmetadata: {name: x}\n".to_owned(), "Banana"),
        ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\nspec: {podSelector: {}}\n".to_owned(), "name"),
    ];
    for (doc, needle) in &cases {
        // A good document next to the bad one: the whole apply is rejected.
        let yaml = format!("{good_doc}---\n{doc}");
        let err = m.try_apply(&yaml).expect_err(&format!("must be rejected:\n{doc}"));
        assert!(err.contains("test.yaml") && err.contains("document 2"), "error names file and document: {err}");
        assert!(err.contains(needle), "error names {needle:?}: {err}");
    }
    let applied: Vec<myelin_api::AppliedPolicy> = m.lab.lab().client("node1").unwrap().get("/v1/policies").unwrap();
    assert_eq!(applied.len(), 1, "nothing of the rejected applies was applied: {applied:?}");
    m.check("the policy applied before keeps enforcing", |from, to, _, _| !to.is("x/a") || from.is("x/b"));
}
