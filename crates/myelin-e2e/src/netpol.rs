//! A reachability-matrix harness in the style of the Kubernetes network
//! policy e2e suite: namespaces x, y, z with pods a, b, c, each serving TCP
//! and UDP on ports 80 and 81; every case probes the whole matrix with real
//! connections and compares it with the expected truth table.

use crate::{classify_io_error, in_ns, panic_message, try_in_ns, LabGuard, Probe};
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

/// `Kind/namespace/name` (or `Kind/name`), as a PolicyChange names policies.
fn policy_id(p: &myelin_api::AppliedPolicy) -> String {
    match &p.namespace {
        Some(ns) => format!("{}/{ns}/{}", p.kind, p.name),
        None => format!("{}/{}", p.kind, p.name),
    }
}

/// Node of the `i`-th matrix pod when spread over `nodes` nodes.
fn node_of(i: usize, nodes: usize) -> String {
    format!("node{}", i % nodes + 1)
}

fn lab_yaml(externals: &[&str], nodes: usize) -> String {
    let names: Vec<String> = (1..=nodes).map(|n| format!("{{name: node{n}}}")).collect();
    let mut y = format!("nodes: [{}]\nnamespaces:\n", names.join(", "));
    for ns in NAMESPACES {
        y += &format!("  - {{name: {ns}, labels: {{ns: \"{ns}\"}}}}\n");
    }
    y += "pods:\n";
    let mut i = 0;
    for ns in NAMESPACES {
        for p in PODS {
            let node = node_of(i, nodes);
            i += 1;
            y += &format!(
                "  - {{name: {p}, namespace: {ns}, node: {node}, labels: {{pod: {p}}}, ports: [\
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
    /// The lab's nodes (policies go to every one).
    pub nodes: Vec<String>,
    pub pods: Vec<Pod>,
    pub externals: Vec<Host>,
    stop: Arc<AtomicBool>,
}

impl Matrix {
    /// A lab with the 9 matrix pods serving, and the given external hosts serving too.
    pub fn up(prefix: &str, externals: &[&str]) -> Self {
        Self::up_on(prefix, externals, 1)
    }

    /// [`Matrix::up`] with the pods spread round-robin over `nodes` nodes (the lab's default for
    /// several nodes: VXLAN and etcd); returns once every node knows every other node's pods.
    pub fn up_on(prefix: &str, externals: &[&str], nodes: usize) -> Self {
        let lab = LabGuard::up(&lab_yaml(externals, nodes), prefix);
        let node_names: Vec<String> = (1..=nodes).map(|n| format!("node{n}")).collect();
        if nodes > 1 {
            let total = NAMESPACES.len() * PODS.len();
            for (k, n) in node_names.iter().enumerate() {
                let local = (0..total).filter(|i| i % nodes == k).count();
                crate::wait_for(&format!("{n} to know the other nodes' pods"), Duration::from_secs(30), || {
                    let st: myelin_api::Status = lab.lab().client(n).ok()?.get("/v1/status").ok()?;
                    st.cluster.filter(|c| c.connected && c.remote_ips == total - local).map(|_| ())
                });
            }
        }
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
        let m = Self { lab, nodes: node_names, pods, externals, stop };
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

    fn client(&self, node: &str) -> myelin_api::Client {
        self.lab.lab().client(node).expect("client")
    }

    /// Apply YAML through node1's agent API; Err carries the agent's message. With several
    /// nodes the agents share policies through etcd: this returns once every node holds the
    /// applied documents (so the cases also check policy distribution).
    pub fn try_apply(&self, yaml: &str) -> Result<PolicyChange, String> {
        let body = PolicyApply { files: vec![PolicyFile { name: "test.yaml".into(), content: yaml.into() }] };
        let change: PolicyChange = self.client("node1").post("/v1/policies", &body).map_err(|e| e.to_string())?;
        let want: Vec<myelin_api::AppliedPolicy> = self.client("node1").get("/v1/policies").expect("node1's policies");
        let want: Vec<(String, Option<String>, String, String)> = want
            .into_iter()
            .filter(|p| change.policies.contains(&policy_id(p)))
            .map(|p| (p.kind, p.namespace, p.name, p.yaml))
            .collect();
        self.wait_everywhere("the applied policies", |have| want.iter().all(|w| have.contains(w)));
        Ok(change)
    }

    pub fn apply(&self, yaml: &str) {
        if let Err(e) = self.try_apply(yaml) {
            panic!("apply failed: {e}\n{yaml}");
        }
    }

    /// Delete policies through node1; with several nodes, returns once no node holds them.
    pub fn delete(&self, ids: &[&str]) {
        let body = PolicyDelete { ids: ids.iter().map(|s| (*s).to_owned()).collect() };
        let change: PolicyChange =
            self.client("node1").post("/v1/policies/delete", &body).unwrap_or_else(|e| panic!("delete {ids:?}: {e}"));
        let gone = change.policies;
        self.wait_everywhere("the deleted policies to go", |have| {
            have.iter().all(|(kind, ns, name, _)| {
                let key = match ns {
                    Some(ns) => format!("{kind}/{ns}/{name}"),
                    None => format!("{kind}/{name}"),
                };
                !gone.contains(&key)
            })
        });
    }

    /// Wait until every other node's policies satisfy `ok` (kind, namespace, name, yaml).
    fn wait_everywhere(&self, what: &str, ok: impl Fn(&[(String, Option<String>, String, String)]) -> bool) {
        for n in self.nodes.iter().skip(1) {
            crate::wait_for(&format!("{what} on {n}"), Duration::from_secs(15), || {
                let have: Vec<myelin_api::AppliedPolicy> = self.client(n).get("/v1/policies").ok()?;
                let have: Vec<_> = have.into_iter().map(|p| (p.kind, p.namespace, p.name, p.yaml)).collect();
                ok(&have).then_some(())
            });
        }
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
        // A pod's traffic to itself never leaves it: policy does not apply
        // (Kubernetes' e2e suite allows loopback the same way).
        let want = |i: usize| {
            let (from, to, port, proto) = &probes[i];
            from.is(&to.id()) || expect(from, to, *port, *proto)
        };
        let mut results = run_probes(plan.clone());
        retry_missing(&plan, &mut results, want);
        let labels: Vec<String> = probes
            .iter()
            .map(|(from, to, port, proto)| format!("{} -> {} {port}/{proto:?}", from.id(), to.id()))
            .collect();
        assert_matches(case, &labels, &results, want);
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
        let want = |i: usize| {
            let (from, port, proto) = &probes[i];
            expect(from, *port, *proto)
        };
        let mut results = run_probes(plan.clone());
        retry_missing(&plan, &mut results, want);
        let labels: Vec<String> = probes
            .iter()
            .map(|(from, port, proto)| format!("{} -> {} {port}/{proto:?}", from.id(), host.name))
            .collect();
        assert_matches(case, &labels, &results, want);
    }

    /// One probe; see [`reach`].
    #[must_use]
    pub fn reach(&self, from: &Path, to: Ipv4Addr, port: u16, proto: Proto) -> bool {
        reach(from, to, port, proto)
    }
}

/// One probe from the netns at `from`: true = reached, false = blocked (a miss is tried again
/// with the long timeout first). Panics when the probe could not run: that is not "blocked".
#[must_use]
pub fn reach(from: &Path, to: Ipv4Addr, port: u16, proto: Proto) -> bool {
    let plan = vec![(from.to_path_buf(), to, port, proto)];
    let mut results = run_probes(plan.clone());
    retry_missing(&plan, &mut results, |_| true);
    results[0].reached(&format!("probe {} -> {to}:{port}/{proto:?}", from.display()))
}

/// Compare probe results with what was wanted (`want(i)`: should probe `i` reach?). Panics
/// listing every harness error if any probe could not run (whatever was expected of it),
/// else listing every probe whose result differs.
pub fn assert_matches(case: &str, labels: &[String], results: &[Probe], want: impl Fn(usize) -> bool) {
    let broken: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Probe::HarnessError(e) => Some(format!("  {}: {e}", labels[i])),
            _ => None,
        })
        .collect();
    assert!(
        broken.is_empty(),
        "case {case:?}: {} of {} probes could not run (harness errors, not \"blocked\"):\n{}",
        broken.len(),
        results.len(),
        broken.join("\n")
    );
    let mut wrong = Vec::new();
    for (i, got) in results.iter().enumerate() {
        let want = want(i);
        if want != (*got == Probe::Reached) {
            wrong.push(format!(
                "  {}: expected {}, got {}",
                labels[i],
                if want { "reach" } else { "blocked" },
                got.describe()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "case {case:?}: {} of {} probes differ:\n{}",
        wrong.len(),
        results.len(),
        wrong.join("\n")
    );
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

/// Run probes in parallel batches.
fn run_probes(probes: Vec<(PathBuf, Ipv4Addr, u16, Proto)>) -> Vec<Probe> {
    run_probes_within(probes, PROBE_TIMEOUT)
}

/// Probe again, with the long timeout, those results that came out blocked where `want` says
/// they should reach. Only that direction is retried: a delay can hide a reply, never fake one.
/// Harness errors are never retried: they fail the test.
fn retry_missing(probes: &[(PathBuf, Ipv4Addr, u16, Proto)], results: &mut [Probe], want: impl Fn(usize) -> bool) {
    let again: Vec<usize> = (0..results.len()).filter(|&i| results[i] == Probe::Blocked && want(i)).collect();
    if again.is_empty() {
        return;
    }
    let second = run_probes_within(again.iter().map(|&i| probes[i].clone()).collect(), RETRY_TIMEOUT);
    for (i, got) in again.into_iter().zip(second) {
        results[i] = got;
    }
}

fn run_probes_within(probes: Vec<(PathBuf, Ipv4Addr, u16, Proto)>, timeout: Duration) -> Vec<Probe> {
    run_parallel(probes, move |(ns, ip, port, proto)| probe(&ns, ip, port, proto, timeout))
}

/// Run `f` on every item, 64 threads at a time. A thread that cannot be started or that
/// panics yields a harness error for its item, never a result about the network.
pub fn run_parallel<T: Send + 'static>(items: Vec<T>, f: impl Fn(T) -> Probe + Send + Sync + 'static) -> Vec<Probe> {
    let f = Arc::new(f);
    let mut out = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let handles: Vec<_> = items
            .by_ref()
            .take(64)
            .map(|item| {
                let f = f.clone();
                std::thread::Builder::new().name("probe".into()).spawn(move || f(item))
            })
            .collect();
        for h in handles {
            out.push(match h {
                Err(e) => Probe::HarnessError(format!("cannot start a probe thread: {e}")),
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|p| Probe::HarnessError(format!("probe thread panicked: {}", panic_message(&*p)))),
            });
        }
    }
    out
}

/// One TCP or UDP probe from the netns at `ns` to a matrix server (which answers `+`).
#[must_use]
pub fn probe(ns: &Path, ip: Ipv4Addr, port: u16, proto: Proto, timeout: Duration) -> Probe {
    let to = SocketAddr::from((ip, port));
    match proto {
        Proto::Tcp => {
            let mut s = match try_in_ns(ns, move || TcpStream::connect_timeout(&to, timeout)) {
                Err(e) => return Probe::HarnessError(e),
                Ok(Err(e)) => return classify_io_error(&format!("TCP connect to {to}"), &e),
                Ok(Ok(s)) => s,
            };
            if let Err(e) = s.set_read_timeout(Some(timeout)) {
                return Probe::HarnessError(format!("setting a read timeout: {e}"));
            }
            let mut b = [0u8; 1];
            match s.read(&mut b) {
                Ok(1) if b[0] == b'+' => Probe::Reached,
                Ok(0) => Probe::HarnessError(format!("the server at {to} closed without answering")),
                Ok(_) => Probe::HarnessError(format!("unexpected reply {:?} from {to}", b[0] as char)),
                Err(e) => classify_io_error(&format!("TCP read from {to}"), &e),
            }
        }
        Proto::Udp => {
            let s = match try_in_ns(ns, || UdpSocket::bind(("0.0.0.0", 0))) {
                Err(e) => return Probe::HarnessError(e),
                Ok(Err(e)) => return Probe::HarnessError(format!("binding a UDP socket in {}: {e}", ns.display())),
                Ok(Ok(s)) => s,
            };
            if let Err(e) = s.set_read_timeout(Some(timeout)) {
                return Probe::HarnessError(format!("setting a read timeout: {e}"));
            }
            if let Err(e) = s.send_to(b"?", to) {
                return classify_io_error(&format!("UDP send to {to}"), &e);
            }
            // An unconnected socket never sees ICMP port-unreachable: no reply is "blocked".
            let mut b = [0u8; 8];
            match s.recv_from(&mut b) {
                Ok((1, _)) if b[0] == b'+' => Probe::Reached,
                Ok((n, peer)) => Probe::HarnessError(format!("unexpected UDP reply of {n} bytes from {peer}")),
                Err(e) => classify_io_error(&format!("UDP receive from {to}"), &e),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(
        expected = "the probe could not run (this is not \"blocked\"): cannot enter /nonexistent/myelin-netns"
    )]
    fn a_probe_from_a_missing_netns_fails_the_test_instead_of_counting_as_blocked() {
        let _ = reach(Path::new("/nonexistent/myelin-netns"), Ipv4Addr::LOCALHOST, 80, Proto::Tcp);
    }

    #[test]
    fn a_failed_netns_entry_is_a_harness_error_for_both_protocols() {
        for proto in [Proto::Tcp, Proto::Udp] {
            let p = probe(Path::new("/nonexistent/myelin-netns"), Ipv4Addr::LOCALHOST, 80, proto, PROBE_TIMEOUT);
            assert!(matches!(&p, Probe::HarnessError(e) if e.contains("does not exist")), "{proto:?}: {p:?}");
        }
    }

    #[test]
    fn a_panicking_probe_thread_is_a_harness_error() {
        let r = run_parallel(vec![1, 2], |i| if i == 2 { panic!("probe {i} exploded") } else { Probe::Blocked });
        assert_eq!(r[0], Probe::Blocked);
        assert_eq!(r[1], Probe::HarnessError("probe thread panicked: probe 2 exploded".into()));
    }

    #[test]
    #[should_panic(expected = "1 of 2 probes could not run (harness errors, not \"blocked\")")]
    fn a_harness_error_where_blocked_is_expected_fails_the_case() {
        let labels = vec!["x/a -> x/b 80/Tcp".to_owned(), "x/a -> x/c 80/Tcp".to_owned()];
        let results = vec![Probe::Blocked, Probe::HarnessError("bind failed".into())];
        assert_matches("both blocked", &labels, &results, |_| false);
    }

    #[test]
    #[should_panic(expected = "x/a -> x/b 80/Tcp: expected blocked, got reach")]
    fn a_wrong_verdict_fails_the_case() {
        assert_matches("blocked", &["x/a -> x/b 80/Tcp".to_owned()], &[Probe::Reached], |_| false);
    }

    #[test]
    fn matching_verdicts_pass() {
        let labels = vec!["a".to_owned(), "b".to_owned()];
        assert_matches("ok", &labels, &[Probe::Reached, Probe::Blocked], |i| i == 0);
    }
}
