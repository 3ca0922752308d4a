//! In-kernel tests of identity-based L3/L4 policy and connection tracking,
//! with real TCP/UDP/ICMP between pod namespaces (topology: tests/datapath.rs).
//!
//! Pods: A 10.200.0.2 identity 1000 (endpoint 101), B 10.200.0.3 identity
//! 1001 (102), C 10.200.0.4 identity 1002 (103), D 10.200.0.5 identity 1003
//! (104). The node netns also owns "outside" addresses on lo: WORLD_IP (in
//! no ipcache prefix: world) and CIDR_IP (in 198.51.100.0/24, given the CIDR
//! identity 16777217), so pods reach "the world" without leaving the lab.
//! Must run as root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use common::*;
use myelin_bpf::{
    CtTimeouts, Datapath, PolicyMapEntry, PolicyStatRow, CT_F_ESTABLISHED, CT_F_REPLY_SEEN, CT_F_SYN_SEEN, DIR_EGRESS,
    DIR_INGRESS, DROP_POLICY, DROP_POLICY_DENY, IDENTITY_HOST, IDENTITY_WORLD, POLICY_EGRESS, POLICY_INGRESS,
    VERDICT_ALLOW, VERDICT_DEFAULT_DENY, VERDICT_DENY,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ID_A: u32 = 1000;
const ID_B: u32 = 1001;
const ID_C: u32 = 1002;
const ID_D: u32 = 1003;
const CIDR_IDENTITY: u32 = 16_777_217;
const WORLD_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 99, 2);
const CIDR_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// How long a probe waits before calling a connection "not reached".
const PROBE_TIMEOUT: &str = "1.0";

fn lab(n: usize) -> Lab {
    let lab = Lab::with_identities(&[ID_A, ID_B, ID_C, ID_D][..n]);
    for ip in [WORLD_IP, CIDR_IP] {
        run(&["ip", "-n", &lab.node.0, "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    lab
}

/// A server process that lives until dropped (its stdin is held open).
fn tcp_servers(ns: &str, ip: Ipv4Addr, ports: &[u16]) -> Server {
    let ip = ip.to_string();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut args = vec!["tcp-echo-server", ip.as_str()];
    args.extend(ports.iter().map(String::as_str));
    serve(ns, &args)
}

fn udp_servers(ns: &str, ip: Ipv4Addr, ports: &[u16]) -> Server {
    let ip = ip.to_string();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut args = vec!["udp-echo-server", ip.as_str()];
    args.extend(ports.iter().map(String::as_str));
    serve(ns, &args)
}

/// "ok" (connected and echoed), "timeout", "refused".
fn tcp(ns: &str, ip: Ipv4Addr, port: u16) -> String {
    netprobe_out(ns, &["tcp-connect", &ip.to_string(), &port.to_string(), PROBE_TIMEOUT])
}

/// "ok" (echoed), "timeout", "refused" (ICMP port unreachable came back).
fn udp(ns: &str, ip: Ipv4Addr, port: u16) -> String {
    netprobe_out(ns, &["udp-probe", &ip.to_string(), &port.to_string(), PROBE_TIMEOUT])
}

/// One long-lived TCP connection driven line by line.
struct Session {
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    _guard: ChildGuard,
    local_port: u16,
}

impl Session {
    fn open(ns: &str, ip: Ipv4Addr, port: u16) -> Self {
        let mut child = netprobe(ns, &["tcp-session", &ip.to_string(), &port.to_string(), PROBE_TIMEOUT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn session");
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().expect("session stdout"));
        let guard = ChildGuard(child);
        let mut line = String::new();
        out.read_line(&mut line).expect("session banner");
        let local_port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("session to {ip}:{port} did not connect: {line:?}"));
        Self { stdin, out, _guard: guard, local_port }
    }

    fn send(&mut self) -> String {
        let stdin = self.stdin.as_mut().expect("session stdin");
        stdin.write_all(b"send\n").expect("write to session");
        stdin.flush().expect("flush session");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("session result");
        line.trim().to_string()
    }
}

fn allow(identity: u32, direction: u8, protocol: u8, port: u16, rule_id: u32) -> PolicyMapEntry {
    PolicyMapEntry {
        identity,
        direction,
        protocol,
        port,
        port_prefix_len: if protocol == 0 || port == 0 { 0 } else { 16 },
        deny: false,
        rule_id,
        default: false,
    }
}

fn deny(identity: u32, direction: u8, protocol: u8, port: u16, rule_id: u32) -> PolicyMapEntry {
    PolicyMapEntry { deny: true, ..allow(identity, direction, protocol, port, rule_id) }
}

fn stat(rows: &[PolicyStatRow], ep: u32, dir: u8, rule: u32, verdict: u8) -> u64 {
    rows.iter()
        .filter(|r| r.endpoint_id == ep && r.direction == dir && r.rule_id == rule && r.verdict == verdict)
        .map(|r| r.packets)
        .sum()
}

impl Lab {
    fn c(&self) -> &Pod {
        &self.pods[2]
    }

    fn d(&self) -> &Pod {
        &self.pods[3]
    }

    fn stats(&self) -> Vec<PolicyStatRow> {
        self.dp().policy_stats().expect("policy stats")
    }
}

#[test]
fn no_policy_allows_everything_and_connections_are_tracked() {
    let lab = lab(3);
    let (a, c) = (lab.a(), lab.c());
    let _t = tcp_servers(&c.ns.0, c.ip, &[80]);
    let _u = udp_servers(&c.ns.0, c.ip, &[53]);

    assert_eq!(tcp(&a.ns.0, c.ip, 80), "ok", "TCP without any policy");
    assert_eq!(udp(&a.ns.0, c.ip, 53), "ok", "UDP without any policy");
    assert_eq!(ping(&a.ns.0, c.ip, 2, None), 2, "ICMP without any policy");
    assert_eq!(ping(&lab.node.0, c.ip, 1, None), 1, "node -> pod");
    assert!(lab.stats().is_empty(), "no policy: nothing is counted as a policy decision");

    let tcp_of = |ct: &[myelin_bpf::CtEntry]| {
        ct.iter().find(|e| e.protocol == TCP && e.saddr == a.ip && e.daddr == c.ip && e.dport == 80).copied()
    };
    // The server's FIN follows the client's exit: wait for it.
    assert!(
        wait_until(Duration::from_secs(5), || tcp_of(&lab.dp().ct_entries().expect("ct")).is_some_and(|e| e.closing())),
        "TCP A -> C:80 tracked and closed: {:#?}",
        lab.dp().ct_entries()
    );
    let now = Datapath::monotonic_now_ns();
    let ct = lab.dp().ct_entries().expect("ct entries");
    let tcp_e = tcp_of(&ct).expect("tracked");
    assert!(tcp_e.flags & CT_F_SYN_SEEN != 0 && tcp_e.flags & CT_F_ESTABLISHED != 0);
    assert!(tcp_e.flags & CT_F_REPLY_SEEN != 0);
    assert!(tcp_e.closing(), "the client closed: FIN both ways");
    assert!(tcp_e.fwd_packets >= 3 && tcp_e.rev_packets >= 2, "{tcp_e:?}");
    assert!(tcp_e.fwd_bytes > 0 && tcp_e.rev_bytes > 0);
    assert_eq!((tcp_e.egress_rule_id, tcp_e.ingress_rule_id), (0, 0));
    // Closing lifetime (10 s), refreshed by the last packet.
    assert!(tcp_e.lifetime_left <= Duration::from_secs(10) && tcp_e.lifetime_left > Duration::ZERO);
    assert!(tcp_e.created_ns <= now && tcp_e.expires_ns > now);

    let udp_e = ct
        .iter()
        .find(|e| e.protocol == UDP && e.saddr == a.ip && e.daddr == c.ip && e.dport == 53)
        .expect("UDP tracked");
    assert!(udp_e.flags & CT_F_REPLY_SEEN != 0 && udp_e.rev_packets == 1);
    assert!(udp_e.lifetime_left > Duration::from_secs(50) && udp_e.lifetime_left <= Duration::from_secs(60));
    let icmp_e =
        ct.iter().find(|e| e.protocol == ICMP && e.saddr == a.ip && e.daddr == c.ip).expect("ICMP echo tracked");
    assert_eq!(icmp_e.sport, icmp_e.dport, "echo id as both ports");
    assert!(
        ct.iter().any(|e| e.protocol == ICMP && e.saddr == NODE_IP && e.daddr == c.ip),
        "node -> pod tracked by to_container"
    );

    // Garbage collection: nothing expired yet; 7 hours later everything has.
    assert_eq!(lab.dp().ct_gc().expect("gc"), 0, "nothing expired yet");
    let n = ct.len();
    assert_eq!(lab.dp().ct_gc_at(now + 7 * 3600 * 1_000_000_000).expect("gc"), n);
    assert!(lab.dp().ct_entries().expect("ct").is_empty());

    // Lifetimes come from node_config: 1 s for non-TCP, collected for real.
    let t = CtTimeouts { other: Duration::from_secs(1), ..CtTimeouts::default() };
    lab.dp().set_ct_timeouts(&t).expect("set timeouts");
    assert_eq!(lab.dp().ct_timeouts().expect("timeouts"), t);
    assert_eq!(udp(&a.ns.0, c.ip, 53), "ok");
    let e = lab.dp().ct_entries().expect("ct");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].lifetime_left <= Duration::from_secs(1));
    let mut removed = 0;
    assert!(
        wait_until(Duration::from_secs(5), || {
            removed += lab.dp().ct_gc().expect("gc");
            removed == 1
        }),
        "the 1 s UDP entry is collected"
    );
    // ct_flush empties the table.
    assert_eq!(udp(&a.ns.0, c.ip, 53), "ok");
    assert_eq!(lab.dp().ct_flush().expect("flush"), 1);
    assert!(lab.dp().ct_entries().expect("ct").is_empty());
}

#[test]
fn ingress_allow_by_identity_and_port_with_replies_drops_and_stats() {
    let lab = lab(3);
    let (a, b, c) = (lab.a(), lab.b(), lab.c());
    let _t = tcp_servers(&c.ns.0, c.ip, &[80, 81]);
    let _u = udp_servers(&c.ns.0, c.ip, &[80]);
    let entries = [allow(ID_A, POLICY_INGRESS, TCP, 80, 11)];
    lab.dp().set_endpoint_policy(c.ep_id, true, false, &entries).expect("policy");
    assert_eq!(
        lab.dp().endpoint_policy(c.ep_id).expect("dump"),
        Some((true, false, entries.to_vec())),
        "the installed policy reads back"
    );
    assert_eq!(lab.dp().endpoint_policy(a.ep_id).expect("dump"), None);

    assert_eq!(tcp(&a.ns.0, c.ip, 80), "ok", "1000 -> :80 allowed, replies flow");
    assert_eq!(tcp(&a.ns.0, c.ip, 81), "timeout", "1000 -> :81 not allowed");
    assert_eq!(tcp(&b.ns.0, c.ip, 80), "timeout", "1001 reaches nothing");
    assert_eq!(udp(&a.ns.0, c.ip, 80), "timeout", "UDP not allowed");
    assert_eq!(ping(&a.ns.0, c.ip, 1, None), 0, "ICMP not allowed");
    // C's own egress is not enforced: C reaches A (and gets its replies).
    let _ta = tcp_servers(&a.ns.0, a.ip, &[90]);
    assert_eq!(tcp(&c.ns.0, a.ip, 90), "ok", "C's egress is not enforced");

    // The node reaches C whatever its policy (allow-localhost) ...
    assert!(lab.dp().allow_localhost().expect("flag"));
    assert_eq!(ping(&lab.node.0, c.ip, 2, None), 2, "node -> pod under ingress enforcement");
    assert_eq!(tcp(&lab.node.0, c.ip, 81), "ok", "node -> any port");
    // ... unless turned off: then host (1) is an identity like any other.
    lab.dp().set_allow_localhost(false).expect("flag off");
    lab.dp().upsert_ipcache(NODE_IP, 32, IDENTITY_HOST).expect("ipcache");
    assert_eq!(ping(&lab.node.0, c.ip, 1, None), 0, "allow-localhost off");
    lab.dp().set_allow_localhost(true).expect("flag on");
    assert_eq!(ping(&lab.node.0, c.ip, 1, None), 1, "allow-localhost on again");

    let rows = lab.stats();
    assert!(stat(&rows, c.ep_id, DIR_INGRESS, 11, VERDICT_ALLOW) >= 3, "rule 11 allowed: {rows:#?}");
    assert!(stat(&rows, c.ep_id, DIR_INGRESS, 0, VERDICT_DEFAULT_DENY) >= 4, "default deny counted: {rows:#?}");
    assert!(stat(&rows, c.ep_id, DIR_EGRESS, 0, VERDICT_ALLOW) >= 1, "non-enforced egress: allowed by no rule");
    assert!(lab.metric(c.ep_id, DIR_INGRESS, DROP_POLICY) >= 4, "DROP_POLICY (133) on C's ingress");
    assert_eq!(lab.metric(c.ep_id, DIR_INGRESS, DROP_POLICY_DENY), 0, "no explicit deny");

    let ct = lab.dp().ct_entries().expect("ct");
    let e = ct
        .iter()
        .find(|e| e.saddr == a.ip && e.daddr == c.ip && e.dport == 80 && e.protocol == TCP)
        .expect("allowed connection tracked");
    assert_eq!(e.ingress_rule_id, 11, "CT remembers the rule that allowed it");
    assert!(!ct.iter().any(|e| e.saddr == b.ip && e.daddr == c.ip), "denied attempts leave no CT entry");

    // Back to no policy: everything flows.
    lab.dp().clear_endpoint_policy(c.ep_id).expect("clear");
    lab.dp().clear_endpoint_policy(c.ep_id).expect("clear is idempotent");
    assert_eq!(lab.dp().endpoint_policy(c.ep_id).expect("dump"), None);
    assert_eq!(tcp(&b.ns.0, c.ip, 81), "ok", "policy cleared");
}

#[test]
fn deny_precedence_port_blocks_and_wildcard_identity() {
    let lab = lab(4);
    let (a, b, c, d) = (lab.a(), lab.b(), lab.c(), lab.d());
    let _t = tcp_servers(&c.ns.0, c.ip, &[8001, 8004, 8016]);
    let _u = udp_servers(&c.ns.0, c.ip, &[53]);
    // What a compiler emits for: "any peer may use TCP 8000-8015; 1001 is
    // denied those; 1000 may use 8000-8015 except 8004; UDP is denied to
    // everyone but 1000 on 53". 8000 = 0x1f40: a /12 block is 16 ports.
    let block = |identity, deny_it: bool, rule_id| PolicyMapEntry {
        identity,
        direction: POLICY_INGRESS,
        protocol: TCP,
        port: 8000,
        port_prefix_len: 12,
        deny: deny_it,
        rule_id,
        default: false,
    };
    let entries = [
        block(0, false, 21),
        block(ID_B, true, 22),
        block(ID_A, false, 23),
        deny(ID_A, POLICY_INGRESS, TCP, 8004, 24),
        PolicyMapEntry {
            identity: 0,
            direction: POLICY_INGRESS,
            protocol: UDP,
            port: 0,
            port_prefix_len: 0,
            deny: true,
            rule_id: 25,
            default: false,
        },
        allow(ID_A, POLICY_INGRESS, UDP, 53, 26),
    ];
    lab.dp().set_endpoint_policy(c.ep_id, true, true, &entries).expect("policy");
    let (ing, eg, back) = lab.dp().endpoint_policy(c.ep_id).expect("dump").expect("present");
    assert!(ing && eg);
    let mut sorted = entries.to_vec();
    sorted.sort();
    assert_eq!(back, sorted);

    assert_eq!(tcp(&a.ns.0, c.ip, 8001), "ok", "1000: port block allow (rule 23)");
    assert_eq!(tcp(&a.ns.0, c.ip, 8004), "timeout", "1000: the longer-prefix deny wins (rule 24)");
    assert_eq!(tcp(&a.ns.0, c.ip, 8016), "timeout", "outside the block: default deny");
    assert_eq!(tcp(&b.ns.0, c.ip, 8001), "timeout", "1001: its own deny precedes the wildcard allow");
    assert_eq!(tcp(&d.ns.0, c.ip, 8001), "ok", "1003: no entry of its own -> wildcard allow (rule 21)");
    assert_eq!(tcp(&d.ns.0, c.ip, 8004), "ok", "1003: the wildcard block covers 8004");
    assert_eq!(udp(&a.ns.0, c.ip, 53), "ok", "1000: its own UDP 53 allow");
    assert_eq!(udp(&d.ns.0, c.ip, 53), "timeout", "1003: the wildcard UDP deny");
    // A 4000-byte datagram leaves A in 3 fragments, its echo leaves C in 3:
    // later fragments carry no ports, frag4 gives them their first's.
    let frag = netprobe_out(&a.ns.0, &["udp-probe", &c.ip.to_string(), "53", PROBE_TIMEOUT, "4000"]);
    assert_eq!(frag, "ok", "fragmented datagram and reply through port policy");

    let rows = lab.stats();
    let ep = c.ep_id;
    assert!(stat(&rows, ep, DIR_INGRESS, 23, VERDICT_ALLOW) >= 1, "{rows:#?}");
    assert!(stat(&rows, ep, DIR_INGRESS, 24, VERDICT_DENY) >= 1, "{rows:#?}");
    assert!(stat(&rows, ep, DIR_INGRESS, 22, VERDICT_DENY) >= 1, "{rows:#?}");
    assert!(stat(&rows, ep, DIR_INGRESS, 21, VERDICT_ALLOW) >= 2, "{rows:#?}");
    assert!(stat(&rows, ep, DIR_INGRESS, 26, VERDICT_ALLOW) >= 1, "{rows:#?}");
    assert!(stat(&rows, ep, DIR_INGRESS, 25, VERDICT_DENY) >= 1, "{rows:#?}");
    assert!(stat(&rows, ep, DIR_INGRESS, 0, VERDICT_DEFAULT_DENY) >= 1, "{rows:#?}");
    assert!(lab.metric(ep, DIR_INGRESS, DROP_POLICY_DENY) >= 3, "181 counted");
    assert!(lab.metric(ep, DIR_INGRESS, DROP_POLICY) >= 1, "133 counted");
    // C's egress is enforced with no rule, yet every reply above got out:
    // replies never need a reverse rule.
    assert_eq!(stat(&rows, ep, DIR_EGRESS, 0, VERDICT_DEFAULT_DENY), 0, "no reply hit C's egress policy");
}

#[test]
fn egress_policy_towards_host_world_and_cidr_identities_with_related_icmp() {
    let lab = lab(1);
    let a = lab.a();
    let node = lab.node.0.as_str();
    lab.dp().upsert_ipcache(NODE_IP, 32, IDENTITY_HOST).expect("ipcache host");
    lab.dp().upsert_ipcache(Ipv4Addr::new(198, 51, 100, 99), 24, CIDR_IDENTITY).expect("ipcache cidr");
    assert_eq!(
        lab.dp().ipcache().expect("ipcache"),
        vec![(NODE_IP, 32, IDENTITY_HOST), (Ipv4Addr::new(198, 51, 100, 0), 24, CIDR_IDENTITY)],
        "host bits are masked off"
    );
    let _t = tcp_servers(node, Ipv4Addr::UNSPECIFIED, &[80, 81]);
    // UDP replies take the source address the socket is bound to.
    let _u = udp_servers(node, WORLD_IP, &[53]);

    // A's egress AND ingress enforced; nothing allows anything towards A.
    let entries = [
        allow(CIDR_IDENTITY, POLICY_EGRESS, TCP, 80, 41),
        allow(IDENTITY_HOST, POLICY_EGRESS, ICMP, 8, 42), // echo request: ICMP "port" = type
        allow(IDENTITY_WORLD, POLICY_EGRESS, UDP, 53, 43),
        allow(IDENTITY_WORLD, POLICY_EGRESS, UDP, 54, 44), // nobody listens on 54
    ];
    lab.dp().set_endpoint_policy(a.ep_id, true, true, &entries).expect("policy");

    assert_eq!(tcp(&a.ns.0, CIDR_IP, 80), "ok", "CIDR identity allowed on 80");
    assert_eq!(tcp(&a.ns.0, CIDR_IP, 81), "timeout", "not on 81");
    assert_eq!(tcp(&a.ns.0, WORLD_IP, 80), "timeout", "world has no TCP allow");
    assert_eq!(ping(&a.ns.0, NODE_IP, 2, None), 2, "host: ICMP echo allowed");
    assert_eq!(ping(&a.ns.0, WORLD_IP, 1, None), 0, "world: no ICMP allow");
    assert_eq!(tcp(&a.ns.0, NODE_IP, 80), "timeout", "host: no TCP allow");
    assert_eq!(udp(&a.ns.0, WORLD_IP, 53), "ok", "world: UDP 53");
    // The node answers UDP to a closed port with ICMP port unreachable:
    // related to A's tracked flow, it passes A's enforced ingress.
    assert_eq!(udp(&a.ns.0, WORLD_IP, 54), "refused", "related ICMP error delivered");

    let rows = lab.stats();
    assert!(stat(&rows, a.ep_id, DIR_EGRESS, 41, VERDICT_ALLOW) >= 3, "{rows:#?}");
    assert!(stat(&rows, a.ep_id, DIR_EGRESS, 42, VERDICT_ALLOW) >= 2, "{rows:#?}");
    assert!(stat(&rows, a.ep_id, DIR_EGRESS, 43, VERDICT_ALLOW) >= 1, "{rows:#?}");
    assert_eq!(
        stat(&rows, a.ep_id, DIR_INGRESS, 0, VERDICT_DEFAULT_DENY),
        0,
        "replies never hit A's ingress policy: {rows:#?}"
    );
    assert!(lab.metric(a.ep_id, DIR_EGRESS, DROP_POLICY) >= 4);

    // The same address moves to another identity: verdicts follow the ipcache.
    lab.dp().upsert_ipcache(CIDR_IP, 32, IDENTITY_WORLD).expect("more specific");
    assert_eq!(tcp(&a.ns.0, CIDR_IP, 80), "timeout", "/32 world beats the /24 CIDR identity");
    assert!(lab.dp().delete_ipcache(CIDR_IP, 32).expect("delete"));
    assert!(!lab.dp().delete_ipcache(CIDR_IP, 32).expect("delete absent"));
    assert_eq!(tcp(&a.ns.0, CIDR_IP, 80), "ok", "back to the CIDR identity");
}

#[test]
fn policy_swap_is_atomic_and_revocation_cuts_established_connections() {
    let lab = lab(3);
    let (a, c) = (lab.a(), lab.c());
    let _t = tcp_servers(&c.ns.0, c.ip, &[80, 81]);
    // Both ends enforce both directions; only the forward direction is allowed.
    lab.dp().set_endpoint_policy(a.ep_id, true, true, &[allow(ID_C, POLICY_EGRESS, TCP, 0, 30)]).expect("A policy");
    let mut p = allow(ID_C, POLICY_EGRESS, TCP, 0, 30);
    p.port_prefix_len = 0;
    assert_eq!(lab.dp().endpoint_policy(a.ep_id).unwrap().unwrap().2, vec![p]);
    lab.dp().set_endpoint_policy(c.ep_id, true, true, &[allow(ID_A, POLICY_INGRESS, TCP, 80, 31)]).expect("C policy");

    let mut s = Session::open(&a.ns.0, c.ip, 80);
    for _ in 0..3 {
        assert_eq!(s.send(), "ok", "allowed connection, replies without reverse rules");
    }
    let ct = lab.dp().ct_entries().expect("ct");
    let e = ct.iter().find(|e| e.protocol == TCP && e.sport == s.local_port && e.dport == 80).expect("session tracked");
    assert!(e.established());
    assert_eq!((e.egress_rule_id, e.ingress_rule_id), (30, 31));

    // Swap C's policy: port 81 instead of 80. The established connection is
    // cut (policy re-runs on every packet of the original direction).
    let deny133 = lab.metric(c.ep_id, DIR_INGRESS, DROP_POLICY);
    lab.dp().set_endpoint_policy(c.ep_id, true, true, &[allow(ID_A, POLICY_INGRESS, TCP, 81, 32)]).expect("swap");
    assert_eq!(s.send(), "timeout", "revoked: the established connection is cut");
    assert!(lab.metric(c.ep_id, DIR_INGRESS, DROP_POLICY) > deny133);
    assert_eq!(tcp(&a.ns.0, c.ip, 80), "timeout", "new connections to 80 too");
    assert_eq!(tcp(&a.ns.0, c.ip, 81), "ok", "81 is allowed now");
    // Swap to an explicit deny: 181 instead of 133.
    let deny181 = lab.metric(c.ep_id, DIR_INGRESS, DROP_POLICY_DENY);
    lab.dp().set_endpoint_policy(c.ep_id, true, true, &[deny(ID_A, POLICY_INGRESS, TCP, 81, 33)]).expect("swap");
    assert_eq!(tcp(&a.ns.0, c.ip, 81), "timeout");
    assert!(lab.metric(c.ep_id, DIR_INGRESS, DROP_POLICY_DENY) > deny181);
    assert!(stat(&lab.stats(), c.ep_id, DIR_INGRESS, 33, VERDICT_DENY) >= 1);

    // Swaps under traffic: a ping flood across policy flips never sees
    // a half-installed policy (allowed in one version, allowed in the
    // other: every echo must be answered).
    let both = |rule| [allow(ID_A, POLICY_INGRESS, ICMP, 8, rule), allow(ID_A, POLICY_INGRESS, TCP, 80, rule)];
    lab.dp()
        .set_endpoint_policy(a.ep_id, true, true, &[allow(ID_C, POLICY_EGRESS, 0, 0, 30)])
        .expect("A: anything to C");
    lab.dp().set_endpoint_policy(c.ep_id, true, true, &both(50)).expect("swap");
    let done = std::sync::atomic::AtomicBool::new(false);
    let (sent, answered) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let (mut sent, mut answered) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                answered += ping(&a.ns.0, c.ip, 200, None);
                sent += 200;
            }
            (sent, answered)
        });
        let t = Instant::now();
        for flip in 0..40 {
            lab.dp().set_endpoint_policy(c.ep_id, true, true, &both(50 + flip % 2)).expect("swap");
        }
        eprintln!("40 policy swaps in {:?}", t.elapsed());
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap()
    });
    // (Each swap waits for an RCU grace period: the kernel makes an update
    // of a map-in-map wait for running programs, so swaps take ms each.)
    assert_eq!(answered, sent, "every echo answered across the swaps");
    let rows = lab.stats();
    assert!(
        stat(&rows, c.ep_id, DIR_INGRESS, 50, VERDICT_ALLOW) > 0
            && stat(&rows, c.ep_id, DIR_INGRESS, 51, VERDICT_ALLOW) > 0,
        "both policy versions decided some echoes: {rows:#?}"
    );
}

#[test]
fn ten_thousand_entries_load_and_decide_right() {
    let lab = lab(3);
    let (a, b, c) = (lab.a(), lab.b(), lab.c());
    let _t = tcp_servers(&c.ns.0, c.ip, &[80, 443]);
    let mut entries: Vec<PolicyMapEntry> = (0..10_000u32)
        .map(|i| PolicyMapEntry {
            identity: 100_000 + i / 4,
            direction: POLICY_INGRESS,
            protocol: if i % 2 == 0 { TCP } else { UDP },
            port: u16::try_from(1024 + (i % 4) * 16).unwrap(),
            port_prefix_len: 12,
            deny: i % 3 == 0,
            rule_id: 1000 + i,
            default: false,
        })
        .collect();
    entries.push(allow(ID_A, POLICY_INGRESS, TCP, 443, 7));
    entries.push(deny(ID_B, POLICY_INGRESS, TCP, 443, 8));
    let t = Instant::now();
    lab.dp().set_endpoint_policy(c.ep_id, true, false, &entries).expect("10k policy");
    let took = t.elapsed();
    eprintln!("10002 entries installed in {took:?}");
    let (_, _, back) = lab.dp().endpoint_policy(c.ep_id).expect("dump").expect("present");
    assert_eq!(back.len(), entries.len());

    assert_eq!(tcp(&a.ns.0, c.ip, 443), "ok", "1000 allowed among 10k entries");
    assert_eq!(tcp(&b.ns.0, c.ip, 443), "timeout", "1001 denied");
    assert_eq!(tcp(&a.ns.0, c.ip, 80), "timeout", "default deny");
    assert!(stat(&lab.stats(), c.ep_id, DIR_INGRESS, 8, VERDICT_DENY) >= 1);

    for p in lab.dp().program_stats().expect("program stats") {
        eprintln!(
            "{}: {} verified insns, {} xlated insns, {} JITed bytes",
            p.name, p.verified_insns, p.xlated_insns, p.jited_bytes
        );
        assert!(p.verified_insns < 200_000, "{p:?}: verifier complexity");
    }
}

#[test]
fn policy_api_validation_and_roundtrips() {
    let lab = lab(1);
    let dp = lab.dp();
    let bad = [
        PolicyMapEntry { direction: 2, ..allow(1, 0, TCP, 80, 1) },
        PolicyMapEntry { port_prefix_len: 17, ..allow(1, 0, TCP, 80, 1) },
        PolicyMapEntry { port: 8001, port_prefix_len: 12, ..allow(1, 0, TCP, 0, 1) },
        PolicyMapEntry { port: 80, port_prefix_len: 16, ..allow(1, 0, 0, 0, 1) },
    ];
    for e in bad {
        assert!(
            matches!(dp.set_endpoint_policy(9, true, true, &[e]), Err(myelin_bpf::BpfError::Invalid(_))),
            "{e:?} refused"
        );
    }
    assert_eq!(dp.policy_endpoints().expect("ids"), Vec::<u32>::new(), "nothing half-installed");

    // Same key twice: deny beats allow, else the first is kept.
    dp.set_endpoint_policy(
        9,
        false,
        true,
        &[allow(5, 0, TCP, 80, 1), deny(5, 0, TCP, 80, 2), allow(6, 1, UDP, 53, 3), allow(6, 1, UDP, 53, 4)],
    )
    .expect("policy");
    assert_eq!(
        dp.endpoint_policy(9).expect("dump"),
        Some((false, true, vec![deny(5, 0, TCP, 80, 2), allow(6, 1, UDP, 53, 3)]))
    );
    // A rule on the very key of the non-enforced default keeps its verdict.
    let any_any = PolicyMapEntry {
        identity: 0,
        direction: 0,
        protocol: 0,
        port: 0,
        port_prefix_len: 0,
        deny: true,
        rule_id: 77,
        default: false,
    };
    dp.set_endpoint_policy(9, false, false, &[any_any]).expect("policy");
    assert_eq!(dp.endpoint_policy(9).expect("dump"), Some((false, false, vec![any_any])));
    dp.set_endpoint_policy(9, false, false, &[]).expect("allow-all policy");
    assert_eq!(dp.endpoint_policy(9).expect("dump"), Some((false, false, vec![])));
    assert_eq!(dp.policy_endpoints().expect("ids"), vec![9]);
    dp.clear_endpoint_policy(9).expect("clear");
    assert_eq!(dp.endpoint_policy(9).expect("dump"), None);

    assert!(dp.upsert_ipcache(NODE_IP, 33, 1).is_err());
    // set_node_config keeps the policy knobs.
    dp.set_allow_localhost(false).expect("flag");
    let t = CtTimeouts { tcp_syn: Duration::from_secs(5), ..CtTimeouts::default() };
    dp.set_ct_timeouts(&t).expect("timeouts");
    let cfg = dp.node_config().expect("cfg");
    dp.set_node_config(&cfg).expect("rewrite node config");
    assert!(!dp.allow_localhost().expect("flag"));
    assert_eq!(dp.ct_timeouts().expect("timeouts"), t);
    assert!(dp.set_ct_timeouts(&CtTimeouts { other: Duration::from_millis(1500), ..t }).is_err());
    assert_eq!(dp.ct_flush().expect("flush"), 0);
    dp.delete_policy_stats(9).expect("delete stats");
}

#[test]
fn batch_policy_update_switches_several_endpoints_and_never_mixes() {
    let lab = lab(4);
    let (a, targets) = (lab.a(), [lab.b(), lab.c(), lab.d()]);
    let _servers: Vec<Server> = targets.iter().map(|p| tcp_servers(&p.ns.0, p.ip, &[80, 81])).collect();
    // A has no policy (allows everything); B, C, D enforce ingress.
    let only = |port: u16, rule: u32| {
        Some((
            true,
            false,
            vec![allow(ID_A, POLICY_INGRESS, TCP, port, rule), allow(ID_A, POLICY_INGRESS, ICMP, 8, rule)],
        ))
    };
    let ids: Vec<u32> = targets.iter().map(|p| p.ep_id).collect();
    let batch = |port: u16, rule: u32| -> Vec<_> { ids.iter().map(|id| (*id, only(port, rule))).collect() };

    lab.dp().set_endpoint_policies(&batch(80, 60)).expect("batch: 80");
    for p in targets {
        assert_eq!(tcp(&a.ns.0, p.ip, 80), "ok", "{}: 80 allowed", p.host_if);
        assert_eq!(tcp(&a.ns.0, p.ip, 81), "timeout", "{}: 81 denied", p.host_if);
    }
    lab.dp().set_endpoint_policies(&batch(81, 61)).expect("batch: 81");
    for p in targets {
        assert_eq!(tcp(&a.ns.0, p.ip, 80), "timeout", "{}: 80 revoked", p.host_if);
        assert_eq!(tcp(&a.ns.0, p.ip, 81), "ok", "{}: 81 allowed now", p.host_if);
        let (ing, eg, entries) = lab.dp().endpoint_policy(p.ep_id).unwrap().unwrap();
        assert!(ing && !eg);
        assert!(entries.iter().all(|e| e.rule_id == 61), "{entries:?}");
    }

    // Sets and clears in one call; the single-endpoint API still agrees.
    lab.dp().set_endpoint_policies(&[(ids[0], None), (ids[1], only(80, 62)), (ids[2], None)]).expect("mixed batch");
    assert_eq!(lab.dp().endpoint_policy(ids[0]).unwrap(), None);
    assert_eq!(lab.dp().endpoint_policy(ids[2]).unwrap(), None);
    assert_eq!(tcp(&a.ns.0, targets[0].ip, 81), "ok", "cleared: no policy, allow all");
    assert_eq!(tcp(&a.ns.0, targets[1].ip, 81), "timeout");
    assert_eq!(tcp(&a.ns.0, targets[1].ip, 80), "ok");
    lab.dp().set_endpoint_policies(&[(ids[0], None)]).expect("clearing an endpoint without policy is fine");
    let err = lab
        .dp()
        .set_endpoint_policies(&[(ids[0], None), (ids[0], only(80, 1))])
        .expect_err("an endpoint twice in one batch");
    assert!(err.to_string().contains("twice"), "{err}");

    // Under traffic: ping floods to B, C and D while the three policies flip
    // between two versions in one batch each time. Both versions allow echo
    // (rule 70 or 71) but differ in everything else (version 71 carries 500
    // more entries), so a half-built or mixed trie would drop echoes: every
    // echo must be answered, and both versions must have decided some.
    let version = |flip: u32| -> Vec<_> {
        ids.iter()
            .map(|id| {
                let rule = 70 + flip % 2;
                let mut entries = vec![allow(ID_A, POLICY_INGRESS, ICMP, 8, rule)];
                if flip % 2 == 1 {
                    entries.extend((0..500u16).map(|i| deny(ID_B, POLICY_INGRESS, UDP, 2000 + i, 99)));
                } else {
                    entries.push(allow(ID_A, POLICY_INGRESS, TCP, 80, rule));
                }
                (*id, Some((true, true, entries)))
            })
            .collect()
    };
    lab.dp().set_endpoint_policies(&version(0)).expect("v0");
    let done = std::sync::atomic::AtomicBool::new(false);
    let (results, flips_took) = std::thread::scope(|sc| {
        let floods: Vec<_> = targets
            .iter()
            .map(|p| {
                let (ns, ip, done) = (&a.ns.0, p.ip, &done);
                sc.spawn(move || {
                    let (mut sent, mut answered) = (0, 0);
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        answered += ping(ns, ip, 100, None);
                        sent += 100;
                    }
                    (sent, answered)
                })
            })
            .collect();
        let t = Instant::now();
        for flip in 1..=40 {
            lab.dp().set_endpoint_policies(&version(flip)).expect("batch flip");
            // Each version decides echoes of every target before the next flip (a condition,
            // not a pause: on a loaded machine the floods may need longer than a flip).
            let rule = 70 + flip % 2;
            let seen = |rows: &[_]| {
                targets.iter().map(|p| stat(rows, p.ep_id, DIR_INGRESS, rule, VERDICT_ALLOW)).collect::<Vec<_>>()
            };
            let before = seen(&lab.stats());
            assert!(
                wait_until(Duration::from_secs(10), || seen(&lab.stats()).iter().zip(&before).all(|(now, b)| now > b)),
                "flip {flip}: version {rule} decided no echo of some target within 10 s"
            );
        }
        let took = t.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let results: Vec<(u32, u32)> = floods.into_iter().map(|h| h.join().unwrap()).collect();
        (results, took)
    });
    eprintln!("40 batch flips of 3 endpoints in {flips_took:?}");
    let rows = lab.stats();
    for (p, (sent, answered)) in targets.iter().zip(results) {
        assert_eq!(answered, sent, "{}: every echo answered across the flips", p.host_if);
        assert!(
            stat(&rows, p.ep_id, DIR_INGRESS, 70, VERDICT_ALLOW) > 0
                && stat(&rows, p.ep_id, DIR_INGRESS, 71, VERDICT_ALLOW) > 0,
            "{}: both versions decided some echoes: {rows:#?}",
            p.host_if
        );
    }
}

#[test]
fn batch_policy_update_of_many_endpoints_waits_once() {
    // No traffic: endpoints 5000.. have no pods; this is about the syscall
    // cost. One grace period per batch instead of one per endpoint.
    let lab = lab(1);
    let entries = [allow(ID_A, POLICY_INGRESS, TCP, 80, 1)];
    let ids: Vec<u32> = (5000..5200).collect();
    let t = Instant::now();
    for id in &ids[..50] {
        lab.dp().set_endpoint_policy(*id, true, false, &entries).expect("single");
    }
    let single = t.elapsed() / 50;
    let updates: Vec<_> = ids.iter().map(|id| (*id, Some((true, false, entries.to_vec())))).collect();
    let t = Instant::now();
    lab.dp().set_endpoint_policies(&updates).expect("batch");
    let batch = t.elapsed();
    eprintln!("one swap at a time: {single:?} each; 200 in one batch: {batch:?}");
    assert_eq!(lab.dp().policy_endpoints().unwrap().len(), 200);
    for id in &ids {
        assert!(lab.dp().endpoint_policy(*id).unwrap().is_some());
    }
    let clears: Vec<_> = ids.iter().map(|id| (*id, None)).collect();
    lab.dp().set_endpoint_policies(&clears).expect("batch clear");
    assert!(lab.dp().policy_endpoints().unwrap().is_empty());
}
