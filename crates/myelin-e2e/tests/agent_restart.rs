//! The datapath lives in the kernel, not in the agent: a TCP stream between
//! two pods keeps flowing while the agent is killed and started again, and
//! the restarted agent adopts the endpoints without re-plumbing them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use myelin_e2e::*;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LAB: &str = r"
nodes: [{name: node1}]
namespaces: [{name: default}]
pods:
  - {name: a, namespace: default, node: node1}
  - {name: b, namespace: default, node: node1}
";

struct Stream {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    writer: std::thread::JoinHandle<std::io::Result<()>>,
    reader: std::thread::JoinHandle<std::io::Result<()>>,
}

fn start_stream(lab: &myelin_lab::Lab) -> Stream {
    let b_ip = pod_ip(lab, "default", "b");
    let l = tcp_listen(&pod_ns(lab, "default", "b"), b_ip);
    let addr = l.local_addr().unwrap();
    let mut tx = tcp_connect(&pod_ns(lab, "default", "a"), addr).expect("connect a -> b");
    let (mut rx, _) = l.accept().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let received = received.clone();
        std::thread::spawn(move || {
            rx.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = vec![0u8; 65536];
            loop {
                let n = rx.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            tx.set_write_timeout(Some(Duration::from_secs(5)))?;
            let chunk = vec![7u8; 16384];
            while !stop.load(Ordering::Relaxed) {
                tx.write_all(&chunk)?;
                // A modest, steady rate: this is a liveness stream, not a benchmark.
                std::thread::sleep(Duration::from_millis(2));
            }
            tx.shutdown(std::net::Shutdown::Write)
        })
    };
    Stream { received, stop, writer, reader }
}

fn wait_progress(s: &Stream, what: &str) {
    let start = s.received.load(Ordering::Relaxed);
    wait_for(what, Duration::from_secs(10), || (s.received.load(Ordering::Relaxed) > start + 256 * 1024).then_some(()));
}

fn restart_keeps_traffic(signal: Signal) {
    let mut g = LabGuard::up(LAB, "rst");
    let before: Vec<myelin_api::Endpoint> = client(g.lab(), "node1").get("/v1/endpoints").unwrap();
    assert_eq!(before.len(), 2);
    let stream = start_stream(g.lab());
    wait_progress(&stream, "stream flowing before the restart");

    // Kill the agent and prove the stream flows while no agent runs at all.
    let node = g.lab().node("node1").unwrap();
    let pid = nix::unistd::Pid::from_raw(node.agent_pid.expect("agent pid"));
    nix::sys::signal::kill(pid, signal).unwrap();
    wait_for("agent gone", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(Some(()), |s| s.contains(") Z").then_some(()))
    });
    wait_progress(&stream, "stream flowing with no agent running");

    g.lab_mut().restart_agent("node1", signal).expect("agent starts again");
    wait_progress(&stream, "stream flowing after the restart");

    let status: myelin_api::Status = client(g.lab(), "node1").get("/v1/status").unwrap();
    assert_eq!(status.adopted_endpoints, 2, "both endpoints adopted");
    let after: Vec<myelin_api::Endpoint> = client(g.lab(), "node1").get("/v1/endpoints").unwrap();
    assert_eq!(before, after, "endpoints unchanged: same ids, addresses, veths (ifindex) and MACs");

    stream.stop.store(true, Ordering::Relaxed);
    stream.writer.join().unwrap().expect("writer never failed: the stream was never interrupted");
    stream.reader.join().unwrap().expect("reader never failed");

    // New pods still work after the restart.
    let lab = g.lab_mut();
    lab.add_pod(myelin_lab::PodSpec::new("default", "c", "node1", &[])).expect("add pod after restart");
    let c_ip = pod_ip(lab, "default", "c");
    assert!(ping(lab, "default/a", &c_ip.to_string()), "a reaches a pod added after the restart");
}

#[test]
fn stream_survives_agent_sigkill_and_restart() {
    restart_keeps_traffic(Signal::SIGKILL);
}

#[test]
fn stream_survives_agent_sigterm_and_restart() {
    restart_keeps_traffic(Signal::SIGTERM);
}

#[test]
fn policies_and_identities_survive_an_agent_restart() {
    let m = myelin_e2e::netpol::Matrix::up("rpol", &[]);
    m.apply(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: keep, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
",
    );
    let c = client(m.lab.lab(), "node1");
    let ids_before: Vec<myelin_api::IdentityInfo> = c.get("/v1/identities").unwrap();
    let eps_before: Vec<myelin_api::Endpoint> = c.get("/v1/endpoints").unwrap();
    let pol_before: myelin_api::EndpointPolicy = c
        .get(&format!(
            "/v1/endpoints/{}/policy",
            eps_before
                .iter()
                .find(|e| e.pod_name.as_deref() == Some("a") && e.namespace.as_deref() == Some("x"))
                .unwrap()
                .id
        ))
        .unwrap();

    let mut m = m;
    m.lab.lab_mut().restart_agent("node1", Signal::SIGKILL).expect("restart");
    let c = client(m.lab.lab(), "node1");
    let ids_after: Vec<myelin_api::IdentityInfo> = c.get("/v1/identities").unwrap();
    assert_eq!(ids_before, ids_after, "same identities, same numbers, same refcounts");
    let pols: Vec<myelin_api::AppliedPolicy> = c.get("/v1/policies").unwrap();
    assert_eq!(pols.len(), 1, "the policy is still applied");
    let pol_after: myelin_api::EndpointPolicy =
        c.get(&format!("/v1/endpoints/{}/policy", pol_before.endpoint_id)).unwrap();
    assert_eq!(pol_before, pol_after, "the datapath policy is unchanged");
    m.check("the policy still enforces after the restart", |from, to, _, _| !to.is("x/a") || from.is("x/b"));
}
