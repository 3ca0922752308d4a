//! myelin-agent: one per node. Wires config, datapath, store and API together.

use anyhow::{Context, Result};
use clap::Parser;
use myelin_agent::config::Config;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "myelin-agent", version, about = "Myelin node agent: eBPF datapath, endpoints, IPAM and local API")]
struct Args {
    /// TOML config file (unknown keys are errors).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Enter this network namespace (a path like /var/run/netns/NAME) before anything else.
    #[arg(long)]
    netns: Option<PathBuf>,
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long)]
    pod_cidr: Option<ipnet::Ipv4Net>,
    #[arg(long)]
    uplink: Option<String>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long)]
    bpf_dir: Option<PathBuf>,
}

fn main() -> Result<()> {
    // Before any thread exists (see the function's note: one arena keeps the agent's RSS
    // near its live heap after large policy applies).
    let one_arena = myelin_bpf::use_one_allocator_arena();
    let args = Args::parse();
    // setns() moves only the calling thread: do it while the process has one thread.
    if let Some(ns) = &args.netns {
        let f = std::fs::File::open(ns).with_context(|| format!("opening network namespace {}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace {}", ns.display()))?;
    }
    let mut cfg = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = args.node_name {
        cfg.node_name = v;
    }
    if let Some(v) = args.pod_cidr {
        cfg.pod_cidr = Some(v);
    }
    if let Some(v) = args.uplink {
        cfg.uplink = v;
    }
    if let Some(v) = args.state_dir {
        cfg.state_dir = v;
    }
    if let Some(v) = args.socket {
        cfg.socket = v;
    }
    if let Some(v) = args.bpf_dir {
        cfg.bpf_dir = Some(v);
    }
    cfg.validate()?;
    init_logs(&cfg.log_format);
    if !one_arena {
        tracing::warn!(
            "the C library refused mallopt(M_ARENA_MAX, 1): memory freed after large policy applies may stay resident"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(myelin_agent::daemon::run(cfg))
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
