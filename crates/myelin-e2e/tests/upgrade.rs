//! Upgrading a node from the ABI v1 datapath with the real agent binary, while a TCP stream runs.
//!
//! How the node gets to ABI v1. The agent's store (pods, identities, policies) is written only by
//! the agent, so building a v1 node from scratch (v1 pins and links on veths made by hand) would
//! leave the agent a store that describes nothing it knows. Instead the node is brought up by this
//! build (a lab, the real `myelin-agent`, pods plumbed by the real CNI plugin, a network policy),
//! the agent is stopped with SIGTERM (the datapath keeps forwarding), and its pin directory is
//! turned into exactly what the first release's agent left pinned, while the stream runs:
//! - the v1 object (`bpf/testdata/abi-v1`, through `myelin_bpf::testing::LegacyDatapath`) is
//!   loaded over the pin directory: the maps whose layout v1 declares differently (ct4,
//!   node_config) are replaced by v1-layout maps holding the same entries, converted down; the
//!   others (endpoints, ipcache, policy maps, metrics, ...) are reused with their contents, as v1
//!   would have used them;
//! - the pods' pinned TCX links switch to the v1 programs with BPF_LINK_UPDATE (never empty);
//! - every pin v1 did not have goes: this build's other maps, the uplink and cgroup links, and
//!   `abi_meta` (v1 recorded no ABI: a pin directory with `endpoints` and no `abi_meta` is ABI 1
//!   to the loader).
//!
//! The test checks that this is a working v1 node (the links run the v1 programs, the stream goes
//! on through them, a new connection the policy allows gets through, one it denies does not),
//! then starts the agent binary again on that pin directory, as after a package upgrade. The
//! agent must report the upgrade from ABI 1 in `/v1/status` (ct4 and node_config converted,
//! every pod link updated and no other), keep the same link objects while their programs change
//! to exactly those it attaches to a pod plumbed after the upgrade, adopt the pods unchanged, and
//! go on enforcing the policy (allowed still reaches, denied is dropped and counted as a policy
//! drop). The stream must lose no byte and never pause longer than [`MAX_PAUSE`] from before the
//! agent stopped until after the upgrade.
//!
//! Not covered: a store written by a v1 agent (the store is this build's; only the datapath is
//! v1), and v1 objects other than lxc (v1 had no other).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_bpf::testing::{link_id, link_prog_id, LegacyDatapath, Replaced, LXC_ABI_V1};
use myelin_e2e::*;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LAB: &str = r"
nodes: [{name: node1}]
namespaces: [{name: default}]
pods:
  - {name: a, namespace: default, node: node1, labels: {pod: a}}
  - {name: b, namespace: default, node: node1, labels: {pod: b}}
  - {name: c, namespace: default, node: node1, labels: {pod: c}}
";

/// b admits only a.
const POLICY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: default}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
";

/// The longest the stream may go without a byte arriving (TCP retransmits after 200 ms and
/// more; a datapath that stopped forwarding for the restart shows as seconds).
const MAX_PAUSE: Duration = Duration::from_millis(1000);

/// DROP_POLICY: no policy entry admits the packet.
const DROP_POLICY: u8 = 133;

/// An entry of this build's layout turned into ABI v1's (bpf/testdata/abi-v1/myelin_abi.h).
/// Exact sizes: a layout that changes again is left out, and the test says so.
fn to_v1(map: &str, _key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    match (map, value.len()) {
        // node_config v1: addresses, flags, pad, four CT timeouts (40 bytes); the event
        // settings that follow came later.
        ("node_config", 56) => Some(value[..40].to_vec()),
        // ct4_entry v1: six counters, two rule ids, flags (60 bytes), pad; identities,
        // handshake time, report time and TCP flags seen came later.
        ("ct4", 80) => {
            let mut v = value[..60].to_vec();
            v.extend_from_slice(&[0; 4]);
            Some(v)
        }
        _ => None,
    }
}

/// (when, bytes received so far), one point per read.
type Timeline = Vec<(Instant, u64)>;

/// A paced TCP stream from one pod to another, with the receiver's timeline of (time, bytes so
/// far). Dropping it closes both ends, so a failing test leaves no thread behind blocked.
struct Stream {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    ends: [TcpStream; 2],
    writer: Option<std::thread::JoinHandle<std::io::Result<u64>>>,
    reader: Option<std::thread::JoinHandle<std::io::Result<Timeline>>>,
}

impl Stream {
    fn start(from: &Path, to: &Path, to_ip: std::net::Ipv4Addr) -> Self {
        let l = tcp_listen(to, to_ip);
        let addr = l.local_addr().unwrap();
        let mut tx = tcp_connect(from, addr).expect("connect the stream");
        let (mut rx, _) = l.accept().unwrap();
        let ends = [tx.try_clone().unwrap(), rx.try_clone().unwrap()];
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let received = received.clone();
            std::thread::spawn(move || {
                rx.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut timeline = vec![(Instant::now(), 0)];
                let mut total = 0u64;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = rx.read(&mut buf)?;
                    if n == 0 {
                        return Ok(timeline);
                    }
                    total += n as u64;
                    timeline.push((Instant::now(), total));
                    received.store(total, Ordering::Relaxed);
                }
            })
        };
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                tx.set_write_timeout(Some(Duration::from_secs(10)))?;
                let chunk = vec![7u8; 16384];
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tx.write_all(&chunk)?;
                    sent += chunk.len() as u64;
                    // Pacing (about 8 MB/s): a liveness stream, not a benchmark.
                    std::thread::sleep(Duration::from_millis(2));
                }
                tx.shutdown(Shutdown::Write)?;
                Ok(sent)
            })
        };
        Self { received, stop, ends, writer: Some(writer), reader: Some(reader) }
    }

    /// Wait until another 256 KiB arrived.
    fn wait_progress(&self, what: &str) {
        let start = self.received.load(Ordering::Relaxed);
        wait_for(what, Duration::from_secs(10), || {
            (self.received.load(Ordering::Relaxed) > start + 256 * 1024).then_some(())
        });
    }

    /// Stop writing; (bytes sent, the receiver's timeline up to the end of the stream).
    fn finish(mut self) -> (u64, Timeline) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.writer.take().unwrap().join().unwrap().expect("the writer never failed");
        let timeline = self.reader.take().unwrap().join().unwrap().expect("the reader never failed");
        (sent, timeline)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.writer.is_some() {
            for e in &self.ends {
                let _ = e.shutdown(Shutdown::Both);
            }
        }
    }
}

/// The longest time between two arrivals of bytes, and when it ended.
fn longest_pause(timeline: &[(Instant, u64)]) -> (Duration, Instant) {
    let mut worst = (Duration::ZERO, timeline[0].0);
    for w in timeline.windows(2) {
        let gap = w[1].0 - w[0].0;
        if gap > worst.0 {
            worst = (gap, w[1].0);
        }
    }
    worst
}

/// "copied N" of a `/v1/status` migration line (`map: how (copied N, skipped M)`).
fn copied(line: &str) -> (usize, usize) {
    let tail = line.rsplit_once("(copied ").map(|(_, t)| t).unwrap_or_else(|| panic!("no count in {line:?}"));
    let (c, s) = tail.trim_end_matches(')').split_once(", skipped ").unwrap_or_else(|| panic!("{line:?}"));
    (c.parse().unwrap(), s.parse().unwrap())
}

/// Turn the pin directory of a stopped agent of this build into what the ABI v1 agent left
/// pinned (see the module doc); returns what was replaced and the v1 program ids.
fn downgrade_to_v1(pin: &Path, pod_veths: &[String]) -> (Vec<Replaced>, u32, u32) {
    let (v1, replaced) = LegacyDatapath::load_over(pin, &LXC_ABI_V1, &to_v1).expect("load the v1 object over the pins");
    for veth in pod_veths {
        assert_eq!(v1.update_endpoint_links(veth).expect("switch the pod's links to v1"), 2, "{veth}");
    }
    // Only what v1 pinned stays: its maps, and the pods' links.
    let keep = v1.pinned_maps();
    for e in std::fs::read_dir(pin).unwrap().map(Result::unwrap) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "links" || keep.contains(&name) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(e.path()).unwrap();
        } else {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    for e in std::fs::read_dir(pin.join("links")).unwrap().map(Result::unwrap) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !pod_veths.contains(&name) {
            std::fs::remove_dir_all(e.path()).unwrap();
            continue;
        }
        for leaf in std::fs::read_dir(e.path()).unwrap().map(Result::unwrap) {
            if leaf.file_name() != "ingress" && leaf.file_name() != "egress" {
                std::fs::remove_file(leaf.path()).unwrap();
            }
        }
    }
    let ids = (
        v1.prog_id("from_container").expect("v1 from_container"),
        v1.prog_id("to_container").expect("v1 to_container"),
    );
    // The old agent exits: its pins keep maps and links alive.
    drop(v1);
    (replaced, ids.0, ids.1)
}

/// a reaches b; c does not, and b's ingress counts c's attempt as a policy drop.
fn policy_holds(lab: &myelin_lab::Lab, [ns_a, ns_c]: [&Path; 2], b: SocketAddr, b_ep: u32, when: &str) {
    assert!(tcp_probe(ns_a, b).reached(&format!("a -> b {when}")), "a reaches b {when}");
    let drops = metric(lab, "node1", b_ep, "ingress", DROP_POLICY).0;
    assert!(!tcp_probe(ns_c, b).reached(&format!("c -> b {when}")), "c is kept from b {when}");
    let after = metric(lab, "node1", b_ep, "ingress", DROP_POLICY).0;
    assert!(after > drops, "b's ingress counted c's attempt as a policy drop {when} ({drops} -> {after})");
}

fn links_of(pin: &Path, veth: &str) -> (u32, u32) {
    let dir = pin.join("links").join(veth);
    (link_prog_id(&dir.join("ingress")).expect("ingress link"), link_prog_id(&dir.join("egress")).expect("egress link"))
}

/// The ids of the links themselves (not of their programs), ingress and egress of every veth.
fn link_ids(pin: &Path, veths: &[String]) -> Vec<(u32, u32)> {
    let dir = |v: &String| pin.join("links").join(v);
    veths
        .iter()
        .map(|v| (link_id(&dir(v).join("ingress")).unwrap(), link_id(&dir(v).join("egress")).unwrap()))
        .collect()
}

fn sorted_dir(path: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn agent_upgrades_an_abi_v1_node_without_stopping_a_stream_and_keeps_enforcing_policy() {
    let mut g = LabGuard::up(LAB, "upg");
    let c = client(g.lab(), "node1");
    let change: myelin_api::PolicyChange = c
        .post(
            "/v1/policies",
            &myelin_api::PolicyApply {
                files: vec![myelin_api::PolicyFile { name: "b-from-a.yaml".into(), content: POLICY.into() }],
            },
        )
        .expect("apply the policy");
    assert_eq!(change.policies.len(), 1, "{change:?}");
    let node = g.lab().node("node1").unwrap();
    let pin: PathBuf = node.bpf_dir.clone();
    let (ns_a, ns_b, ns_c) =
        (pod_ns(g.lab(), "default", "a"), pod_ns(g.lab(), "default", "b"), pod_ns(g.lab(), "default", "c"));
    let b_ip = pod_ip(g.lab(), "default", "b");
    let b_ep = endpoint_id(g.lab(), "default", "b");
    let endpoints_before: Vec<myelin_api::Endpoint> = c.get("/v1/endpoints").unwrap();
    assert_eq!(endpoints_before.len(), 3);
    let mut veths: Vec<String> = endpoints_before.iter().map(|e| e.host_ifname.clone()).collect();
    veths.sort();

    // Policy as this build enforces it: a reaches b, c does not (and the datapath says why).
    let probe_listener = tcp_listen(&ns_b, b_ip);
    let probe_to: SocketAddr = probe_listener.local_addr().unwrap();
    policy_holds(g.lab(), [&ns_a, &ns_c], probe_to, b_ep, "before the upgrade");

    let links = link_ids(&pin, &veths);
    assert!(links.iter().all(|(i, e)| *i != 0 && *e != 0 && i != e), "{links:?}");
    let stream = Stream::start(&ns_a, &ns_b, b_ip);
    stream.wait_progress("the stream under way");
    let t_stop = Instant::now();

    // The agent stops; the datapath goes on forwarding.
    let pid = nix::unistd::Pid::from_raw(node.agent_pid.expect("agent pid"));
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    wait_for("the agent to exit", Duration::from_secs(15), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(Some(()), |s| s.contains(") Z").then_some(()))
    });
    stream.wait_progress("the stream flowing with no agent");

    // The node as the v1 agent would have left it.
    let (replaced, v1_from, v1_to) = downgrade_to_v1(&pin, &veths);
    eprintln!("downgraded to v1: {replaced:#?}");
    let mut names: Vec<&str> = replaced.iter().map(|r| r.map.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["ct4", "node_config"], "the maps whose layout changed since v1 (teach to_v1 any other)");
    for r in &replaced {
        assert_eq!(r.left_out, 0, "every entry converted to v1: {r:?}");
    }
    assert!(replaced.iter().any(|r| r.map == "ct4" && r.copied >= 1), "the stream's connection is in v1's ct4");
    assert!(!pin.join("abi_meta").exists(), "v1 recorded no ABI");
    assert!(!pin.join("migrate").exists());
    assert_eq!(sorted_dir(&pin.join("links")), veths, "only the pods' links, as v1 had");
    for veth in &veths {
        assert_eq!(sorted_dir(&pin.join("links").join(veth)), ["egress", "ingress"]);
        assert_eq!(links_of(&pin, veth), (v1_from, v1_to), "{veth} runs the v1 programs");
    }
    assert_eq!(link_ids(&pin, &veths), links, "the same links, their programs replaced");
    let t_v1 = Instant::now();
    stream.wait_progress("the stream flowing through the v1 datapath");
    // A working v1 node: it forwards new connections and enforces the policy it holds.
    assert!(tcp_probe(&ns_a, probe_to).reached("a -> b under v1"), "a reaches b under v1");
    assert!(!tcp_probe(&ns_c, probe_to).reached("c -> b under v1"), "c is kept from b under v1");

    // The upgrade: this build's agent starts on the v1 pin directory.
    let t_start = Instant::now();
    g.lab_mut().restart_agent("node1", Signal::SIGTERM).expect("the agent starts on the v1 pin directory");
    let t_ready = Instant::now();
    stream.wait_progress("the stream flowing after the upgrade");

    let c = client(g.lab(), "node1");
    let status: myelin_api::Status = c.get("/v1/status").unwrap();
    let dp = &status.datapath;
    eprintln!("datapath status after the upgrade: {dp:#?}");
    assert_eq!(dp.previous_abi, Some(1), "the agent found the v1 datapath");
    assert_eq!(dp.abi, myelin_bpf::abi_version(), "and made it this build's");
    assert!(dp.abi > 1);
    let line = |map: &str| {
        dp.migrated
            .iter()
            .find(|l| l.starts_with(&format!("{map}: converted")))
            .unwrap_or_else(|| panic!("{map} not converted: {:?}", dp.migrated))
    };
    let (ct_copied, ct_skipped) = copied(line("ct4"));
    assert!(ct_copied >= 1 && ct_skipped == 0, "the stream's connection carried over: {:?}", line("ct4"));
    assert_eq!(copied(line("node_config")), (1, 0));
    assert_eq!(dp.links_updated, 2 * veths.len(), "every link of every pod (and nothing else: v1 had nothing else)");
    assert_eq!(status.adopted_endpoints, 3, "the pods adopted, not plumbed again");
    let endpoints_after: Vec<myelin_api::Endpoint> = c.get("/v1/endpoints").unwrap();
    assert_eq!(endpoints_before, endpoints_after, "same endpoints, ids, veths and addresses");
    assert!(pin.join("abi_meta").exists(), "the ABI is recorded again");
    assert!(!pin.join("migrate").exists(), "the v1 maps were released");

    assert_eq!(link_ids(&pin, &veths), links, "the agent updated the live links in place, it did not replace them");

    // The pods' links run exactly the programs the agent gives a pod plumbed now.
    let d = g.lab_mut().add_pod(myelin_lab::PodSpec::new("default", "d", "node1", &[("pod", "d")])).expect("pod d");
    let d_veth = c
        .get::<Vec<myelin_api::Endpoint>>("/v1/endpoints")
        .unwrap()
        .into_iter()
        .find(|e| Some(e.id) == d.endpoint_id)
        .expect("d's endpoint")
        .host_ifname;
    let current = links_of(&pin, &d_veth);
    for veth in &veths {
        let now = links_of(&pin, veth);
        assert_eq!(now, current, "{veth} runs this build's programs");
        assert!(now.0 != v1_from && now.1 != v1_to, "{veth} no longer runs v1's");
    }

    // Policy after the upgrade, for new connections; and for the new pod too.
    policy_holds(g.lab(), [&ns_a, &ns_c], probe_to, b_ep, "after the upgrade");
    let ns_d = pod_ns(g.lab(), "default", "d");
    assert!(!tcp_probe(&ns_d, probe_to).reached("d -> b after the upgrade"), "d is kept from b");

    // The stream, end to end: every byte arrived, and it never stopped for long.
    let (sent, timeline) = stream.finish();
    let t_end = Instant::now();
    let total = timeline.last().unwrap().1;
    assert_eq!(total, sent, "every byte sent arrived");
    let (pause, at) = longest_pause(&timeline);
    let since = |t: Instant| t.duration_since(t_stop).as_millis();
    eprintln!(
        "agent stopped at 0 ms; v1 datapath in place at {} ms; upgrade {} ms -> {} ms; end {} ms; \
         longest pause of the stream {} ms, ending at {} ms; {total} bytes",
        since(t_v1),
        since(t_start),
        since(t_ready),
        since(t_end),
        pause.as_millis(),
        since(at),
    );
    assert!(timeline[1].0 < t_stop && timeline.last().unwrap().0 > t_ready, "the timeline spans the whole sequence");
    assert!(
        timeline.iter().any(|(t, _)| *t > t_start && *t < t_ready),
        "bytes arrived while the agent was starting and upgrading"
    );
    assert!(
        pause < MAX_PAUSE,
        "the stream paused for {} ms (ending {} ms after the stop)",
        pause.as_millis(),
        since(at)
    );
    drop(probe_listener);
}
