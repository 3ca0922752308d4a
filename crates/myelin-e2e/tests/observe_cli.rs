//! `myelin observe` against a real two-node lab: Hubble's filters pick the
//! right subsets, the output formats carry them, `--lab` merges both nodes'
//! flows in time order, and bad flags are refused with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_e2e::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const LAB: &str = "
nodes: [{name: node1}, {name: node2}]
namespaces: [{name: x}, {name: y}]
pods:
  - {name: a, namespace: x, node: node1, labels: {app: a}}
  - {name: b, namespace: x, node: node1, labels: {app: b}}
  - {name: c, namespace: y, node: node1, labels: {app: c}}
  - {name: d, namespace: x, node: node2, labels: {app: d}}
";

const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]
";

/// `myelin observe --lab NAME ARGS -o json --color never`: one GetFlowsResponse per line.
fn observe_json(lab: &str, args: &[&str]) -> Vec<Value> {
    let all: Vec<&str> = [&["observe", "--lab", lab, "-o", "json", "--color", "never"][..], args].concat();
    let (code, out, err) = myelin(&all);
    assert_eq!(code, 0, "myelin {all:?}: {err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

fn pod(f: &Value, side: &str) -> String {
    let e = &f["flow"][side];
    format!("{}/{}", e["namespace"].as_str().unwrap_or(""), e["pod_name"].as_str().unwrap_or(""))
}

/// An RFC 3339 UTC time (`...T12:00:00[.fffffffff]Z`) as a sortable (date-time, nanos) pair.
fn t(f: &Value) -> (String, u32) {
    let s = f["time"].as_str().unwrap_or_else(|| panic!("no time: {f}"));
    let s = s.strip_suffix('Z').unwrap_or_else(|| panic!("not UTC: {s}"));
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    let nanos = format!("{frac:0<9}").parse().unwrap();
    (whole.to_owned(), nanos)
}

fn l4(f: &Value) -> String {
    f["flow"]["l4"].as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default()
}

#[test]
fn observe_filters_formats_and_lab_merge() {
    let g = LabGuard::up(LAB, "obs");
    let l = g.lab();
    let name = l.name().to_owned();
    let c = client(l, "node1");
    let body = myelin_api::PolicyApply {
        files: vec![myelin_api::PolicyFile { name: "p.yaml".into(), content: POLICY.into() }],
    };
    let _: myelin_api::PolicyChange = c.post("/v1/policies", &body).unwrap();
    let (a_ns, b_ns, c_ns) = (pod_ns(l, "x", "a"), pod_ns(l, "x", "b"), pod_ns(l, "y", "c"));
    let (b_ip, c_ip, d_ip) = (pod_ip(l, "x", "b"), pod_ip(l, "y", "c"), pod_ip(l, "x", "d"));

    // Known traffic: a -> b:8080 allowed, c -> b:8080 denied, a -> c UDP, a -> d (other node) ICMP.
    let srv = in_ns(&b_ns, move || std::net::TcpListener::bind((b_ip, 8080)).unwrap());
    let h = echo_once(srv);
    echo_roundtrip(tcp_connect(&a_ns, SocketAddr::new(b_ip.into(), 8080)).unwrap(), 32);
    h.join().unwrap();
    let srv = in_ns(&b_ns, move || std::net::TcpListener::bind((b_ip, 8080)).unwrap());
    assert!(!tcp_probe(&c_ns, SocketAddr::new(b_ip.into(), 8080)).reached("c -> b:8080"), "c -> b denied");
    drop(srv);
    assert!(udp_roundtrip(&a_ns, &c_ns, c_ip));
    assert!(ping(l, "x/a", &d_ip.to_string()));

    // Wait until both nodes have reported what the checks below need.
    let all = wait_for("flows of both nodes", Duration::from_secs(15), || {
        let fs = observe_json(&name, &["--all"]);
        let on = |n: &str| fs.iter().any(|f| f["node_name"] == n);
        let drop = fs.iter().any(|f| f["flow"]["verdict"] == "DROPPED" && pod(f, "source") == "y/c");
        let d = fs.iter().any(|f| f["node_name"] == "node2" && pod(f, "destination") == "x/d");
        (on("node1") && on("node2") && drop && d).then_some(fs)
    });
    let times: Vec<(String, u32)> = all.iter().map(t).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "--lab merges nodes in time order: {times:#?}");

    // --from-pod + --protocol: only a's UDP.
    let fs = observe_json(&name, &["--all", "--from-pod", "x/a", "--protocol", "udp"]);
    assert!(!fs.is_empty());
    assert!(fs.iter().all(|f| pod(f, "source") == "x/a" && l4(f) == "UDP"), "{fs:#?}");

    // --verdict DROPPED: exactly c -> b, POLICY_DENIED, on node1.
    let fs = observe_json(&name, &["--all", "--verdict", "DROPPED"]);
    assert!(!fs.is_empty());
    for f in &fs {
        assert_eq!((pod(f, "source"), pod(f, "destination")), ("y/c".into(), "x/b".into()), "{f}");
        assert_eq!(f["flow"]["drop_reason_desc"], "POLICY_DENIED", "{f}");
        assert_eq!(f["node_name"], "node1");
        assert_eq!(f["flow"]["l4"]["TCP"]["destination_port"], 8080, "{f}");
    }

    // --type policy-verdict: the allowed a -> b names the policy; the denied c -> b none.
    let fs = observe_json(&name, &["--all", "--type", "policy-verdict"]);
    assert!(fs.iter().any(|f| pod(f, "source") == "x/a"
        && f["flow"]["verdict"] == "FORWARDED"
        && f["flow"]["ingress_allowed_by"][0]["name"] == "web"));
    assert!(fs.iter().any(|f| pod(f, "source") == "y/c" && f["flow"]["verdict"] == "DROPPED"));
    assert!(fs.iter().all(|f| f["flow"]["Type"] == "L3_L4" && f["flow"]["event_type"]["type"] == 5), "{fs:#?}");

    // To the pod on the other node (the lab's default for two nodes: VXLAN and etcd): node1
    // sends it into the overlay, naming x/d (a pod of node2, known from the kvstore) and the
    // tunnel endpoint (node2); node2 delivers it.
    let d = d_ip.to_string();
    let node2 = l.node("node2").unwrap().address.clone();
    let fs = observe_json(&name, &["--all", "--to-ip", &d]);
    let at = |node: &str, point: &str| {
        fs.iter().any(|f| f["node_name"] == node && f["flow"]["trace_observation_point"] == point)
    };
    assert!(at("node1", "TO_OVERLAY") && at("node2", "TO_ENDPOINT"), "{fs:#?}");
    assert!(
        fs.iter().any(|f| f["node_name"] == "node1"
            && f["flow"]["trace_observation_point"] == "TO_OVERLAY"
            && pod(f, "destination") == "x/d"
            && f["flow"]["tunnel"]["IP"]["destination"] == node2.as_str()),
        "{fs:#?}"
    );
    let fs = observe_json(&name, &["--all", "--to-pod", "x/d"]);
    let nodes: std::collections::BTreeSet<&str> = fs.iter().filter_map(|f| f["node_name"].as_str()).collect();
    assert_eq!(nodes, ["node1", "node2"].into_iter().collect(), "both nodes name x/d: {fs:#?}");
    let fs = observe_json(&name, &["--all", "--node", "node2"]);
    assert!(!fs.is_empty() && fs.iter().all(|f| f["node_name"] == "node2"), "--node asks one node");

    // --not: a's flows without ICMP.
    let fs = observe_json(&name, &["--all", "--from-pod", "x/a", "--not", "--protocol", "icmp"]);
    assert!(!fs.is_empty() && fs.iter().all(|f| pod(f, "source") == "x/a" && !l4(f).starts_with("ICMP")), "{fs:#?}");

    // --last N across nodes: the newest N of the merged stream.
    let fs = observe_json(&name, &["--last", "3"]);
    assert_eq!(fs.len(), 3);
    let newest: Vec<&Value> = all.iter().rev().take(3).rev().collect();
    assert!(fs.iter().zip(&newest).all(|(a, b)| t(a) >= t(b)), "the newest three");

    // compact: one line per flow, pods and verdicts, policy names on request.
    let (code, out, err) = myelin(&[
        "observe",
        "--lab",
        &name,
        "--all",
        "--type",
        "policy-verdict",
        "--from-pod",
        "x/a",
        "--print-policy-names",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.contains("x/a:") && l.contains("x/b:8080")).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("policy-verdict") && line.contains("ALLOWED") && line.contains("web"), "{line}");
    assert!(!out.contains("\x1b["), "no colour with --color never");

    // table: a header and one row per flow.
    let (code, out, err) = myelin(&["observe", "--lab", &name, "--all", "--verdict", "DROPPED", "-o", "table"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("SOURCE") && lines[0].contains("DESTINATION") && lines[0].contains("VERDICT"), "{out}");
    assert!(
        lines.len() > 1
            && lines[1..].iter().all(|r| r.contains("y/c") && (r.contains("DROPPED") || r.contains("DENIED"))),
        "{out}"
    );

    // status: both nodes, flows counted.
    let (code, out, err) = myelin(&["observe", "status", "--lab", &name, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node1") && out.contains("node2") && out.contains("num_flows"), "{out}");

    // Bad input: refused, naming the flag and the fix.
    let (code, _, err) = myelin(&["observe", "--lab", &name, "--verdict", "BLOCKED"]);
    assert_ne!(code, 0);
    assert!(err.contains("BLOCKED") && err.contains("FORWARDED"), "{err}");
    let (code, _, err) = myelin(&["observe", "--lab", &name, "--from-ip", "10.1.2.300"]);
    assert_ne!(code, 0);
    assert!(err.contains("10.1.2.300"), "{err}");
}
