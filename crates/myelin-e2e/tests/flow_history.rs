//! The durable flow history in a real lab: `since` still answers after the
//! in-memory ring wrapped, and after the agent was SIGKILLed and restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_e2e::observer::{self, flows};
use myelin_e2e::*;
use myelin_observe::proto::flow::{Flow, FlowFilter};
use myelin_observe::proto::observer::GetFlowsRequest;
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::time::Duration;

/// A ring of 40 flows: a few dozen packets wrap it.
const LAB: &str = "
nodes: [{name: node1}]
namespaces: [{name: x}]
pods:
  - {name: a, namespace: x, node: node1, labels: {app: a}}
  - {name: b, namespace: x, node: node1, labels: {app: b}}
  - {name: c, namespace: x, node: node1, labels: {app: c}}
agent: {flow_ring_capacity: 40, monitor_aggregation: none}
";

const RING: usize = 40;

fn observer_socket(lab: &myelin_lab::Lab) -> PathBuf {
    lab.node("node1").unwrap().agent_socket.with_file_name("observer.sock")
}

fn now_ns() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()).unwrap()
}

fn ts(ns: u64) -> myelin_observe::proto::Timestamp {
    myelin_observe::proto::Timestamp {
        seconds: i64::try_from(ns / 1_000_000_000).unwrap(),
        nanos: i32::try_from(ns % 1_000_000_000).unwrap(),
    }
}

fn pair(f: &Flow) -> (String, String) {
    let n = |e: Option<&myelin_observe::proto::flow::Endpoint>| {
        e.map(|e| format!("{}/{}", e.namespace, e.pod_name)).unwrap_or_default()
    };
    (n(f.source.as_ref()), n(f.destination.as_ref()))
}

/// ICMP flows a -> b since `since`, through GetFlows with a filter.
fn icmp_a_to_b(sock: &std::path::Path, since: u64) -> Vec<Flow> {
    let req = GetFlowsRequest {
        since: Some(ts(since)),
        whitelist: vec![FlowFilter {
            source_pod: vec!["x/a".into()],
            destination_pod: vec!["x/b".into()],
            protocol: vec!["icmp".into()],
            ..FlowFilter::default()
        }],
        ..GetFlowsRequest::default()
    };
    flows(&observer::get_flows(sock, req).unwrap())
}

fn flow_status(lab: &myelin_lab::Lab) -> myelin_api::FlowStatus {
    let st: myelin_api::Status = client(lab, "node1").get("/v1/status").unwrap();
    st.flows.expect("the agent reports its flow buffers")
}

/// Many flows that are not a -> b ICMP: UDP round trips a <-> c.
fn wrap_the_ring(lab: &myelin_lab::Lab) {
    let (a_ns, c_ns, c_ip) = (pod_ns(lab, "x", "a"), pod_ns(lab, "x", "c"), pod_ip(lab, "x", "c"));
    let before = flow_status(lab).seen;
    for _ in 0..RING {
        assert!(udp_roundtrip(&a_ns, &c_ns, c_ip));
    }
    wait_for("the ring wrapped", Duration::from_secs(10), || {
        let s = flow_status(lab);
        (s.seen >= before + 2 * RING as u64 && s.ring_flows == RING).then_some(())
    });
}

#[test]
fn since_answers_from_history_after_the_ring_wrapped_and_after_a_sigkill() {
    let mut g = LabGuard::up(LAB, "hist");
    let sock = observer_socket(g.lab());
    let b_ip = pod_ip(g.lab(), "x", "b").to_string();
    let t0 = now_ns();
    assert!(ping(g.lab(), "x/a", &b_ip));
    // Once b's two replies (ping -c 2) were delivered to a, every event of the exchange
    // is observed (one ring, in order).
    wait_for("the ping's replies observed", Duration::from_secs(10), || {
        let fs = flows(&observer::get_flows(&sock, observer::all(vec![])).unwrap());
        let to_a = |f: &&Flow| {
            pair(f) == ("x/b".into(), "x/a".into())
                && f.trace_observation_point == myelin_observe::proto::flow::TraceObservationPoint::ToEndpoint as i32
        };
        (fs.iter().filter(to_a).count() >= 2).then_some(())
    });
    let early = icmp_a_to_b(&sock, t0);
    assert!(!early.is_empty());

    // (1) The ring wraps: the early flows are no longer in memory, history answers.
    wrap_the_ring(g.lab());
    let s = flow_status(g.lab());
    assert!(s.history.is_some(), "the lab gives each agent a flow_history_dir: {s:?}");
    let got = icmp_a_to_b(&sock, t0);
    assert_eq!(got.len(), early.len(), "every early flow, once: {got:#?}");
    assert!(got.iter().all(|f| pair(f) == ("x/a".into(), "x/b".into())));
    // Newest-N across history and ring: --last 3 of a's flows ends with the newest UDP.
    let last = flows(
        &observer::get_flows(
            &sock,
            GetFlowsRequest {
                number: 3,
                whitelist: vec![FlowFilter { source_pod: vec!["x/a".into()], ..FlowFilter::default() }],
                ..GetFlowsRequest::default()
            },
        )
        .unwrap(),
    );
    assert_eq!(last.len(), 3);

    // (2) The agent is SIGKILLed once its history has stored everything seen so far
    // (the writer stores the open block every second), and started again.
    let seen = flow_status(g.lab()).seen;
    wait_for("the history stored every flow seen", Duration::from_secs(10), || {
        let h = flow_status(g.lab()).history.unwrap();
        (h.buffered == 0 && h.stored >= seen).then_some(())
    });
    let last_seq = flow_status(g.lab()).history.unwrap().last_seq;
    g.lab_mut().restart_agent("node1", Signal::SIGKILL).expect("agent restarts");
    let after = flow_status(g.lab());
    assert_eq!(after.ring_flows, 0, "a new agent starts with an empty ring: {after:?}");
    let got = icmp_a_to_b(&sock, t0);
    assert_eq!(got.len(), early.len(), "the early flows survive the SIGKILL: {got:#?}");
    // Names survive too (the dictionary is stored), and sequence numbers go on.
    assert!(got.iter().all(|f| pair(f) == ("x/a".into(), "x/b".into())), "{got:#?}");
    let h = after.history.unwrap();
    assert!(h.last_seq >= last_seq, "{h:?} vs {last_seq}");
    assert!(ping(g.lab(), "x/a", &b_ip));
    let got = wait_for("new flows after the restart", Duration::from_secs(10), || {
        let fs = icmp_a_to_b(&sock, t0);
        (fs.len() > early.len()).then_some(fs)
    });
    let times: Vec<(i64, i32)> = got.iter().map(|f| f.time.as_ref().map(|t| (t.seconds, t.nanos)).unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "history then ring, in time order: {times:?}");
    let uuids: std::collections::HashSet<&str> = got.iter().map(|f| f.uuid.as_str()).collect();
    assert_eq!(uuids.len(), got.len(), "no flow twice, no sequence number reused: {got:#?}");
}
