//! In-kernel tests of the pod-veth datapath: network namespaces built with
//! `ip`, the real programs loaded and attached, real traffic.
//!
//! Topology per test (names unique per process + counter, so tests run in parallel):
//! ```text
//!  pod A netns                  node netns (ip_forward=0)                  pod B netns
//!  eth0 10.200.0.2/32 ---veth--- lxc1 (no IP)   lo 172.30.99.1/32   lxc2 ---veth--- eth0 10.200.0.3/32
//!  default via 10.200.0.1       routes POD/32 dev lxcN + permanent neigh
//! ```
//! Must run as root. Traffic helpers: tests/netprobe.py (python3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use myelin_bpf::{
    ensure_bpffs, probe_features, remove_pin_dir, Datapath, EndpointEntry, NodeConfig, DIR_EGRESS, DIR_INGRESS,
    DROP_INVALID_SIP, REASON_ARP_REPLY, REASON_FORWARDED, REASON_FROM_STACK, REASON_TO_STACK,
};

#[test]
fn pod_to_pod_forwarding_arp_metrics_and_antispoofing() {
    let lab = Lab::new();
    let (a, b) = (lab.a(), lab.b());
    let a_ns = a.ns.0.as_str();

    // (a) ICMP A -> B, forwarded by eBPF only (ip_forward=0 on the node).
    let fwd_a0 = lab.metric(a.ep_id, DIR_EGRESS, REASON_FORWARDED);
    let fwd_b0 = lab.metric(b.ep_id, DIR_INGRESS, REASON_FORWARDED);
    assert_eq!(ping(a_ns, b.ip, 5, None), 5, "ping pod A -> pod B");
    assert!(lab.metric(a.ep_id, DIR_EGRESS, REASON_FORWARDED) >= fwd_a0 + 5, "A egress FORWARDED");
    assert!(lab.metric(b.ep_id, DIR_INGRESS, REASON_FORWARDED) >= fwd_b0 + 5, "B ingress FORWARDED");
    assert!(lab.metric(b.ep_id, DIR_EGRESS, REASON_FORWARDED) >= 5, "B's replies forwarded too");

    // (e) ARP for the gateway was answered by eBPF with the host veth's MAC.
    let neigh = run(&["ip", "-n", a_ns, "neigh", "show", &GATEWAY.to_string(), "dev", "eth0"]);
    assert!(neigh.contains(&mac_str(a.host_mac)), "pod A's gateway neighbour is the host veth MAC: {neigh:?}");
    assert!(lab.metric(a.ep_id, DIR_EGRESS, REASON_ARP_REPLY) >= 1, "ARP reply counted");

    // (b) TCP: 1 MiB A -> B, echoed length back.
    let fwd_a1 = lab.metric(a.ep_id, DIR_EGRESS, REASON_FORWARDED);
    let b_ip = b.ip.to_string();
    let (mut server, mut out) = start_server(&b.ns.0, &["tcp-server", &b_ip, "7001"]);
    let reply = netprobe_out(a_ns, &["tcp-client", &b_ip, "7001", "1048576"]);
    assert_eq!(reply, "1048576", "TCP server received the whole stream");
    let mut line = String::new();
    out.read_line(&mut line).expect("server result");
    assert_eq!(line.trim(), "received 1048576");
    assert!(server.0.wait().expect("server exit").success());
    // 1 MiB needs well over 16 segments even with GSO/GRO-sized packets.
    assert!(lab.metric(a.ep_id, DIR_EGRESS, REASON_FORWARDED) >= fwd_a1 + 16, "TCP counted as FORWARDED");

    // (c) UDP: 20 datagrams echoed.
    let fwd_a2 = lab.metric(a.ep_id, DIR_EGRESS, REASON_FORWARDED);
    let fwd_b2 = lab.metric(b.ep_id, DIR_INGRESS, REASON_FORWARDED);
    let (mut userver, _uout) = start_server(&b.ns.0, &["udp-server", &b_ip, "7002"]);
    let got = netprobe_out(a_ns, &["udp-client", &b_ip, "7002", "20", "1.0"]);
    assert_eq!(got, "20", "all UDP datagrams echoed");
    assert!(
        wait_until(Duration::from_secs(5), || userver.0.try_wait().ok().flatten().is_some()),
        "UDP server exits after quit"
    );
    // (d) metrics moved by at least what was sent (20 + quit).
    assert!(lab.metric(a.ep_id, DIR_EGRESS, REASON_FORWARDED) >= fwd_a2 + 21);
    assert!(lab.metric(b.ep_id, DIR_INGRESS, REASON_FORWARDED) >= fwd_b2 + 21);

    // Node -> pod goes through the stack: counted by to_container (FROM_STACK),
    // the pod's replies to the node address by from_container (TO_STACK).
    let from_stack0 = lab.metric(a.ep_id, DIR_INGRESS, REASON_FROM_STACK);
    let to_stack0 = lab.metric(a.ep_id, DIR_EGRESS, REASON_TO_STACK);
    assert_eq!(ping(&lab.node.0, a.ip, 3, None), 3, "node -> pod A");
    assert!(lab.metric(a.ep_id, DIR_INGRESS, REASON_FROM_STACK) >= from_stack0 + 3);
    assert!(lab.metric(a.ep_id, DIR_EGRESS, REASON_TO_STACK) >= to_stack0 + 3);
    // ... and pod -> node address too.
    assert_eq!(ping(a_ns, NODE_IP, 2, None), 2, "pod A -> node");

    // (f) Spoofed source: a second address on pod A is not its endpoint address.
    let spoof = Ipv4Addr::new(10, 200, 0, 99);
    run(&["ip", "-n", a_ns, "addr", "add", &format!("{spoof}/32"), "dev", "eth0"]);
    // Keep the gateway resolved so the spoofed packets really leave the pod
    // (an ARP request from the spoofed address is, rightly, not answered).
    run(&[
        "ip",
        "-n",
        a_ns,
        "neigh",
        "replace",
        &GATEWAY.to_string(),
        "lladdr",
        &mac_str(a.host_mac),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let drops0 = lab.metric(0, DIR_EGRESS, DROP_INVALID_SIP);
    let fwd_b3 = lab.metric(b.ep_id, DIR_INGRESS, REASON_FORWARDED);
    assert_eq!(ping(a_ns, b.ip, 3, Some(spoof)), 0, "spoofed pings must not get through");
    assert!(lab.metric(0, DIR_EGRESS, DROP_INVALID_SIP) >= drops0 + 3, "DROP_INVALID_SIP counted");
    assert_eq!(lab.metric(b.ep_id, DIR_INGRESS, REASON_FORWARDED), fwd_b3, "nothing spoofed reached B");
    // The real address still works.
    assert_eq!(ping(a_ns, b.ip, 2, None), 2, "real source still forwarded");
}

#[test]
fn reload_reuses_maps_and_adopts_pinned_links() {
    let mut lab = Lab::new();
    let (a_ns, b_ip) = (lab.a().ns.0.clone(), lab.b().ip);
    assert_eq!(ping(&a_ns, b_ip, 3, None), 3, "before reload");
    let before = lab.metric(lab.a().ep_id, DIR_EGRESS, REASON_FORWARDED);
    let eps_before = lab.dp().endpoints().expect("endpoints");
    assert_eq!(eps_before.len(), 2);

    // Agent "exits": the datapath is dropped, pins keep maps and links.
    lab.dp = None;
    assert_eq!(ping(&a_ns, b_ip, 2, None), 2, "traffic flows with no agent running");

    let attached = lab.load_and_plumb();
    assert_eq!(attached, vec![false, false], "pinned links adopted, not re-plumbed");
    assert_eq!(lab.dp().endpoints().expect("endpoints"), eps_before, "endpoints survived in the pinned map");
    assert_eq!(
        lab.dp().node_config().expect("node config"),
        NodeConfig { node_ip: NODE_IP, gateway: GATEWAY, pod_cidr: Ipv4Addr::new(10, 200, 0, 0), pod_cidr_prefix: 24 }
    );
    assert_eq!(ping(&a_ns, b_ip, 3, None), 3, "after reload");
    assert!(
        lab.metric(lab.a().ep_id, DIR_EGRESS, REASON_FORWARDED) >= before + 5,
        "metrics kept counting in the same pinned map"
    );

    // Detach A: the stack (ip_forward=0) must not forward, so A is cut off.
    lab.dp().detach_endpoint("lxc1").expect("detach");
    assert!(!lab.dp().endpoint_attached("lxc1"));
    lab.dp().detach_endpoint("lxc1").expect("detach is idempotent");
    assert_eq!(ping(&a_ns, b_ip, 2, None), 0, "no eBPF, no forwarding");
}

#[test]
fn stale_link_of_recreated_veth_is_replaced() {
    let mut lab = Lab::new();
    let (a_ns, b_ip) = (lab.a().ns.0.clone(), lab.b().ip);
    assert_eq!(ping(&a_ns, b_ip, 2, None), 2);

    // Pod B's veth goes away and comes back with a new ifindex.
    let node = lab.node.0.clone();
    run(&["ip", "-n", &node, "link", "del", "lxc2"]);
    assert!(!lab.dp().endpoint_attached("lxc2"), "link of a deleted veth is not attached");
    let pod_b = lab.pods.pop().expect("pod b");
    lab.plumb_veth(&pod_b);
    lab.pods.push(pod_b);

    let attached = lab.load_and_plumb();
    assert_eq!(attached, vec![false, true], "A adopted, B's stale pin replaced");
    assert_eq!(ping(&a_ns, b_ip, 2, None), 2, "traffic to the recreated pod");
}

#[test]
fn map_api_roundtrip() {
    require_root();
    ensure_bpffs(Path::new("/sys/fs/bpf")).expect("bpffs");
    ensure_bpffs(Path::new("/sys/fs/bpf")).expect("bpffs twice");
    let pin = PinDir(PathBuf::from(format!("/sys/fs/bpf/{}", unique("api"))));
    let dp = Datapath::load(&pin.0).expect("load");
    assert!(pin.0.join("endpoints").exists() && pin.0.join("metrics").exists() && pin.0.join("links").is_dir());

    let ip = Ipv4Addr::new(10, 1, 2, 3);
    let ep = EndpointEntry {
        ifindex: 7,
        endpoint_id: 42,
        identity: 1234,
        flags: 0,
        mac: [2, 1, 2, 3, 4, 5],
        host_mac: [2, 9, 8, 7, 6, 5],
    };
    dp.upsert_endpoint(ip, &ep).expect("upsert");
    assert_eq!(dp.endpoints().expect("list"), vec![(ip, ep)]);
    assert_eq!(dp.endpoint(ip).expect("get"), Some(ep));
    assert!(dp.delete_endpoint(ip).expect("delete"));
    assert!(!dp.delete_endpoint(ip).expect("delete absent"));
    assert!(dp.endpoints().expect("list").is_empty());
    dp.delete_metrics(42).expect("delete metrics of an unknown endpoint");
    assert!(dp.metrics().expect("metrics").is_empty());
    assert!(dp
        .set_node_config(&NodeConfig { node_ip: NODE_IP, gateway: GATEWAY, pod_cidr: GATEWAY, pod_cidr_prefix: 33 })
        .is_err());
    assert!(!dp.endpoint_attached("nope0"));
    dp.detach_endpoint("nope0").expect("detach of nothing is ok");
    assert!(dp.attach_endpoint("../x", 1).is_err(), "path-like ifnames are refused");
    assert!(
        matches!(Datapath::load(&pin.0.join("a.b")), Err(myelin_bpf::BpfError::Invalid(_))),
        "dotted pin dir refused clearly"
    );
    assert_eq!(
        myelin_bpf::node_pin_dir(Path::new("/sys/fs/bpf"), "n1.example.com"),
        PathBuf::from("/sys/fs/bpf/myelin/n1_example_com")
    );
    drop(dp);
    remove_pin_dir(&pin.0).expect("remove");
    assert!(!pin.0.exists());
    remove_pin_dir(&pin.0).expect("remove absent");
}

#[test]
fn feature_probes_are_fast_and_find_what_the_datapath_needs() {
    require_root();
    let t = Instant::now();
    let probes = probe_features();
    let took = t.elapsed();
    for p in &probes {
        eprintln!("{:<18} {:<5} {}", p.name, p.available, p.detail);
    }
    assert!(took < Duration::from_secs(1), "probes took {took:?}");
    for needed in ["tcx", "bpf_redirect_peer", "xdp", "ringbuf"] {
        let p = probes.iter().find(|p| p.name == needed).unwrap_or_else(|| panic!("no {needed} probe"));
        assert!(p.available, "{needed}: {}", p.detail);
    }
}
