//! The report: figures per configuration and workload (median over rounds with
//! spread, ratios against kernel routing and the physical limit), the path
//! checks, and the goals with where we stand. Rendered as tables for
//! people or serialised as JSON for scripts.

use crate::stats::{ratio, Better, Summary};
use crate::topo::Check;
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub const KERNEL_ROUTING: &str = "kernel-routing";
pub const PHYSICAL: &str = "physical";
/// Cross-node configurations (`myelin perf --cross-node`).
pub const CROSS_KERNEL_VXLAN: &str = "cross-kernel-vxlan";
pub const CROSS_NATIVE_KERNEL: &str = "cross-native-kernel";
pub const CROSS_MYELIN_VXLAN: &str = "cross-myelin-vxlan";
pub const CROSS_MYELIN_NATIVE: &str = "cross-myelin-native";

/// The configurations every figure of a suite is compared with, in column order.
#[must_use]
pub fn baselines(suite: &str) -> Vec<String> {
    match suite {
        "cross-node" => vec![CROSS_KERNEL_VXLAN.into(), CROSS_MYELIN_NATIVE.into()],
        _ => vec![KERNEL_ROUTING.into(), PHYSICAL.into()],
    }
}

fn default_baselines() -> Vec<String> {
    baselines("local")
}

fn default_suite() -> String {
    "local".into()
}

/// Everything one `myelin perf` run found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub elapsed_seconds: f64,
    /// The configurations the ratios are against (older reports: kernel-routing, physical).
    #[serde(default = "default_baselines")]
    pub baselines: Vec<String>,
    pub configs: Vec<ConfigReport>,
    pub figures: Vec<Figure>,
    pub goals: Vec<Goal>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    /// /proc/loadavg when the run started (a busy machine makes noisy figures).
    pub loadavg_at_start: String,
    pub iptables: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: u32,
    pub stream_seconds: u32,
    pub rr_seconds: f64,
    pub streams: u32,
    pub rr_size_bytes: usize,
    pub rules: Vec<u32>,
    /// "local" (one node) or "cross-node".
    #[serde(default = "default_suite")]
    pub suite: String,
    pub order: String,
    /// Where the TCP_RR/CRR threads ran.
    pub rr_pin: String,
}

/// One configuration: whether it ran and how it was shown to take its path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigReport {
    pub id: String,
    pub description: String,
    pub available: bool,
    /// Why it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// All checks passed (None when it did not run).
    pub verified: Option<bool>,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_rss_bytes: Option<u64>,
    /// CPU of the node's agent (all threads) while each workload ran, in % of one core:
    /// what decoding, enrichment, flow storage and metrics cost. Myelin configurations only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_cpu: Vec<AgentCpu>,
}

/// The agent's CPU during one workload, over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentCpu {
    pub workload: String,
    /// % of one core (100 = one core busy for the whole timed run).
    pub percent_of_core: Summary,
}

/// One figure of one workload on one configuration, over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub config: String,
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub better: Better,
    pub summary: Summary,
    /// median / median of kernel-routing (same workload and metric).
    pub vs_kernel_routing: Option<f64>,
    /// median / median of physical.
    pub vs_physical: Option<f64>,
    /// median / median of each of the report's baselines (same workload and metric).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ratios: BTreeMap<String, f64>,
}

impl Figure {
    /// The ratio of this figure's median to `baseline`'s (older reports: the named fields).
    #[must_use]
    pub fn ratio_to(&self, baseline: &str) -> Option<f64> {
        self.ratios.get(baseline).copied().or(match baseline {
            KERNEL_ROUTING => self.vs_kernel_routing,
            PHYSICAL => self.vs_physical,
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoalStatus {
    /// The medians meet the goal and the spreads do not overlap: every round of the
    /// subject beats every round of the baseline by the goal's factor.
    Met,
    /// The medians meet the goal but the spreads overlap: not shown, within noise.
    WithinNoise,
    NotMet,
    NotMeasurableYet,
}

impl std::fmt::Display for GoalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GoalStatus::Met => "met",
            GoalStatus::WithinNoise => "within noise (medians meet it, spreads overlap)",
            GoalStatus::NotMet => "NOT met",
            GoalStatus::NotMeasurableYet => "not measurable yet",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    pub id: String,
    pub goal: String,
    pub status: GoalStatus,
    pub detail: String,
}

/// Fill in the ratios of every figure against kernel-routing and physical (the named fields)
/// and against each of `baselines` (the map).
pub fn fill_ratios(figures: &mut [Figure], baselines: &[String]) {
    let base: Vec<(String, String, String, f64)> = figures
        .iter()
        .filter(|f| f.config == KERNEL_ROUTING || f.config == PHYSICAL || baselines.contains(&f.config))
        .map(|f| (f.config.clone(), f.workload.clone(), f.metric.clone(), f.summary.median))
        .collect();
    let find = |config: &str, w: &str, m: &str| {
        base.iter().find(|(c, bw, bm, _)| c == config && bw == w && bm == m).map(|b| b.3)
    };
    for f in figures.iter_mut() {
        f.vs_kernel_routing = find(KERNEL_ROUTING, &f.workload, &f.metric).and_then(|b| ratio(f.summary.median, b));
        f.vs_physical = find(PHYSICAL, &f.workload, &f.metric).and_then(|b| ratio(f.summary.median, b));
        for b in baselines {
            if let Some(r) = find(b, &f.workload, &f.metric).and_then(|v| ratio(f.summary.median, v)) {
                f.ratios.insert(b.clone(), r);
            }
        }
    }
}

/// The cross-node goals: Myelin over VXLAN at least as fast as the kernel's own VXLAN, on
/// TCP_STREAM (1 stream), TCP_RR and TCP_CRR (transactions/s), judged on medians and spreads.
#[must_use]
pub fn cross_goals(figs: &[Figure]) -> Vec<Goal> {
    let f = |c: &str, w: &str, m: &str| figure(figs, c, w, m);
    let mut out = Vec::new();
    for (id, w, m, what) in [
        ("cross-stream-vs-kernel-vxlan", "tcp_stream_1", "throughput", "TCP_STREAM (1 stream)"),
        ("cross-rr-vs-kernel-vxlan", "tcp_rr", "tps", "TCP_RR transactions/s"),
        ("cross-crr-vs-kernel-vxlan", "tcp_crr", "tps", "TCP_CRR transactions/s"),
    ] {
        let (status, detail) = judge_pair(f(CROSS_MYELIN_VXLAN, w, m), f(CROSS_KERNEL_VXLAN, w, m), 1.00);
        let extra = if w == "tcp_rr" {
            let (_, p50) = judge_pair(f(CROSS_MYELIN_VXLAN, w, "p50"), f(CROSS_KERNEL_VXLAN, w, "p50"), 1.00);
            format!("; p50 latency {p50}")
        } else {
            String::new()
        };
        out.push(Goal {
            id: id.into(),
            goal: format!("Myelin VXLAN pod-to-pod across nodes {what} >= 1.00× the kernel's VXLAN"),
            status,
            detail: format!("{detail}{extra}"),
        });
    }
    out
}

/// Myelin VXLAN against Myelin native routing, one line for the notes (None: not both ran).
#[must_use]
pub fn overlay_cost(figs: &[Figure]) -> Option<String> {
    let parts: Vec<String> = [("tcp_stream_1", "throughput"), ("tcp_rr", "tps"), ("tcp_crr", "tps")]
        .iter()
        .filter_map(|(w, m)| {
            let r = figure(figs, CROSS_MYELIN_VXLAN, w, m)?.ratio_to(CROSS_MYELIN_NATIVE)?;
            Some(format!("{w} {r:.2}×"))
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!("cost of the overlay: Myelin VXLAN / Myelin native routing (ratio of medians): {}", parts.join(", "))
    })
}

fn figure<'a>(figs: &'a [Figure], config: &str, workload: &str, metric: &str) -> Option<&'a Figure> {
    figs.iter().find(|f| f.config == config && f.workload == workload && f.metric == metric)
}

fn x(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.2}×"))
}

/// `subject / baseline >= factor` (higher is better) or `<= factor` (lower is better),
/// judged on medians AND spreads: met only when even the subject's worst round beats the
/// baseline's best round scaled by the factor.
fn judge_pair(subject: Option<&Figure>, baseline: Option<&Figure>, factor: f64) -> (GoalStatus, String) {
    let (Some(a), Some(b)) = (subject, baseline) else {
        return (GoalStatus::NotMeasurableYet, "n/a".into());
    };
    let (sa, sb) = (&a.summary, &b.summary);
    let Some(r) = ratio(sa.median, sb.median) else { return (GoalStatus::NotMeasurableYet, "n/a".into()) };
    let higher = a.better == Better::Higher;
    let (median_ok, separated) =
        if higher { (r >= factor, sa.min >= factor * sb.max) } else { (r <= factor, sa.max <= factor * sb.min) };
    let status = match (median_ok, separated) {
        (true, true) => GoalStatus::Met,
        (true, false) => GoalStatus::WithinNoise,
        _ => GoalStatus::NotMet,
    };
    let detail = format!(
        "{r:.2}× ({} [{}–{}] vs {} [{}–{}])",
        num(sa.median),
        num(sa.min),
        num(sa.max),
        num(sb.median),
        num(sb.min),
        num(sb.max)
    );
    (status, detail)
}

/// The worst of several judgements (NotMet < NotMeasurableYet < WithinNoise < Met).
fn worst(statuses: &[GoalStatus]) -> GoalStatus {
    let rank = |s: &GoalStatus| match s {
        GoalStatus::NotMet => 0,
        GoalStatus::NotMeasurableYet => 1,
        GoalStatus::WithinNoise => 2,
        GoalStatus::Met => 3,
    };
    statuses.iter().copied().min_by_key(rank).unwrap_or(GoalStatus::NotMeasurableYet)
}

/// The goals, judged on medians and spreads (see [`GoalStatus`]); a goal whose
/// configurations did not run is "not measurable yet", never guessed.
#[must_use]
pub fn goals(
    figs: &[Figure],
    configs: &[ConfigReport],
    stream_n: &str,
    rules_max: u32,
    agent_rss: Option<u64>,
) -> Vec<Goal> {
    let mut out = Vec::new();
    let ran = |id: &str| configs.iter().any(|c| c.id == id && c.available);
    let f = |c: &str, w: &str, m: &str| figure(figs, c, w, m);

    let (st, d1) =
        judge_pair(f("myelin", "tcp_stream_1", "throughput"), f(KERNEL_ROUTING, "tcp_stream_1", "throughput"), 1.10);
    let (_, dn) = judge_pair(f("myelin", stream_n, "throughput"), f(KERNEL_ROUTING, stream_n, "throughput"), 1.10);
    out.push(Goal {
        id: "stream-vs-kernel-routing".into(),
        goal: "Myelin pod-to-pod TCP_STREAM >= 1.10× kernel routing".into(),
        status: st,
        detail: format!("1 stream {d1}; {stream_n} {dn} (judged on 1 stream)"),
    });
    let (st, d1) =
        judge_pair(f("myelin", "tcp_stream_1", "throughput"), f(PHYSICAL, "tcp_stream_1", "throughput"), 0.90);
    let (_, dn) = judge_pair(f("myelin", stream_n, "throughput"), f(PHYSICAL, stream_n, "throughput"), 0.90);
    out.push(Goal {
        id: "stream-vs-physical".into(),
        goal: "Myelin pod-to-pod TCP_STREAM >= 0.90× the physical limit".into(),
        status: st,
        detail: format!("1 stream {d1}; {stream_n} {dn} (judged on 1 stream)"),
    });
    let (st, d50) = judge_pair(f("myelin", "tcp_rr", "p50"), f(KERNEL_ROUTING, "tcp_rr", "p50"), 1.00);
    let (_, d99) = judge_pair(f("myelin", "tcp_rr", "p99"), f(KERNEL_ROUTING, "tcp_rr", "p99"), 1.00);
    out.push(Goal {
        id: "rr-latency-vs-kernel-routing".into(),
        goal: "Myelin TCP_RR latency <= 1.00× kernel routing".into(),
        status: st,
        detail: format!("p50 {d50}; p99 {d99} (judged on p50)"),
    });
    let curve = |prefix: &str| -> (GoalStatus, String) {
        let mut statuses = Vec::new();
        let mut parts = Vec::new();
        for (w, m) in [("tcp_stream_1", "throughput"), ("tcp_rr", "tps"), ("tcp_crr", "tps")] {
            let (s, d) = judge_pair(f(&format!("{prefix}-{rules_max}"), w, m), f(&format!("{prefix}-1"), w, m), 0.97);
            statuses.push(s);
            parts.push(format!("{w} {d}"));
        }
        (worst(&statuses), parts.join("; "))
    };
    let (myelin_status, myelin_curve) = curve("myelin");
    let (_, ipt_curve) = curve("iptables");
    let measurable = ran(&format!("myelin-{rules_max}")) && ran("myelin-1") && rules_max >= 10_000;
    out.push(Goal {
        id: "rules-scaling".into(),
        goal: "Myelin with 10,000 rules >= 0.97× Myelin with 1 rule (iptables' curve on the same axes)".into(),
        status: if measurable { myelin_status } else { GoalStatus::NotMeasurableYet },
        detail: if measurable {
            format!("myelin {rules_max}/1: {myelin_curve} (judged on the worst); iptables {rules_max}/1: {ipt_curve}")
        } else {
            format!(
                "Myelin rule variants did not run (needs `myelin policy apply`{}); iptables {rules_max}/1: {ipt_curve}",
                if rules_max < 10_000 { " and --rules up to 10000" } else { "" }
            )
        },
    });
    let (s_stream, d_stream) =
        judge_pair(f("myelin", "tcp_stream_1", "throughput"), f("myelin-noflows", "tcp_stream_1", "throughput"), 0.97);
    let (s_crr, d_crr) = judge_pair(f("myelin", "tcp_crr", "tps"), f("myelin-noflows", "tcp_crr", "tps"), 0.97);
    let agent_crr = |id: &str| {
        configs
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| c.agent_cpu.iter().find(|a| a.workload == "tcp_crr"))
            .map_or_else(|| "n/a".into(), |a| format!("{}% of a core", cell_of(&a.percent_of_core)))
    };
    out.push(Goal {
        id: "observability-cost".into(),
        goal: "Flow events at the default aggregation cost at most 3% (TCP_STREAM and TCP_CRR, myelin / myelin-noflows >= 0.97×)".into(),
        status: worst(&[s_stream, s_crr]),
        detail: format!(
            "tcp_stream_1 {d_stream}; tcp_crr {d_crr} (judged on the worst); agent CPU during TCP_CRR: {} with flows, {} without",
            agent_crr("myelin"),
            agent_crr("myelin-noflows")
        ),
    });
    out.push(Goal {
        id: "agent-memory".into(),
        goal: "Agent resident memory with 1,000 endpoints and 10,000 rules <= 64 MiB".into(),
        status: GoalStatus::NotMeasurableYet,
        detail: format!(
            "measured by myelin-policy-bench (1,000 endpoints + a 10,000-rule policy; see BENCHMARKS.md), not by this run; agent RSS here (2 endpoints): {}",
            agent_rss.map_or_else(|| "n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1_048_576.0))
        ),
    });
    out
}

/// The goals as a Markdown table (for BENCHMARKS.md: generated from a run's JSON, so the
/// document and the measurements cannot drift).
#[must_use]
pub fn goals_markdown(r: &Report) -> String {
    let mut s = String::from("| goal | status | where we stand |\n|---|---|---|\n");
    for g in &r.goals {
        let _ = writeln!(s, "| {} | {} | {} |", g.goal, g.status, g.detail.replace('|', "/"));
    }
    s
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Column label of a baseline: `kernel-routing` -> kernel, `cross-kernel-vxlan` -> kernel-vxlan.
fn short_baseline(id: &str) -> &str {
    if id == KERNEL_ROUTING {
        "kernel"
    } else {
        id.strip_prefix("cross-").unwrap_or(id)
    }
}

fn cell(f: &Figure) -> String {
    cell_of(&f.summary)
}

fn cell_of(s: &Summary) -> String {
    format!("{} [{}–{}]", num(s.median), num(s.min), num(s.max))
}

fn table(header: Vec<String>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic).set_header(header);
    t
}

/// Workloads in report order, with their metrics in column order.
fn workloads(r: &Report) -> Vec<String> {
    let mut w: Vec<String> = Vec::new();
    for f in &r.figures {
        if !w.contains(&f.workload) {
            w.push(f.workload.clone());
        }
    }
    w
}

/// The report as tables for people.
#[must_use]
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "myelin perf ({}): kernel {}, {} × {}, load at start {}\n{} round(s), interleaved ({}); TCP_STREAM {} s, TCP_RR/CRR {} s, {} B requests, pinned: {}",
        r.settings.suite, m.kernel, m.cpus, m.cpu_model, m.loadavg_at_start, r.settings.rounds, r.settings.order,
        r.settings.stream_seconds, r.settings.rr_seconds, r.settings.rr_size_bytes, r.settings.rr_pin
    );
    let labels: Vec<String> = r.baselines.iter().map(|b| format!("×{}", short_baseline(b))).collect();
    let _ = writeln!(
        s,
        "figures: median [min–max] over rounds; {} = ratio of medians to {}\n",
        labels.join(" / "),
        r.baselines.join(" / ")
    );
    for w in workloads(r) {
        let figs: Vec<&Figure> = r.figures.iter().filter(|f| f.workload == w).collect();
        let mut metrics: Vec<(String, String)> = Vec::new();
        for f in &figs {
            if !metrics.iter().any(|(m, _)| *m == f.metric) {
                metrics.push((f.metric.clone(), f.unit.clone()));
            }
        }
        let Some((head, head_unit)) = metrics.first().cloned() else { continue };
        let first = labels.first().cloned().unwrap_or_default();
        let mut header = vec![w.to_uppercase(), format!("{head} ({head_unit})")];
        header.extend(labels.iter().cloned());
        header.extend(metrics.iter().skip(1).map(|(m, u)| format!("{m} ({u}) {first}")));
        let mut t = table(header);
        for c in &r.configs {
            if !c.available {
                t.add_row(vec![c.id.clone(), "not available".into()]);
                continue;
            }
            let mut row = vec![c.id.clone()];
            match figs.iter().find(|f| f.config == c.id && f.metric == head) {
                Some(f) => {
                    row.push(cell(f));
                    row.extend(r.baselines.iter().map(|b| x(f.ratio_to(b))));
                }
                None => {
                    row.push("n/a".into());
                    row.extend(r.baselines.iter().map(|_| String::new()));
                }
            }
            let first_baseline = r.baselines.first().map(String::as_str).unwrap_or_default();
            for (metric, _) in metrics.iter().skip(1) {
                row.push(
                    figs.iter()
                        .find(|f| f.config == c.id && f.metric == *metric)
                        .map_or_else(|| "n/a".into(), |f| format!("{} {}", cell(f), x(f.ratio_to(first_baseline)))),
                );
            }
            t.add_row(row);
        }
        let _ = writeln!(s, "{t}\n");
    }
    let with_agent: Vec<&ConfigReport> = r.configs.iter().filter(|c| !c.agent_cpu.is_empty()).collect();
    if !with_agent.is_empty() {
        let ws = workloads(r);
        let mut header = vec!["AGENT CPU (% of one core)".to_owned()];
        header.extend(ws.iter().map(|w| w.to_uppercase()));
        let mut t = table(header);
        for c in with_agent {
            let mut row = vec![c.id.clone()];
            row.extend(ws.iter().map(|w| {
                c.agent_cpu
                    .iter()
                    .find(|a| a.workload == *w)
                    .map_or_else(|| "n/a".into(), |a| cell_of(&a.percent_of_core))
            }));
            t.add_row(row);
        }
        let _ = writeln!(s, "{t}\n");
    }
    let mut t = table(vec!["configuration".into(), "path".into(), "evidence".into()]);
    for c in &r.configs {
        if let Some(why) = &c.unavailable {
            t.add_row(vec![c.id.clone(), "not available".into(), why.clone()]);
            continue;
        }
        for ch in &c.checks {
            t.add_row(vec![
                c.id.clone(),
                format!("{} {}", if ch.ok { "✓" } else { "✗" }, ch.claim),
                ch.evidence.clone(),
            ]);
        }
    }
    let _ = writeln!(s, "{t}\n");
    goals_notes_took(&mut s, &r.goals, &r.notes, r.elapsed_seconds);
    s
}

/// The end of every report: the goals table, the notes, the run's length.
pub(crate) fn goals_notes_took(s: &mut String, goals: &[Goal], notes: &[String], elapsed_seconds: f64) {
    let mut t = table(vec!["goal".into(), "status".into(), "where we stand".into()]);
    for g in goals {
        t.add_row(vec![g.goal.clone(), g.status.to_string(), g.detail.clone()]);
    }
    let _ = writeln!(s, "{t}");
    for n in notes {
        let _ = writeln!(s, "note: {n}");
    }
    let _ = write!(s, "took {elapsed_seconds:.0} s");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    fn fig(config: &str, workload: &str, metric: &str, samples: &[f64]) -> Figure {
        Figure {
            config: config.into(),
            workload: workload.into(),
            metric: metric.into(),
            unit: "u".into(),
            better: if metric.starts_with('p') { Better::Lower } else { Better::Higher },
            summary: Summary::of(samples).unwrap(),
            vs_kernel_routing: None,
            vs_physical: None,
            ratios: BTreeMap::new(),
        }
    }

    fn cfg(id: &str, available: bool) -> ConfigReport {
        ConfigReport {
            id: id.into(),
            description: String::new(),
            available,
            unavailable: None,
            verified: None,
            checks: vec![],
            agent_rss_bytes: None,
            agent_cpu: vec![],
        }
    }

    #[test]
    fn ratios_are_of_medians_per_workload_and_metric() {
        let mut f = vec![
            fig("physical", "tcp_stream_1", "throughput", &[40.0, 50.0, 60.0]),
            fig("kernel-routing", "tcp_stream_1", "throughput", &[20.0, 25.0, 100.0]),
            fig("myelin", "tcp_stream_1", "throughput", &[30.0, 30.0]),
            fig("myelin", "tcp_rr", "p50", &[10.0]),
        ];
        fill_ratios(&mut f, &baselines("local"));
        assert_eq!(f[2].vs_kernel_routing, Some(30.0 / 25.0));
        assert_eq!(f[2].vs_physical, Some(30.0 / 50.0));
        assert_eq!(f[1].vs_kernel_routing, Some(1.0));
        assert_eq!(f[3].vs_kernel_routing, None, "no kernel-routing figure for tcp_rr p50");
    }

    #[test]
    fn goals_are_judged_or_not_measurable() {
        let mut f = vec![
            fig("physical", "tcp_stream_1", "throughput", &[100.0]),
            fig("kernel-routing", "tcp_stream_1", "throughput", &[80.0]),
            fig("myelin", "tcp_stream_1", "throughput", &[92.0]),
            fig("kernel-routing", "tcp_rr", "p50", &[20.0]),
            fig("myelin", "tcp_rr", "p50", &[19.0]),
            fig("iptables-1", "tcp_crr", "tps", &[1000.0]),
            fig("iptables-10000", "tcp_crr", "tps", &[500.0]),
        ];
        fill_ratios(&mut f, &baselines("local"));
        let configs =
            vec![cfg("physical", true), cfg("kernel-routing", true), cfg("myelin", true), cfg("myelin-1", false)];
        let g = goals(&f, &configs, "tcp_stream_4", 10_000, Some(30 << 20));
        assert_eq!(g[0].status, GoalStatus::Met, "{:?}", g[0]); // 92/80 = 1.15
        assert_eq!(g[1].status, GoalStatus::Met); // 0.92
        assert_eq!(g[2].status, GoalStatus::Met); // 0.95
        assert_eq!(g[3].status, GoalStatus::NotMeasurableYet);
        assert!(g[3].detail.contains("tcp_crr 0.50×"), "{}", g[3].detail);
        assert_eq!(g[4].id, "observability-cost");
        assert_eq!(g[4].status, GoalStatus::NotMeasurableYet, "no myelin-noflows figures");
        assert_eq!(g[5].status, GoalStatus::NotMeasurableYet);
        assert!(g[5].detail.contains("30.0 MiB"));

        let g = goals(&[], &configs, "tcp_stream_4", 10_000, None);
        assert!(g.iter().all(|g| g.status == GoalStatus::NotMeasurableYet), "no figures, nothing judged");

        // Medians meet a goal, spreads overlap: within noise, not met.
        let mut f3 = vec![
            fig("kernel-routing", "tcp_stream_1", "throughput", &[80.0, 85.0, 100.0]),
            fig("myelin", "tcp_stream_1", "throughput", &[90.0, 96.0, 110.0]),
            fig("myelin", "tcp_crr", "tps", &[990.0, 1000.0, 1010.0]),
            fig("myelin-noflows", "tcp_crr", "tps", &[1000.0, 1030.0, 1050.0]),
            fig("myelin-noflows", "tcp_stream_1", "throughput", &[50.0, 51.0, 52.0]),
        ];
        fill_ratios(&mut f3, &baselines("local"));
        let g = goals(&f3, &configs, "tcp_stream_4", 10_000, None);
        assert_eq!(g[0].status, GoalStatus::WithinNoise, "96/85 = 1.13 but 90 < 1.10 x 100: {:?}", g[0]);
        assert!(g[0].detail.contains("[90.0–110]"), "{}", g[0].detail);
        assert_eq!(g[4].status, GoalStatus::WithinNoise, "CRR 1000/1030 = 0.971, but 990 < 0.97 x 1050: {:?}", g[4]);

        let mut f2 = vec![
            fig("kernel-routing", "tcp_stream_1", "throughput", &[100.0]),
            fig("myelin", "tcp_stream_1", "throughput", &[100.0]),
            fig("myelin-1", "tcp_crr", "tps", &[1000.0]),
            fig("myelin-10000", "tcp_crr", "tps", &[960.0]),
        ];
        fill_ratios(&mut f2, &baselines("local"));
        let configs = vec![cfg("myelin-1", true), cfg("myelin-10000", true)];
        let g = goals(&f2, &configs, "tcp_stream_4", 10_000, None);
        assert_eq!(g[0].status, GoalStatus::NotMet);
        assert_eq!(g[3].status, GoalStatus::NotMet, "0.96 < 0.97: {}", g[3].detail);
    }
}
