//! `myelin perf`: datapath benchmarks side by side (see the myelin-perf crate).

use crate::output::{self, Format};
use anyhow::{Context, Result};
use myelin_perf::propagation::{self, PropagationOptions, PropagationReport};
use nix::sys::signal::{SigSet, Signal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Short runs and 2 rounds (well under 2 minutes): a smoke test, not a claim.
    #[arg(long)]
    quick: bool,
    /// Measure across two nodes instead: client pod on node A, server pod on node B; the kernel's
    /// VXLAN and native routing against 2-node Myelin labs (etcd) over VXLAN and native routing.
    #[arg(long, conflicts_with = "propagation")]
    cross_node: bool,
    /// Measure instead how fast new pods reach the other nodes: a 3-node lab (vxlan, etcd), --pods
    /// pods added on node1, the time until each is in node2's and node3's ipcache and its
    /// identity's labels are known to node2.
    #[arg(long)]
    propagation: bool,
    /// Pods of --propagation.
    #[arg(long, default_value_t = 1000, requires = "propagation")]
    pods: u32,
    /// Shorthand for `-o json`.
    #[arg(long)]
    json: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
    /// Rule counts of the iptables (and Myelin policy) variants [default: 1,1000,10000;
    /// with --quick 1,10000].
    #[arg(long, value_delimiter = ',')]
    rules: Vec<u32>,
    /// Seconds per measurement (TCP_STREAM rounds up to whole seconds).
    #[arg(long)]
    duration: Option<f64>,
    /// Rounds; every round measures every workload on every configuration in turn.
    #[arg(long)]
    rounds: Option<u32>,
    /// Parallel streams of the multi-stream TCP_STREAM.
    #[arg(long, default_value_t = 4)]
    streams: u32,
    /// Request and response size of TCP_RR and TCP_CRR, in bytes.
    #[arg(long, default_value_t = 1)]
    size: usize,
    /// CPU for both ends of TCP_RR/CRR (default: the last CPU).
    #[arg(long, conflicts_with = "no_pin")]
    rr_cpu: Option<usize>,
    /// Let the scheduler place the TCP_RR/CRR threads (noisier: cross-CPU wake-ups by chance).
    #[arg(long)]
    no_pin: bool,
    /// Directory of myelin-agent, myelin-cni and myelin (default: $MYELIN_BIN_DIR, else next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Do not measure: render the report of an earlier run (`myelin perf -o json > FILE`).
    #[arg(long, value_name = "FILE")]
    from_json: Option<PathBuf>,
    /// Print the goals as a Markdown table (for BENCHMARKS.md, generated from a run's JSON).
    #[arg(long)]
    goals_markdown: bool,
}

fn json(a: &Args) -> bool {
    a.json || a.output == Format::Json
}

fn show(report: &myelin_perf::Report, a: &Args) -> Result<()> {
    if a.goals_markdown {
        outln!("{}", myelin_perf::goals_markdown(report));
    } else if json(a) {
        output::json(report)?;
    } else {
        outln!("{}", myelin_perf::render(report));
    }
    Ok(())
}

fn show_propagation(report: &PropagationReport, a: &Args) -> Result<()> {
    if a.goals_markdown {
        outln!("{}", propagation::goals_markdown(report));
    } else if json(a) {
        output::json(report)?;
    } else {
        outln!("{}", propagation::render(report));
    }
    Ok(())
}

pub fn run(a: &Args) -> Result<i32> {
    if let Some(path) = &a.from_json {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON (expected `myelin perf -o json` output)", path.display()))?;
        if value.get("benchmark").and_then(serde_json::Value::as_str) == Some("propagation") {
            let report: PropagationReport = serde_json::from_value(value).with_context(|| {
                format!("{}: not the JSON of a `myelin perf --propagation -o json` run", path.display())
            })?;
            show_propagation(&report, a)?;
        } else {
            let report: myelin_perf::Report = serde_json::from_value(value)
                .with_context(|| format!("{}: not the JSON of a `myelin perf -o json` run", path.display()))?;
            show(&report, a)?;
        }
        return Ok(0);
    }
    // Ctrl-C: block SIGINT in every thread (before any is spawned) and turn it into a
    // cancel flag, so the run stops between steps and tears its namespaces and labs down.
    let cancel = Arc::new(AtomicBool::new(false));
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking SIGINT")?;
    {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            if set.wait().is_ok() {
                eprintln!("myelin perf: interrupted, cleaning up");
                cancel.store(true, Ordering::SeqCst);
            }
        });
    }
    if a.propagation {
        let opts = PropagationOptions {
            pods: a.pods,
            bin_dir: a.bin_dir.clone(),
            cancel,
            progress: Some(Arc::new(|line: &str| eprintln!("{line}"))),
            ..PropagationOptions::default()
        };
        let report = myelin_perf::propagation::run(&opts)?;
        show_propagation(&report, a)?;
        return Ok(i32::from(report.checks.iter().any(|c| !c.ok)));
    }
    let mut opts = if a.quick { myelin_perf::Options::quick() } else { myelin_perf::Options::full() };
    if a.cross_node {
        anyhow::ensure!(a.rules.is_empty(), "--rules applies to the one-node suite, not to --cross-node");
        opts.suite = myelin_perf::Suite::CrossNode;
    }
    if let Some(d) = a.duration {
        anyhow::ensure!(d > 0.0 && d.is_finite(), "--duration must be a positive number of seconds");
        opts.rr_duration = Duration::from_secs_f64(d);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let secs = d.ceil() as u32;
        opts.stream_seconds = secs.max(1);
    }
    if let Some(r) = a.rounds {
        anyhow::ensure!(r > 0, "--rounds must be at least 1");
        opts.rounds = r;
    }
    opts.streams = a.streams;
    opts.rr_size = a.size.max(1);
    if !a.rules.is_empty() {
        opts.rules = a.rules.clone();
    }
    if a.no_pin {
        opts.rr_pin = None;
    } else if let Some(c) = a.rr_cpu {
        opts.rr_pin = Some((c, c));
    }
    opts.bin_dir = a.bin_dir.clone();
    opts.cancel = cancel;
    opts.progress = Some(Arc::new(|line: &str| eprintln!("{line}")));
    let report = myelin_perf::run(&opts)?;
    show(&report, a)?;
    // A configuration that did not take its claimed path makes the figures meaningless.
    Ok(i32::from(report.configs.iter().any(|c| c.verified == Some(false))))
}
