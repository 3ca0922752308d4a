//! In-kernel tests of the cgroup hook kinds beyond sock_addr: the socket load
//! balancer's `sock` programs (sock_release forgets a closed socket's
//! translations, post_bind4 refuses a bind to a service frontend) and the
//! `cgroup_skb` traffic accounting; their pinned links adopted by a second
//! datapath; a kernel without one attach type still loading the rest.
//!
//! Topology: the pods of tests/datapath.rs (A 10.200.0.2, B 10.200.0.3); the
//! "client" processes run in pod A's netns and in a fresh cgroup v2
//! directory that plays the pods' cgroup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use common::*;
use libbpf_rs::{MapCore, MapHandle};
use myelin_bpf::objects::CgroupHook;
use myelin_bpf::{Backend, CgroupTraffic, Datapath, FeatureProbe, Frontend, LoadOptions};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);

/// Every cgroup hook and the program attached there.
const CGROUP_PROGRAMS: [(&str, CgroupHook); 8] = [
    ("sock4_connect", CgroupHook::Connect4),
    ("sock4_sendmsg", CgroupHook::Sendmsg4),
    ("sock4_recvmsg", CgroupHook::Recvmsg4),
    ("sock4_getpeername", CgroupHook::Getpeername4),
    ("sock_release", CgroupHook::SockRelease),
    ("sock4_post_bind", CgroupHook::PostBind4),
    ("traffic_ingress", CgroupHook::SkbIngress),
    ("traffic_egress", CgroupHook::SkbEgress),
];

/// (backend address, backend port) of every lb4_sock_revnat entry.
fn sock_revnat(lab: &Lab) -> Vec<(Ipv4Addr, u16)> {
    let map = MapHandle::from_pinned_path(lab.pin.0.join("lb4_sock_revnat")).expect("lb4_sock_revnat pinned");
    map.keys()
        .map(|k| {
            // struct lb4_sock_key: u64 cookie, be32 address, be16 port, u16 pad.
            assert_eq!(k.len(), 16, "lb4_sock_key layout");
            (Ipv4Addr::new(k[8], k[9], k[10], k[11]), u16::from_be_bytes([k[12], k[13]]))
        })
        .collect()
}

#[test]
fn sock_release_deletes_the_translations_of_a_closed_udp_socket() {
    let lab = Lab::new();
    let dp = lab.dp();
    assert!(dp.objects().contains(&"sock"), "sock loads: {:?}", dp.unavailable());
    let cg = Cgroup::new();
    assert!(dp.attach_cgroup(&cg.0).expect("attach cgroup"), "newly attached");
    let (a, b) = (lab.a(), lab.b());
    let _srv = serve(&b.ns.0, &["udp-echo-server", &b.ip.to_string(), "5353"]);
    dp.upsert_service(Frontend { address: VIP, port: 53, protocol: 17 }, &[Backend { address: b.ip, port: 5353 }])
        .expect("service");

    for mode in ["connected", "unconnected"] {
        assert_eq!(sock_revnat(&lab), vec![], "{mode}: nothing remembered yet");
        let mut child = in_cgroup_cmd(&cg, &a.ns.0, &["udp-hold", &VIP.to_string(), "53", mode, "3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the client");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let guard = ChildGuard(child);
        let mut line = String::new();
        out.read_line(&mut line).expect("client result");
        assert_eq!(line.trim(), format!("ok {VIP}:53"), "{mode}: the VIP answered, replies show the VIP");
        assert_eq!(sock_revnat(&lab), vec![(b.ip, 5353)], "{mode}: the open socket's translation is remembered");
        stdin.write_all(b"close\n").expect("tell the client to close");
        line.clear();
        // close() returns after the socket is released: sock_release has run.
        out.read_line(&mut line).expect("client closed");
        assert_eq!(line.trim(), "closed");
        assert_eq!(sock_revnat(&lab), vec![], "{mode}: the closed socket left no entry behind");
        drop(guard);
    }
}

#[test]
fn bind_to_a_service_frontend_from_the_cgroup_is_refused() {
    let lab = Lab::new();
    let dp = lab.dp();
    let cg = Cgroup::new();
    dp.attach_cgroup(&cg.0).expect("attach cgroup");
    let (a, b) = (lab.a(), lab.b());
    let vip = VIP.to_string();
    let tcp80 = Frontend { address: VIP, port: 80, protocol: 6 };
    dp.upsert_service(tcp80, &[Backend { address: b.ip, port: 8080 }]).expect("service");

    assert_eq!(in_cgroup(&cg, &a.ns.0, &["bind", "tcp", &vip, "80"]), "error 1", "EPERM: a TCP frontend");
    assert_eq!(in_cgroup(&cg, &a.ns.0, &["bind", "tcp", &vip, "81"]), "ok", "another port of the VIP is free");
    assert_eq!(in_cgroup(&cg, &a.ns.0, &["bind", "udp", &vip, "80"]), "ok", "the service is TCP only");
    assert_eq!(netprobe_out(&a.ns.0, &["bind", "tcp", &vip, "80"]), "ok", "outside the cgroup: not ours to refuse");
    assert!(dp.delete_service(tcp80).expect("delete"));
    assert_eq!(in_cgroup(&cg, &a.ns.0, &["bind", "tcp", &vip, "80"]), "ok", "no longer a frontend");
}

#[test]
fn traffic_is_counted_per_cgroup_both_ways_and_only_for_the_cgroup() {
    let lab = Lab::new();
    let dp = lab.dp();
    assert!(dp.objects().contains(&"cgroup_skb"), "cgroup_skb loads: {:?}", dp.unavailable());
    let cg = Cgroup::new();
    let cgroup_id = std::fs::metadata(&cg.0).unwrap().ino();
    dp.attach_cgroup(&cg.0).expect("attach cgroup");
    assert!(dp.cgroup_traffic().expect("rows").is_empty(), "nothing counted yet");
    let (a, b) = (lab.a(), lab.b());
    let b_ip = b.ip.to_string();
    let _srv = serve(&b.ns.0, &["udp-echo-server", &b_ip, "7"]);

    // One 5-byte datagram out, its echo back: 20 + 8 + 5 bytes each way.
    assert_eq!(in_cgroup(&cg, &a.ns.0, &["udp-probe", &b_ip, "7", "3"]), "ok");
    let want = CgroupTraffic { cgroup_id, ingress_packets: 1, ingress_bytes: 33, egress_packets: 1, egress_bytes: 33 };
    assert_eq!(dp.cgroup_traffic().expect("rows"), vec![want], "counted under the cgroup's id, both ways");
    assert_eq!(dp.cgroup_traffic_of(cgroup_id).expect("row"), Some(want));

    // The same exchange from a process outside the cgroup: not counted.
    assert_eq!(netprobe_out(&a.ns.0, &["udp-probe", &b_ip, "7", "3"]), "ok");
    assert_eq!(dp.cgroup_traffic().expect("rows"), vec![want], "nothing counted outside the cgroup");

    // A TCP exchange adds to the same row.
    let _tcp = serve(&b.ns.0, &["tcp-echo-server", &b_ip, "8080"]);
    assert_eq!(in_cgroup(&cg, &a.ns.0, &["tcp-connect", &b_ip, "8080", "3"]), "ok");
    let row = dp.cgroup_traffic_of(cgroup_id).expect("row").expect("still there");
    assert!(row.egress_packets > 3 && row.ingress_packets > 2, "the UDP exchange, then handshake, data, echo: {row:?}");
    assert!(dp.delete_cgroup_traffic(cgroup_id).expect("delete"));
    assert!(!dp.delete_cgroup_traffic(cgroup_id).expect("delete again"), "already gone");
}

#[test]
fn cgroup_links_are_pinned_and_a_second_datapath_adopts_them() {
    let lab = Lab::new();
    let dp = lab.dp();
    let cg = Cgroup::new();
    assert!(dp.attach_cgroup(&cg.0).expect("attach cgroup"));
    let links = lab.pin.0.join("links/cgroup");
    let attached = |hook| myelin_bpf::testing::cgroup_prog_ids(&cg.0, hook).expect("query the cgroup");
    for (name, hook) in CGROUP_PROGRAMS {
        assert!(links.join(name).exists(), "{name} link pinned");
        assert!(dp.cgroup_attached(hook), "{name} attached");
        assert_eq!(attached(hook).len(), 1, "{name}: one program at {hook:?}");
    }

    // A restarted agent: a new load on the same pin directory adopts the links.
    let dp2 = Datapath::load(&lab.pin.0).expect("second load");
    assert!(!dp2.attach_cgroup(&cg.0).expect("attach again"), "adopted: nothing newly attached");
    dp2.activate().expect("activate");
    for (name, hook) in CGROUP_PROGRAMS {
        assert!(dp2.cgroup_attached(hook), "{name} still attached");
        assert_eq!(attached(hook).len(), 1, "{name}: still one program at {hook:?}, no double attach");
    }
    // The adopted programs still run: the accounting counts.
    let b_ip = lab.b().ip.to_string();
    let _srv = serve(&lab.b().ns.0, &["udp-echo-server", &b_ip, "7"]);
    assert_eq!(in_cgroup(&cg, &lab.a().ns.0, &["udp-probe", &b_ip, "7", "3"]), "ok");
    let cgroup_id = std::fs::metadata(&cg.0).unwrap().ino();
    assert!(dp2.cgroup_traffic_of(cgroup_id).expect("row").is_some_and(|r| r.egress_packets == 1));

    dp2.detach_cgroup().expect("detach");
    assert!(!links.exists(), "link pins removed");
    for (name, hook) in CGROUP_PROGRAMS {
        assert!(!dp2.cgroup_attached(hook), "{name} detached");
    }
}

#[test]
fn a_kernel_without_sock_release_loads_and_attaches_the_rest() {
    let probed = myelin_bpf::probe_features();
    for name in ["cgroup_sock", "cgroup_sock_release", "cgroup_post_bind4", "cgroup_skb"] {
        assert!(probed.iter().any(|f| f.name == name && f.available), "{name} on this kernel: {probed:#?}");
    }
    // The same kernel, minus the sock_release attach type.
    let features: Vec<FeatureProbe> = probed
        .into_iter()
        .map(|mut f| {
            if f.name == "cgroup_sock_release" {
                f.available = false;
                f.detail = "pretend: kernel < 5.9".into();
            }
            f
        })
        .collect();
    let lab = Lab::unloaded(&[], LoadOptions::default());
    let dp = Datapath::load_probed(&lab.pin.0, &LoadOptions::default(), &features).expect("load");
    assert!(dp.objects().contains(&"sock") && dp.objects().contains(&"cgroup_skb"), "{:?}", dp.objects());
    let missing = dp.unavailable().iter().find(|u| u.object == "sock_release").expect("sock_release reported");
    assert!(missing.reason.contains("pretend: kernel < 5.9"), "{missing:?}");
    let cg = Cgroup::new();
    assert!(dp.attach_cgroup(&cg.0).expect("attach the rest"));
    let links = lab.pin.0.join("links/cgroup");
    for (name, hook) in CGROUP_PROGRAMS {
        let ids = myelin_bpf::testing::cgroup_prog_ids(&cg.0, hook).expect("query");
        if hook == CgroupHook::SockRelease {
            assert!(ids.is_empty() && !links.join(name).exists() && !dp.cgroup_attached(hook), "{name} left out");
        } else {
            assert_eq!(ids.len(), 1, "{name} attached");
            assert!(links.join(name).exists(), "{name} pinned");
        }
    }
}
