//! The benchmark run: build every configuration, measure them interleaved
//! (round r: for each workload, A B C D ...), check that each took its path,
//! summarise.
//!
//! ```text
//!  build physical, kernel-routing, iptables-N..., myelin[, myelin-N...]   (torn down on drop)
//!  counters before ─┐
//!  for round: for workload: for config:  measure (iperf3 | RR/CRR threads)
//!  counters after  ─┴─> deltas -> path checks
//!  medians, spreads, ratios -> goals -> Report
//! ```

use crate::error::{PerfError, Result};
use crate::load::{self, RrConfig};
use crate::report::{self, AgentCpu, ConfigReport, Figure, Machine, Report, Settings};
use crate::stats::{Better, Summary};
use crate::sys;
use crate::topo::{self, Counters, Kind, Target};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Called with one human-readable line per step.
pub type ProgressFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Which configurations a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suite {
    /// One node: physical, kernel routing, iptables-N, Myelin (the default).
    #[default]
    Local,
    /// Two nodes: client pod on node A, server pod on node B; kernel VXLAN and native routing
    /// against Myelin over VXLAN and native routing (`--cross-node`).
    CrossNode,
}

impl Suite {
    #[must_use]
    pub fn id(self) -> &'static str {
        match self {
            Suite::Local => "local",
            Suite::CrossNode => "cross-node",
        }
    }
}

/// Knobs of a run.
#[derive(Clone)]
pub struct Options {
    pub quick: bool,
    pub suite: Suite,
    pub rounds: u32,
    /// TCP_STREAM duration (iperf3 takes whole seconds).
    pub stream_seconds: u32,
    /// TCP_RR / TCP_CRR duration.
    pub rr_duration: Duration,
    /// Parallel streams of the N-stream TCP_STREAM.
    pub streams: u32,
    /// Request and response size of TCP_RR / TCP_CRR.
    pub rr_size: usize,
    /// CPUs of the TCP_RR/CRR (client, server) threads; None: the scheduler decides.
    /// Default: both on the last CPU.
    pub rr_pin: Option<(usize, usize)>,
    /// Rule counts of the iptables and Myelin policy variants.
    pub rules: Vec<u32>,
    /// Directory of the myelin binaries (else $MYELIN_BIN_DIR, else next to this executable).
    pub bin_dir: Option<PathBuf>,
    /// Set to stop early (Ctrl-C): the run ends with [`PerfError::Interrupted`] after cleaning up.
    pub cancel: Arc<AtomicBool>,
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("quick", &self.quick)
            .field("suite", &self.suite)
            .field("rounds", &self.rounds)
            .field("stream_seconds", &self.stream_seconds)
            .field("rr_duration", &self.rr_duration)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// The full matrix: 5 rounds of 3 s per workload and configuration.
    #[must_use]
    pub fn full() -> Options {
        Options {
            quick: false,
            suite: Suite::Local,
            rounds: 5,
            stream_seconds: 3,
            rr_duration: Duration::from_secs(3),
            streams: 4,
            rr_size: 1,
            // Both ends on one CPU (the last): on a shared 2-vCPU machine this cut the
            // spread of TCP_RR from 4x (cross-CPU wake-ups placed by chance) to a few %.
            rr_pin: Some({
                let last = sys::machine().2.saturating_sub(1);
                (last, last)
            }),
            rules: vec![1, 1000, 10_000],
            bin_dir: None,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: None,
        }
    }

    /// Short runs, 2 rounds, the two ends of the rule curve (1 and 10,000): well under 2
    /// minutes on 2 cores. For smoke tests, not for claims.
    #[must_use]
    pub fn quick() -> Options {
        Options {
            quick: true,
            rounds: 2,
            stream_seconds: 1,
            rr_duration: Duration::from_millis(500),
            rules: vec![1, 10_000],
            ..Options::full()
        }
    }
}

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Stream { streams: u32 },
    Rr,
    Crr,
}

impl Workload {
    #[must_use]
    pub fn id(&self) -> String {
        match self {
            Workload::Stream { streams } => format!("tcp_stream_{streams}"),
            Workload::Rr => "tcp_rr".into(),
            Workload::Crr => "tcp_crr".into(),
        }
    }
}

/// (metric, unit, better) of each workload, headline first.
fn metrics(w: Workload) -> &'static [(&'static str, &'static str, Better)] {
    match w {
        Workload::Stream { .. } => &[("throughput", "Gbit/s", Better::Higher), ("cpu_busy", "%", Better::Lower)],
        Workload::Rr | Workload::Crr => &[
            ("tps", "transactions/s", Better::Higher),
            ("p50", "µs", Better::Lower),
            ("p99", "µs", Better::Lower),
            ("cpu_per_tx", "µs", Better::Lower),
        ],
    }
}

fn say(opts: &Options, line: &str) {
    if let Some(p) = &opts.progress {
        p(line);
    }
}

fn check_cancel(opts: &Options) -> Result<()> {
    if opts.cancel.load(Ordering::Relaxed) {
        Err(PerfError::Interrupted)
    } else {
        Ok(())
    }
}

/// Measure one workload on one target: metric -> value.
fn measure(t: &Target, w: Workload, opts: &Options) -> Result<Vec<(&'static str, f64)>> {
    match w {
        Workload::Stream { streams } => {
            let o = load::iperf_stream(
                &t.client_ns,
                SocketAddrV4::new(t.server_ip, topo::STREAM_PORT),
                streams,
                opts.stream_seconds,
            )?;
            #[allow(clippy::cast_precision_loss)]
            let cpus = sys::machine().2 as f64;
            Ok(vec![
                ("throughput", o.bits_per_second / 1e9),
                ("cpu_busy", 100.0 * o.cpu_busy_seconds / (o.elapsed.as_secs_f64() * cpus)),
            ])
        }
        Workload::Rr | Workload::Crr => {
            let crr = w == Workload::Crr;
            let port = if crr { topo::CRR_PORT } else { topo::RR_PORT };
            let cfg = RrConfig {
                duration: opts.rr_duration,
                size: opts.rr_size,
                connect_per_transaction: crr,
                pin: opts.rr_pin,
            };
            let o = load::request_response(
                &t.client_ns,
                &t.server_ns,
                SocketAddrV4::new(t.server_ip, port),
                &cfg,
                &opts.cancel,
            )?;
            let us = |q: f64| o.latency.quantile(q).map_or(f64::NAN, |ns| ns as f64 / 1000.0);
            #[allow(clippy::cast_precision_loss)]
            let cpu_per_tx =
                if o.transactions > 0 { o.cpu_busy_seconds * 1e6 / o.transactions as f64 } else { f64::NAN };
            Ok(vec![("tps", o.per_second()), ("p50", us(0.5)), ("p99", us(0.99)), ("cpu_per_tx", cpu_per_tx)])
        }
    }
}

/// Run the benchmark. Needs root, iperf3 and iptables; Myelin rule variants need
/// `myelin policy apply` and are reported as not available without it.
pub fn run(opts: &Options) -> Result<Report> {
    let started = Instant::now();
    if !nix::unistd::Uid::effective().is_root() {
        return Err(PerfError::Invalid {
            what: "myelin perf".into(),
            message: "builds network namespaces and loads eBPF programs: run it as root".into(),
        });
    }
    sys::check_tools()?;
    let (kernel, cpu_model, cpus) = sys::machine();
    let machine = Machine {
        kernel,
        cpu_model,
        cpus,
        loadavg_at_start: std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).unwrap_or_default(),
        iptables: sys::iptables_backend(),
    };
    let mut rules = opts.rules.clone();
    rules.sort_unstable();
    rules.dedup();
    rules.retain(|&r| r > 0);
    let policy = topo::policy_cli(opts.bin_dir.as_deref());

    let kinds = match opts.suite {
        Suite::Local => {
            let mut kinds = vec![Kind::Physical, Kind::KernelRouting];
            kinds.extend(rules.iter().map(|&r| Kind::Iptables { rules: r }));
            kinds.push(Kind::Myelin { rules: None });
            kinds.push(Kind::MyelinNoFlows);
            kinds.extend(rules.iter().map(|&r| Kind::Myelin { rules: Some(r) }));
            kinds
        }
        Suite::CrossNode => vec![
            Kind::CrossKernel { vxlan: true },
            Kind::CrossKernel { vxlan: false },
            Kind::CrossMyelin { vxlan: true },
            Kind::CrossMyelin { vxlan: false },
        ],
    };

    // Build everything first: measurements are interleaved across all of them.
    let mut targets: Vec<Target> = Vec::new();
    let mut configs: Vec<ConfigReport> = Vec::new();
    for (index, kind) in kinds.iter().enumerate() {
        check_cancel(opts)?;
        let mut report = ConfigReport {
            id: kind.id(),
            description: kind.describe(),
            available: false,
            unavailable: None,
            verified: None,
            checks: vec![],
            agent_rss_bytes: None,
            agent_cpu: vec![],
        };
        if let (Kind::Myelin { rules: Some(_) }, Err(why)) = (kind, &policy) {
            report.unavailable = Some(why.clone());
            configs.push(report);
            continue;
        }
        say(opts, &format!("building {}: {}", kind.id(), kind.describe()));
        let t = match kind {
            Kind::Myelin { .. } | Kind::MyelinNoFlows => {
                Target::build_myelin(index, *kind, opts.bin_dir.clone(), policy.as_deref().ok())?
            }
            // A cross-node configuration that cannot be built (or does not forward) is reported
            // as not available, with why, and the others are still measured.
            Kind::CrossKernel { vxlan } | Kind::CrossMyelin { vxlan } => {
                let built = if matches!(kind, Kind::CrossKernel { .. }) {
                    Target::build_cross_kernel(*vxlan)
                } else {
                    Target::build_cross_myelin(index, *vxlan, opts.bin_dir.clone())
                };
                match built {
                    Ok(t) => t,
                    Err(PerfError::Interrupted) => return Err(PerfError::Interrupted),
                    Err(e) => {
                        say(opts, &format!("{} is not available: {e}", kind.id()));
                        report.unavailable = Some(e.to_string());
                        configs.push(report);
                        continue;
                    }
                }
            }
            k => Target::build_netns(*k)?,
        };
        report.available = true;
        configs.push(report);
        targets.push(t);
    }

    let workloads = [
        Workload::Stream { streams: 1 },
        Workload::Stream { streams: opts.streams.max(2) },
        Workload::Rr,
        Workload::Crr,
    ];
    let before: Vec<Counters> = targets.iter().map(Target::counters).collect::<Result<_>>()?;
    // (config, workload) -> metric -> samples, in round order.
    let mut samples: BTreeMap<(String, String), BTreeMap<&'static str, Vec<f64>>> = BTreeMap::new();
    // (config, workload) -> the agent's CPU (% of one core) per round, Myelin configurations only.
    let mut agent_samples: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for round in 1..=opts.rounds {
        for w in workloads {
            for t in &targets {
                check_cancel(opts)?;
                let agent = t.agent_pid();
                let (ticks0, t0) = (agent.and_then(sys::process_cpu_ticks), Instant::now());
                let m = measure(t, w, opts).map_err(|e| PerfError::Invalid {
                    what: format!("round {round}, {} on {}", w.id(), t.kind.id()),
                    message: e.to_string(),
                })?;
                if let (Some(a), Some(b)) = (ticks0, agent.and_then(sys::process_cpu_ticks)) {
                    #[allow(clippy::cast_precision_loss)]
                    let percent = 100.0 * (b.saturating_sub(a) as f64 / sys::USER_HZ) / t0.elapsed().as_secs_f64();
                    agent_samples.entry((t.kind.id(), w.id())).or_default().push(percent);
                }
                say(
                    opts,
                    &format!(
                        "round {round}/{}: {:<14} {:<15} {}",
                        opts.rounds,
                        w.id(),
                        t.kind.id(),
                        m.iter().map(|(k, v)| format!("{k}={v:.2}")).collect::<Vec<_>>().join(" ")
                    ),
                );
                let e = samples.entry((t.kind.id(), w.id())).or_default();
                for (k, v) in m {
                    e.entry(k).or_default().push(v);
                }
            }
        }
    }
    let after: Vec<Counters> = targets.iter().map(Target::counters).collect::<Result<_>>()?;

    let mut myelin_rss = None;
    for ((t, b), a) in targets.iter().zip(&before).zip(&after) {
        let checks = t.verify(&a.delta(b));
        if let Some(c) = configs.iter_mut().find(|c| c.id == t.kind.id()) {
            c.verified = Some(checks.iter().all(|c| c.ok));
            c.checks = checks;
            c.agent_rss_bytes = t.agent_pid().and_then(sys::rss_bytes);
            c.agent_cpu = workloads
                .iter()
                .filter_map(|w| {
                    let percent_of_core = Summary::of(agent_samples.get(&(c.id.clone(), w.id()))?)?;
                    Some(AgentCpu { workload: w.id(), percent_of_core })
                })
                .collect();
            if t.kind == (Kind::Myelin { rules: None }) {
                myelin_rss = c.agent_rss_bytes;
            }
        }
    }

    let mut figures = Vec::new();
    for kind in &kinds {
        for w in workloads {
            let Some(per_metric) = samples.get(&(kind.id(), w.id())) else { continue };
            for (metric, unit, better) in metrics(w) {
                if let Some(summary) = per_metric.get(metric).and_then(|s| Summary::of(s)) {
                    figures.push(Figure {
                        config: kind.id(),
                        workload: w.id(),
                        metric: (*metric).to_owned(),
                        unit: (*unit).to_owned(),
                        better: *better,
                        summary,
                        vs_kernel_routing: None,
                        vs_physical: None,
                        ratios: BTreeMap::new(),
                    });
                }
            }
        }
    }
    let baselines = report::baselines(opts.suite.id());
    report::fill_ratios(&mut figures, &baselines);
    let stream_n = Workload::Stream { streams: opts.streams.max(2) }.id();
    let mut notes = Vec::new();
    let goals = match opts.suite {
        Suite::Local => {
            notes.push(format!("iptables backend: {} (iptables-restore into the node netns; stateful: RELATED,ESTABLISHED accepted first, so the rule list is walked once per new connection — TCP_CRR shows it, streams barely do)", machine.iptables));
            report::goals(&figures, &configs, &stream_n, rules.last().copied().unwrap_or(0), myelin_rss)
        }
        Suite::CrossNode => {
            notes.push("cross-node: both \"nodes\" are network namespaces on this machine, joined by veths on a bridge: there is no NIC, so the cost of a tunnel is the CPU of encapsulation, GRO/GSO and the extra device hops, on the same cores as both ends".into());
            notes.push(format!("cross-node: kernel and Myelin VXLAN both use UDP port {} and MTU 1450 on the pods; native routing keeps MTU 1500", crate::cross::VXLAN_PORT));
            if let Some(line) = report::overlay_cost(&figures) {
                notes.push(line);
            }
            report::cross_goals(&figures)
        }
    };
    notes.push("CPU is machine-wide (/proc/stat busy ticks over all cores during the timed run): it includes both ends, the kernel's softirq work, the agent and anything else running; cpu_per_tx divides it by transactions".into());
    if opts.quick {
        notes.push("--quick: short runs and 2 rounds, for smoke tests; use the full run for claims".into());
    }
    if let (Suite::Local, Err(why)) = (opts.suite, &policy) {
        notes.push(format!("Myelin rule variants not available yet: {why}"));
    }
    drop(targets); // tear down before reporting the time taken
    Ok(Report {
        machine,
        settings: Settings {
            quick: opts.quick,
            rounds: opts.rounds,
            stream_seconds: opts.stream_seconds,
            rr_seconds: opts.rr_duration.as_secs_f64(),
            streams: opts.streams.max(2),
            rr_size_bytes: opts.rr_size,
            rules: if opts.suite == Suite::Local { rules } else { Vec::new() },
            suite: opts.suite.id().into(),
            order: "round-robin: each round runs each workload on every configuration in turn".into(),
            rr_pin: opts.rr_pin.map_or_else(|| "none".into(), |(c, s)| format!("client CPU {c}, server CPU {s}")),
        },
        elapsed_seconds: started.elapsed().as_secs_f64(),
        baselines,
        configs,
        figures,
        goals,
        notes,
    })
}
