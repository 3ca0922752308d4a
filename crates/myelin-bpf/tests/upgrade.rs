//! Upgrading the datapath in place: the pin directory of a node running the
//! ABI v1 datapath (bpf/testdata/abi-v1, as the first release left it: its
//! maps pinned, its TCX links pinned on live veths) is loaded by this build
//! while a TCP stream runs between two pods. Maps whose layout changed are
//! migrated, the live links switch to the new programs with BPF_LINK_UPDATE,
//! and the stream never stops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use myelin_bpf::testing::{link_prog_id, prog_id, LegacyDatapath, LXC_ABI_V1};
use myelin_bpf::{Datapath, LoadOptions, NodeConfig};

/// endpoint_info is the same in v1 and v2: ifindex, endpoint id, identity, flags, mac, host mac.
fn endpoint_info_v1(ifindex: u32, ep_id: u32, identity: u32, mac: [u8; 6], host_mac: [u8; 6]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [ifindex, ep_id, identity, 0] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v.extend_from_slice(&mac);
    v.extend_from_slice(&host_mac);
    v
}

/// node_config v1: node ip, gateway, pod cidr, mask, flags, pad, four CT timeouts (10 x u32).
fn node_config_v1() -> Vec<u8> {
    let words = [
        u32::from_ne_bytes(NODE_IP.octets()),
        u32::from_ne_bytes(GATEWAY.octets()),
        u32::from_ne_bytes([10, 200, 0, 0]),
        u32::from_ne_bytes([255, 255, 255, 0]),
        0,
        0,
        0,
        0,
        0,
        77, // ct_other_s: a non-default value must survive the conversion
    ];
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// A condition on the sink's timeline of (ms, bytes so far).
type Until = dyn Fn(&[(u64, u64)]) -> bool;

#[test]
fn upgrade_from_abi_v1_migrates_maps_and_swaps_live_links_without_stopping_a_stream() {
    let mut lab = Lab::unloaded(&[300, 301], LoadOptions::default());
    let pin = lab.pin.0.clone();
    let node = lab.node.0.clone();
    let pods: Vec<_> =
        lab.pods.iter().map(|p| (p.ip, p.host_if.clone(), p.ep_id, p.identity, p.mac, p.host_mac)).collect();

    // The old agent: v1 programs, maps and links.
    {
        let pods = pods.clone();
        let pin = pin.clone();
        in_netns(&node, move || {
            let old = LegacyDatapath::load(&pin, &LXC_ABI_V1).expect("load the v1 datapath");
            old.write("node_config", &0u32.to_ne_bytes(), &node_config_v1()).expect("v1 node config");
            for (ip, ifname, ep_id, identity, mac, host_mac) in &pods {
                let idx = ifindex(ifname);
                old.write("endpoints", &ip.octets(), &endpoint_info_v1(idx, *ep_id, *identity, *mac, *host_mac))
                    .expect("v1 endpoint");
                old.attach_endpoint(ifname, idx).expect("v1 links");
            }
            // The old agent exits: its pins keep maps and links alive.
        });
    }
    assert!(!pin.join("abi_meta").exists(), "v1 recorded no ABI");
    let (a, b) = (lab.a(), lab.b());
    assert_eq!(ping(&a.ns.0, b.ip, 2, None), 2, "v1 forwards");
    let v1_ingress = link_prog_id(&pin.join("links/lxc1/ingress")).expect("v1 link");

    // A TCP stream A -> B through the v1 datapath.
    let b_ip = b.ip.to_string();
    let mut sink = netprobe(&b.ns.0, &["tcp-sink", &b_ip, "7100"]).stdout(Stdio::piped()).spawn().expect("sink");
    let mut lines = BufReader::new(sink.stdout.take().expect("sink stdout")).lines();
    assert_eq!(lines.next().expect("banner").expect("banner"), "ready");
    let _sink = ChildGuard(sink);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let client = netprobe(&a.ns.0, &["tcp-stream", &b_ip, "7100", "5"]).stdout(Stdio::piped()).spawn().expect("stream");
    let mut timeline: Vec<(u64, u64)> = Vec::new();
    let take = |timeline: &mut Vec<(u64, u64)>, until: &Until| -> Option<u64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) else { continue };
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["t", ms, total] => timeline.push((ms.parse().expect("ms"), total.parse().expect("bytes"))),
                ["done", total] => return Some(total.parse().expect("bytes")),
                _ => panic!("sink said {l:?}"),
            }
            if until(timeline) {
                return None;
            }
        }
        panic!("the sink stopped reporting: {:?}", timeline.last());
    };
    assert_eq!(take(&mut timeline, &|t| t.last().is_some_and(|x| x.1 > 4 << 20)), None, "stream under way");

    // The new agent loads into the same pin directory, restores endpoints
    // (it would from its store) and activates.
    let t_upgrade0 = Datapath::monotonic_now_ns() / 1_000_000;
    let pods2 = pods.clone();
    let pin2 = pin.clone();
    let dp = in_netns(&node, move || {
        let dp = Datapath::load(&pin2).expect("load this build over v1 pins");
        for (ip, ifname, ep_id, identity, mac, host_mac) in &pods2 {
            let idx = ifindex(ifname);
            dp.upsert_endpoint(
                *ip,
                &myelin_bpf::EndpointEntry {
                    ifindex: idx,
                    endpoint_id: *ep_id,
                    identity: *identity,
                    flags: 0,
                    mac: *mac,
                    host_mac: *host_mac,
                },
            )
            .expect("endpoint");
            assert!(!dp.attach_endpoint(ifname, idx).expect("adopt"), "v1 links adopted, not replaced");
        }
        dp.activate().expect("activate");
        dp
    });
    let t_upgrade1 = Datapath::monotonic_now_ns() / 1_000_000;

    let report = dp.upgrade_report();
    eprintln!("{report:#?}");
    assert_eq!(report.previous_abi, Some(1));
    assert_eq!(report.links_updated, 4, "both links of both pods now run the new programs");
    let ct = report.migrated.iter().find(|m| m.map == "ct4").expect("ct4 migrated");
    assert!(ct.copied >= 1 && ct.how.starts_with("converted"), "{ct:?}");
    assert!(report.migrated.iter().any(|m| m.map == "node_config" && m.copied == 1), "{report:?}");
    assert!(!pin.join("migrate").exists(), "old maps released");
    assert_eq!(
        link_prog_id(&pin.join("links/lxc1/ingress")).expect("link"),
        prog_id(&dp, "from_container").expect("new program"),
        "the pinned link runs this build's from_container"
    );
    assert_ne!(v1_ingress, prog_id(&dp, "from_container").expect("id"));
    assert_eq!(
        dp.node_config().expect("node config"),
        NodeConfig { node_ip: NODE_IP, gateway: GATEWAY, pod_cidr: [10, 200, 0, 0].into(), pod_cidr_prefix: 24 }
    );
    assert_eq!(dp.ct_timeouts().expect("timeouts").other, Duration::from_secs(77), "v1 settings carried over");

    // The stream's connection was carried over with the identities of its ends.
    let conn = dp
        .ct_entries()
        .expect("ct")
        .into_iter()
        .find(|e| e.protocol == 6 && e.dport == 7100)
        .expect("the stream's connection is tracked in the new map");
    assert_eq!((conn.src_identity, conn.dst_identity), (300, 301), "{conn:?}");

    // The stream ran through the upgrade without a pause and without loss.
    let total = loop {
        if let Some(total) = take(&mut timeline, &|_| false) {
            break total;
        }
    };
    let out = client.wait_with_output().expect("stream client");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("sent {total}"), "every byte arrived");
    let during: Vec<_> = timeline.iter().filter(|(ms, _)| *ms >= t_upgrade0 && *ms <= t_upgrade1 + 200).collect();
    assert!(!during.is_empty(), "the upgrade happened while the stream ran");
    let mut last_change = timeline[0].0;
    let mut worst = 0;
    for w in timeline.windows(2) {
        if w[1].1 > w[0].1 {
            worst = worst.max(w[1].0 - last_change);
            last_change = w[1].0;
        }
    }
    eprintln!("upgrade took {} ms; longest pause of the stream {worst} ms", t_upgrade1 - t_upgrade0);
    assert!(worst < 1000, "the stream paused for {worst} ms");

    // The new programs report flow events (v1 had none).
    let got = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let g = got.clone();
    let reader = dp.event_reader(move |_| g.set(g.get() + 1)).expect("events");
    assert_eq!(ping(&lab.a().ns.0, lab.b().ip, 2, None), 2, "forwarding after the upgrade");
    assert!(wait_until(Duration::from_secs(5), || {
        reader.poll(Duration::from_millis(20)).expect("poll");
        got.get() > 0
    }));
    lab.dp = Some(dp);
}
