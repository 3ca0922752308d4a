//! `myelin observe` end to end against fake Observer servers: in-process tonic
//! servers on unix sockets in a temporary directory answer with canned flows
//! and lost events and record the requests; the real `myelin` binary is run
//! against them. The real agent's server is tested by the kernel e2e tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_observe::proto::flow::{self, Flow};
use myelin_observe::proto::observer::observer_server::{Observer, ObserverServer};
use myelin_observe::proto::observer::{
    get_flows_response::ResponseTypes, GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest,
    GetDebugEventsResponse, GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, Namespace, ServerStatusRequest, ServerStatusResponse,
};
use myelin_observe::proto::Timestamp;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

/// A directory removed on drop, even when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("myelin-observe-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One canned response, sent after a delay from the previous one.
#[derive(Clone)]
struct Step {
    after: Duration,
    resp: GetFlowsResponse,
}

#[derive(Clone)]
struct Fake {
    node: String,
    steps: Vec<Step>,
    /// Answer GetFlows with this error instead.
    fail: Option<Status>,
    requests: Arc<Mutex<Vec<GetFlowsRequest>>>,
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Observer for Fake {
    type GetFlowsStream = Stream<GetFlowsResponse>;
    type GetAgentEventsStream = Stream<GetAgentEventsResponse>;
    type GetDebugEventsStream = Stream<GetDebugEventsResponse>;

    async fn get_flows(&self, r: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        self.requests.lock().unwrap().push(r.into_inner());
        if let Some(s) = &self.fail {
            return Err(s.clone());
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let steps = self.steps.clone();
        tokio::spawn(async move {
            for s in steps {
                tokio::time::sleep(s.after).await;
                if tx.send(Ok(s.resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_agent_events(
        &self,
        _: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_debug_events(
        &self,
        _: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        Ok(Response::new(GetNodesResponse {
            nodes: vec![myelin_observe::proto::observer::Node {
                name: self.node.clone(),
                version: "fake".into(),
                state: 1,
                ..Default::default()
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        Ok(Response::new(GetNamespacesResponse {
            namespaces: vec![Namespace { cluster: String::new(), namespace: format!("ns-of-{}", self.node) }],
        }))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(Response::new(ServerStatusResponse {
            num_flows: 3,
            max_flows: 4095,
            seen_flows: 1 << 40,
            uptime_ns: 61_000_000_000,
            num_connected_nodes: Some(1),
            version: format!("fake {}", self.node),
            ..Default::default()
        }))
    }
}

/// Fake servers on sockets in a temp dir, served by a runtime of their own.
struct Servers {
    rt: tokio::runtime::Runtime,
    dir: TempDir,
    fakes: Vec<Fake>,
}

impl Servers {
    fn start(test: &str, fakes: Vec<Fake>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = TempDir::new(test);
        for f in &fakes {
            let path = dir.0.join(format!("{}.sock", f.node));
            let listener = rt.block_on(async { tokio::net::UnixListener::bind(&path) }).unwrap();
            let svc = ObserverServer::new(f.clone());
            rt.spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(UnixListenerStream::new(listener))
                    .await
                    .unwrap();
            });
        }
        Self { rt, dir, fakes }
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.0.join(format!("{}.sock", self.fakes[i].node))
    }

    fn requests(&self, i: usize) -> Vec<GetFlowsRequest> {
        self.fakes[i].requests.lock().unwrap().clone()
    }

    /// Run `myelin observe ARGS` against the servers (every socket, in order).
    fn observe(&self, sockets: &[usize], args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_myelin"));
        cmd.arg("observe").args(args).env_remove("MYELIN_OBSERVER_SOCKET").env("NO_COLOR", "1");
        for i in sockets {
            cmd.arg("--observer-socket").arg(self.socket(*i));
        }
        let out = cmd.output().unwrap();
        let _ = &self.rt;
        out
    }
}

fn ts(ms: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds: 1_700_000_000 + ms / 1000, nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap() })
}

fn ep(ns: &str, pod: &str, identity: u32) -> Option<flow::Endpoint> {
    Some(flow::Endpoint { namespace: ns.into(), pod_name: pod.into(), identity, ..Default::default() })
}

/// A flow at `ms` after the base time, from x/a to x/b on `node`, dropped or not.
fn flow_at(node: &str, ms: i64, dropped: bool) -> GetFlowsResponse {
    let f = Flow {
        time: ts(ms),
        verdict: if dropped { flow::Verdict::Dropped } else { flow::Verdict::Forwarded } as i32,
        drop_reason_desc: if dropped { flow::DropReason::PolicyDenied as i32 } else { 0 },
        ip: Some(flow::Ip {
            source: "10.244.1.2".into(),
            destination: "10.244.1.3".into(),
            ip_version: flow::IpVersion::IPv4 as i32,
            ..Default::default()
        }),
        l4: Some(flow::Layer4 {
            protocol: Some(flow::layer4::Protocol::Tcp(flow::Tcp {
                source_port: 40000,
                destination_port: 81,
                flags: Some(flow::TcpFlags { syn: true, ..Default::default() }),
            })),
        }),
        source: ep("x", "a", 300),
        destination: ep("x", "b", 301),
        node_name: node.into(),
        is_reply: Some(false),
        event_type: Some(if dropped {
            flow::CiliumEventType { r#type: 1, sub_type: 133 }
        } else {
            flow::CiliumEventType { r#type: 4, sub_type: 0 }
        }),
        traffic_direction: flow::TrafficDirection::Ingress as i32,
        ..Default::default()
    };
    GetFlowsResponse { node_name: node.into(), time: f.time, response_types: Some(ResponseTypes::Flow(f)) }
}

fn lost_at(node: &str, ms: i64, n: u64) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: node.into(),
        time: ts(ms),
        response_types: Some(ResponseTypes::LostEvents(flow::LostEvent {
            source: flow::LostEventSource::PerfEventRingBuffer as i32,
            num_events_lost: n,
            cpu: Some(0),
            ..Default::default()
        })),
    }
}

fn fake(node: &str, steps: Vec<(u64, GetFlowsResponse)>) -> Fake {
    Fake {
        node: node.into(),
        steps: steps.into_iter().map(|(ms, resp)| Step { after: Duration::from_millis(ms), resp }).collect(),
        fail: None,
        requests: Arc::default(),
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The node and the milliseconds of every flow line of `-o json` output.
fn json_flows(out: &str) -> Vec<(String, i64)> {
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("flow").is_some())
        .map(|v| {
            let t = chrono::DateTime::parse_from_rfc3339(v["flow"]["time"].as_str().unwrap()).unwrap();
            (v["node_name"].as_str().unwrap().to_owned(), t.timestamp_millis() - 1_700_000_000_000)
        })
        .collect()
}

#[test]
fn json_output_and_the_request_the_flags_make() {
    let s = Servers::start(
        "json",
        vec![fake(
            "node1",
            vec![(0, flow_at("node1", 1, true)), (0, lost_at("node1", 2, 7)), (0, flow_at("node1", 3, true))],
        )],
    );
    let o = s.observe(&[0], &["-o", "json", "--verdict", "DROPPED", "--not", "--from-pod", "x/c", "--last", "5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reqs = s.requests(0);
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!((r.number, r.first, r.follow), (5, false, false));
    assert_eq!(r.whitelist.len(), 1);
    assert_eq!(r.whitelist[0].verdict, vec![flow::Verdict::Dropped as i32]);
    assert_eq!(r.blacklist.len(), 1);
    assert_eq!(r.blacklist[0].source_pod, vec!["x/c".to_owned()]);

    let out = stdout(&o);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{out}");
    let f = &lines[0]["flow"];
    assert_eq!(f["verdict"], "DROPPED");
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(f["IP"]["source"], "10.244.1.2");
    assert_eq!(f["l4"]["TCP"]["destination_port"], 81);
    assert_eq!(f["time"], "2023-11-14T22:13:20.001Z");
    assert_eq!(f["source"]["pod_name"], "a");
    assert_eq!(lines[0]["node_name"], "node1");
    // Lost events are lines of the same stream.
    assert_eq!(lines[1]["lost_events"]["num_events_lost"], "7");
    assert_eq!(lines[1]["lost_events"]["source"], "PERF_EVENT_RING_BUFFER");
}

#[test]
fn compact_output_with_lost_events_on_stderr() {
    let s = Servers::start(
        "compact",
        vec![fake("node1", vec![(0, flow_at("node1", 0, true)), (0, lost_at("node1", 1, 12))])],
    );
    let o = s.observe(&[0], &["--since", "1h", "--print-node-name"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = &s.requests(0)[0];
    assert!(r.since.is_some() && r.number == 0 && r.whitelist.is_empty());
    assert_eq!(
        stdout(&o),
        "Nov 14 22:13:20.000 [node1]: x/a:40000 (ID:300) -> x/b:81 (ID:301) Policy denied DROPPED (TCP Flags: SYN)\n"
    );
    assert_eq!(stderr(&o), "Nov 14 22:13:20.001 [node1]: EVENTS LOST: PERF_EVENT_RING_BUFFER CPU(0) 12\n");
}

#[test]
fn table_output() {
    let s = Servers::start(
        "table",
        vec![fake("node1", vec![(0, flow_at("node1", 0, false)), (0, flow_at("node1", 5, true))])],
    );
    let o = s.observe(&[0], &["-o", "table"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("TIMESTAMP") && lines[0].contains("SOURCE") && lines[0].ends_with("SUMMARY"));
    let col = lines[0].find("VERDICT").unwrap();
    assert_eq!(&lines[1][col..col + 9], "FORWARDED");
    assert_eq!(&lines[2][col..col + 7], "DROPPED");
}

#[test]
fn two_agents_merge_in_time_order_and_keep_the_last_n() {
    let a = fake("node1", [1, 3, 5, 7].map(|ms| (0, flow_at("node1", ms, false))).to_vec());
    let b = fake("node2", [2, 4, 6].map(|ms| (0, flow_at("node2", ms, false))).to_vec());
    let s = Servers::start("merge", vec![a, b]);
    let o = s.observe(&[0, 1], &["-o", "json", "--last", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_flows(&stdout(&o)), vec![("node1".into(), 5), ("node2".into(), 6), ("node1".into(), 7)]);
    // Every node was asked for its own last 3.
    assert_eq!(s.requests(0)[0].number, 3);
    assert_eq!(s.requests(1)[0].number, 3);
}

#[test]
fn follow_merges_live_streams_in_time_order() {
    // Flows 10 ms apart, alternating between the nodes, arriving as they happen;
    // node2 also sends a backlog burst first (with --since), later than node1's start.
    let mut a = vec![(0, flow_at("node1", 0, false))];
    let mut b = vec![(30, flow_at("node2", 5, false)), (0, flow_at("node2", 15, false))];
    for i in 0..10 {
        a.push((20, flow_at("node1", 20 + 20 * i, false)));
        b.push((20, flow_at("node2", 30 + 20 * i, false)));
    }
    let s = Servers::start("follow", vec![fake("node1", a), fake("node2", b)]);
    let start = Instant::now();
    let o = s.observe(&[0, 1], &["-o", "json", "--follow", "--since", "1m"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s.requests(0)[0].follow && s.requests(1)[0].follow && s.requests(1)[0].since.is_some());
    let got = json_flows(&stdout(&o));
    assert_eq!(got.len(), 23, "{got:?}");
    let times: Vec<i64> = got.iter().map(|(_, t)| *t).collect();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert_eq!(times, sorted, "not in time order: {got:?}");
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_server_error_is_reported_with_its_reason() {
    let mut f = fake("node1", vec![]);
    f.fail = Some(Status::invalid_argument("since is after until"));
    let s = Servers::start("error", vec![f]);
    let o = s.observe(&[0], &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("GetFlows: invalid argument: since is after until"), "{e}");
}

#[test]
fn one_agent_down_the_other_still_answers() {
    let s = Servers::start("partial", vec![fake("node1", vec![(0, flow_at("node1", 1, false))])]);
    let missing = s.dir.0.join("gone.sock");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_myelin"))
        .args(["observe", "-o", "json", "--observer-socket"])
        .arg(s.socket(0))
        .arg("--observer-socket")
        .arg(&missing)
        .env_remove("MYELIN_OBSERVER_SOCKET")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "partial answers exit 1");
    assert_eq!(json_flows(&stdout(&o)), vec![("node1".into(), 1)]);
    assert!(stderr(&o).contains("no Observer API socket at"), "{}", stderr(&o));
}

#[test]
fn status_nodes_and_namespaces() {
    let s = Servers::start("status", vec![fake("node1", vec![]), fake("node2", vec![])]);
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_myelin"));
        cmd.arg("observe").args(args).env_remove("MYELIN_OBSERVER_SOCKET");
        for i in [0, 1] {
            cmd.arg("--observer-socket").arg(s.socket(i));
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let v: serde_json::Value = serde_json::from_str(&run(&["status", "-o", "json"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["status"]["num_flows"], "3");
    assert_eq!(v[0]["status"]["seen_flows"], "1099511627776");
    assert_eq!(v[1]["status"]["version"], "fake node2");
    let table = run(&["status"]);
    assert!(table.contains("3/4095 (0.07%)") && table.contains("1m1s"), "{table}");
    let v: serde_json::Value = serde_json::from_str(&run(&["nodes", "-o", "json"])).unwrap();
    let names: Vec<&str> = v["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["node1", "node2"]);
    assert_eq!(v["nodes"][0]["state"], "NODE_CONNECTED");
    let v: serde_json::Value = serde_json::from_str(&run(&["namespaces", "-o", "json"])).unwrap();
    assert_eq!(v["namespaces"][1]["namespace"], "ns-of-node2");
}

/// `Servers` keeps its sockets under this directory; a check that nothing is left.
#[test]
fn temp_dirs_are_removed() {
    let path: PathBuf;
    {
        let s = Servers::start("cleanup", vec![fake("node1", vec![])]);
        path = s.dir.0.clone();
        assert!(Path::new(&s.socket(0)).exists());
    }
    assert!(!path.exists());
}
