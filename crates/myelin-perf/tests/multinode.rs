#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic with context
//! The multi-node benchmarks as smoke tests (root, etcd): `--propagation --pods 20` and
//! `--cross-node --quick`. They assert the structure of the reports and that every path
//! was proven, not speed: this is CI on a noisy 2-core machine.
//!
//! Needs `cargo build --workspace --bins` first (the lab finds `myelin-agent`, `myelin-cni`
//! and `myelin` in $MYELIN_BIN_DIR or next to this test binary).

use myelin_perf::propagation::{self, PropagationOptions};
use myelin_perf::report::{CROSS_KERNEL_VXLAN, CROSS_MYELIN_NATIVE, CROSS_MYELIN_VXLAN, CROSS_NATIVE_KERNEL};
use myelin_perf::{GoalStatus, Options, Suite};
use std::sync::Arc;

fn root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark builds network namespaces and loads eBPF programs: run it as root (./test.sh)"
    );
}

fn netns_left(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn propagation_of_20_pods_is_measured_on_both_remote_nodes() {
    root();
    let opts = PropagationOptions {
        pods: 20,
        progress: Some(Arc::new(|l: &str| eprintln!("{l}"))),
        ..PropagationOptions::default()
    };
    let r = propagation::run(&opts).unwrap_or_else(|e| panic!("myelin perf --propagation --pods 20: {e}"));
    eprintln!("{}", propagation::render(&r));
    assert_eq!(r.benchmark, "propagation");
    assert_eq!((r.settings.pods, r.settings.nodes), (20, 3));
    assert_eq!(r.adds.added, 20);
    assert!(r.adds.per_second > 0.0 && r.adds.add_ms.count == 20, "{:?}", r.adds);
    for id in ["ipcache-all-remote", "ipcache-node2", "ipcache-node3", "identity-labels-node2", "ipcache-node1-local"] {
        let row = r.latencies.iter().find(|l| l.id == id).unwrap_or_else(|| panic!("no row {id}: {:?}", r.latencies));
        assert_eq!(row.missing, 0, "{id}: pods never seen: {row:?}");
        let q = row.latency_ms.as_ref().unwrap();
        assert_eq!(q.count, 20, "{id}");
        assert!(0.0 <= q.p50 && q.p50 <= q.p90 && q.p90 <= q.p99 && q.p99 <= q.max, "{id}: {q:?}");
    }
    // Both remote nodes: the later of the two is never earlier than either.
    let get = |id: &str| r.latencies.iter().find(|l| l.id == id).unwrap().latency_ms.clone().unwrap();
    assert!(get("ipcache-all-remote").max >= get("ipcache-node2").max.max(get("ipcache-node3").max) - 1e-9);
    assert!(r.checks.iter().all(|c| c.ok), "{:#?}", r.checks);
    assert_eq!(r.goals.len(), 2);
    assert!(r.goals.iter().all(|g| g.status != GoalStatus::NotMeasurableYet), "{:?}", r.goals);
    // JSON round trip: what --from-json reads.
    let json = serde_json::to_string(&r).unwrap();
    let back: propagation::PropagationReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.latencies.len(), r.latencies.len());
    let lab = format!("myl-pf{}prop", std::process::id() % 100_000);
    assert!(netns_left(&lab).is_empty(), "namespaces left behind: {:?}", netns_left(&lab));
}

#[test]
fn cross_node_quick_runs_all_four_configurations_on_their_paths() {
    root();
    let mut opts = Options::quick();
    opts.suite = Suite::CrossNode;
    opts.rounds = 1;
    opts.progress = Some(Arc::new(|l: &str| eprintln!("{l}")));
    let r = myelin_perf::run(&opts).unwrap_or_else(|e| panic!("myelin perf --cross-node --quick: {e}"));
    eprintln!("{}", myelin_perf::render(&r));
    assert_eq!(r.settings.suite, "cross-node");
    assert_eq!(r.baselines, vec![CROSS_KERNEL_VXLAN.to_owned(), CROSS_MYELIN_NATIVE.to_owned()]);
    for id in [CROSS_KERNEL_VXLAN, CROSS_NATIVE_KERNEL, CROSS_MYELIN_VXLAN, CROSS_MYELIN_NATIVE] {
        let c = r.configs.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no {id}"));
        assert!(c.available, "{id} did not run: {:?}", c.unavailable);
        assert_eq!(c.verified, Some(true), "{id} did not take its claimed path: {:#?}", c.checks);
        for (w, m) in [("tcp_stream_1", "throughput"), ("tcp_rr", "tps"), ("tcp_crr", "tps")] {
            let f = r
                .figures
                .iter()
                .find(|f| f.config == id && f.workload == w && f.metric == m)
                .unwrap_or_else(|| panic!("no {w} {m} for {id}"));
            assert!(f.summary.min > 0.0, "{id} {w}: {:?}", f.summary);
            assert!(f.ratio_to(CROSS_KERNEL_VXLAN).is_some(), "{id} {w}: no ratio to the kernel VXLAN");
        }
    }
    let vx = r.configs.iter().find(|c| c.id == CROSS_MYELIN_VXLAN).unwrap();
    assert!(vx.checks.iter().any(|c| c.claim.contains("myelin_vxlan") && c.ok), "{:#?}", vx.checks);
    let ids: Vec<&str> = r.goals.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["cross-stream-vs-kernel-vxlan", "cross-rr-vs-kernel-vxlan", "cross-crr-vs-kernel-vxlan"]);
    assert!(r.goals.iter().all(|g| g.status != GoalStatus::NotMeasurableYet), "{:?}", r.goals);
    let mine = format!("mperf-{}-", std::process::id());
    assert!(netns_left(&mine).is_empty(), "namespaces left behind: {:?}", netns_left(&mine));
    let lab = format!("myl-pf{}x", std::process::id() % 100_000);
    assert!(netns_left(&lab).is_empty(), "lab namespaces left behind: {:?}", netns_left(&lab));
}
