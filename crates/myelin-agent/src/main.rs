//! myelin-agent: one per node. Wires config, datapath, store and API together.

use anyhow::{bail, Context, Result};
use clap::Parser;
use myelin_agent::config::Config;
use myelin_agent::endpoints::Endpoints;
use myelin_agent::server::{router, AgentState};
use myelin_agent::{masq, store::Store};
use myelin_api::{Feature, Status};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(cfg))
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

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(Path::new("/proc/sys").join(path), value).with_context(|| format!("setting sysctl {path}={value}"))
}

async fn run(cfg: Config) -> Result<()> {
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let pod_cidr = cfg.pod_cidr.context("pod_cidr")?;
    let gateway = cfg.gateway().context("pod_cidr has no host addresses")?;
    info!(node = %cfg.node_name, %pod_cidr, %gateway, "starting");

    // Kernel features: say plainly what is there and what is not.
    myelin_bpf::ensure_bpffs(Path::new("/sys/fs/bpf")).context("mounting bpffs at /sys/fs/bpf")?;
    let mut features: Vec<Feature> = myelin_bpf::probe_features()
        .into_iter()
        .map(|p| Feature { name: p.name, available: p.available, detail: p.detail })
        .collect();
    for f in &features {
        if f.available {
            info!(feature = %f.name, detail = %f.detail, "kernel feature available");
        } else {
            warn!(feature = %f.name, detail = %f.detail, "kernel feature NOT available");
        }
    }

    let node_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => match myelin_netlink::link_ipv4(&cfg.uplink).await? {
            Some((ip, _)) => ip,
            None => bail!("uplink {} has no IPv4 address; set node_ip in the config or fix uplink", cfg.uplink),
        },
    };
    if cfg.ip_forward {
        write_sysctl("net/ipv4/ip_forward", "1")?;
    }
    myelin_netlink::ensure_dummy_with_addr("myelin_host", gateway, 32)
        .await
        .context("creating the gateway device myelin_host")?;

    let bpf_dir = cfg.bpf_dir();
    let datapath = myelin_bpf::Datapath::load(&bpf_dir)
        .with_context(|| format!("loading the datapath into {}", bpf_dir.display()))?;
    datapath.set_node_config(&myelin_bpf::NodeConfig {
        node_ip,
        gateway,
        pod_cidr: pod_cidr.network(),
        pod_cidr_prefix: pod_cidr.prefix_len(),
    })?;

    if cfg.masquerade {
        match masq::install(pod_cidr, &cfg.uplink, &cfg.native_routing_cidrs) {
            Ok(()) => features.push(Feature {
                name: "masquerade".into(),
                available: true,
                detail: format!("nftables, via {}", cfg.uplink),
            }),
            Err(e) => {
                warn!(error = %e, "pod-to-world masquerade is NOT enabled");
                features.push(Feature { name: "masquerade".into(), available: false, detail: e });
            }
        }
    }

    let store = Store::open(&cfg.state_dir)?;
    let endpoints = Endpoints::restore(store, datapath, pod_cidr, vec![node_ip, gateway]).await?;
    info!(endpoints = endpoints.len(), adopted = endpoints.adopted(), "state restored");
    // Endpoints and policy are in the (possibly new) maps: from now on this
    // build's programs decide every packet.
    let upgrade = endpoints.datapath().activate()?;
    info!(
        previous_abi = ?upgrade.previous_abi,
        abi = upgrade.abi,
        migrated = upgrade.migrated.len(),
        links_updated = upgrade.links_updated,
        links_current = upgrade.links_current,
        "datapath active"
    );
    for m in &upgrade.migrated {
        info!(map = %m.map, how = %m.how, copied = m.copied, skipped = m.skipped, "map migrated");
    }

    let status = Status {
        node: cfg.node_name.clone(),
        healthy: true,
        version: env!("CARGO_PKG_VERSION").into(),
        pod_cidr: pod_cidr.to_string(),
        gateway: gateway.to_string(),
        node_ip: node_ip.to_string(),
        bpf_dir: bpf_dir.display().to_string(),
        endpoints: 0,
        features: Vec::new(),
        started,
        adopted_endpoints: 0,
    };
    let state = Arc::new(AgentState { endpoints: tokio::sync::Mutex::new(endpoints), status, features });

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(&cfg.socket) {
        Ok(()) => info!(socket = %cfg.socket.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale socket {}", cfg.socket.display())),
    }
    let listener =
        tokio::net::UnixListener::bind(&cfg.socket).with_context(|| format!("binding {}", cfg.socket.display()))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %cfg.socket.display(), "serving the local API");

    // Connection tracking garbage collection: expired entries out, LRU does the rest.
    let gc_state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tick.tick().await;
            let eps = gc_state.endpoints.lock().await;
            match eps.datapath().ct_gc() {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "conntrack gc"),
                Err(e) => warn!(error = %e, "conntrack gc"),
            }
        }
    });

    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
    let _ = std::fs::remove_file(&cfg.socket);
    info!("stopped; the datapath keeps forwarding");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}
