//! Pod networking on one node, proven with real traffic through the real
//! datapath: pod-to-pod (forwarded by eBPF), pod-to-node, node-to-pod and
//! pod-to-world with masquerade.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_e2e::*;

const LAB: &str = r"
nodes: [{name: node1}]
namespaces: [{name: default}]
pods:
  - {name: a, namespace: default, node: node1, labels: {app: a}}
  - {name: b, namespace: default, node: node1, labels: {app: b}}
external: [{name: world1}]
";

const FORWARDED: u8 = 0;

#[test]
fn pod_to_pod_tcp_udp_icmp_is_forwarded_by_ebpf_without_kernel_forwarding() {
    let g = LabGuard::up(LAB, "p2p");
    let lab = g.lab();
    let (a, b) = (pod_ns(lab, "default", "a"), pod_ns(lab, "default", "b"));
    let (ea, eb) = (endpoint_id(lab, "default", "a"), endpoint_id(lab, "default", "b"));
    let b_ip = pod_ip(lab, "default", "b");

    // With forwarding off in the node, only the eBPF redirect can carry pod-to-pod traffic.
    let node = node_ns(lab, "node1");
    sysctl(&node, "net.ipv4.ip_forward", Some("0"));
    assert_eq!(sysctl(&node, "net.ipv4.ip_forward", None), "0");

    let before_a = metric(lab, "node1", ea, "egress", FORWARDED);
    let before_b = metric(lab, "node1", eb, "ingress", FORWARDED);

    // TCP: 256 KiB echoed through a real connection.
    let l = tcp_listen(&b, b_ip);
    let srv = echo_once(l.try_clone().unwrap());
    let s = tcp_connect(&a, l.local_addr().unwrap()).expect("pod a reaches pod b over TCP");
    echo_roundtrip(s, 256 * 1024);
    let peer = srv.join().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(pod_ip(lab, "default", "a")), "no NAT between pods");

    // UDP and ICMP.
    assert!(udp_roundtrip(&a, &b, b_ip), "UDP request/response pod a -> pod b");
    assert!(ping(lab, "default/a", &b_ip.to_string()), "ping pod a -> pod b");

    let after_a = metric(lab, "node1", ea, "egress", FORWARDED);
    let after_b = metric(lab, "node1", eb, "ingress", FORWARDED);
    // veths aggregate segments (GSO), so count bytes: the 256 KiB sent a -> b all
    // went through the redirect, plus the UDP datagram and two echo requests.
    assert!(after_a.0 >= before_a.0 + 4, "egress forwarded packets of a moved: {before_a:?} -> {after_a:?}");
    assert!(after_b.0 >= before_b.0 + 4, "ingress forwarded packets of b moved: {before_b:?} -> {after_b:?}");
    assert!(after_a.1 >= before_a.1 + 256 * 1024, "egress bytes of a: {before_a:?} -> {after_a:?}");
    assert!(after_b.1 >= before_b.1 + 256 * 1024, "ingress bytes of b: {before_b:?} -> {after_b:?}");
}

#[test]
fn pod_to_node_and_node_to_pod() {
    let g = LabGuard::up(LAB, "p2n");
    let lab = g.lab();
    let a = pod_ns(lab, "default", "a");
    let node = node_ns(lab, "node1");
    let node_ip: std::net::Ipv4Addr = lab.node("node1").unwrap().address.parse().unwrap();
    let a_ip = pod_ip(lab, "default", "a");

    // pod -> node (TCP to the node's address)
    let l = tcp_listen(&node, node_ip);
    let srv = echo_once(l.try_clone().unwrap());
    echo_roundtrip(tcp_connect(&a, l.local_addr().unwrap()).expect("pod reaches node"), 64 * 1024);
    assert_eq!(srv.join().unwrap().ip(), std::net::IpAddr::V4(a_ip));
    assert!(ping(lab, "default/a", &node_ip.to_string()), "ping pod -> node");

    // node -> pod
    let l = tcp_listen(&a, a_ip);
    let srv = echo_once(l.try_clone().unwrap());
    echo_roundtrip(tcp_connect(&node, l.local_addr().unwrap()).expect("node reaches pod"), 64 * 1024);
    srv.join().unwrap();
    assert!(ping(lab, "node1", &a_ip.to_string()), "ping node -> pod");
    assert!(udp_roundtrip(&node, &a, a_ip), "UDP node -> pod");
}

#[test]
fn pod_to_world_is_masqueraded_to_the_node_address() {
    let g = LabGuard::up(LAB, "p2w");
    let lab = g.lab();
    let a = pod_ns(lab, "default", "a");
    let world = lab.external("world1").unwrap();
    let world_ip: std::net::Ipv4Addr = world.ip.parse().unwrap();
    let node_ip: std::net::Ipv4Addr = lab.node("node1").unwrap().address.parse().unwrap();

    let l = tcp_listen(&world.netns_path, world_ip);
    let srv = echo_once(l.try_clone().unwrap());
    echo_roundtrip(tcp_connect(&a, l.local_addr().unwrap()).expect("pod reaches the external host"), 64 * 1024);
    let seen = srv.join().unwrap();
    assert_eq!(seen.ip(), std::net::IpAddr::V4(node_ip), "the external host sees the node address, not the pod's");
    assert!(udp_roundtrip(&a, &world.netns_path, world_ip), "UDP pod -> world and back");
    assert!(ping(lab, "default/a", &world.ip), "ping pod -> world");
}

#[test]
fn pods_on_two_nodes_reach_each_other_natively_routed_without_nat() {
    let g = LabGuard::up(
        r"
nodes: [{name: node1}, {name: node2}]
routing: native
kvstore: none
namespaces: [{name: default}]
pods:
  - {name: a, namespace: default, node: node1}
  - {name: b, namespace: default, node: node2}
external: [{name: world1}]
",
        "x2n",
    );
    let lab = g.lab();
    let (a, b) = (pod_ns(lab, "default", "a"), pod_ns(lab, "default", "b"));
    let (a_ip, b_ip) = (pod_ip(lab, "default", "a"), pod_ip(lab, "default", "b"));
    let l = tcp_listen(&b, b_ip);
    let srv = echo_once(l.try_clone().unwrap());
    echo_roundtrip(tcp_connect(&a, l.local_addr().unwrap()).expect("node1 pod reaches node2 pod"), 64 * 1024);
    assert_eq!(srv.join().unwrap().ip(), std::net::IpAddr::V4(a_ip), "no masquerade between pod CIDRs");
    assert!(udp_roundtrip(&b, &a, a_ip), "UDP node2 pod -> node1 pod");
    // The world still sees the node address.
    let world = lab.external("world1").unwrap();
    let wl = tcp_listen(&world.netns_path, world.ip.parse().unwrap());
    let srv = echo_once(wl.try_clone().unwrap());
    echo_roundtrip(tcp_connect(&b, wl.local_addr().unwrap()).expect("node2 pod reaches the world"), 1024);
    let node2: std::net::Ipv4Addr = lab.node("node2").unwrap().address.parse().unwrap();
    assert_eq!(srv.join().unwrap().ip(), std::net::IpAddr::V4(node2));
}
