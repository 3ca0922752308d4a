//! Cost of the metrics' hot path (`Metrics::observe`) and of the periodic fold
//! (`Metrics::flush`) on a flow mix between uniformly random pod pairs (pessimistic
//! for the caches: real nodes talk to few peers). A benchmark, not a test: it
//! reports figures and asserts nothing.
//!
//! `cargo bench -p myelin-observe --bench metrics` (`DIAG=1`: also each metric
//! alone; `ONLY=<name>`: one configuration, e.g. under `perf record`). Times are
//! wall clock and, in parentheses, time this thread was on a CPU (the machines
//! are shared).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use myelin_observe::dict::{Dictionary, EndpointDesc};
use myelin_observe::metrics::{Metrics, MetricsConfig, DASHBOARD_METRICS, DEFAULT_METRICS};
use myelin_observe::record::{direction, flags, tcp, verdict, FlowRecord};

const PODS: u32 = 200;
const FLOWS: usize = 1_000_000;
const ROUNDS: usize = 10;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Flows between random pods: each pod talks to any pod (`peers` None) or to `peers` of them.
fn stream(ids: &[u32], peers: Option<u64>) -> Vec<FlowRecord> {
    let ports = [80u16, 443, 8080, 5432, 6379, 53, 9090, 3306, 11211, 27017];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..FLOWS)
        .map(|i| {
            let a = rng.below(u64::from(PODS)) as usize;
            let b = match peers {
                Some(p) => (a + 1 + 37 * rng.below(p) as usize) % PODS as usize,
                None => rng.below(u64::from(PODS)) as usize,
            };
            record(&mut rng, i, a, b, ids, &ports)
        })
        .collect()
}

fn pods(dict: &Dictionary) -> Vec<u32> {
    (0..PODS)
        .map(|i| {
            let app = format!("app{}", i % 40);
            dict.intern(EndpointDesc {
                identity: 1000 + i % 40,
                namespace: format!("ns{}", i % 8),
                pod_name: format!("{app}-5d8f7-{i:05}"),
                labels: vec![format!("k8s:app={app}")],
                workload: Some((app, "Deployment".into())),
                ..EndpointDesc::default()
            })
        })
        .collect()
}

fn record(rng: &mut Rng, i: usize, a: usize, b: usize, ids: &[u32], ports: &[u16]) -> FlowRecord {
    let kind = rng.below(100);
    let mut r = FlowRecord {
        seq: i as u64,
        ip_version: 4,
        protocol: if kind < 90 {
            6
        } else if kind < 98 {
            17
        } else {
            1
        },
        src_ip: 0x0a00_0000 | a as u128,
        dst_ip: 0x0a00_0000 | b as u128,
        src_port: 30_000 + rng.below(30_000) as u16,
        dst_port: ports[rng.below(ports.len() as u64) as usize],
        tcp_flags: [tcp::SYN, tcp::ACK, tcp::ACK | tcp::PSH, tcp::FIN | tcp::ACK][rng.below(4) as usize],
        event_type: myelin_bpf::EVENT_TRACE,
        verdict: verdict::FORWARDED,
        traffic_direction: if rng.below(2) == 0 { direction::INGRESS } else { direction::EGRESS },
        flags: flags::REPLY_KNOWN,
        trace_reason: 1,
        src_ep: ids[a],
        dst_ep: ids[b],
        src_identity: 1000 + a as u32 % 40,
        dst_identity: 1000 + b as u32 % 40,
        ..FlowRecord::default()
    };
    match kind {
        0..=19 => {
            r.flags |= flags::REPLY;
            if kind < 2 {
                r.tcp_flags = tcp::SYN | tcp::ACK;
                r.flags |= flags::HANDSHAKE;
                r.handshake_us = 20 + rng.below(5_000) as u32;
            }
        }
        20..=24 => {
            r.event_type = myelin_bpf::EVENT_DROP;
            r.sub_type = 133;
            r.verdict = verdict::DROPPED;
            r.drop_reason = 133;
        }
        25..=29 => {
            r.event_type = myelin_bpf::EVENT_POLICY_VERDICT;
            r.match_type = 2;
            r.policy_verdict = 1;
        }
        _ => {}
    }
    if r.protocol == 1 {
        r.icmp_type = 8;
    }
    r
}

/// Time this thread spent on a CPU (ns): the machine is shared, wall time alone
/// counts other processes' turns.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn run(name: &str, specs: &[&str], records: &[FlowRecord], dict: &Dictionary) {
    if std::env::var("ONLY").is_ok_and(|o| o != name) {
        return;
    }
    let mut m = Metrics::new(&MetricsConfig { metrics: specs.iter().map(|s| (*s).to_owned()).collect() }).unwrap();
    let view = dict.view();
    let mut observe = Duration::ZERO;
    let mut observe_cpu = 0u64;
    let mut flush_first = Duration::ZERO;
    let mut flush_steady = Duration::ZERO;
    for round in 0..ROUNDS {
        let (t, c) = (Instant::now(), cpu_ns());
        for r in records {
            m.observe(black_box(r));
        }
        observe += t.elapsed();
        observe_cpu += cpu_ns() - c;
        let t = Instant::now();
        m.flush(&view);
        if round == 0 {
            flush_first = t.elapsed();
        } else {
            flush_steady += t.elapsed();
        }
    }
    let n = (records.len() * ROUNDS) as f64;
    let text = m.encode();
    let t = Instant::now();
    let text2 = black_box(m.encode());
    let encode = t.elapsed();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "{name:<32} observe {:>6.1} ns/flow ({:>6.1} on CPU) | flush of 1M flows: first {:>7.2} ms (names resolved), then {:>6.2} ms \
         | {series} series, encode {:.2} ms ({} bytes)",
        observe.as_nanos() as f64 / n,
        observe_cpu as f64 / n,
        flush_first.as_secs_f64() * 1e3,
        flush_steady.as_secs_f64() * 1e3 / (ROUNDS - 1) as f64,
        encode.as_secs_f64() * 1e3,
        text2.len(),
    );
}

fn main() {
    let dict = Dictionary::new();
    let ids = pods(&dict);
    let records = stream(&ids, None);
    // The loop alone (reading each record), for reference.
    let (t, c) = (Instant::now(), cpu_ns());
    let mut acc = 0u64;
    for _ in 0..ROUNDS {
        for r in &records {
            acc = acc.wrapping_add(u64::from(black_box(r).dst_port));
        }
    }
    black_box(acc);
    let n = (records.len() * ROUNDS) as f64;
    println!(
        "{:<32} {:>14.1} ns/flow ({:>6.1} on CPU)",
        "loop only (baseline)",
        t.elapsed().as_nanos() as f64 / n,
        (cpu_ns() - c) as f64 / n
    );
    println!("{FLOWS} flows x {ROUNDS} rounds, {PODS} pods (40 workloads, 8 namespaces), 10 ports:");
    if std::env::var_os("DIAG").is_some() {
        run("none", &[], &records, &dict);
        run("flow", &["flow"], &records, &dict);
        run("port", &["port-distribution"], &records, &dict);
        run("tcp", &["tcp"], &records, &dict);
        run("handshake", &["handshake"], &records, &dict);
        run("flow workload", &["flow:sourceContext=workload;destinationContext=workload"], &records, &dict);
    }
    run("agent default (no context)", DEFAULT_METRICS, &records, &dict);
    run("dashboards (workload contexts)", DASHBOARD_METRICS, &records, &dict);
    run(
        "flow+drop, pod contexts",
        &["flow:sourceContext=pod;destinationContext=pod", "drop:sourceContext=pod;destinationContext=pod"],
        &records,
        &dict,
    );
    run("flow, ip contexts (worst case)", &["flow:sourceContext=ip;destinationContext=ip"], &records, &dict);
    let records = stream(&ids, Some(3));
    println!("the same, but each pod talks to 3 peers (600 pod pairs):");
    run("agent default (no context)", DEFAULT_METRICS, &records, &dict);
    run("dashboards (workload contexts)", DASHBOARD_METRICS, &records, &dict);
}
