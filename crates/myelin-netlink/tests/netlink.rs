//! Kernel tests: real network namespaces, root required.
//!
//! The library acts on the calling thread's netns, so every scenario runs on a dedicated thread
//! that has entered a fresh "node" netns (`in_netns` + a current-thread runtime). Namespaces are
//! owned by RAII guards that delete them even when a test panics; names carry pid + counter so
//! tests run in parallel. `ip` is used only to set up and inspect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use myelin_netlink::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "myelin-netlink integration tests create network namespaces and need root; \
         run `cargo test -p myelin-netlink` as root"
    );
}

/// A named netns (`ip netns add`) deleted on drop.
struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    fn new(role: &str) -> Self {
        require_root();
        let name = format!("mnl{role}-{}", unique());
        run("ip", &["netns", "add", &name]);
        let path = PathBuf::from(format!("/var/run/netns/{name}"));
        TestNetns { name, path }
    }

    /// `ip -n NAME args...`, panicking with context on failure; returns stdout.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Run `f` to completion on a thread inside this netns, with a current-thread runtime.
    fn run<T, Fut>(&self, f: impl FnOnce() -> Fut + Send + 'static) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T>,
    {
        in_netns(&self.path, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a current-thread runtime")
                .block_on(f())
        })
        .unwrap_or_else(|e| panic!("entering netns {}: {e}", self.name))
    }

    fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", name])
            .output()
            .expect("running ip")
            .status
            .success()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("spawning {cmd}: {e}"));
    assert!(out.status.success(), "`{cmd} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spec(pod: &TestNetns, pod_ifname: &str) -> PodVeth {
    PodVeth {
        host_ifname: host_ifname(&format!("ctr-{}", unique()), pod_ifname),
        netns_path: pod.path.clone(),
        pod_ifname: pod_ifname.to_string(),
        pod_ip: Ipv4Addr::new(10, 200, 0, 5),
        gateway: Ipv4Addr::new(10, 200, 0, 1),
        mtu: Some(1400),
    }
}

fn create(node: &TestNetns, s: &PodVeth) -> Result<PodVethResult, NetlinkError> {
    let s = s.clone();
    node.run(move || async move { create_pod_veth(&s).await })
}

#[test]
fn create_pod_veth_end_to_end() {
    let node = TestNetns::new("n");
    let pod = TestNetns::new("p");
    let s = spec(&pod, "eth0");
    let res = create(&node, &s).expect("create_pod_veth");

    // Pod side: address, up, mtu, mac, routes, lo up.
    let link = pod.ip(&["-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains("<BROADCAST,MULTICAST,UP"), "pod link not up: {link}");
    assert!(link.contains("mtu 1400"), "pod mtu: {link}");
    assert!(link.contains(&format_mac(&res.pod_mac)), "pod mac {}: {link}", format_mac(&res.pod_mac));
    assert!(link.starts_with(&format!("{}: eth0@", res.pod_ifindex)), "pod ifindex: {link}");
    let addr = pod.ip(&["-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("inet 10.200.0.5/32"), "pod addr: {addr}");
    let routes = pod.ip(&["-4", "route", "show"]);
    let has = |prefix: &str, scope_link: bool| {
        routes.lines().any(|l| l.starts_with(prefix) && (!scope_link || l.contains("scope link")))
    };
    assert!(has("default via 10.200.0.1 dev eth0", false), "routes: {routes}");
    assert!(has("10.200.0.1 dev eth0 ", true), "routes: {routes}");
    let lo = pod.ip(&["-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains(",UP"), "lo not up: {lo}");

    // Host side: in the node netns, up, peer is the pod's eth0, no temp name left behind.
    let host = node.ip(&["-o", "link", "show", "dev", &s.host_ifname]);
    assert!(host.contains(",UP"), "host side not up: {host}");
    assert!(host.contains(&format!("{}@if{}", s.host_ifname, res.pod_ifindex)), "peer: {host}");
    assert_eq!(res.host.name, s.host_ifname);
    assert!(res.host.up);
    assert_eq!(res.host.mtu, 1400);
    assert!(host.contains(&format_mac(&res.host.mac)), "host mac: {host}");
    assert!(!node.ip(&["-o", "link"]).contains("mytmp"));
    assert!(!pod.ip(&["-o", "link"]).contains("mytmp"));

    // The library sees the same thing by name and index, from the node netns.
    let (name, idx) = (s.host_ifname.clone(), res.host.index);
    let (by_name, by_index) =
        node.run(move || async move { (link_by_name(&name).await.unwrap(), link_by_index(idx).await.unwrap()) });
    let (by_name, by_index) = (by_name.expect("host by name"), by_index.expect("host by index"));
    assert_eq!((by_name.index, by_name.mac), (res.host.index, res.host.mac));
    assert_eq!(by_index.name, s.host_ifname);

    // And from inside the pod netns, through in_netns directly.
    let pod_view = pod.run(|| async { link_by_name("eth0").await.unwrap() }).expect("eth0 in pod");
    assert_eq!((pod_view.index, pod_view.mac), (res.pod_ifindex, res.pod_mac));
    assert!(pod.run(|| async { link_by_name("eth0").await.unwrap() }).is_some());
    let name = s.host_ifname.clone();
    assert!(pod.run(move || async move { link_by_name(&name).await.unwrap() }).is_none());

    // CHECK passes on what ADD built.
    let p = pod.path.clone();
    node.run(move || async move {
        check_pod_interface(&p, "eth0", Ipv4Addr::new(10, 200, 0, 5), Ipv4Addr::new(10, 200, 0, 1)).await
    })
    .expect("check_pod_interface on a fresh pod");

    // Deleting the host side removes the pod side too.
    let name = s.host_ifname.clone();
    assert!(node.run(move || async move { delete_link(&name).await.unwrap() }));
    assert!(!pod.has_link("eth0"));
}

#[test]
fn default_mtu_when_unset() {
    let node = TestNetns::new("n");
    let pod = TestNetns::new("p");
    let mut s = spec(&pod, "eth0");
    s.mtu = None;
    let res = create(&node, &s).expect("create_pod_veth without mtu");
    assert_eq!(res.host.mtu, 1500);
}

#[test]
fn missing_netns_is_netns_not_found() {
    let node = TestNetns::new("n");
    let missing = PathBuf::from(format!("/var/run/netns/mnl-missing-{}", unique()));
    let s = PodVeth {
        host_ifname: host_ifname("missing", "eth0"),
        netns_path: missing.clone(),
        pod_ifname: "eth0".into(),
        pod_ip: Ipv4Addr::new(10, 0, 0, 2),
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        mtu: None,
    };
    match create(&node, &s) {
        Err(NetlinkError::NetnsNotFound(p)) => assert_eq!(p, missing),
        other => panic!("expected NetnsNotFound, got {other:?}"),
    }
    assert!(!node.has_link(&s.host_ifname), "nothing may be created");

    let m = missing.clone();
    let r = node.run(move || async move {
        check_pod_interface(&m, "eth0", Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 1)).await
    });
    assert!(matches!(r, Err(NetlinkError::NetnsNotFound(_))), "{r:?}");
    assert!(matches!(in_netns(&missing, || ()), Err(NetlinkError::NetnsNotFound(_))));
}

#[test]
fn duplicate_host_ifname_is_rejected() {
    let node = TestNetns::new("n");
    let pod1 = TestNetns::new("p");
    let pod2 = TestNetns::new("q");
    let s1 = spec(&pod1, "eth0");
    let first = create(&node, &s1).expect("first create");
    let mut s2 = spec(&pod2, "eth0");
    s2.host_ifname = s1.host_ifname.clone();
    match create(&node, &s2) {
        Err(e @ NetlinkError::LinkExists { .. }) => {
            assert!(e.to_string().contains(&s1.host_ifname), "message names the link: {e}");
        }
        other => panic!("expected LinkExists, got {other:?}"),
    }
    // The first pair is untouched, nothing appeared in the second pod.
    let host = node.ip(&["-o", "link", "show", "dev", &s1.host_ifname]);
    assert!(host.contains(&format!("@if{}", first.pod_ifindex)), "{host}");
    assert!(pod1.has_link("eth0"));
    assert!(!pod2.has_link("eth0"));
    assert!(!pod2.ip(&["-o", "link"]).contains("mytmp"));
}

#[test]
fn failure_midway_cleans_up() {
    let node = TestNetns::new("n");
    let pod = TestNetns::new("p");
    pod.ip(&["link", "add", "eth0", "type", "bridge"]);
    let s = spec(&pod, "eth0");
    let err = create(&node, &s).expect_err("pod_ifname already exists in the pod");
    match &err {
        NetlinkError::LinkExists { name, .. } => assert_eq!(name, "eth0"),
        other => panic!("expected LinkExists for eth0, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("eth0") && msg.contains(&pod.name), "message names link and netns: {msg}");
    assert!(!node.has_link(&s.host_ifname), "host side must be deleted");
    assert!(!pod.ip(&["-o", "link"]).contains("mytmp"), "peer must be gone");
    assert!(pod.ip(&["-d", "-o", "link", "show", "dev", "eth0"]).contains("bridge"), "the pod's own eth0 is untouched");

    // Invalid names fail before anything is created.
    let mut bad = spec(&pod, "eth1");
    bad.host_ifname = "this-name-is-too-long".into();
    assert!(matches!(create(&node, &bad), Err(NetlinkError::InvalidName { .. })));
}

#[test]
fn delete_link_is_idempotent() {
    let node = TestNetns::new("n");
    node.ip(&["link", "add", "d0", "type", "bridge"]);
    let r = node.run(|| async {
        (delete_link("d0").await.unwrap(), delete_link("d0").await.unwrap(), delete_link("nope0").await.unwrap())
    });
    assert_eq!(r, (true, false, false));
    assert!(!node.has_link("d0"));
    assert!(node.run(|| async { link_by_name("d0").await.unwrap() }).is_none());
    assert!(node.run(|| async { link_by_index(999_999).await.unwrap() }).is_none());
}

#[test]
fn host_routes_replace_and_delete() {
    let node = TestNetns::new("n");
    node.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    node.ip(&["link", "set", "va", "up"]);
    node.ip(&["link", "set", "vb", "up"]);
    let ip = Ipv4Addr::new(10, 1, 2, 3);
    let (ia, ib) = node.run(|| async {
        (link_by_name("va").await.unwrap().unwrap().index, link_by_name("vb").await.unwrap().unwrap().index)
    });

    node.run(move || async move {
        replace_host_route(ip, ia).await.unwrap();
        replace_host_route(ip, ia).await.unwrap(); // idempotent
        assert_eq!(host_routes(ia).await.unwrap(), vec![ip]);
    });
    let r = node.ip(&["-4", "route", "show", "10.1.2.3"]);
    assert!(r.starts_with("10.1.2.3 dev va ") && r.contains("scope link") && r.lines().count() == 1, "{r}");

    // Replace moves the route to another device.
    node.run(move || async move { replace_host_route(ip, ib).await.unwrap() });
    let r = node.ip(&["-4", "route", "show", "10.1.2.3"]);
    assert!(r.starts_with("10.1.2.3 dev vb ") && r.contains("scope link") && r.lines().count() == 1, "{r}");

    let (wrong_dev, first, second) = node.run(move || async move {
        (
            delete_host_route(ip, ia).await.unwrap(),
            delete_host_route(ip, ib).await.unwrap(),
            delete_host_route(ip, ib).await.unwrap(),
        )
    });
    assert_eq!((wrong_dev, first, second), (false, true, false));
    assert!(node.ip(&["-4", "route", "show", "10.1.2.3"]).trim().is_empty());
}

#[test]
fn neighbours_replace_and_delete() {
    let node = TestNetns::new("n");
    node.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    node.ip(&["link", "set", "va", "up"]);
    let ip = Ipv4Addr::new(10, 1, 2, 4);
    let mac1 = parse_mac("02:00:00:00:00:01").unwrap();
    let mac2 = parse_mac("02:00:00:00:00:02").unwrap();
    let idx = node.run(|| async { link_by_name("va").await.unwrap().unwrap().index });

    node.run(move || async move {
        replace_neighbour(ip, mac1, idx).await.unwrap();
        replace_neighbour(ip, mac2, idx).await.unwrap();
        assert_eq!(neighbour_mac(ip, idx).await.unwrap(), Some(mac2));
    });
    let n = node.ip(&["neigh", "show", "10.1.2.4", "dev", "va"]);
    assert!(n.contains("lladdr 02:00:00:00:00:02") && n.contains("PERMANENT"), "{n}");

    let (a, b, after) = node.run(move || async move {
        (
            delete_neighbour(ip, idx).await.unwrap(),
            delete_neighbour(ip, idx).await.unwrap(),
            neighbour_mac(ip, idx).await.unwrap(),
        )
    });
    assert_eq!((a, b, after), (true, false, None));
    assert!(node.ip(&["neigh", "show", "10.1.2.4", "dev", "va"]).trim().is_empty());
}

#[test]
fn check_pod_interface_reports_mismatches() {
    let node = TestNetns::new("n");
    let pod = TestNetns::new("p");
    let s = spec(&pod, "eth0");
    create(&node, &s).expect("create_pod_veth");
    let check = |ifname: &'static str, ip: Ipv4Addr, gw: Ipv4Addr| {
        let p = pod.path.clone();
        node.run(move || async move { check_pod_interface(&p, ifname, ip, gw).await })
    };
    let (ip, gw) = (s.pod_ip, s.gateway);
    check("eth0", ip, gw).expect("matching check");

    let reason = |r: Result<(), NetlinkError>| match r {
        Err(NetlinkError::CheckFailed { reason, .. }) => reason,
        other => panic!("expected CheckFailed, got {other:?}"),
    };
    assert!(reason(check("eth9", ip, gw)).contains("does not exist"));
    let r = reason(check("eth0", Ipv4Addr::new(10, 200, 0, 6), gw));
    assert!(r.contains("10.200.0.6/32") && r.contains("10.200.0.5/32"), "{r}");
    let r = reason(check("eth0", ip, Ipv4Addr::new(10, 200, 0, 254)));
    assert!(r.contains("no default route via 10.200.0.254"), "{r}");

    pod.ip(&["link", "set", "eth0", "down"]);
    let err = check("eth0", ip, gw).unwrap_err();
    assert!(err.to_string().contains("down") && err.to_string().contains(&pod.name), "{err}");
}

#[test]
fn link_ipv4_first_address() {
    let node = TestNetns::new("n");
    node.ip(&["link", "add", "up0", "type", "bridge"]);
    node.ip(&["addr", "add", "192.168.77.2/24", "dev", "up0"]);
    node.ip(&["link", "add", "bare0", "type", "bridge"]);
    let (a, b, c) = node.run(|| async {
        (link_ipv4("up0").await.unwrap(), link_ipv4("bare0").await.unwrap(), link_ipv4("nope0").await)
    });
    assert_eq!(a, Some((Ipv4Addr::new(192, 168, 77, 2), 24)));
    assert_eq!(b, None);
    assert!(matches!(c, Err(NetlinkError::LinkNotFound { ref name, .. }) if name == "nope0"), "{c:?}");
}

#[test]
fn ensure_dummy_with_addr_is_idempotent() {
    let node = TestNetns::new("n");
    let ip = Ipv4Addr::new(10, 99, 0, 1);
    let (a, b) = node.run(move || async move {
        (
            ensure_dummy_with_addr("myelin_gw", ip, 32).await.unwrap(),
            ensure_dummy_with_addr("myelin_gw", ip, 32).await.unwrap(),
        )
    });
    assert_eq!(a.index, b.index);
    assert!(a.up && b.up);
    let link = node.ip(&["-d", "-o", "link", "show", "dev", "myelin_gw"]);
    // Dummy, or a port-less bridge on kernels built without CONFIG_DUMMY (like this lab's).
    assert!((link.contains("dummy") || link.contains("bridge")) && link.contains(",UP"), "{link}");
    let addrs = node.ip(&["-o", "-4", "addr", "show", "dev", "myelin_gw"]);
    assert_eq!(addrs.matches("inet 10.99.0.1/32").count(), 1, "{addrs}");

    // An existing link that lost its address and went down gets both back.
    node.ip(&["addr", "flush", "dev", "myelin_gw"]);
    node.ip(&["link", "set", "myelin_gw", "down"]);
    let c = node.run(move || async move { ensure_dummy_with_addr("myelin_gw", ip, 32).await.unwrap() });
    assert_eq!(c.index, a.index);
    assert!(c.up);
    assert!(node.ip(&["-o", "-4", "addr", "show", "dev", "myelin_gw"]).contains("inet 10.99.0.1/32"));
    assert_eq!(node.run(|| async { link_ipv4("myelin_gw").await.unwrap() }), Some((ip, 32)));
}

#[test]
fn in_netns_propagates_panics_and_isolates() {
    let ns = TestNetns::new("n");
    // A fresh netns has only lo, and its lo is down.
    let lo = ns.run(|| async { link_by_name("lo").await.unwrap().unwrap() });
    assert!(!lo.up);
    let r = std::panic::catch_unwind(|| in_netns(&ns.path, || panic!("boom")));
    assert!(r.is_err(), "a panic inside in_netns reaches the caller");
}

/// The agent calls from a multi-thread runtime: its workers (spawned from a thread already in the
/// node netns) inherit that netns, and the pod work must not move any of them.
#[test]
fn works_from_a_multi_thread_runtime() {
    let node = TestNetns::new("n");
    let pod = TestNetns::new("p");
    let s = spec(&pod, "net1");
    let s2 = s.clone();
    let res = in_netns(&node.path, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("multi-thread runtime");
        rt.block_on(async move {
            let created = tokio::spawn(async move { create_pod_veth(&s2).await }).await.expect("join");
            // Every worker still sees the node netns (it holds the host side, not the pod side).
            let host = tokio::spawn(async { link_by_name("lo").await }).await.expect("join");
            (created, host)
        })
    })
    .expect("entering node netns");
    let (created, lo) = res;
    let created = created.expect("create_pod_veth from a multi-thread runtime");
    assert!(lo.expect("lo lookup").is_some());
    assert!(node.has_link(&s.host_ifname));
    assert!(!node.has_link("net1"));
    assert!(pod.has_link("net1"));
    assert_eq!(created.host.name, s.host_ifname);
}
