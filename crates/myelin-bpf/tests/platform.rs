//! In-kernel tests of the loader's many objects and hook kinds: the uplink's
//! tc programs and XDP prefilter and the cgroup socket load balancer loaded
//! side by side with the pod programs in one pin directory, the clsact
//! fallback for kernels without TCX, flow events through the ring buffer, and
//! process events from tp_btf and tracepoint programs.
//!
//! Topology (as in datapath.rs, plus an "outside" host on the uplink):
//! ```text
//!  outside netns                 node netns                              pods A, B
//!  eth0 172.31.0.2/24 ---veth--- up0 172.31.0.1/24 (uplink)   lxc1, lxc2 ---veth--- 10.200.0.2, .3
//!  route 10.200.0.0/24 via 172.31.0.1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use myelin_bpf::{
    AttachMode, Backend, EventSettings, Frontend, LoadOptions, MonitorAggregation, PolicyMapEntry, RawEvent,
    TunnelRoute, DIR_EGRESS, DIR_INGRESS, DROP_NO_TUNNEL_ENDPOINT, DROP_POLICY, DROP_POLICY_DENY, EVENT_DROP,
    EVENT_F_TUNNEL, EVENT_POLICY_VERDICT, EVENT_TRACE, IDENTITY_HOST, IDENTITY_WORLD, REASON_ARP_REPLY,
    REASON_FORWARDED, REASON_FROM_STACK, REASON_TO_STACK, TRACE_TO_LXC, TRACE_TO_OVERLAY,
};

const OUTSIDE: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);

/// An outside host on a veth whose node side is the uplink `up0`.
fn add_outside(lab: &Lab) -> Netns {
    let out = Netns::new("out");
    let (n, o) = (&lab.node.0, &out.0);
    run(&["ip", "-n", n, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", o]);
    run(&["ip", "-n", n, "addr", "add", &format!("{UPLINK_IP}/24"), "dev", "up0"]);
    run(&["ip", "-n", n, "link", "set", "up0", "up"]);
    run(&["ip", "-n", o, "addr", "add", &format!("{OUTSIDE}/24"), "dev", "eth0"]);
    run(&["ip", "-n", o, "link", "set", "eth0", "up"]);
    run(&["ip", "-n", o, "route", "add", "10.200.0.0/24", "via", &UPLINK_IP.to_string()]);
    out
}

#[test]
fn uplink_xdp_and_cgroup_programs_load_beside_the_pod_programs() {
    let lab = Lab::new();
    let out = add_outside(&lab);
    let dp = lab.dp();
    assert!(
        ["lxc", "netdev", "xdp", "sock"].iter().all(|o| dp.objects().contains(o)),
        "every object loads on this kernel: {:?}, missing {:?}",
        dp.objects(),
        dp.unavailable()
    );
    let node = lab.node.0.clone();
    let pin = lab.pin.0.clone();
    in_netns(&node, || dp.attach_uplink("up0", ifindex("up0")).expect("attach uplink"));
    for leaf in ["uplink_in", "uplink_out", "xdp"] {
        assert!(pin.join("links/up0").join(leaf).exists(), "{leaf} link pinned");
    }
    assert!(dp.pinned_endpoints().expect("pinned").iter().all(|n| n != "up0"), "the uplink is not an endpoint");

    // A pod of another node (a workload identity in the ipcache) -> pod A
    // arrives on the uplink: from_netdev runs A's ingress
    // policy and delivers straight into A (redirect_peer). The node forwards
    // nothing (ip_forward=0): had the stack routed it, to_container would
    // have counted FROM_STACK and the ping could not have reached A at all.
    let a = lab.a();
    dp.upsert_ipcache(OUTSIDE, 32, 300).expect("the outside host is a remote pod");
    let fwd0 = lab.metric(a.ep_id, DIR_INGRESS, REASON_FORWARDED);
    let stack0 = lab.metric(a.ep_id, DIR_INGRESS, REASON_FROM_STACK);
    run(&["ip", "netns", "exec", &node, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(ping(&out.0, a.ip, 3, None), 3, "outside -> pod A through the uplink programs");
    assert!(lab.metric(a.ep_id, DIR_INGRESS, REASON_FORWARDED) >= fwd0 + 3, "delivered by from_netdev");
    assert_eq!(lab.metric(a.ep_id, DIR_INGRESS, REASON_FROM_STACK), stack0, "not through the node's routing");

    // ... and its ingress policy applies there: default deny drops at the uplink.
    dp.set_endpoint_policy(a.ep_id, true, false, &[]).expect("deny all ingress");
    assert_eq!(ping(&out.0, a.ip, 2, None), 0, "policy enforced on the uplink path");
    assert!(lab.metric(a.ep_id, DIR_INGRESS, DROP_POLICY) >= 2);
    dp.set_endpoint_policies(&[(a.ep_id, None)]).expect("clear");
    assert_eq!(ping(&out.0, a.ip, 2, None), 2);

    // The world (no workload identity) goes through the node's stack, whose
    // conntrack must see it (the masquerade would rewrite replies otherwise).
    dp.delete_ipcache(OUTSIDE, 32).expect("back to world");
    let (fwd1, stack1) =
        (lab.metric(a.ep_id, DIR_INGRESS, REASON_FORWARDED), lab.metric(a.ep_id, DIR_INGRESS, REASON_FROM_STACK));
    assert_eq!(ping(&out.0, a.ip, 2, None), 2, "the world reaches pod A through the stack");
    assert_eq!(lab.metric(a.ep_id, DIR_INGRESS, REASON_FORWARDED), fwd1, "not redirected at the uplink");
    assert!(lab.metric(a.ep_id, DIR_INGRESS, REASON_FROM_STACK) >= stack1 + 2);

    // XDP prefilter: the outside host is denied before any skb exists.
    dp.prefilter_deny(OUTSIDE, 32).expect("deny");
    assert_eq!(ping(&out.0, a.ip, 2, None), 0, "dropped by XDP");
    assert_eq!(ping(&out.0, UPLINK_IP, 2, None), 0, "even towards the node");
    let rows = dp.prefilter().expect("prefilter");
    assert!(rows.iter().any(|r| r.network == OUTSIDE && r.prefix_len == 32 && r.packets >= 4), "{rows:?}");
    assert!(dp.prefilter_allow(OUTSIDE, 32).expect("allow"));
    assert_eq!(ping(&out.0, UPLINK_IP, 2, None), 2, "allowed again");

    // Socket load balancing: a process of the pods' cgroup connects to a
    // service frontend and reaches a backend; getpeername() shows the frontend.
    let cg = Cgroup::new();
    dp.attach_cgroup(&cg.0).expect("attach cgroup");
    let b = lab.b();
    let b_ip = b.ip.to_string();
    let _srv = serve(&b.ns.0, &["tcp-echo-server", &b_ip, "8080"]);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    dp.upsert_service(Frontend { address: vip, port: 80, protocol: 6 }, &[Backend { address: b.ip, port: 8080 }])
        .expect("service");
    let svc = dp.services().expect("services");
    assert_eq!(svc.len(), 1);
    assert_eq!(svc[0].backends, vec![Backend { address: b.ip, port: 8080 }]);
    let reply = in_cgroup(&cg, &a.ns.0, &["tcp-connect-peer", &vip.to_string(), "80", "3"]);
    assert_eq!(reply, format!("ok {vip}:80"), "VIP reached a backend, peer shows the VIP");
    let outside_cgroup = netprobe_out(&a.ns.0, &["tcp-connect-peer", &vip.to_string(), "80", "1"]);
    assert_ne!(outside_cgroup.split(' ').next(), Some("ok"), "not translated outside the cgroup: {outside_cgroup}");
    assert!(dp.delete_service(Frontend { address: vip, port: 80, protocol: 6 }).expect("delete"));
    assert!(dp.services().expect("services").is_empty());
    dp.detach_cgroup().expect("detach cgroup");
    in_netns(&node, || dp.detach_uplink("up0").expect("detach uplink"));
    assert!(!pin.join("links/up0").exists(), "uplink links gone");
}

#[test]
fn clsact_fallback_forwards_and_adopts_like_tcx() {
    let mut lab = Lab::with_options(&[0, 0], LoadOptions { objects: None, attach_mode: Some(AttachMode::Tc) });
    assert_eq!(lab.dp().attach_mode(), AttachMode::Tc);
    let (a, b) = (lab.a(), lab.b());
    let filters = run(&["tc", "-n", &lab.node.0, "filter", "show", "dev", "lxc1", "ingress"]);
    assert!(filters.contains("from_container") && filters.contains("direct-action"), "clsact filter: {filters}");
    assert!(!lab.pin.0.join("links/lxc1/ingress").exists(), "no TCX link in tc mode");
    let fwd0 = lab.metric(a.ep_id, myelin_bpf::DIR_EGRESS, REASON_FORWARDED);
    assert_eq!(ping(&a.ns.0, b.ip, 3, None), 3, "pod to pod over clsact (ip_forward=0)");
    assert!(lab.metric(a.ep_id, myelin_bpf::DIR_EGRESS, REASON_FORWARDED) >= fwd0 + 3);
    let node = lab.node.0.clone();
    assert!(in_netns(&node, || lab.dp().endpoint_attached("lxc1")), "tc query finds the filters");

    // A restarted agent finds the filters: nothing re-attached.
    let (a_ns, b_ip) = (a.ns.0.clone(), b.ip);
    lab.dp = None;
    assert_eq!(ping(&a_ns, b_ip, 2, None), 2, "filters outlive the agent");
    let attached = lab.load_and_plumb();
    assert_eq!(attached, vec![true, true], "a new program replaces the old one on the same filter");
    assert_eq!(ping(&a_ns, b_ip, 2, None), 2);
    in_netns(&node, || lab.dp().detach_endpoint("lxc1").expect("detach"));
    let filters = run(&["tc", "-n", &lab.node.0, "filter", "show", "dev", "lxc1", "ingress"]);
    assert!(!filters.contains("from_container"), "filter removed: {filters}");
    assert_eq!(ping(&a_ns, b_ip, 2, None), 0, "no eBPF, no forwarding");
}

/// (type, sub type, endpoint, rule, direction, captured bytes) of an event.
type Ev = (u8, u8, u32, u32, u8, usize);
type Seen = Rc<RefCell<Vec<Ev>>>;

#[test]
fn verdicts_come_out_as_events_through_the_ring_buffer() {
    let lab = Lab::new();
    let dp = lab.dp();
    dp.set_event_settings(&EventSettings {
        aggregation: MonitorAggregation::Medium,
        capture_len: 64,
        ..EventSettings::default()
    })
    .expect("settings");
    let seen: Seen = Rc::default();
    let sink = seen.clone();
    let reader = dp
        .event_reader(move |rec| {
            let e = RawEvent::parse(rec).expect("a whole record");
            sink.borrow_mut().push((e.event_type, e.sub_type, e.endpoint_id, e.rule_id, e.direction, e.packet.len()));
        })
        .expect("reader");
    reader.drain().expect("drain");
    seen.borrow_mut().clear();
    let (a, b) = (lab.a(), lab.b());
    assert_eq!(ping(&a.ns.0, b.ip, 1, None), 1);
    dp.set_endpoint_policy(b.ep_id, true, false, &[]).expect("default deny B ingress");
    assert_eq!(ping(&a.ns.0, b.ip, 1, None), 0);
    let got = wait_events(&reader, &seen, |ev| {
        ev.iter().any(|e| e.0 == EVENT_TRACE && e.1 == TRACE_TO_LXC && e.2 == b.ep_id)
            && ev.iter().any(|e| e.0 == EVENT_DROP && e.1 == DROP_POLICY && e.2 == b.ep_id && e.4 == DIR_INGRESS)
            && ev.iter().any(|e| e.0 == EVENT_POLICY_VERDICT && e.2 == b.ep_id)
    });
    assert!(got.iter().all(|e| e.5 > 0 && e.5 <= 64), "packet bytes captured, at most 64: {got:?}");
    assert!(got.iter().all(|e| e.1 != DROP_POLICY_DENY), "no explicit deny rule exists: {got:?}");
    assert!(dp.events_lost().expect("lost").iter().all(|n| *n == 0), "nothing lost");
}

fn wait_events(reader: &myelin_bpf::EventReader, seen: &Seen, done: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        reader.poll(Duration::from_millis(50)).expect("poll");
        if done(&seen.borrow()) {
            return seen.borrow().clone();
        }
        assert!(std::time::Instant::now() < deadline, "events never came: {:?}", seen.borrow());
    }
}

/// Run `sh -c SCRIPT` from a shell that first moved itself into `cg`; returns (pid, exit status).
fn run_in_cgroup(cg: &Cgroup, script: &str) -> (u32, i32) {
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {}/cgroup.procs && exec sh -c '{script}'", cg.0.display()))
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    (pid, out.status.code().unwrap_or(-1))
}

#[test]
fn process_exec_and_exit_come_from_tp_btf_and_tracepoint_programs() {
    use myelin_bpf::{ProcessEvent, ProcessEventKind, ProcessReader};
    use std::os::unix::fs::MetadataExt;

    let lab = Lab::new();
    let dp = lab.dp();
    assert!(dp.objects().contains(&"process"), "process object loads: {:?}", dp.unavailable());
    assert_eq!(dp.attach_tracing().expect("attach tracing"), 2, "both links created");
    let tracing = lab.pin.0.join("links/tracing");
    assert!(tracing.join("process_exec").exists() && tracing.join("process_exit").exists());
    assert_eq!(dp.attach_tracing().expect("again"), 0, "links running this build's programs are kept");

    let seen: Rc<RefCell<Vec<ProcessEvent>>> = Rc::default();
    let sink = seen.clone();
    let reader = ProcessReader::open(&lab.pin.0, move |e| sink.borrow_mut().push(e)).expect("reader");
    let cg = Cgroup::new();
    let cgroup_id = std::fs::metadata(&cg.0).unwrap().ino();
    let (pid, status) = run_in_cgroup(&cg, "exit 3");
    assert_eq!(status, 3);
    // Both events were queued before the child was reaped: one poll sees them.
    reader.poll(Duration::from_millis(0)).expect("poll");
    let mine: Vec<ProcessEvent> = seen.borrow().iter().filter(|e| e.pid == pid).cloned().collect();
    // Two execs: the shell we spawn, then (after it joined the cgroup) the one it becomes.
    let execs: Vec<&ProcessEvent> = mine.iter().filter(|e| e.kind == ProcessEventKind::Exec).collect();
    assert_eq!(execs.len(), 2, "{mine:#?}");
    let exec = execs[1];
    assert_eq!(exec.cgroup_id, cgroup_id, "{exec:?}");
    assert_eq!(exec.ppid, std::process::id(), "{exec:?}");
    assert!(exec.filename.ends_with("/sh"), "{exec:?}");
    assert_eq!(exec.comm, "sh", "{exec:?}");
    let exit = mine.iter().find(|e| e.kind == ProcessEventKind::Exit).unwrap_or_else(|| panic!("exit: {mine:#?}"));
    assert_eq!((exit.cgroup_id, exit.exit_code), (cgroup_id, 3 << 8), "{exit:?}");
    assert!(exec.ktime_ns < exit.ktime_ns);
    assert_eq!(reader.lost().expect("lost"), 0);

    // Detached, the programs stop running (the kernel releases an unpinned
    // link from a work queue: wait for it, with a deadline).
    dp.detach_tracing().expect("detach");
    assert!(!tracing.exists(), "link pins removed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        seen.borrow_mut().clear();
        let (pid, _) = run_in_cgroup(&cg, "exit 0");
        reader.poll(Duration::from_millis(0)).expect("poll");
        if seen.borrow().iter().all(|e| e.pid != pid) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "events still come once detached: {:?}", seen.borrow());
    }
}

/// One event as the overlay test needs it.
#[derive(Clone, Debug)]
struct TunnelEv {
    event_type: u8,
    sub_type: u8,
    endpoint: u32,
    src_identity: u32,
    tunnel_remote: Option<Ipv4Addr>,
}

fn mac_of(ns: &str, dev: &str) -> String {
    let out = run(&["ip", "-n", ns, "-o", "link", "show", dev]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {dev} in {ns}: {out}"))
        .to_owned()
}

/// The overlay: `mvx`, a VXLAN device in collect-metadata mode on the node
/// with the overlay programs attached, and `rvx`, the remote node's (`out`,
/// the outside netns) own. Returns their MACs.
fn add_overlay(lab: &Lab, out: &Netns) -> (String, String) {
    let (node, o) = (&lab.node.0, &out.0);
    for (ns, dev) in [(node, "mvx"), (o, "rvx")] {
        run(&["ip", "-n", ns, "link", "add", dev, "type", "vxlan", "external", "dstport", "8472"]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    let dp = lab.dp();
    in_netns(node, || dp.attach_tunnel("mvx", ifindex("mvx")).expect("attach the overlay"));
    (mac_of(node, "mvx"), mac_of(o, "rvx"))
}

/// The overlay: a VXLAN device in collect-metadata mode on the node, the
/// overlay programs on it, and a "remote node" (the outside netns) whose pod
/// address 10.201.0.2 sits behind its own external VXLAN device and sends with
/// a fixed VNI (an `encap ip id VNI` route). The VNI is the sender's identity:
/// the node never learns 10.201.0.2 (no ipcache entry, so by address it would
/// be "world"), yet pod A's policy, which allows only identity 300, lets
/// VNI 300 in and drops VNI 301. Replies get their tunnel key from
/// `tunnel_map` with pod A's identity as the VNI.
#[test]
fn the_overlay_carries_the_senders_identity_in_the_vni_and_the_receiver_enforces_with_it() {
    const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
    let lab = Lab::new();
    let out = add_outside(&lab);
    let dp = lab.dp();
    assert!(dp.objects().contains(&"overlay"), "the overlay object loads: {:?}", dp.objects());
    let (node, o) = (lab.node.0.clone(), out.0.clone());
    let (mvx_mac, rvx_mac) = add_overlay(&lab, &out);
    run(&["ip", "-n", &o, "addr", "add", &format!("{REMOTE_POD}/32"), "dev", "rvx"]);
    let a = lab.a();
    let a_ip = a.ip.to_string();
    // The remote node: pods of this node are behind the tunnel, sent with VNI 300.
    let encap = |vni: &str| {
        run(&[
            "ip",
            "-n",
            &o,
            "route",
            "replace",
            "10.200.0.0/24",
            "encap",
            "ip",
            "id",
            vni,
            "dst",
            &UPLINK_IP.to_string(),
            "dev",
            "rvx",
        ]);
    };
    encap("300");
    run(&["ip", "-n", &o, "neigh", "replace", &a_ip, "lladdr", &mvx_mac, "dev", "rvx", "nud", "permanent"]);
    // This node: the remote pod CIDR is routed into the tunnel device; the overlay finds its node.
    run(&["ip", "-n", &node, "route", "add", "10.201.0.0/24", "dev", "mvx"]);
    run(&[
        "ip",
        "-n",
        &node,
        "neigh",
        "replace",
        &REMOTE_POD.to_string(),
        "lladdr",
        &rvx_mac,
        "dev",
        "mvx",
        "nud",
        "permanent",
    ]);
    run(&["ip", "netns", "exec", &node, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    for leaf in ["tunnel_in", "tunnel_out"] {
        assert!(lab.pin.0.join("links/mvx").join(leaf).exists(), "{leaf} link pinned");
    }
    assert!(dp.pinned_endpoints().expect("pinned").iter().all(|n| n != "mvx"), "the tunnel device is not an endpoint");
    dp.upsert_tunnel(Ipv4Addr::new(10, 201, 0, 77), 24, OUTSIDE).expect("tunnel route");
    assert_eq!(
        dp.tunnels().expect("tunnels"),
        vec![TunnelRoute { network: Ipv4Addr::new(10, 201, 0, 0), prefix_len: 24, node: OUTSIDE }]
    );
    assert!(dp.upsert_tunnel(REMOTE_POD, 33, OUTSIDE).is_err(), "a prefix longer than 32 is refused");

    // Pod A admits identity 300 only; 10.201.0.2 is in no ipcache.
    let allow_300 = PolicyMapEntry {
        identity: 300,
        direction: DIR_INGRESS,
        protocol: 0,
        port: 0,
        port_prefix_len: 0,
        deny: false,
        rule_id: 7,
        default: false,
    };
    dp.set_endpoint_policy(a.ep_id, true, false, &[allow_300]).expect("policy");
    dp.set_event_settings(&EventSettings { aggregation: MonitorAggregation::None, ..EventSettings::default() })
        .expect("every packet reported");
    let seen: Rc<RefCell<Vec<TunnelEv>>> = Rc::default();
    let sink = seen.clone();
    let reader = dp
        .event_reader(move |rec| {
            let e = RawEvent::parse(rec).expect("a whole record");
            sink.borrow_mut().push(TunnelEv {
                event_type: e.event_type,
                sub_type: e.sub_type,
                endpoint: e.endpoint_id,
                src_identity: e.src_identity,
                tunnel_remote: (e.flags & EVENT_F_TUNNEL != 0).then(|| Ipv4Addr::from(e.tunnel_remote.to_ne_bytes())),
            });
        })
        .expect("reader");
    let wait = |done: &dyn Fn(&[TunnelEv]) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            reader.poll(Duration::from_millis(50)).expect("poll");
            if done(&seen.borrow()) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "events never came: {:#?}", seen.borrow());
        }
    };

    // VNI 300: delivered into A by from_overlay, the reply tunnelled back by to_overlay.
    let fwd0 = lab.metric(a.ep_id, DIR_INGRESS, REASON_FORWARDED);
    assert_eq!(ping(&o, a.ip, 3, Some(REMOTE_POD)), 3, "remote pod -> A through the tunnel and back");
    assert!(lab.metric(a.ep_id, DIR_INGRESS, REASON_FORWARDED) >= fwd0 + 3, "delivered by from_overlay");
    wait(&|ev| {
        ev.iter().any(|e| {
            e.event_type == EVENT_TRACE
                && e.sub_type == TRACE_TO_LXC
                && e.endpoint == a.ep_id
                && e.src_identity == 300
                && e.tunnel_remote == Some(OUTSIDE)
        }) && ev.iter().any(|e| {
            e.event_type == EVENT_TRACE
                && e.sub_type == TRACE_TO_OVERLAY
                && e.src_identity == a.identity
                && e.tunnel_remote == Some(OUTSIDE)
        })
    });

    // VNI 301: the same address, another identity: A's policy drops it.
    seen.borrow_mut().clear();
    encap("301");
    let drops0 = lab.metric(a.ep_id, DIR_INGRESS, DROP_POLICY);
    assert_eq!(ping(&o, a.ip, 2, Some(REMOTE_POD)), 0, "identity 301 is not admitted");
    assert!(lab.metric(a.ep_id, DIR_INGRESS, DROP_POLICY) >= drops0 + 2, "dropped by A's ingress policy");
    wait(&|ev| {
        ev.iter().any(|e| {
            e.event_type == EVENT_DROP
                && e.sub_type == DROP_POLICY
                && e.endpoint == a.ep_id
                && e.src_identity == 301
                && e.tunnel_remote == Some(OUTSIDE)
        })
    });

    // No node for the destination: the reply is dropped, never sent without a key.
    encap("300");
    assert!(dp.delete_tunnel(REMOTE_POD, 24).expect("delete"));
    assert!(!dp.delete_tunnel(REMOTE_POD, 24).expect("delete again"), "already gone");
    let none0 = lab.metric(a.ep_id, DIR_EGRESS, DROP_NO_TUNNEL_ENDPOINT);
    assert_eq!(ping(&o, a.ip, 2, Some(REMOTE_POD)), 0, "no way back without a tunnel route");
    assert!(
        lab.metric(a.ep_id, DIR_EGRESS, DROP_NO_TUNNEL_ENDPOINT) >= none0 + 2,
        "the replies were dropped as having no tunnel endpoint"
    );

    in_netns(&node, || dp.detach_tunnel("mvx").expect("detach the overlay"));
    assert!(!lab.pin.0.join("links/mvx").exists(), "tunnel links gone");
}

/// One event with the packet bytes, for the exits tests.
#[derive(Clone, Debug)]
struct FullEv {
    event_type: u8,
    sub_type: u8,
    direction: u8,
    trace_reason: u8,
    ifindex: u32,
    endpoint: u32,
    src_identity: u32,
    dst_identity: u32,
    packet: Vec<u8>,
}

impl FullEv {
    fn ethertype(&self) -> u16 {
        self.packet.get(12..14).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    }
}

type FullSeen = Rc<RefCell<Vec<FullEv>>>;

fn full_reader(dp: &myelin_bpf::Datapath, seen: &FullSeen) -> myelin_bpf::EventReader {
    let sink = seen.clone();
    dp.event_reader(move |rec| {
        let e = RawEvent::parse(rec).expect("a whole record");
        sink.borrow_mut().push(FullEv {
            event_type: e.event_type,
            sub_type: e.sub_type,
            direction: e.direction,
            trace_reason: e.trace_reason,
            ifindex: e.ifindex,
            endpoint: e.endpoint_id,
            src_identity: e.src_identity,
            dst_identity: e.dst_identity,
            packet: e.packet.to_vec(),
        });
    })
    .expect("reader")
}

fn wait_full(reader: &myelin_bpf::EventReader, seen: &FullSeen, what: &str, done: impl Fn(&FullEv) -> bool) -> FullEv {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        reader.poll(Duration::from_millis(50)).expect("poll");
        if let Some(e) = seen.borrow().iter().find(|e| done(e)) {
            return e.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{what}: never came: {:#?}", seen.borrow());
    }
}

/// Send `count` copies of the Ethernet frame `frame` out of `dev` in netns `ns` (AF_PACKET).
fn send_frame(ns: &str, dev: &str, frame: &[u8], count: u32) {
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
                  s.bind((sys.argv[1], 0))\n\
                  for _ in range(int(sys.argv[3])):\n    s.send(bytes.fromhex(sys.argv[2]))\n";
    run(&["ip", "netns", "exec", ns, python(), "-c", script, dev, &hex, &count.to_string()]);
}

/// An Ethernet frame: dst, src, ethertype, payload padded to the 60-byte minimum.
fn eth_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// Ethernet/IPv4 ARP: (operation, sender MAC, sender IP, target IP) of a frame, if it is one.
fn arp_of(p: &[u8]) -> Option<(u16, [u8; 6], Ipv4Addr, Ipv4Addr)> {
    let a = p.get(14..42)?;
    (p.get(12..14)? == [0x08, 0x06]).then(|| {
        let ip = |o: usize| Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
        (u16::from_be_bytes([a[6], a[7]]), a[8..14].try_into().unwrap(), ip(14), ip(24))
    })
}

/// The exits that used to be bare returns: the ARP reply of from_container
/// comes out as a trace event through the ring buffer (to-endpoint, the
/// endpoint, the reply's bytes, no connection-tracking state) besides its
/// REASON_ARP_REPLY counter; frames that are not IPv4 (a gratuitous ARP, an
/// unknown ethertype) are counted by the "not ours" exit in both directions
/// (against the pod when its own address says it is the pod's) and never
/// reported, even at aggregation none.
#[test]
fn arp_replies_and_non_ip_frames_leave_through_the_exits() {
    let lab = Lab::with_identities(&[1000, 1001]);
    let dp = lab.dp();
    dp.set_event_settings(&EventSettings {
        aggregation: MonitorAggregation::Medium,
        capture_len: 64,
        ..EventSettings::default()
    })
    .expect("settings");
    let seen: FullSeen = Rc::default();
    let reader = full_reader(dp, &seen);
    let (a, b) = (lab.a(), lab.b());
    let lxc1 = in_netns(&lab.node.0, || ifindex("lxc1"));

    // Pod A resolves its gateway: the datapath answers, at the default aggregation too.
    run(&["ip", "-n", &a.ns.0, "neigh", "flush", "dev", "eth0"]);
    let replies0 = lab.metric(a.ep_id, DIR_EGRESS, REASON_ARP_REPLY);
    let from_stack0 = lab.metric(a.ep_id, DIR_INGRESS, REASON_FROM_STACK);
    assert_eq!(ping(&a.ns.0, b.ip, 1, None), 1);
    let reply = wait_full(&reader, &seen, "the ARP reply event", |e| e.ethertype() == 0x0806 && e.endpoint == a.ep_id);
    assert_eq!((reply.event_type, reply.sub_type), (EVENT_TRACE, TRACE_TO_LXC), "{reply:?}");
    assert_eq!((reply.endpoint, reply.direction, reply.ifindex), (a.ep_id, DIR_INGRESS, lxc1), "{reply:?}");
    assert_eq!((reply.src_identity, reply.dst_identity), (IDENTITY_HOST, a.identity), "{reply:?}");
    assert_eq!(reply.trace_reason, 0, "ARP is not connection-tracked: reason unknown: {reply:?}");
    assert_eq!(&reply.packet[0..6], &a.mac, "addressed to the pod");
    assert_eq!(arp_of(&reply.packet), Some((2, a.host_mac, GATEWAY, a.ip)), "the reply: gateway is-at host MAC");
    assert!(lab.metric(a.ep_id, DIR_EGRESS, REASON_ARP_REPLY) > replies0, "and counted as before");
    assert_eq!(
        lab.metric(a.ep_id, DIR_INGRESS, REASON_FROM_STACK),
        from_stack0,
        "the reply passes lxc1's egress (to_container) on its way out: not counted twice"
    );

    // Not IPv4: counted, but not reported.
    const ETH_P_EXPERIMENTAL: u16 = 0x88b5;
    let odd_out = eth_frame(a.host_mac, a.mac, ETH_P_EXPERIMENTAL, b"from the pod");
    let odd_in = eth_frame(a.mac, a.host_mac, ETH_P_EXPERIMENTAL, b"to the pod");
    let mut garp = vec![0, 1, 8, 0, 6, 4, 0, 1]; // Ethernet/IPv4 request ...
    garp.extend_from_slice(&a.mac);
    garp.extend_from_slice(&a.ip.octets());
    garp.extend_from_slice(&[0; 6]);
    garp.extend_from_slice(&a.ip.octets()); // ... for its own address: gratuitous
    let garp = eth_frame([0xff; 6], a.mac, 0x0806, &garp);
    let count = |ep, dir, reason| lab.metric(ep, dir, reason);
    let (out0, in0, garp0) = (
        count(0, DIR_EGRESS, REASON_TO_STACK),
        count(0, DIR_INGRESS, REASON_FROM_STACK),
        count(a.ep_id, DIR_EGRESS, REASON_TO_STACK),
    );
    send_frame(&a.ns.0, "eth0", &odd_out, 3);
    send_frame(&lab.node.0, "lxc1", &odd_in, 2);
    send_frame(&a.ns.0, "eth0", &garp, 1);
    assert!(
        wait_until(Duration::from_secs(5), || count(0, DIR_EGRESS, REASON_TO_STACK) >= out0 + 3
            && count(0, DIR_INGRESS, REASON_FROM_STACK) >= in0 + 2
            && count(a.ep_id, DIR_EGRESS, REASON_TO_STACK) > garp0),
        "not-IPv4 frames counted: from the pod (no address: endpoint 0) {out0} -> {}, to it {in0} -> {}, \
         its gratuitous ARP (its endpoint) {garp0} -> {}",
        count(0, DIR_EGRESS, REASON_TO_STACK),
        count(0, DIR_INGRESS, REASON_FROM_STACK),
        count(a.ep_id, DIR_EGRESS, REASON_TO_STACK)
    );
    reader.poll(Duration::from_millis(100)).expect("poll");
    assert!(
        seen.borrow()
            .iter()
            .all(|e| e.ethertype() != ETH_P_EXPERIMENTAL && arp_of(&e.packet).is_none_or(|arp| arp.0 == 2)),
        "not reported: {:#?}",
        seen.borrow()
    );

    // ... and not at aggregation none either: not flows (an idle node stays quiet).
    dp.set_event_settings(&EventSettings {
        aggregation: MonitorAggregation::None,
        capture_len: 64,
        ..EventSettings::default()
    })
    .expect("settings");
    let out1 = count(0, DIR_EGRESS, REASON_TO_STACK);
    send_frame(&a.ns.0, "eth0", &odd_out, 1);
    send_frame(&lab.node.0, "lxc1", &odd_in, 1);
    send_frame(&a.ns.0, "eth0", &garp, 1);
    assert!(wait_until(Duration::from_secs(5), || count(0, DIR_EGRESS, REASON_TO_STACK) > out1), "counted");
    reader.poll(Duration::from_millis(200)).expect("poll");
    assert!(
        seen.borrow()
            .iter()
            .all(|e| e.ethertype() != ETH_P_EXPERIMENTAL && arp_of(&e.packet).is_none_or(|arp| arp.0 == 2)),
        "never reported: {:#?}",
        seen.borrow()
    );
    assert!(dp.events_lost().expect("lost").iter().all(|n| *n == 0), "nothing lost");
}

/// Frames that are not IPv4 on the tunnel device leave the overlay programs
/// through the "not ours" exit, counted for no endpoint and never reported,
/// even at aggregation none: IPv6 another node sends through the tunnel
/// (from_overlay: on to the stack, counted to-stack, ingress) and what the
/// node sends into the device, an unknown ethertype and an IPv4 frame too
/// short to parse (to_overlay: counted from-stack, egress). Before, they left
/// by early returns that counted nothing.
#[test]
fn non_ipv4_frames_on_the_overlay_are_counted_by_its_exits_and_not_reported() {
    let lab = Lab::new();
    let out = add_outside(&lab);
    let dp = lab.dp();
    let (mvx_mac, _) = add_overlay(&lab, &out);
    let (node, o) = (&lab.node.0, &out.0);
    let mvx = in_netns(node, || ifindex("mvx"));
    // The node's own IPv6 (neighbour discovery, MLD) out of mvx would be counted too.
    run(&["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv6.conf.mvx.disable_ipv6=1"]);
    dp.set_event_settings(&EventSettings {
        aggregation: MonitorAggregation::None,
        capture_len: 64,
        ..EventSettings::default()
    })
    .expect("every packet reported");
    let seen: FullSeen = Rc::default();
    let reader = full_reader(dp, &seen);
    let count = |dir, reason| lab.metric(0, dir, reason);

    // The remote node sends IPv6 through the tunnel (an encap route, VNI 300).
    let uplink = UPLINK_IP.to_string();
    run(&["ip", "-n", o, "-6", "addr", "add", "fd00:201::2/128", "dev", "rvx", "nodad"]);
    run(&[
        "ip",
        "-n",
        o,
        "-6",
        "route",
        "add",
        "fd00:200::/64",
        "encap",
        "ip",
        "id",
        "300",
        "dst",
        &uplink,
        "dev",
        "rvx",
    ]);
    run(&[
        "ip",
        "-n",
        o,
        "-6",
        "neigh",
        "replace",
        "fd00:200::1",
        "lladdr",
        &mvx_mac,
        "dev",
        "rvx",
        "nud",
        "permanent",
    ]);
    let script = "import socket\n\
                  s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
                  for _ in range(3):\n    s.sendto(b'over the tunnel', ('fd00:200::1', 9))\n";
    let in0 = count(DIR_INGRESS, REASON_TO_STACK);
    run(&["ip", "netns", "exec", o, python(), "-c", script]);
    assert!(
        wait_until(Duration::from_secs(5), || count(DIR_INGRESS, REASON_TO_STACK) >= in0 + 3),
        "IPv6 from the tunnel counted to-stack by from_overlay: {in0} -> {}",
        count(DIR_INGRESS, REASON_TO_STACK)
    );

    // The node sends into the tunnel device: an unknown ethertype, then IPv4 cut short of its header.
    // (No key: the device drops them after to_overlay, whatever their MACs.)
    const ETH_P_EXPERIMENTAL: u16 = 0x88b5;
    let (dst, src) = ([0x02, 0, 0, 0, 0x03, 1], [0x02, 0, 0, 0, 0x03, 2]);
    let out0 = count(DIR_EGRESS, REASON_FROM_STACK);
    send_frame(node, "mvx", &eth_frame(dst, src, ETH_P_EXPERIMENTAL, b"into the tunnel"), 2);
    assert!(
        wait_until(Duration::from_secs(5), || count(DIR_EGRESS, REASON_FROM_STACK) >= out0 + 2),
        "an unknown ethertype counted from-stack by to_overlay: {out0} -> {}",
        count(DIR_EGRESS, REASON_FROM_STACK)
    );
    let mut short = eth_frame(dst, src, 0x0800, &[0x45, 0, 0, 20]);
    short.truncate(14 + 6); // Ethernet header and 6 bytes
    send_frame(node, "mvx", &short, 1);
    assert!(
        wait_until(Duration::from_secs(5), || count(DIR_EGRESS, REASON_FROM_STACK) >= out0 + 3),
        "IPv4 too short to parse counted from-stack by to_overlay: {out0} -> {}",
        count(DIR_EGRESS, REASON_FROM_STACK)
    );

    reader.poll(Duration::from_millis(200)).expect("poll");
    assert!(
        seen.borrow()
            .iter()
            .all(|e| e.ifindex != mvx && e.ethertype() != 0x86dd && e.ethertype() != ETH_P_EXPERIMENTAL),
        "never reported: {:#?}",
        seen.borrow()
    );
    assert!(dp.events_lost().expect("lost").iter().all(|n| *n == 0), "nothing lost");
}

/// The XDP prefilter's drop leaves through the XDP exit: counted and reported
/// like every other drop (world -> host, the deny list's reason, at most 64
/// captured bytes), and not reported when observability is off.
#[test]
fn xdp_prefilter_drops_leave_through_the_xdp_exit() {
    let lab = Lab::new();
    let out = add_outside(&lab);
    let dp = lab.dp();
    let node = lab.node.0.clone();
    let up0 = in_netns(&node, || {
        dp.attach_uplink("up0", ifindex("up0")).expect("attach uplink");
        ifindex("up0")
    });
    dp.set_event_settings(&EventSettings { capture_len: 128, ..EventSettings::default() }).expect("settings");
    let seen: FullSeen = Rc::default();
    let reader = full_reader(dp, &seen);
    dp.prefilter_deny(OUTSIDE, 32).expect("deny");
    let drops0 = lab.metric(0, DIR_INGRESS, DROP_POLICY_DENY);
    assert_eq!(ping(&out.0, UPLINK_IP, 2, None), 0, "dropped by XDP");
    let d = wait_full(&reader, &seen, "the XDP drop", |e| e.event_type == EVENT_DROP && e.ifindex == up0);
    assert_eq!((d.sub_type, d.endpoint, d.direction), (DROP_POLICY_DENY, 0, DIR_INGRESS), "{d:?}");
    assert_eq!((d.src_identity, d.dst_identity, d.trace_reason), (IDENTITY_WORLD, IDENTITY_HOST, 0), "{d:?}");
    assert!(!d.packet.is_empty() && d.packet.len() <= 64, "{} bytes captured", d.packet.len());
    assert_eq!(&d.packet[12..14], &[0x08, 0x00], "the dropped IPv4 packet");
    assert!(lab.metric(0, DIR_INGRESS, DROP_POLICY_DENY) >= drops0 + 2, "counted");

    // Observability off: still dropped and counted, no event.
    dp.set_event_settings(&EventSettings { aggregation: MonitorAggregation::Off, ..EventSettings::default() })
        .expect("off");
    reader.poll(Duration::from_millis(100)).expect("poll");
    seen.borrow_mut().clear();
    let drops1 = lab.metric(0, DIR_INGRESS, DROP_POLICY_DENY);
    assert_eq!(ping(&out.0, UPLINK_IP, 1, None), 0);
    assert!(lab.metric(0, DIR_INGRESS, DROP_POLICY_DENY) > drops1, "counted");
    reader.poll(Duration::from_millis(200)).expect("poll");
    assert!(seen.borrow().iter().all(|e| e.ifindex != up0), "no event when off: {:#?}", seen.borrow());
    in_netns(&node, || dp.detach_uplink("up0").expect("detach uplink"));
}
