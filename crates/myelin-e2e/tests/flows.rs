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

fn now_ns() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()).unwrap()
}

fn ns_of(f: &Flow) -> u64 {
    let t = f.time.as_ref().unwrap();
    u64::try_from(t.seconds).unwrap() * 1_000_000_000 + u64::try_from(t.nanos).unwrap()
}

/// What distinguishes flows in these checks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Kind {
    event: i32,
    point: i32,
    verdict: i32,
    drop: i32,
    src: String,
    dst: String,
    proto: &'static str,
    dport: u32,
    reply: Option<bool>,
    policy: String,
}

fn kind(f: &Flow) -> Kind {
    use flow::layer4::Protocol as P;
    let (proto, dport) = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(P::Tcp(t)) => ("TCP", t.destination_port),
        Some(P::Udp(u)) => ("UDP", u.destination_port),
        Some(P::IcmPv4(i)) => ("ICMP", i.r#type),
        _ => ("-", 0),
    };
    let pol: Vec<String> = [
        ("ingress-allowed", &f.ingress_allowed_by),
        ("egress-allowed", &f.egress_allowed_by),
        ("ingress-denied", &f.ingress_denied_by),
        ("egress-denied", &f.egress_denied_by),
    ]
    .iter()
    .flat_map(|(what, ps)| ps.iter().map(move |p| format!("{what}:{}/{}/{}", p.kind, p.namespace, p.name)))
    .collect();
    let name = |e: Option<&flow::Endpoint>, ip: &str| {
        e.filter(|e| !e.pod_name.is_empty()).map_or_else(
            || format!("{ip}#{}", e.map_or(0, |e| e.identity)),
            |e| format!("{}/{}", e.namespace, e.pod_name),
        )
    };
    let ip = f.ip.clone().unwrap_or_default();
    Kind {
        event: f.event_type.as_ref().map_or(0, |e| e.r#type),
        point: f.trace_observation_point,
        verdict: f.verdict,
        drop: f.drop_reason_desc,
        src: name(f.source.as_ref(), &ip.source),
        dst: name(f.destination.as_ref(), &ip.destination),
        proto,
        dport,
        reply: f.is_reply,
        policy: pol.join(","),
    }
}

/// Flows from `since` (unix ns) that involve both names, as sorted distinct kinds, once
/// `want` are all among them (waiting for the observer to catch up, with a deadline).
fn kinds_between(sock: &std::path::Path, since: u64, a: &str, b: &str, want: &[Kind]) -> Vec<Kind> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let fs = flows(&observer::get_flows(sock, observer::all(vec![])).unwrap());
        let mut ks: Vec<Kind> = fs
            .iter()
            .filter(|f| ns_of(f) >= since)
            .map(kind)
            .filter(|k| (k.src == a && k.dst == b) || (k.src == b && k.dst == a))
            .collect();
        ks.sort();
        ks.dedup();
        if want.iter().all(|w| ks.contains(w)) || std::time::Instant::now() > deadline {
            return ks;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

const TRACE: i32 = 4;
const DROP: i32 = 1;
const VERDICT: i32 = 5;
const FWD: i32 = flow::Verdict::Forwarded as i32;
const DROPPED: i32 = flow::Verdict::Dropped as i32;
const TO_EP: i32 = flow::TraceObservationPoint::ToEndpoint as i32;
const TO_STACK: i32 = flow::TraceObservationPoint::ToStack as i32;
const TO_HOST: i32 = flow::TraceObservationPoint::ToHost as i32;
const DENIED: i32 = flow::DropReason::PolicyDenied as i32;

#[allow(clippy::too_many_arguments)]
fn k(
    event: i32,
    point: i32,
    verdict: i32,
    drop: i32,
    src: &str,
    dst: &str,
    proto: &'static str,
    dport: u32,
    reply: Option<bool>,
    policy: &str,
) -> Kind {
    Kind { event, point, verdict, drop, src: src.into(), dst: dst.into(), proto, dport, reply, policy: policy.into() }
}

#[test]
fn known_traffic_yields_exactly_the_expected_flows() {
    let lab = LabGuard::up(LAB, "kflo");
    let l = lab.lab();
    let sock = observer_socket(l);
    let c = client(l, "node1");
    let (a_ns, b_ns, c_ns) = (pod_ns(l, "x", "a"), pod_ns(l, "x", "b"), pod_ns(l, "y", "c"));
    let (a_ip, b_ip, c_ip) = (pod_ip(l, "x", "a"), pod_ip(l, "x", "b"), pod_ip(l, "y", "c"));
    let body = myelin_api::PolicyApply {
        files: vec![myelin_api::PolicyFile {
            name: "p.yaml".into(),
            content: "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web, namespace: x}\n\
                      spec:\n  endpointSelector: {matchLabels: {app: b}}\n  ingress:\n  \
                      - fromEndpoints: [{matchLabels: {app: a}}]\n    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]\n"
                .into(),
        }],
    };
    let _: myelin_api::PolicyChange = c.post("/v1/policies", &body).unwrap();

    // (1) Allowed TCP a -> b:8080: the ingress verdict names the policy; the SYN and the
    // reply are delivered to their endpoints; nothing is dropped.
    let t = now_ns();
    let srv = in_ns(&b_ns, move || std::net::TcpListener::bind((b_ip, 8080)).unwrap());
    let h = echo_once(srv);
    echo_roundtrip(tcp_connect(&a_ns, std::net::SocketAddr::new(b_ip.into(), 8080)).unwrap(), 64);
    h.join().unwrap();
    let allowed =
        k(VERDICT, 0, FWD, 0, "x/a", "x/b", "TCP", 8080, Some(false), "ingress-allowed:CiliumNetworkPolicy/x/web");
    let syn =
        k(TRACE, TO_EP, FWD, 0, "x/a", "x/b", "TCP", 8080, Some(false), "ingress-allowed:CiliumNetworkPolicy/x/web");
    let got = kinds_between(&sock, t, "x/a", "x/b", &[allowed.clone(), syn.clone()]);
    assert!(got.contains(&allowed) && got.contains(&syn), "{got:#?}");
    assert!(
        got.iter().any(|k| k.src == "x/b" && k.reply == Some(true) && k.point == TO_EP),
        "the reply is a flow: {got:#?}"
    );
    assert!(got.iter().all(|k| k.verdict == FWD), "nothing dropped: {got:#?}");
    assert!(got.iter().filter(|k| k.event == VERDICT).count() == 1, "one verdict for one new connection: {got:#?}");

    // (2) Denied TCP c -> b:8080 (not app=a): every attempt is a drop with reason
    // POLICY_DENIED and a DENIED verdict; the default deny names no policy.
    let t = now_ns();
    let srv = in_ns(&b_ns, move || std::net::TcpListener::bind((b_ip, 8080)).unwrap());
    assert!(!tcp_probe(&c_ns, std::net::SocketAddr::new(b_ip.into(), 8080)).reached("c -> b:8080"), "c -> b denied");
    drop(srv);
    let drop_k = k(DROP, 0, DROPPED, DENIED, "y/c", "x/b", "TCP", 8080, Some(false), "");
    let denied = k(VERDICT, 0, DROPPED, DENIED, "y/c", "x/b", "TCP", 8080, Some(false), "");
    let got = kinds_between(&sock, t, "y/c", "x/b", &[drop_k.clone(), denied.clone()]);
    assert_eq!(got, vec![drop_k, denied], "exactly drops and denied verdicts");

    // (3) UDP and ICMP a -> c (no policy on either): forwarded both ways, no verdicts.
    let t = now_ns();
    assert!(udp_roundtrip(&a_ns, &c_ns, c_ip));
    assert!(ping(l, "x/a", &c_ip.to_string()));
    let got = kinds_between(
        &sock,
        t,
        "x/a",
        "y/c",
        &[
            k(TRACE, TO_EP, FWD, 0, "x/a", "y/c", "ICMP", 8, Some(false), ""),
            k(TRACE, TO_EP, FWD, 0, "y/c", "x/a", "ICMP", 0, Some(true), ""),
        ],
    );
    assert!(
        got.iter().any(|k| k.proto == "UDP" && k.src == "x/a" && k.reply == Some(false) && k.point == TO_EP),
        "{got:#?}"
    );
    assert!(got.iter().any(|k| k.proto == "UDP" && k.src == "y/c" && k.reply == Some(true)), "{got:#?}");
    assert!(got.contains(&k(TRACE, TO_EP, FWD, 0, "x/a", "y/c", "ICMP", 8, Some(false), "")), "{got:#?}");
    assert!(got.contains(&k(TRACE, TO_EP, FWD, 0, "y/c", "x/a", "ICMP", 0, Some(true), "")), "{got:#?}");
    assert!(got.iter().all(|k| k.event == TRACE && k.verdict == FWD), "{got:#?}");

    // (4) Pod to world and back: to-stack with the world's identity; the reply reaches a.
    let t = now_ns();
    let w1 = l.external("w1").unwrap().ip;
    assert!(ping(l, "x/a", &w1));
    let world = format!("{w1}#2");
    let got = kinds_between(
        &sock,
        t,
        "x/a",
        &world,
        &[k(TRACE, TO_STACK, FWD, 0, "x/a", &world, "ICMP", 8, Some(false), "")],
    );
    assert!(got.contains(&k(TRACE, TO_STACK, FWD, 0, "x/a", &world, "ICMP", 8, Some(false), "")), "{got:#?}");
    assert!(got.contains(&k(TRACE, TO_EP, FWD, 0, &world, "x/a", "ICMP", 0, Some(true), "")), "{got:#?}");

    // (5) Pod to its node: to-host, the host identity.
    let t = now_ns();
    let node_ip = l.node("node1").unwrap().address;
    assert!(ping(l, "x/a", &node_ip));
    let host = format!("{node_ip}#1");
    let got =
        kinds_between(&sock, t, "x/a", &host, &[k(TRACE, TO_HOST, FWD, 0, "x/a", &host, "ICMP", 8, Some(false), "")]);
    assert!(got.contains(&k(TRACE, TO_HOST, FWD, 0, "x/a", &host, "ICMP", 8, Some(false), "")), "{got:#?}");
    let _ = a_ip;
}

/// A directory removed when dropped (the Python client's generated modules).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Python's grpcio, with message classes protoc generates from proto/, reads flows from the
/// agent: the Observer API is Hubble's wire format, and filters are applied by the server.
#[test]
fn a_python_grpc_client_reads_filtered_flows_and_server_status() {
    let lab = LabGuard::up(LAB, "pycl");
    let l = lab.lab();
    let sock = observer_socket(l);
    let (a_ns, c_ns, c_ip) = (pod_ns(l, "x", "a"), pod_ns(l, "y", "c"), pod_ip(l, "y", "c"));
    assert!(ping(l, "x/a", &c_ip.to_string()));
    assert!(udp_roundtrip(&a_ns, &c_ns, c_ip));
    // Both kinds are in the observer before the client asks (Rust client, deadline).
    wait_for("UDP and ICMP flows from x/a", std::time::Duration::from_secs(10), || {
        let ks: Vec<Kind> =
            flows(&observer::get_flows(&sock, observer::all(vec![])).unwrap()).iter().map(kind).collect();
        let from_a = |p: &str| ks.iter().any(|k| k.src == "x/a" && k.proto == p);
        (from_a("UDP") && from_a("ICMP")).then_some(())
    });

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = TempDir(std::env::temp_dir().join(format!("myelin-pyclient-{}", std::process::id())));
    std::fs::create_dir_all(&out.0).unwrap();
    // The Debian python3 that scripts/setup.sh gives grpcio and protobuf to.
    let run = std::process::Command::new("/usr/bin/python3")
        .arg(root.join("clients/observer_client.py"))
        .arg(root.join("../../proto"))
        .arg(&out.0)
        .arg(&sock)
        .arg("x/a")
        .output()
        .expect("running /usr/bin/python3 (scripts/setup.sh installs it)");
    assert!(
        run.status.success(),
        "the Python client failed (harness): {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        String::from_utf8_lossy(&run.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    eprintln!("{v:#}");
    let num = |k: &str| v["status"][k].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    assert!(num("num_flows") > 0 && num("max_flows") >= num("num_flows"), "{v:#}");
    assert!(num("seen_flows") >= num("num_flows"), "{v:#}");
    let fs = v["flows"].as_array().unwrap();
    assert!(fs.iter().any(|f| f["l4"] == "UDP"), "the whitelist keeps a's UDP: {v:#}");
    for f in fs {
        assert_eq!(f["source"], "x/a", "whitelist source_pod: {v:#}");
        assert_eq!(f["verdict"], "FORWARDED", "whitelist verdict: {v:#}");
        assert!(f["l4"] != "ICMPv4", "the blacklist drops ICMP: {v:#}");
        assert_eq!(f["node_name"], "node1", "{v:#}");
    }
}

/// Malformed GetFlows requests are refused whole with InvalidArgument naming the field;
/// the observer keeps answering good requests.
#[test]
fn malformed_filters_and_requests_get_precise_errors() {
    use myelin_observe::proto::flow::FlowFilter;
    use myelin_observe::proto::observer::GetFlowsRequest;
    let lab = LabGuard::up(LAB, "mflt");
    let sock = observer_socket(lab.lab());
    let ts = |s: i64| Some(myelin_observe::proto::Timestamp { seconds: s, nanos: 0 });
    let cases: Vec<(GetFlowsRequest, &str)> = vec![
        (
            observer::all(vec![FlowFilter { source_ip: vec!["10.0.0.300".into()], ..FlowFilter::default() }]),
            "whitelist[0].source_ip[0]: \"10.0.0.300\" is neither an IP address nor a CIDR",
        ),
        (
            GetFlowsRequest {
                blacklist: vec![
                    FlowFilter::default(),
                    FlowFilter { dns_query: vec!["x".into()], ..FlowFilter::default() },
                ],
                ..GetFlowsRequest::default()
            },
            "blacklist[1].dns_query: not supported by Myelin",
        ),
        (
            observer::all(vec![FlowFilter { source_pod: vec!["a/b/c".into()], ..FlowFilter::default() }]),
            "whitelist[0].source_pod[0]",
        ),
        (observer::all(vec![FlowFilter { verdict: vec![99], ..FlowFilter::default() }]), "whitelist[0].verdict[0]"),
        (
            GetFlowsRequest { since: ts(2_000_000_000), until: ts(1_000_000_000), ..GetFlowsRequest::default() },
            "since is after until",
        ),
        (GetFlowsRequest { follow: true, until: ts(2_000_000_000), ..GetFlowsRequest::default() }, "follow and until"),
    ];
    for (req, want) in cases {
        let e = observer::get_flows(&sock, req.clone()).expect_err(&format!("{req:?} must be refused"));
        assert!(e.contains("InvalidArgument") || e.contains("invalid argument"), "{e}");
        assert!(e.contains(want), "error {e:?} should name {want:?}");
    }
    assert!(ping(lab.lab(), "x/a", &pod_ip(lab.lab(), "x", "b").to_string()));
    wait_for("flows after the refused requests", std::time::Duration::from_secs(10), || {
        (!flows(&observer::get_flows(&sock, observer::all(vec![])).unwrap()).is_empty()).then_some(())
    });
}

/// Follow streams flows as they happen; with since, it first replays the matching backlog.
#[test]
fn follow_streams_new_flows_as_they_happen() {
    use myelin_observe::proto::flow::FlowFilter;
    use myelin_observe::proto::observer::GetFlowsRequest;
    let lab = LabGuard::up(LAB, "folw");
    let l = lab.lab();
    let sock = observer_socket(l);
    let b_ip = pod_ip(l, "x", "b").to_string();
    let c_ip = pod_ip(l, "y", "c").to_string();
    // Backlog: a -> b.
    let start = now_ns();
    assert!(ping(l, "x/a", &b_ip));
    wait_for("a -> b in the ring", std::time::Duration::from_secs(10), || {
        let fs = flows(&observer::get_flows(&sock, observer::all(vec![])).unwrap());
        fs.iter().any(|f| side(f, true) == "x/a" && side(f, false) == "x/b").then_some(())
    });
    let from_a = FlowFilter { source_pod: vec!["x/a".into()], ..FlowFilter::default() };
    // A follower from `start` sees the backlog, then a -> c sent once it has the backlog.
    let since = myelin_observe::proto::Timestamp {
        seconds: i64::try_from(start / 1_000_000_000).unwrap(),
        nanos: i32::try_from(start % 1_000_000_000).unwrap(),
    };
    let req =
        GetFlowsRequest { follow: true, since: Some(since), whitelist: vec![from_a], ..GetFlowsRequest::default() };
    let mut sent = false;
    let got = observer::follow(&sock, req, std::time::Duration::from_secs(20), |rs| {
        let fs = flows(rs);
        let has = |dst: &str| fs.iter().any(|f| side(f, false) == dst);
        if has("x/b") && !sent {
            sent = true;
            assert!(ping(l, "x/a", &c_ip), "ping a -> c while following");
        }
        has("x/b") && has("y/c")
    })
    .unwrap();
    let fs = flows(&got);
    assert!(fs.iter().all(|f| side(f, true) == "x/a"), "the filter applies to followed flows: {fs:#?}");
    let pos = |dst: &str| fs.iter().position(|f| side(f, false) == dst).unwrap();
    assert!(pos("x/b") < pos("y/c"), "backlog first, then live flows");
    let times: Vec<u64> = fs.iter().map(ns_of).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "time order: {times:?}");
}
