#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic with context
//! The lab's etcd against the real binaries (root only): a 3-member cluster comes up healthy
//! before the agents, is in `lab status -o json`, survives the loss and return of a member, and
//! `lab down` from another process leaves no etcd process, netns or data directory; a
//! multi-node lab defaults to vxlan over one member, without node-to-node pod-CIDR routes.
//!
//! Needs `cargo build --workspace --bins` first (see lab_updown.rs) and etcd (etcd-server).

mod common;

use common::{lab_name, require_root, wait_until, Teardown};
use myelin_lab::{Lab, LabOptions, LabSpec};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// etcd processes of a lab (their data directories are under its state directory); zombies
/// have no command line and are not listed.
fn etcd_processes(lab: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("etcd") && cmd.contains(&format!("{}/{lab}/", myelin_lab::STATE_ROOT)) {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// What must be gone after `lab down`: etcd processes, the kvstore netns, the state directory
/// (which holds the members' data directories).
fn leftovers(lab: &str) -> Vec<String> {
    let mut left = etcd_processes(lab);
    let netns = Path::new("/var/run/netns").join(format!("myl-{lab}-kv"));
    if netns.exists() {
        left.push(netns.display().to_string());
    }
    let state = Path::new(myelin_lab::STATE_ROOT).join(lab);
    if state.exists() {
        left.push(state.display().to_string());
    }
    left
}

/// One HTTP/1.0 request (no chunked answers) to `addr` from inside the netns at `netns`:
/// status code and body.
fn http_in(netns: &Path, addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(netns).expect("open netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let sock: std::net::SocketAddr = addr.parse().expect("socket address");
            let mut c = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect to {addr} in {}: {e}", netns.display()));
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(
                c,
                "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut raw = String::new();
            c.read_to_string(&mut raw).unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"));
            let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
            let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            (code, body.to_owned())
        })
        .join()
        .expect("http thread")
    })
}

/// `host:port` of an endpoint URL.
fn host_port(url: &str) -> &str {
    url.strip_prefix("http://").expect("http:// URL")
}

fn healthy(netns: &Path, endpoint: &str) -> bool {
    let (code, body) = http_in(netns, host_port(endpoint), "GET", "/health", "");
    code == 200 && body.contains(r#""health":"true""#)
}

/// A JSON call to etcd's v3 HTTP gateway; panics unless it answers 200.
fn etcd_v3(netns: &Path, endpoint: &str, path: &str, body: &str) -> Value {
    let (code, text) = http_in(netns, host_port(endpoint), "POST", path, body);
    assert_eq!(code, 200, "POST {endpoint}{path} {body}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {endpoint}{path}: not JSON ({e}): {text}"))
}

/// `myelin ARGS` (the CLI, a process other than this one): exit code, stdout, stderr.
fn myelin(args: &[&str]) -> (i32, String, String) {
    let bin = myelin_lab::find_binary("myelin", None).expect("myelin binary");
    let out = std::process::Command::new(bin).args(args).output().expect("run myelin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn agent_config(lab: &Lab, node: &str) -> String {
    std::fs::read_to_string(lab.node(node).expect("node").agent_config).expect("agent config")
}

fn routes(netns: &str) -> String {
    let out = std::process::Command::new("ip").args(["-n", netns, "-4", "route", "show"]).output().expect("ip route");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// key "myelin-lab-test", value "written-while-kv0-was-down", base64 as the v3 gateway wants them.
const KEY: &str = "bXllbGluLWxhYi10ZXN0";
const VALUE: &str = "d3JpdHRlbi13aGlsZS1rdjAtd2FzLWRvd24=";

#[test]
fn three_member_etcd_is_healthy_in_status_survives_a_member_restart_and_goes_with_lab_down() {
    require_root();
    let name = lab_name("k");
    assert_eq!(leftovers(&name), Vec::<String>::new(), "leftovers of an earlier lab {name}");
    let _teardown = Teardown(name.clone());
    let spec = LabSpec::from_yaml(
        "nodes: [{name: node1}, {name: node2}, {name: node3}]\nrouting: native\nkvstore: etcd\nkvstore_members: 3\n",
        "test lab",
    )
    .unwrap();
    let mut lab = Lab::up(spec, &name, LabOptions::default()).unwrap_or_else(|e| panic!("lab up: {e}"));

    // Three members on the underlay, healthy, forming one cluster.
    let endpoints = lab.kvstore_endpoints();
    assert_eq!(endpoints, ["http://172.30.0.250:2379", "http://172.30.0.251:2379", "http://172.30.0.252:2379"]);
    let kvns = lab.kvstore_netns().expect("kvstore netns");
    assert!(lab.netns_names().contains(&format!("myl-{name}-kv")), "{:?}", lab.netns_names());
    // `up` waited for each; a loaded machine may still see a re-election in between.
    wait_until("all three members to be healthy", Duration::from_secs(15), || {
        endpoints.iter().all(|e| healthy(&kvns, e))
    });
    let members = etcd_v3(&kvns, &endpoints[0], "/v3/cluster/member/list", "{}");
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3), "one cluster of three: {members}");
    assert_eq!(etcd_processes(&name).len(), 3, "{:?}", etcd_processes(&name));

    // `lab status -o json` from another process.
    let (code, out, err) = myelin(&["lab", "status", "--name", &name, "-o", "json"]);
    assert_eq!(code, 0, "lab status: {err}");
    let status: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"));
    assert_eq!(status["routing"], "native");
    assert_eq!(status["kvstore"]["kind"], "etcd");
    assert_eq!(status["kvstore"]["endpoints"], serde_json::json!(endpoints));
    let ms = status["kvstore"]["members"].as_array().expect("members");
    assert_eq!(ms.len(), 3, "{status}");
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(m["name"], format!("kv{i}"));
        assert_eq!(m["address"], format!("172.30.0.{}", 250 + i));
        assert!(m["pid"].is_i64() && m["running"] == true, "member {i}: {m}");
    }
    let (code, text, err) = myelin(&["lab", "status", "--name", &name]);
    assert_eq!(code, 0, "lab status: {err}");
    assert!(text.contains("routing native, kvstore etcd (3 member(s))"), "{text}");

    // Every agent is told the cluster, the endpoints and the routing; native routing keeps
    // the node-to-node pod-CIDR routes.
    for node in ["node1", "node2", "node3"] {
        let cfg = agent_config(&lab, node);
        assert!(cfg.contains(&format!("cluster_name = \"{name}\"")), "{node}: {cfg}");
        assert!(cfg.contains("routing = \"native\""), "{node}: {cfg}");
        assert!(cfg.contains("\"http://172.30.0.252:2379\""), "{node}: {cfg}");
        assert!(!cfg.contains("kvstore_lease_ttl_s"), "{node}: {cfg}");
    }
    let node1 = lab.node("node1").unwrap();
    assert!(routes(&node1.netns).contains("10.244.2.0/24 via 172.30.0.11"), "{}", routes(&node1.netns));
    assert!(lab.status().nodes.iter().all(|n| n.agent_running), "{:?}", lab.status().nodes);

    // Member kv0 goes away: the other two keep a quorum and take writes.
    let old = lab.status().kvstore.members[0].clone();
    lab.stop_kvstore_member(0).unwrap_or_else(|e| panic!("stop kv0: {e}"));
    let after = lab.status().kvstore.members[0].clone();
    assert!(!after.running && after.pid.is_none(), "{after:?}");
    assert!(etcd_processes(&name).iter().all(|p| !p.contains("--name kv0 ")), "{:?}", etcd_processes(&name));
    // Had kv0 led, the other two elect a new leader first (etcd's election timeout is 1s).
    wait_until("kv1 and kv2 to be healthy without kv0 (two of three are a quorum)", Duration::from_secs(15), || {
        healthy(&kvns, &endpoints[1]) && healthy(&kvns, &endpoints[2])
    });
    etcd_v3(&kvns, &endpoints[1], "/v3/kv/put", &format!(r#"{{"key":"{KEY}","value":"{VALUE}"}}"#));

    // kv0 comes back with its data directory and catches up (a linearizable read through it).
    lab.start_kvstore_member(0).unwrap_or_else(|e| panic!("start kv0: {e}"));
    let back = lab.status().kvstore.members[0].clone();
    assert!(back.running && back.pid.is_some() && back.pid != old.pid, "{back:?} (was {old:?})");
    wait_until("kv0 to be healthy again", Duration::from_secs(15), || healthy(&kvns, &endpoints[0]));
    let got = etcd_v3(&kvns, &endpoints[0], "/v3/kv/range", &format!(r#"{{"key":"{KEY}"}}"#));
    assert_eq!(got["kvs"][0]["value"], VALUE, "kv0 lacks what was written while it was down: {got}");
    let members = etcd_v3(&kvns, &endpoints[0], "/v3/cluster/member/list", "{}");
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3), "still one cluster of three: {members}");

    // `lab down` from another process stops what this one started.
    let (code, _, err) = myelin(&["lab", "down", "--name", &name]);
    assert_eq!(code, 0, "lab down: {err}");
    drop(lab); // reaps the members (our children) that the other process's `down` ended
    assert_eq!(leftovers(&name), Vec::<String>::new(), "lab down left etcd behind");
    assert!(!kvns.exists());
}

#[test]
fn several_nodes_default_to_vxlan_over_one_member_without_node_pod_cidr_routes() {
    require_root();
    let name = lab_name("g");
    assert_eq!(leftovers(&name), Vec::<String>::new(), "leftovers of an earlier lab {name}");
    let _teardown = Teardown(name.clone());
    let spec = LabSpec::from_yaml("nodes: [{name: node1}, {name: node2}]\n", "test lab").unwrap();
    let mut lab = Lab::up(spec, &name, LabOptions::default()).unwrap_or_else(|e| panic!("lab up: {e}"));
    let status = lab.status();
    assert_eq!((status.routing.as_str(), status.kvstore.kind.as_str()), ("vxlan", "etcd"));
    assert_eq!(lab.kvstore_endpoints(), ["http://172.30.0.250:2379"]);
    assert!(healthy(&lab.kvstore_netns().unwrap(), "http://172.30.0.250:2379"));
    let node1 = lab.node("node1").unwrap();
    assert!(agent_config(&lab, "node1").contains("routing = \"vxlan\""));

    // The agent routes the other node's pod CIDR through its tunnel: the lab adds no route;
    // the fabric still routes every pod CIDR (external hosts reach pods natively). The etcd
    // member is reachable from the nodes.
    let r = routes(&node1.netns);
    assert!(!r.contains("10.244.2.0/24 via"), "no underlay route to node2's pods: {r}");
    wait_until("node1's agent to route node2's pods into its tunnel", std::time::Duration::from_secs(20), || {
        routes(&node1.netns).contains("10.244.2.0/24 dev myelin_vxlan")
    });
    let fabric = routes(&format!("myl-{name}-fab"));
    assert!(fabric.contains("10.244.1.0/24 via 172.30.0.10") && fabric.contains("10.244.2.0/24 via 172.30.0.11"));
    assert!(healthy(&node1.netns_path, "http://172.30.0.250:2379"), "etcd is unreachable from node1");

    // kill_agent leaves the node's datapath; restart_agent brings the agent back.
    lab.kill_agent("node1").unwrap_or_else(|e| panic!("kill agent: {e}"));
    let killed = lab.node("node1").unwrap();
    assert!(killed.agent_pid.is_none() && !lab.status().nodes[0].agent_running);
    assert!(killed.bpf_dir.exists(), "SIGKILL leaves the pinned datapath: {}", killed.bpf_dir.display());
    lab.restart_agent("node1", Signal::SIGTERM).unwrap_or_else(|e| panic!("restart agent: {e}"));
    assert!(lab.status().nodes[0].agent_running);

    lab.down().unwrap_or_else(|e| panic!("lab down: {e}"));
    assert_eq!(leftovers(&name), Vec::<String>::new(), "lab down left etcd behind");
    assert!(!PathBuf::from(format!("/var/run/netns/myl-{name}-node1")).exists());
}

/// A directory with a fake `etcd` shell script, removed on drop.
struct FakeEtcd(PathBuf);

impl FakeEtcd {
    fn new(tag: &str, script: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("myelin-lab-test-etcd-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let etcd = dir.join("etcd");
        std::fs::write(&etcd, script).expect("write fake etcd");
        std::fs::set_permissions(&etcd, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        FakeEtcd(dir)
    }

    fn opts(&self, timeout: Duration) -> LabOptions {
        LabOptions { etcd: Some(self.0.join("etcd")), kvstore_timeout: timeout, ..LabOptions::default() }
    }
}

impl Drop for FakeEtcd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn an_etcd_that_dies_fails_up_with_its_log_and_leaves_nothing_behind() {
    require_root();
    let name = lab_name("e");
    let _teardown = Teardown(name.clone());
    let fake = FakeEtcd::new(&name, "#!/bin/sh\necho 'fake etcd: cannot start' >&2\nexit 3\n");
    let spec = LabSpec::from_yaml("nodes: [{name: node1}, {name: node2}]\n", "test lab").unwrap();
    let err = Lab::up(spec, &name, fake.opts(Duration::from_secs(20))).expect_err("up with a dying etcd must fail");
    assert!(matches!(err, myelin_lab::LabError::Kvstore { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("kv0") && text.contains("exited"), "{text}");
    assert!(text.contains("fake etcd: cannot start"), "error lacks the member's log tail: {text}");
    assert_eq!(leftovers(&name), Vec::<String>::new());
}

#[test]
fn an_etcd_that_never_gets_healthy_fails_up_at_its_deadline_and_is_stopped() {
    require_root();
    let name = lab_name("h");
    let _teardown = Teardown(name.clone());
    // Runs (as "etcd ... --data-dir <lab state>", so etcd_processes sees it) but never listens.
    let fake = FakeEtcd::new(&name, "#!/bin/sh\necho 'fake etcd: listening nowhere' >&2\nsleep 1000\n");
    let spec = LabSpec::from_yaml("nodes: [{name: node1}, {name: node2}]\n", "test lab").unwrap();
    let err = Lab::up(spec, &name, fake.opts(Duration::from_secs(1))).expect_err("up must time out");
    let text = err.to_string();
    assert!(text.contains("not healthy after 1s at http://172.30.0.250:2379/health"), "{text}");
    assert!(text.contains("fake etcd: listening nowhere"), "error lacks the member's log tail: {text}");
    assert_eq!(leftovers(&name), Vec::<String>::new());
}
