#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic with context
//! `myelin perf --quick` as a smoke test (root): the benchmark runs, its numbers
//! are sane, and every configuration took the path it claims. The goals are
//! reported, not asserted: this is CI on a noisy machine.
//!
//! Needs `cargo build --workspace --bins` first (the lab finds `myelin-agent`,
//! `myelin-cni` and `myelin` in $MYELIN_BIN_DIR or next to this test binary).

use myelin_perf::report::{KERNEL_ROUTING, PHYSICAL};
use myelin_perf::{GoalStatus, Options};
use std::time::{Duration, Instant};

#[test]
fn quick_benchmark_is_sane_and_every_path_is_verified() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the benchmark builds network namespaces and loads eBPF programs: run it as root (./test.sh)"
    );
    let start = Instant::now();
    let mut opts = Options::quick();
    opts.progress = Some(std::sync::Arc::new(|l: &str| eprintln!("{l}")));
    let report = myelin_perf::run(&opts).unwrap_or_else(|e| panic!("myelin perf --quick: {e}"));
    let took = start.elapsed();
    eprintln!("{}", myelin_perf::render(&report));
    assert!(took < Duration::from_secs(120), "--quick took {took:?}, more than 2 minutes");

    // Every configuration that ran proved its path; the others say why they did not run.
    let ran: Vec<&str> = report.configs.iter().filter(|c| c.available).map(|c| c.id.as_str()).collect();
    for id in [PHYSICAL, KERNEL_ROUTING, "iptables-1", "iptables-10000", "myelin", "myelin-1", "myelin-10000"] {
        assert!(ran.contains(&id), "{id} did not run: {:?}", report.configs);
    }
    for c in &report.configs {
        if c.available {
            assert_eq!(c.verified, Some(true), "{} did not take its claimed path: {:#?}", c.id, c.checks);
            assert!(!c.checks.is_empty(), "{} has no path checks", c.id);
        } else {
            assert!(
                c.unavailable.as_deref().is_some_and(|w| !w.is_empty()),
                "{} is unavailable without a reason",
                c.id
            );
            assert!(report.figures.iter().all(|f| f.config != c.id), "figures for {} that did not run", c.id);
        }
    }
    let myelin = report.configs.iter().find(|c| c.id == "myelin").unwrap();
    assert!(myelin.checks.iter().any(|c| c.claim.contains("eBPF") && c.ok), "{:?}", myelin.checks);
    let ipt = report.configs.iter().find(|c| c.id == "iptables-10000").unwrap();
    assert!(ipt.checks.iter().any(|c| c.claim.contains("matching") && c.ok), "{:?}", ipt.checks);
    let kr = report.configs.iter().find(|c| c.id == KERNEL_ROUTING).unwrap();
    assert!(kr.checks.iter().any(|c| c.evidence.contains("ip_forward=0") && c.ok), "{:?}", kr.checks);

    // Sane numbers: every workload measured on every configuration that ran.
    for id in &ran {
        for (w, m) in
            [("tcp_stream_1", "throughput"), ("tcp_stream_4", "throughput"), ("tcp_rr", "tps"), ("tcp_crr", "tps")]
        {
            let f = report
                .figures
                .iter()
                .find(|f| f.config == *id && f.workload == w && f.metric == m)
                .unwrap_or_else(|| panic!("no {w} {m} for {id}"));
            assert_eq!(f.summary.samples.len(), opts.rounds as usize, "{id} {w}: one sample per round");
            assert!(f.summary.min > 0.0 && f.summary.median.is_finite(), "{id} {w} {m}: {:?}", f.summary);
            assert!(f.summary.min <= f.summary.median && f.summary.median <= f.summary.max);
        }
        for w in ["tcp_rr", "tcp_crr"] {
            let get = |m: &str| {
                report
                    .figures
                    .iter()
                    .find(|f| f.config == *id && f.workload == w && f.metric == m)
                    .unwrap()
                    .summary
                    .clone()
            };
            let (p50, p99) = (get("p50"), get("p99"));
            for (a, b) in p50.samples.iter().zip(&p99.samples) {
                assert!(*a > 0.0 && a <= b, "{id} {w}: p50 {a} µs > p99 {b} µs");
            }
            assert!(get("cpu_per_tx").median > 0.0, "{id} {w}: no CPU time measured");
        }
    }
    // The agent's CPU is accounted for every workload on every Myelin configuration, and only there.
    for c in report.configs.iter().filter(|c| c.available) {
        if c.id.starts_with("myelin") {
            assert_eq!(c.agent_cpu.len(), 4, "{}: {:?}", c.id, c.agent_cpu);
            for a in &c.agent_cpu {
                assert_eq!(a.percent_of_core.samples.len(), opts.rounds as usize, "{} {}", c.id, a.workload);
                assert!(a.percent_of_core.min >= 0.0 && a.percent_of_core.max < 200.0, "{} {a:?}", c.id);
            }
        } else {
            assert!(c.agent_cpu.is_empty(), "{} has no agent: {:?}", c.id, c.agent_cpu);
        }
    }
    let phys =
        report.figures.iter().find(|f| f.config == PHYSICAL && f.workload == "tcp_rr" && f.metric == "tps").unwrap();
    assert_eq!(phys.vs_physical, Some(1.0));
    assert!(report.figures.iter().filter(|f| f.config != KERNEL_ROUTING).all(|f| f.vs_kernel_routing.is_some()));

    // Goals are judged or honestly not measurable; the rule goal needs Myelin's policy variants.
    assert_eq!(report.goals.len(), 6, "{:#?}", report.goals);
    let rules_ran = ran.contains(&"myelin-1") && ran.contains(&"myelin-10000");
    let rules_goal = report.goals.iter().find(|g| g.id == "rules-scaling").unwrap();
    assert_eq!(rules_goal.status == GoalStatus::NotMeasurableYet, !rules_ran, "{rules_goal:?}");
    // The cost of flow events is judged exactly when both Myelin variants ran.
    let flows_ran = ran.contains(&"myelin") && ran.contains(&"myelin-noflows");
    let flows_goal = report.goals.iter().find(|g| g.id == "observability-cost").unwrap();
    assert_eq!(flows_goal.status == GoalStatus::NotMeasurableYet, !flows_ran, "{flows_goal:?}");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["figures"].as_array().is_some_and(|f| !f.is_empty()));
    assert!(json["goals"][0]["status"].is_string());

    // Nothing left behind.
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let mine = format!("mperf-{}-", std::process::id());
    assert!(!left.iter().any(|n| n.starts_with(&mine)), "namespaces left behind: {left:?}");
}
