//! Flow observability end to end: known traffic between lab pods yields
//! exactly the expected flows through the Observer API (Hubble's gRPC).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_e2e::observer::{self, flows};
use myelin_e2e::*;
use myelin_observe::proto::flow::{self, Flow};
use std::path::PathBuf;

const LAB: &str = "
nodes: [{name: node1}]
namespaces: [{name: x}, {name: y}]
pods:
  - {name: a, namespace: x, node: node1, labels: {app: a}}
  - {name: b, namespace: x, node: node1, labels: {app: b}}
  - {name: c, namespace: y, node: node1, labels: {app: c}}
external: [{name: w1}]
";

fn observer_socket(lab: &myelin_lab::Lab) -> PathBuf {
    lab.node("node1").unwrap().agent_socket.with_file_name("observer.sock")
}

fn side(f: &Flow, src: bool) -> String {
    let e = if src { f.source.as_ref() } else { f.destination.as_ref() };
    e.map(|e| format!("{}/{}", e.namespace, e.pod_name)).unwrap_or_default()
}

#[test]
fn ping_between_pods_is_a_forwarded_flow_named_by_pod_and_identity() {
    let lab = LabGuard::up(LAB, "flow");
    let sock = observer_socket(lab.lab());
    let b_ip = pod_ip(lab.lab(), "x", "b").to_string();
    assert!(ping(lab.lab(), "x/a", &b_ip));
    let got = wait_for("flows of x/a -> x/b", std::time::Duration::from_secs(10), || {
        let fs = flows(&observer::get_flows(&sock, observer::all(vec![])).unwrap());
        let ab: Vec<Flow> = fs.into_iter().filter(|f| side(f, true) == "x/a" && side(f, false) == "x/b").collect();
        (!ab.is_empty()).then_some(ab)
    });
    let f = &got[0];
    eprintln!("{f:#?}");
    assert_eq!(f.verdict, flow::Verdict::Forwarded as i32);
    assert_eq!(f.trace_observation_point, flow::TraceObservationPoint::ToEndpoint as i32);
    let ids = (f.source.as_ref().unwrap().identity, f.destination.as_ref().unwrap().identity);
    assert!(ids.0 >= 256 && ids.1 >= 256 && ids.0 != ids.1, "{ids:?}");
    assert!(f.source.as_ref().unwrap().labels.iter().any(|l| l == "k8s:app=a"), "{f:?}");
}
