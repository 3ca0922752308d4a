//! The CNI contract, driven through the real `myelin-cni` binary against a
//! real agent: ADD/CHECK/DEL round trip, idempotent DEL, error objects, and
//! that DEL leaves no veth, route, map entry or address allocation behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_e2e::*;
use serde_json::{json, Value};

const LAB: &str = "nodes: [{name: node1}]\nnamespaces: [{name: default}]\n";

fn conf(sock: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": "myelin", "type": "myelin-cni", "agentSocket": sock})
}

#[test]
fn add_check_del_round_trip_leaves_nothing_behind() {
    let g = LabGuard::up(LAB, "cni");
    let lab = g.lab();
    let node = lab.node("node1").unwrap();
    let sock = node.agent_socket.display().to_string();
    let pod = NetnsGuard::new("cnip");
    let netns = pod.path().display().to_string();
    let env = [
        ("CNI_CONTAINERID", "ctr-roundtrip"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=rt"),
    ];

    // The pod's labels ride in the ADD (CNI conventions: args.cni.labels).
    let mut add_conf = conf(&sock);
    add_conf["args"] = json!({"cni": {"labels": [{"key": "app", "value": "rt"}, {"key": "tier", "value": "web"}]}});
    let add = run_cni("ADD", &add_conf, &env);
    assert_eq!(add.code, 0, "ADD failed: {}", add.raw);
    let eps: Vec<myelin_api::Endpoint> = client(lab, "node1").get("/v1/endpoints").unwrap();
    assert_eq!(eps.len(), 1);
    let want: myelin_api::Labels = [("app", "rt"), ("tier", "web")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
    assert_eq!(eps[0].labels, want, "the endpoint has its labels from the ADD itself");
    assert_eq!(eps[0].namespace.as_deref(), Some("default"));
    assert_eq!(eps[0].pod_name.as_deref(), Some("rt"));
    let r = &add.stdout;
    assert_eq!(r["cniVersion"], "1.0.0");
    let addr = r["ips"][0]["address"].as_str().unwrap().to_owned();
    let ip = addr.strip_suffix("/32").expect("a /32");
    let host_if = r["interfaces"][0]["name"].as_str().unwrap().to_owned();
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["sandbox"], netns.as_str());
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert!(r["ips"][0]["gateway"].is_string());
    // The pod side really is configured as the result says.
    let shown = ip_n(&pod.name, &["-4", "addr", "show", "dev", "eth0"]);
    assert!(shown.contains(&addr), "pod eth0 carries {addr}: {shown}");
    assert!(ip_n(&node.netns, &["link", "show", &host_if]).contains(&host_if));
    assert!(ip_n(&node.netns, &["route", "show", ip]).contains(&host_if));
    assert_eq!(pinned_map_len(&node.bpf_dir.join("endpoints")), 1);

    // CHECK with the previous result.
    let mut c = conf(&sock);
    c["prevResult"] = r.clone();
    let check = run_cni("CHECK", &c, &env);
    assert_eq!(check.code, 0, "CHECK failed: {}", check.raw);

    // A retried ADD is idempotent (same address).
    let again = run_cni("ADD", &conf(&sock), &env);
    assert_eq!(again.code, 0, "{}", again.raw);
    assert_eq!(again.stdout["ips"][0]["address"], addr.as_str());

    // DEL, twice.
    let del = run_cni("DEL", &conf(&sock), &env);
    assert_eq!(del.code, 0, "DEL failed: {}", del.raw);
    let del2 = run_cni("DEL", &conf(&sock), &env);
    assert_eq!(del2.code, 0, "second DEL must succeed too: {}", del2.raw);

    // Nothing remains: veth, route, map entry, allocation.
    assert!(!ip_n(&node.netns, &["link", "show"]).contains(&host_if), "host veth removed");
    assert!(ip_n(&pod.name, &["link", "show", "eth0"]).is_empty(), "pod veth removed");
    assert!(ip_n(&node.netns, &["route", "show", ip]).trim().is_empty(), "route removed");
    assert_eq!(pinned_map_len(&node.bpf_dir.join("endpoints")), 0, "map entry removed");
    let ipam: myelin_api::IpamState = client(lab, "node1").get("/v1/ipam").unwrap();
    assert!(ipam.allocations.is_empty(), "address released: {:?}", ipam.allocations);
    let eps: Vec<myelin_api::Endpoint> = client(lab, "node1").get("/v1/endpoints").unwrap();
    assert!(eps.is_empty());

    // CHECK after DEL reports the container as unknown.
    let check = run_cni("CHECK", &c, &env);
    assert_ne!(check.code, 0);
    assert_eq!(check.stdout["code"], 3, "{}", check.raw);
}

fn assert_error(run: &CniRun, code: u64, needle: &str) {
    assert_ne!(run.code, 0, "must exit non-zero: {}", run.raw);
    let e = &run.stdout;
    assert_eq!(e["code"], code, "error code: {}", run.raw);
    assert!(e["msg"].is_string() && e["details"].is_string(), "error object has msg and details: {}", run.raw);
    assert!(run.raw.contains(needle), "error mentions {needle:?}: {}", run.raw);
    assert!(e["cniVersion"].is_string());
}

#[test]
fn errors_follow_the_cni_contract() {
    let g = LabGuard::up("nodes: [{name: node1, podCIDR: 10.77.0.0/29}]\nnamespaces: [{name: default}]\n", "cnie");
    let lab = g.lab();
    let sock = lab.node("node1").unwrap().agent_socket.display().to_string();
    let pod = NetnsGuard::new("cnie");
    let netns = pod.path().display().to_string();
    let env = |cid: &'static str| vec![("CNI_CONTAINERID", cid), ("CNI_IFNAME", "eth0")];

    // Agent unreachable.
    let mut e = env("c1");
    e.push(("CNI_NETNS", netns.as_str()));
    assert_error(&run_cni("ADD", &conf("/run/myelin/no-such-agent.sock"), &e), 11, "unreachable");
    // Malformed config.
    let bad = run_cni("ADD", &json!({"cniVersion": "1.0.0", "name": 7, "type": "myelin-cni"}), &e);
    assert_error(&bad, 6, "decode");
    // Unsupported version.
    let mut c = conf(&sock);
    c["cniVersion"] = json!("2.5.0");
    assert_error(&run_cni("ADD", &c, &e), 1, "2.5.0");
    // Missing netns.
    let mut e2 = env("c2");
    e2.push(("CNI_NETNS", "/var/run/netns/myelin-does-not-exist"));
    assert_error(&run_cni("ADD", &conf(&sock), &e2), 3, "does not exist");
    // Missing environment.
    assert_error(&run_cni("ADD", &conf(&sock), &env("c3")), 4, "CNI_NETNS");
    // Labels that are not {key, value} strings.
    let mut c = conf(&sock);
    c["args"] = json!({"cni": {"labels": [{"key": "app", "value": "a"}, {"key": "tier", "value": 3}]}});
    assert_error(&run_cni("ADD", &c, &e), 7, "args.cni.labels[1]");
    let eps: Vec<myelin_api::Endpoint> = client(lab, "node1").get("/v1/endpoints").unwrap();
    assert!(eps.is_empty(), "a refused ADD plumbed nothing: {eps:?}");

    // Pool exhausted: a /29 has 5 pod addresses (network, gateway, broadcast reserved).
    let ids = ["x1", "x2", "x3", "x4", "x5"];
    for (i, cid) in ids.iter().enumerate() {
        let ifname = format!("eth{i}");
        let r =
            run_cni("ADD", &conf(&sock), &[("CNI_CONTAINERID", cid), ("CNI_IFNAME", &ifname), ("CNI_NETNS", &netns)]);
        assert_eq!(r.code, 0, "ADD {cid}: {}", r.raw);
    }
    let r = run_cni("ADD", &conf(&sock), &[("CNI_CONTAINERID", "x6"), ("CNI_IFNAME", "eth9"), ("CNI_NETNS", &netns)]);
    assert_error(&r, 100, "exhausted");
    // The failed ADD left nothing: still 5 endpoints, and DEL frees room again.
    let eps: Vec<myelin_api::Endpoint> = client(lab, "node1").get("/v1/endpoints").unwrap();
    assert_eq!(eps.len(), 5);
    for (i, cid) in ids.iter().enumerate() {
        let ifname = format!("eth{i}");
        let r =
            run_cni("DEL", &conf(&sock), &[("CNI_CONTAINERID", cid), ("CNI_IFNAME", &ifname), ("CNI_NETNS", &netns)]);
        assert_eq!(r.code, 0, "DEL {cid}: {}", r.raw);
    }
    let r = run_cni("ADD", &conf(&sock), &[("CNI_CONTAINERID", "x6"), ("CNI_IFNAME", "eth9"), ("CNI_NETNS", &netns)]);
    assert_eq!(r.code, 0, "ADD after DELs: {}", r.raw);
}

#[test]
fn version_and_status() {
    let v = run_cni("VERSION", &json!({"cniVersion": "1.0.0"}), &[]);
    assert_eq!(v.code, 0);
    assert!(v.stdout["supportedVersions"].as_array().unwrap().iter().any(|x| x == "1.0.0"));
    let s = run_cni("STATUS", &conf("/run/myelin/no-such-agent.sock"), &[]);
    assert_eq!(s.code, 1);
    assert_eq!(s.stdout["code"], 50);
}

#[test]
fn ipam_200_adds_and_dels_never_duplicate_and_survive_restart() {
    let mut g = LabGuard::up(LAB, "ipam");
    let sock = g.lab().node("node1").unwrap().agent_socket.display().to_string();
    let pod = NetnsGuard::new("ipam");
    let netns = pod.path().display().to_string();
    let mut seen = std::collections::HashSet::new();
    for i in 0..200 {
        let cid = format!("ipam-{i}");
        let ifname = format!("e{i}");
        let r =
            run_cni("ADD", &conf(&sock), &[("CNI_CONTAINERID", &cid), ("CNI_IFNAME", &ifname), ("CNI_NETNS", &netns)]);
        assert_eq!(r.code, 0, "ADD {i}: {}", r.raw);
        let addr = r.stdout["ips"][0]["address"].as_str().unwrap().to_owned();
        assert!(seen.insert(addr.clone()), "address {addr} handed out twice");
    }
    let before: myelin_api::IpamState = client(g.lab(), "node1").get("/v1/ipam").unwrap();
    assert_eq!(before.allocations.len(), 200);

    g.lab_mut().restart_agent("node1", nix::sys::signal::Signal::SIGKILL).expect("restart agent");
    let after: myelin_api::IpamState = client(g.lab(), "node1").get("/v1/ipam").unwrap();
    assert_eq!(before.allocations, after.allocations, "allocations survive an agent restart");

    // New ADDs after the restart still never collide with the 200.
    let r =
        run_cni("ADD", &conf(&sock), &[("CNI_CONTAINERID", "late"), ("CNI_IFNAME", "late0"), ("CNI_NETNS", &netns)]);
    assert_eq!(r.code, 0, "{}", r.raw);
    assert!(seen.insert(r.stdout["ips"][0]["address"].as_str().unwrap().to_owned()), "post-restart duplicate");

    for i in 0..200 {
        let cid = format!("ipam-{i}");
        let ifname = format!("e{i}");
        let r =
            run_cni("DEL", &conf(&sock), &[("CNI_CONTAINERID", &cid), ("CNI_IFNAME", &ifname), ("CNI_NETNS", &netns)]);
        assert_eq!(r.code, 0, "DEL {i}: {}", r.raw);
    }
    let r =
        run_cni("DEL", &conf(&sock), &[("CNI_CONTAINERID", "late"), ("CNI_IFNAME", "late0"), ("CNI_NETNS", &netns)]);
    assert_eq!(r.code, 0);
    let end: myelin_api::IpamState = client(g.lab(), "node1").get("/v1/ipam").unwrap();
    assert!(end.allocations.is_empty(), "all released: {:?}", end.allocations.len());
    assert!(!ip_n(&g.lab().node("node1").unwrap().netns, &["link", "show"]).contains("lxc"), "no veth left");
}

#[test]
fn gc_removes_attachments_the_runtime_no_longer_has_and_the_socket_is_root_only() {
    let g = LabGuard::up(LAB, "cngc");
    let lab = g.lab();
    let sock = lab.node("node1").unwrap().agent_socket;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the agent socket is root-only");

    let sock = sock.display().to_string();
    let pod = NetnsGuard::new("cngc");
    let netns = pod.path().display().to_string();
    for (cid, ifname) in [("keep", "eth0"), ("stale", "eth1")] {
        let r =
            run_cni("ADD", &conf(&sock), &[("CNI_CONTAINERID", cid), ("CNI_IFNAME", ifname), ("CNI_NETNS", &netns)]);
        assert_eq!(r.code, 0, "{}", r.raw);
    }
    let mut c = conf(&sock);
    c["cniVersion"] = json!("1.1.0");
    // A GC without the list is refused (code 7) and deletes nothing: a runtime that forgot
    // the list must not lose every endpoint.
    let r = run_cni("GC", &c, &[]);
    assert_error(&r, 7, "cni.dev/valid-attachments");
    let eps: Vec<myelin_api::Endpoint> = client(lab, "node1").get("/v1/endpoints").unwrap();
    assert_eq!(eps.len(), 2, "a refused GC deleted nothing: {eps:?}");
    c["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let r = run_cni("GC", &c, &[]);
    assert_eq!(r.code, 0, "GC: {}", r.raw);
    let eps: Vec<myelin_api::Endpoint> = client(lab, "node1").get("/v1/endpoints").unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].container_id, "keep");
    let ipam: myelin_api::IpamState = client(lab, "node1").get("/v1/ipam").unwrap();
    assert_eq!(ipam.allocations.len(), 1, "the stale attachment's address is released");
    // STATUS of a healthy agent: exit 0, no output.
    let s = run_cni("STATUS", &c, &[]);
    assert_eq!(s.code, 0, "{}", s.raw);
    // An empty list does mean "nothing is valid".
    c["cni.dev/valid-attachments"] = json!([]);
    let r = run_cni("GC", &c, &[]);
    assert_eq!(r.code, 0, "GC []: {}", r.raw);
    let eps: Vec<myelin_api::Endpoint> = client(lab, "node1").get("/v1/endpoints").unwrap();
    assert!(eps.is_empty(), "GC with [] removes every endpoint: {eps:?}");
}

/// A kubelet-style ADD (K8S_POD_UID set) without labels: the pod is not enforced by its labels
/// yet, so it must start as reserved:init (identity 5) with the init policy, not as an unlabelled
/// workload; an ADD that is not a Kubernetes pod (no K8S_POD_UID) and has no labels is an
/// ordinary workload with empty labels.
#[test]
fn a_kubernetes_add_without_labels_starts_as_the_init_identity() {
    let g = LabGuard::up(LAB, "cnii");
    let lab = g.lab();
    let node = lab.node("node1").unwrap();
    let sock = node.agent_socket.display().to_string();
    let (k8s, plain) = (NetnsGuard::new("cnik"), NetnsGuard::new("cnin"));
    let (k8s_ns, plain_ns) = (k8s.path().display().to_string(), plain.path().display().to_string());
    let k8s_env = [
        ("CNI_CONTAINERID", "ctr-k8s"),
        ("CNI_NETNS", k8s_ns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;K8S_POD_UID=7c9e6679-7425-40de"),
    ];
    let plain_env = [
        ("CNI_CONTAINERID", "ctr-plain"),
        ("CNI_NETNS", plain_ns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=q"),
    ];
    let add = run_cni("ADD", &conf(&sock), &k8s_env);
    assert_eq!(add.code, 0, "ADD failed: {}", add.raw);
    let add2 = run_cni("ADD", &conf(&sock), &plain_env);
    assert_eq!(add2.code, 0, "ADD failed: {}", add2.raw);
    let eps: Vec<myelin_api::Endpoint> = client(lab, "node1").get("/v1/endpoints").unwrap();
    let by_pod = |name: &str| {
        eps.iter().find(|e| e.pod_name.as_deref() == Some(name)).unwrap_or_else(|| panic!("{name}: {eps:?}"))
    };
    let (p, q) = (by_pod("p"), by_pod("q"));
    assert!(p.labels_pending && p.labels.is_empty(), "{p:?}");
    assert_eq!(p.identity, 5, "reserved:init until the labels are known: {p:?}");
    assert!(!q.labels_pending && q.identity >= 256, "not a Kubernetes pod: an ordinary workload: {q:?}");
    for env in [&k8s_env, &plain_env] {
        let del = run_cni("DEL", &conf(&sock), env);
        assert_eq!(del.code, 0, "DEL failed: {}", del.raw);
    }
}
