//! Micro-benchmark of compiled flow filters (a figure, not a test):
//! `cargo run --release -p myelin-observe --example filter_bench [RECORDS]`.
//!
//! Matches RECORDS (default 10,000,000) synthetic records over a dictionary of
//! 1,000 sides against a few filters and prints ns per record: wall clock and
//! on-CPU time of the thread (from /proc/thread-self/schedstat), the better of
//! three runs each, so that other work on a shared machine shows as the gap
//! between the two. The kernel updates on-CPU time at scheduler ticks: it
//! reads 0 for runs of a few milliseconds (use the default size).

use std::hint::black_box;
use std::time::Instant;

use myelin_observe::dict::{Dictionary, EndpointDesc};
use myelin_observe::filter::FlowFilters;
use myelin_observe::proto::flow;
use myelin_observe::record::{verdict, FlowRecord};

/// Nanoseconds this thread has run on a CPU.
fn cpu_ns() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<f64>().ok()))
        .unwrap_or(f64::NAN)
}

/// Best wall and on-CPU seconds of three runs of `f`, and its last result.
fn measure(mut f: impl FnMut() -> usize) -> (f64, f64, usize) {
    let (mut wall, mut cpu, mut out) = (f64::MAX, f64::MAX, 0);
    for _ in 0..3 {
        let (t, c) = (Instant::now(), cpu_ns());
        out = black_box(f());
        wall = wall.min(t.elapsed().as_secs_f64());
        cpu = cpu.min((cpu_ns() - c) / 1e9);
    }
    (wall, cpu, out)
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let dict = Dictionary::new();
    let namespaces = ["x", "y", "z", "prod", "dev"];
    for i in 0..1000u32 {
        let ns = namespaces[i as usize % namespaces.len()];
        let app = ["a", "b", "c", "web", "db"][(i as usize / 5) % 5];
        dict.intern(EndpointDesc {
            identity: 1000 + i,
            namespace: ns.into(),
            pod_name: format!("{app}-{i}"),
            labels: vec![format!("k8s:app={app}"), format!("k8s:io.kubernetes.pod.namespace={ns}")],
            workload: Some((app.into(), "Deployment".into())),
            node: "node1".into(),
            ..EndpointDesc::default()
        });
    }
    let view = dict.view();

    // xorshift: reproducible records.
    let mut s = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let t = Instant::now();
    let records: Vec<FlowRecord> = (0..n)
        .map(|i| {
            let x = next();
            FlowRecord {
                seq: i as u64,
                time_ns: i as u64,
                ip_version: 4,
                src_ip: u128::from(0x0a00_0000 | (x as u32 & 0xffff)),
                dst_ip: u128::from(0x0a00_0000 | ((x >> 16) as u32 & 0xffff)),
                protocol: [6, 6, 17, 1][(x >> 32) as usize % 4],
                dst_port: [80, 443, 53][(x >> 34) as usize % 3],
                verdict: if (x >> 40) % 4 == 0 { verdict::DROPPED } else { verdict::FORWARDED },
                event_type: 4,
                src_ep: 1 + ((x >> 44) % 1000) as u32,
                dst_ep: 1 + ((x >> 54) % 1000) as u32,
                ..FlowRecord::default()
            }
        })
        .collect();
    eprintln!("{n} records generated in {:.1?} ({} bytes each)", t.elapsed(), std::mem::size_of::<FlowRecord>());

    let report = |name: &str, (wall, cpu, hits): (f64, f64, usize)| {
        println!(
            "{name:<62} {:>6.2} ns/record wall {:>6.2} on-CPU  {:>6.0} ms wall for {n}  ({hits} matched)",
            wall * 1e9 / n as f64,
            cpu * 1e9 / n as f64,
            wall * 1e3
        );
    };
    // The floor: read one byte of every record (the records stream from memory).
    report(
        "baseline: read each record's verdict",
        measure(|| black_box(records.as_slice()).iter().map(|r| usize::from(r.verdict == verdict::DROPPED)).sum()),
    );

    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let dropped = vec![flow::Verdict::Dropped as i32];
    let cases: Vec<(&str, Vec<flow::FlowFilter>, Vec<flow::FlowFilter>)> = vec![
        ("no filter", vec![], vec![]),
        (
            "--from-pod x/a --verdict DROPPED --protocol tcp",
            vec![flow::FlowFilter {
                source_pod: s(&["x/a"]),
                verdict: dropped.clone(),
                protocol: s(&["tcp"]),
                ..flow::FlowFilter::default()
            }],
            vec![],
        ),
        ("--from-pod x/a", vec![flow::FlowFilter { source_pod: s(&["x/a"]), ..flow::FlowFilter::default() }], vec![]),
        (
            "--pod x/ (two filters)",
            vec![
                flow::FlowFilter { source_pod: s(&["x/"]), ..flow::FlowFilter::default() },
                flow::FlowFilter { destination_pod: s(&["x/"]), ..flow::FlowFilter::default() },
            ],
            vec![],
        ),
        (
            "--from-label app=web --to-label 'k8s:app in (db,c)' --port 443",
            vec![flow::FlowFilter {
                source_label: s(&["app=web"]),
                destination_label: s(&["k8s:app in (db,c)"]),
                destination_port: s(&["443"]),
                ..flow::FlowFilter::default()
            }],
            vec![],
        ),
        (
            "--to-ip 10.0.0.0/20 --not --from-ip 10.0.1.1 --node-name node*",
            vec![flow::FlowFilter {
                destination_ip: s(&["10.0.0.0/20"]),
                node_name: s(&["node*"]),
                ..flow::FlowFilter::default()
            }],
            vec![flow::FlowFilter { source_ip: s(&["10.0.1.1"]), ..flow::FlowFilter::default() }],
        ),
    ];
    for (name, w, b) in cases {
        let mut f = match FlowFilters::compile(&w, &b) {
            Ok(f) => f,
            Err(e) => panic!("{name}: {e}"),
        };
        report(name, measure(|| black_box(records.as_slice()).iter().filter(|r| f.matches(r, &view, "node1")).count()));
    }
}
