//! A reachability-matrix harness in the style of the Kubernetes network
//! policy e2e suite: namespaces x, y, z with pods a, b, c, each serving TCP
//! and UDP on ports 80 and 81; every case probes the whole matrix with real
//! connections and compares it with the expected truth table.

use crate::{in_ns, LabGuard};
use myelin_api::{PolicyApply, PolicyChange, PolicyDelete, PolicyFile};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A pod of the matrix.
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: &'static str,
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
}

impl Pod {
    #[must_use]
    pub fn id(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    #[must_use]
    pub fn is(&self, id: &str) -> bool {
        self.id() == id
    }
}

/// A probe source or target: a matrix pod or an external host.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
}

fn lab_yaml(externals: &[&str]) -> String {
    let mut y = String::from("nodes: [{name: node1}]\nnamespaces:\n");
    for ns in NAMESPACES {
        y += &format!("  - {{name: {ns}, labels: {{ns: \"{ns}\"}}}}\n");
    }
    y += "pods:\n";
    for ns in NAMESPACES {
        for p in PODS {
            y += &format!(
                "  - {{name: {p}, namespace: {ns}, node: node1, labels: {{pod: {p}}}, ports: [\
                 {{name: serve-80-tcp, port: 80, protocol: TCP}}, {{name: serve-81-tcp, port: 81, protocol: TCP}}, \
                 {{name: serve-80-udp, port: 80, protocol: UDP}}, {{name: serve-81-udp, port: 81, protocol: UDP}}]}}\n"
            );
        }
    }
    if !externals.is_empty() {
        y += "external:\n";
        for x in externals {
            y += &format!("  - {{name: {x}}}\n");
        }
    }
    y
}

pub struct Matrix {
    pub lab: LabGuard,
    pub pods: Vec<Pod>,
    pub externals: Vec<Host>,
    stop: Arc<AtomicBool>,
}

impl Matrix {
    /// A lab with the 9 matrix pods serving, and the given external hosts serving too.
    pub fn up(prefix: &str, externals: &[&str]) -> Self {
        let lab = LabGuard::up(&lab_yaml(externals), prefix);
        let mut pods = Vec::new();
        for ns in NAMESPACES {
            for name in PODS {
                let info = lab.lab().pod(ns, name).expect("pod");
                pods.push(Pod { ns, name, ip: info.ip.expect("ip").parse().expect("ip"), netns: info.netns_path });
            }
        }
        let externals: Vec<Host> = externals
            .iter()
            .map(|x| {
                let e = lab.lab().external(x).expect("external");
                Host { name: (*x).to_owned(), ip: e.ip.parse().expect("ip"), netns: e.netns_path }
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let m = Self { lab, pods, externals, stop };
        let targets: Vec<(Ipv4Addr, PathBuf)> = m
            .pods
            .iter()
            .map(|p| (p.ip, p.netns.clone()))
            .chain(m.externals.iter().map(|h| (h.ip, h.netns.clone())))
            .collect();
        for (ip, ns) in targets {
            for port in PORTS {
                serve_tcp(&ns, ip, port, m.stop.clone());
                serve_udp(&ns, ip, port, m.stop.clone());
            }
        }
        m
    }

    #[must_use]
    pub fn pod(&self, id: &str) -> &Pod {
        self.pods.iter().find(|p| p.is(id)).unwrap_or_else(|| panic!("no pod {id}"))
    }

    #[must_use]
    pub fn external(&self, name: &str) -> &Host {
        self.externals.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no external {name}"))
    }

    fn client(&self) -> myelin_api::Client {
        self.lab.lab().client("node1").expect("client")
    }

    /// Apply YAML through the agent API; Err carries the agent's message.
    pub fn try_apply(&self, yaml: &str) -> Result<PolicyChange, String> {
        let body = PolicyApply { files: vec![PolicyFile { name: "test.yaml".into(), content: yaml.into() }] };
        self.client().post("/v1/policies", &body).map_err(|e| e.to_string())
    }

    pub fn apply(&self, yaml: &str) {
        if let Err(e) = self.try_apply(yaml) {
            panic!("apply failed: {e}\n{yaml}");
        }
    }

    pub fn delete(&self, ids: &[&str]) {
        let body = PolicyDelete { ids: ids.iter().map(|s| (*s).to_owned()).collect() };
        let _: PolicyChange =
            self.client().post("/v1/policies/delete", &body).unwrap_or_else(|e| panic!("delete {ids:?}: {e}"));
    }

    /// Probe the whole pod matrix on both ports and protocols and compare.
    pub fn check(&self, case: &str, expect: impl Fn(&Pod, &Pod, u16, Proto) -> bool) {
        let mut probes = Vec::new();
        for from in &self.pods {
            for to in &self.pods {
                for port in PORTS {
                    for proto in [Proto::Tcp, Proto::Udp] {
                        probes.push((from.clone(), to.clone(), port, proto));
                    }
                }
            }
        }
        let plan: Vec<_> = probes.iter().map(|(f, t, port, proto)| (f.netns.clone(), t.ip, *port, *proto)).collect();
        let mut results = run_probes(plan.clone());
        retry_missing(&plan, &mut results, |i| {
            let (from, to, port, proto) = &probes[i];
            from.is(&to.id()) || expect(from, to, *port, *proto)
        });
        let mut wrong = Vec::new();
        for ((from, to, port, proto), got) in probes.iter().zip(results) {
            // A pod's traffic to itself never leaves it: policy does not apply
            // (Kubernetes' e2e suite allows loopback the same way).
            let want = from.is(&to.id()) || expect(from, to, *port, *proto);
            if want != got {
                wrong.push(format!(
                    "  {} -> {} {port}/{proto:?}: expected {}, got {}",
                    from.id(),
                    to.id(),
                    if want { "reach" } else { "blocked" },
                    if got { "reach" } else { "blocked" }
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "case {case:?}: {} of {} probes differ:\n{}",
            wrong.len(),
            probes.len(),
            wrong.join("\n")
        );
    }

    /// Probe pods -> a host (e.g. an external) on both ports and protocols and compare.
    pub fn check_to_host(&self, case: &str, host: &Host, expect: impl Fn(&Pod, u16, Proto) -> bool) {
        let mut probes = Vec::new();
        for from in &self.pods {
            for port in PORTS {
                for proto in [Proto::Tcp, Proto::Udp] {
                    probes.push((from.clone(), port, proto));
                }
            }
        }
        let plan: Vec<_> = probes.iter().map(|(f, port, proto)| (f.netns.clone(), host.ip, *port, *proto)).collect();
        let mut results = run_probes(plan.clone());
        retry_missing(&plan, &mut results, |i| {
            let (from, port, proto) = &probes[i];
            expect(from, *port, *proto)
        });
        let mut wrong = Vec::new();
        for ((from, port, proto), got) in probes.iter().zip(results) {
            if expect(from, *port, *proto) != got {
                wrong.push(format!(
                    "  {} -> {} {port}/{proto:?}: got {}",
                    from.id(),
                    host.name,
                    if got { "reach" } else { "blocked" }
                ));
            }
        }
        assert!(wrong.is_empty(), "case {case:?}: probes to {} differ:\n{}", host.name, wrong.join("\n"));
    }

    /// One probe; a miss is tried again with the long timeout before it counts as blocked.
    #[must_use]
    pub fn reach(&self, from: &Path, to: Ipv4Addr, port: u16, proto: Proto) -> bool {
        let plan = vec![(from.to_path_buf(), to, port, proto)];
        let mut results = run_probes(plan.clone());
        retry_missing(&plan, &mut results, |_| true);
        results[0]
    }
}

impl Drop for Matrix {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A probe's first try: replies on a local lab arrive in well under a millisecond.
const PROBE_TIMEOUT: Duration = Duration::from_millis(600);
/// The second try of a probe that should have reached but did not: a loaded machine (CI) can
/// delay a thread by more than the first timeout; a real drop stays a drop.
const RETRY_TIMEOUT: Duration = Duration::from_millis(3000);

/// Run probes in parallel batches; true = reached (reply received).
fn run_probes(probes: Vec<(PathBuf, Ipv4Addr, u16, Proto)>) -> Vec<bool> {
    run_probes_within(probes, PROBE_TIMEOUT)
}

/// Probe again, with the long timeout, those results that came out blocked where `want` says
/// they should reach. Only that direction is retried: a delay can hide a reply, never fake one.
fn retry_missing(probes: &[(PathBuf, Ipv4Addr, u16, Proto)], results: &mut [bool], want: impl Fn(usize) -> bool) {
    let again: Vec<usize> = (0..results.len()).filter(|&i| !results[i] && want(i)).collect();
    if again.is_empty() {
        return;
    }
    let second = run_probes_within(again.iter().map(|&i| probes[i].clone()).collect(), RETRY_TIMEOUT);
    for (i, got) in again.into_iter().zip(second) {
        results[i] = got;
    }
}

fn run_probes_within(probes: Vec<(PathBuf, Ipv4Addr, u16, Proto)>, timeout: Duration) -> Vec<bool> {
    let mut out = vec![false; probes.len()];
    let indexed: Vec<(usize, (PathBuf, Ipv4Addr, u16, Proto))> = probes.into_iter().enumerate().collect();
    for chunk in indexed.chunks(64) {
        let handles: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|(i, (ns, ip, port, proto))| (i, std::thread::spawn(move || probe(&ns, ip, port, proto, timeout))))
            .collect();
        for (i, h) in handles {
            out[i] = h.join().unwrap_or(false);
        }
    }
    out
}

fn probe(ns: &Path, ip: Ipv4Addr, port: u16, proto: Proto, timeout: Duration) -> bool {
    let to = SocketAddr::from((ip, port));
    match proto {
        Proto::Tcp => {
            let Ok(mut s) = in_ns(ns, move || TcpStream::connect_timeout(&to, timeout)) else { return false };
            let _ = s.set_read_timeout(Some(timeout));
            let mut b = [0u8; 1];
            matches!(s.read(&mut b), Ok(1) if b[0] == b'+')
        }
        Proto::Udp => {
            let s = in_ns(ns, || UdpSocket::bind(("0.0.0.0", 0)).expect("bind"));
            let _ = s.set_read_timeout(Some(timeout));
            if s.send_to(b"?", to).is_err() {
                return false;
            }
            let mut b = [0u8; 8];
            matches!(s.recv_from(&mut b), Ok((1, _)) if b[0] == b'+')
        }
    }
}

fn serve_tcp(ns: &Path, ip: Ipv4Addr, port: u16, stop: Arc<AtomicBool>) {
    let l = in_ns(ns, move || TcpListener::bind((ip, port))).unwrap_or_else(|e| panic!("bind {ip}:{port}/tcp: {e}"));
    std::thread::spawn(move || {
        for s in l.incoming() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if let Ok(mut s) = s {
                let _ = s.write_all(b"+");
            }
        }
    });
}

fn serve_udp(ns: &Path, ip: Ipv4Addr, port: u16, stop: Arc<AtomicBool>) {
    let s = in_ns(ns, move || UdpSocket::bind((ip, port))).unwrap_or_else(|e| panic!("bind {ip}:{port}/udp: {e}"));
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = s.recv_from(&mut b) {
                let _ = s.send_to(b"+", peer);
            }
        }
    });
}
