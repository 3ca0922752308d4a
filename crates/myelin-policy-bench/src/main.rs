//! `myelin-policy-bench`: the policy benchmarks of issue 3, through a real
//! agent in a one-node lab (root only).
//!
//! ```text
//!  lab (1 node, agent) --- pods bench/client (role=client), bench/server (role=server, app=bulk)
//!                      \-- N-1 bulk endpoints (app=bulk) via POST /v1/endpoints, in shared netns
//!  (b) apply-to-enforced: POST /v1/policies `bulk` (selects all N, alternating TCP 8080/8081)
//!      -> time to the response (the agent syncs the datapath first), then a TCP connect
//!         client -> server on the port the previous version denied proves enforcement
//!  (a) per-packet cost: policy `rules` on the server, 1 rule vs R rules, applied in
//!      interleaved rounds (A B B A ...); UDP request/response client -> server; ns per
//!      run of from_container / to_container from bpf_prog_info run_time_ns / run_cnt
//!      (kernel.bpf_stats_enabled=1 while running, restored after)
//!  (c) plumbing: N CNI ADDs one at a time vs all at once, interleaved rounds (pods/s)
//! ```
//! Everything (lab, namespaces, sysctl) is undone by RAII guards, also on failure.
#![forbid(unsafe_code)]

mod netns;
mod plumb;
mod policies;
mod stats;
mod traffic;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use myelin_api::{Client, Endpoint, EndpointAddRequest, PolicyApply, PolicyChange, PolicyFile};
use myelin_lab::{Lab, LabOptions, LabSpec, NamespaceSpec, NodeSpec, PodSpec};
use netns::{BpfStatsGuard, LabGuard, NetnsSet, NetnsWorker};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    about = "Policy benchmarks: per-packet cost with 1 vs 10,000 rules, and apply-to-enforced latency for a change affecting 1,000 endpoints (run as root)"
)]
struct Args {
    /// Short run: fewer applies, rounds and round trips (same endpoint and rule counts).
    #[arg(long)]
    quick: bool,
    /// Output: table or json.
    #[arg(short = 'o', long, default_value = "table")]
    output: String,
    /// Endpoints the bulk policy selects (the server pod plus N-1 bulk endpoints).
    #[arg(long, default_value_t = 1000)]
    endpoints: usize,
    /// Measured applies of the bulk policy (default 50, quick 10).
    #[arg(long)]
    applies: Option<usize>,
    /// Rules of the large policy of the per-packet benchmark.
    #[arg(long, default_value_t = 10_000)]
    rules: usize,
    /// Interleaved A/B rounds of the per-packet benchmark (default 6, quick 2).
    #[arg(long)]
    rounds: Option<usize>,
    /// UDP round trips per round (default 20000, quick 3000).
    #[arg(long)]
    round_trips: Option<u32>,
    /// Pods ADDed per batch of the plumbing benchmark.
    #[arg(long, default_value_t = 100)]
    plumb_pods: usize,
    /// Interleaved serial/concurrent rounds of the plumbing benchmark (default 3, quick 1).
    #[arg(long)]
    plumb_rounds: Option<usize>,
    /// Directory of myelin-agent, myelin-cni and myelin (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Variant {
    rules: usize,
    /// Median over rounds of from_container's ns per run.
    from_container_ns: f64,
    /// Median over rounds of to_container's ns per run (0 runs: 0).
    to_container_ns: f64,
    from_container_runs: u64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    lost: u32,
    /// Median time of the apply that installed this variant.
    apply_ms: f64,
}

#[derive(Debug, Serialize)]
struct PerPacket {
    rounds: usize,
    round_trips_per_round: u32,
    one: Variant,
    many: Variant,
    /// many / one, from_container ns per run.
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct ApplyLatency {
    endpoints_selected: usize,
    endpoints_updated_per_apply: usize,
    applies: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Request sent -> first TCP connect on the newly allowed port succeeded.
    to_connected_p50_ms: f64,
    to_connected_p99_ms: f64,
    goal_p99_ms: f64,
    meets_goal: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    cpus: usize,
    agent_build: String,
    setup_bulk_endpoints_s: f64,
    apply: ApplyLatency,
    per_packet: PerPacket,
    rss_kib_two_endpoints: u64,
    rss_kib_endpoints: u64,
    rss_kib_endpoints_and_rules: u64,
    rss_goal_kib: u64,
    plumbing: plumb::Plumbing,
    plumbing_tc: plumb::Plumbing,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            if args.output == "json" {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("myelin-policy-bench: {e}"),
                }
            } else {
                print_table(&report);
            }
        }
        Err(e) => {
            eprintln!("myelin-policy-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

pub(crate) fn say(msg: &str) {
    eprintln!("[policy-bench] {msg}");
}

fn rss_kib(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in the agent's status")
}

fn apply(client: &Client, name: &str, yaml: String) -> Result<(Duration, PolicyChange)> {
    let body = PolicyApply { files: vec![PolicyFile { name: name.to_owned(), content: yaml }] };
    let t = Instant::now();
    let change: PolicyChange = client.post("/v1/policies", &body).with_context(|| format!("applying {name}"))?;
    Ok((t.elapsed(), change))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[allow(clippy::too_many_lines)]
fn run(args: &Args) -> Result<Report> {
    ensure!(nix::unistd::geteuid().is_root(), "builds network namespaces and loads eBPF programs: run as root");
    ensure!(args.endpoints >= 1, "--endpoints must be at least 1");
    ensure!(args.rules >= 1, "--rules must be at least 1");
    let applies = args.applies.unwrap_or(if args.quick { 10 } else { 50 });
    let rounds = args.rounds.unwrap_or(if args.quick { 2 } else { 6 });
    let round_trips = args.round_trips.unwrap_or(if args.quick { 3000 } else { 20_000 });
    let pid = std::process::id();
    let name = format!("pb{}", pid % 100_000);

    // ---- the lab: one node, a client and a server pod ----
    say(&format!("lab {name}: one node, pods bench/client and bench/server"));
    let pod_cidr_bits = 32 - (usize::BITS - (args.endpoints.max(args.plumb_pods) + 16).leading_zeros()).max(8);
    let spec = LabSpec {
        nodes: vec![NodeSpec { name: "n1".into(), pod_cidr: Some(format!("10.96.0.0/{pod_cidr_bits}")) }],
        namespaces: vec![NamespaceSpec { name: policies::NAMESPACE.into(), labels: Default::default() }],
        pods: vec![
            PodSpec::new(policies::NAMESPACE, "client", "n1", &[("role", "client")]),
            PodSpec::new(policies::NAMESPACE, "server", "n1", &[("role", "server"), ("app", "bulk")]),
        ],
        external: vec![],
        agent: Default::default(),
        routing: None,
        kvstore: None,
        kvstore_members: None,
        cluster_pool: None,
    };
    let opts = LabOptions { bin_dir: args.bin_dir.clone(), ..LabOptions::default() };
    let agent_bin = myelin_lab::find_binary("myelin-agent", args.bin_dir.as_deref())?;
    let guard = LabGuard(Some(Lab::up(spec, &name, opts).context("building the lab")?));
    let lab = guard.lab();
    let node = lab.node("n1")?;
    let agent_pid = node.agent_pid.context("the agent has no pid")?;
    let client = lab.client("n1")?.with_timeout(Duration::from_secs(300));
    let cpod = lab.pod(policies::NAMESPACE, "client")?;
    let spod = lab.pod(policies::NAMESPACE, "server")?;
    let server_ip: Ipv4Addr = spod.ip.as_deref().context("server has no address")?.parse()?;
    let client_ep: Endpoint =
        client.get(&format!("/v1/endpoints/{}", cpod.endpoint_id.context("client endpoint id")?))?;
    let rss_two = rss_kib(agent_pid)?;

    // ---- workers and servers inside the pods ----
    let cw = NetnsWorker::new(&cpod.netns_path)?;
    let sw = NetnsWorker::new(&spod.netns_path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut ready = Vec::new();
    let mut servers = Vec::new();
    for port in policies::BULK_PORTS {
        let (tx, rx) = std::sync::mpsc::channel();
        let st = stop.clone();
        let w = NetnsWorker::new(&spod.netns_path)?;
        let _ = w.start(move || traffic::tcp_listen(port, tx, st))?;
        ready.push(rx);
        servers.push((port, w));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let st = stop.clone();
    let udp_w = NetnsWorker::new(&spod.netns_path)?;
    let _ = udp_w.start(move || traffic::udp_echo(policies::RR_PORT, tx, st))?;
    ready.push(rx);
    for r in ready {
        r.recv().context("server thread died")?.context("starting a server")?;
    }
    // Stop the servers before the lab goes (drop order: this guard first).
    struct StopServers<'a>(Arc<AtomicBool>, &'a NetnsWorker, Vec<u16>);
    impl Drop for StopServers<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
            let ports = self.2.clone();
            let _ = self.1.run(move || ports.into_iter().for_each(traffic::wake_listener));
        }
    }
    let _stop_servers = StopServers(stop, &sw, policies::BULK_PORTS.to_vec());

    // ---- (c) plumbing throughput, before the bulk endpoints fill the node ----
    let plumb_rounds = args.plumb_rounds.unwrap_or(if args.quick { 1 } else { 3 });
    say(&format!("plumbing: {} ADDs one at a time vs concurrently, {plumb_rounds} rounds", args.plumb_pods));
    let plumbing = plumb::run(&client, &name, args.plumb_pods, plumb_rounds)?;
    // The same on a node whose agent attaches with clsact (attach_mode = "tc"): TCX attaches
    // are serialized by the kernel (rtnl held across an RCU grace period), clsact's are not.
    let plumbing_tc = {
        let tc_name = format!("{name}t");
        say(&format!("lab {tc_name}: one node, attach_mode tc"));
        let spec = LabSpec {
            nodes: vec![NodeSpec { name: "n1".into(), pod_cidr: Some(format!("10.97.0.0/{pod_cidr_bits}")) }],
            namespaces: vec![NamespaceSpec { name: policies::NAMESPACE.into(), labels: Default::default() }],
            pods: vec![],
            external: vec![],
            agent: [("attach_mode".to_owned(), serde_json::Value::String("tc".into()))].into_iter().collect(),
            routing: None,
            kvstore: None,
            kvstore_members: None,
            cluster_pool: None,
        };
        let opts = LabOptions { bin_dir: args.bin_dir.clone(), ..LabOptions::default() };
        let tc_lab = LabGuard(Some(Lab::up(spec, &tc_name, opts).context("building the tc lab")?));
        let tc_client = tc_lab.lab().client("n1")?.with_timeout(Duration::from_secs(300));
        plumb::run(&tc_client, &tc_name, args.plumb_pods, plumb_rounds)?
    };

    // ---- N-1 bulk endpoints through the agent API ----
    let bulk = args.endpoints - 1;
    let per_ns = 100;
    let nets = NetnsSet::create((0..bulk.div_ceil(per_ns)).map(|j| format!("{name}-bulk{j}")).collect())?;
    say(&format!("adding {bulk} bulk endpoints (app=bulk) via POST /v1/endpoints"));
    let t = Instant::now();
    for i in 0..bulk {
        let req = EndpointAddRequest {
            labels_pending: false,
            container_id: format!("{name}-bulk-{i}"),
            netns: nets.path(i / per_ns).display().to_string(),
            ifname: format!("eth{}", i % per_ns),
            namespace: Some(policies::NAMESPACE.into()),
            pod_name: Some(format!("bulk-{i}")),
            labels: [("app".to_owned(), "bulk".to_owned())].into_iter().collect(),
            ports: vec![],
        };
        let _: Endpoint = client.post("/v1/endpoints", &req).with_context(|| format!("adding bulk endpoint {i}"))?;
    }
    let setup_s = t.elapsed().as_secs_f64();
    say(&format!("{bulk} endpoints added in {setup_s:.1} s ({} netns)", nets.len()));
    let rss_eps = rss_kib(agent_pid)?;

    // ---- (b) apply-to-enforced ----
    let connect = |port: u16| -> Result<Duration> {
        let dst = SocketAddrV4::new(server_ip, port);
        cw.run(move || traffic::tcp_connect(dst, Duration::from_secs(2)))?
            .with_context(|| format!("TCP connect client -> {dst} (should be allowed now)"))
    };
    say("apply-to-enforced: warm-up apply of the bulk policy");
    let (_, first) = apply(&client, "bulk.yaml", policies::bulk(policies::BULK_PORTS[0]))?;
    ensure!(
        first.endpoints_updated >= args.endpoints,
        "the bulk policy updated {} endpoints, expected {}",
        first.endpoints_updated,
        args.endpoints
    );
    connect(policies::BULK_PORTS[0])?;
    let (mut apply_ms, mut connected_ms, mut updated) = (Vec::new(), Vec::new(), Vec::new());
    say(&format!("apply-to-enforced: {applies} applies, each changing all {} endpoints", args.endpoints));
    for k in 1..=applies {
        let port = policies::BULK_PORTS[k % 2];
        let t = Instant::now();
        let (took, change) = apply(&client, "bulk.yaml", policies::bulk(port))?;
        connect(port).with_context(|| format!("apply {k}: enforcement"))?;
        connected_ms.push(ms(t.elapsed()));
        apply_ms.push(ms(took));
        updated.push(change.endpoints_updated);
    }
    let p99 = stats::percentile(&apply_ms, 99.0);
    let apply_report = ApplyLatency {
        endpoints_selected: args.endpoints,
        endpoints_updated_per_apply: updated.iter().copied().min().unwrap_or(0),
        applies,
        p50_ms: stats::percentile(&apply_ms, 50.0),
        p99_ms: p99,
        max_ms: stats::percentile(&apply_ms, 100.0),
        to_connected_p50_ms: stats::percentile(&connected_ms, 50.0),
        to_connected_p99_ms: stats::percentile(&connected_ms, 99.0),
        goal_p99_ms: 100.0,
        meets_goal: p99 <= 100.0,
    };
    say(&format!("apply p50 {:.1} ms, p99 {:.1} ms", apply_report.p50_ms, apply_report.p99_ms));

    // ---- (a) per-packet cost, 1 rule vs R rules, interleaved ----
    let _stats_on = BpfStatsGuard::enable()?;
    let pin_dir = node.bpf_dir.clone();
    let host_if = client_ep.host_ifname.clone();
    let run_stats = || myelin_bpf::endpoint_run_stats(&pin_dir, &host_if).context("reading program run stats");
    let dst = SocketAddrV4::new(server_ip, policies::RR_PORT);
    #[derive(Default)]
    struct Acc {
        from_ns: Vec<f64>,
        to_ns: Vec<f64>,
        from_runs: u64,
        rtt: Vec<f64>,
        lost: u32,
        apply_ms: Vec<f64>,
    }
    let mut acc = [Acc::default(), Acc::default()];
    let variants = [1, args.rules];
    let yamls = [policies::rules(1), policies::rules(args.rules)];
    say(&format!("per-packet: {rounds} rounds of 1 vs {} rules, {round_trips} UDP round trips each", args.rules));
    for round in 0..rounds {
        // A B, then B A: drift cancels.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for v in order {
            let (took, _) = apply(&client, "rules.yaml", yamls[v].clone())?;
            acc[v].apply_ms.push(ms(took));
            let warm = cw.run(move || traffic::udp_rr(dst, 200, Duration::from_secs(1)))??;
            if warm.lost > 0 {
                bail!(
                    "{} rules: {} of 200 warm-up round trips lost: the allowing rule is not enforced as expected",
                    variants[v],
                    warm.lost
                );
            }
            let before = run_stats()?;
            let rr = cw.run(move || traffic::udp_rr(dst, round_trips, Duration::from_secs(1)))??;
            let after = run_stats()?;
            let per = |i: usize| {
                let runs = after[i].run_cnt.saturating_sub(before[i].run_cnt);
                let ns = after[i].run_time_ns.saturating_sub(before[i].run_time_ns);
                (runs, if runs == 0 { 0.0 } else { ns as f64 / runs as f64 })
            };
            let (from_runs, from_ns) = per(0);
            let (_, to_ns) = per(1);
            acc[v].from_ns.push(from_ns);
            acc[v].to_ns.push(to_ns);
            acc[v].from_runs += from_runs;
            acc[v].rtt.extend(rr.rtt_ns.iter().map(|n| *n as f64 / 1e3));
            acc[v].lost += rr.lost;
            say(&format!(
                "round {round}: {:>5} rules: from_container {from_ns:.0} ns/run over {from_runs} runs",
                variants[v]
            ));
        }
    }
    let rss_rules = rss_kib(agent_pid)?; // the last round leaves one variant; make sure it is the large one
    let rss_rules = if rounds.is_multiple_of(2) {
        // even rounds end with the 1-rule variant (B A): apply the large one to measure
        apply(&client, "rules.yaml", yamls[1].clone())?;
        rss_kib(agent_pid)?
    } else {
        rss_rules
    };
    let variant = |v: usize| Variant {
        rules: variants[v],
        from_container_ns: stats::median(&acc[v].from_ns),
        to_container_ns: stats::median(&acc[v].to_ns),
        from_container_runs: acc[v].from_runs,
        rtt_p50_us: stats::percentile(&acc[v].rtt, 50.0),
        rtt_p99_us: stats::percentile(&acc[v].rtt, 99.0),
        lost: acc[v].lost,
        apply_ms: stats::median(&acc[v].apply_ms),
    };
    let (one, many) = (variant(0), variant(1));
    let ratio = if one.from_container_ns > 0.0 { many.from_container_ns / one.from_container_ns } else { 0.0 };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    Ok(Report {
        kernel,
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
        agent_build: agent_bin.display().to_string(),
        setup_bulk_endpoints_s: setup_s,
        apply: apply_report,
        per_packet: PerPacket { rounds, round_trips_per_round: round_trips, one, many, ratio },
        rss_kib_two_endpoints: rss_two,
        rss_kib_endpoints: rss_eps,
        rss_kib_endpoints_and_rules: rss_rules,
        rss_goal_kib: 64 * 1024,
        plumbing,
        plumbing_tc,
    })
}

fn print_table(r: &Report) {
    use comfy_table::Table;
    println!("kernel {}, {} CPUs, agent {}", r.kernel, r.cpus, r.agent_build);
    let a = &r.apply;
    let mut t = Table::new();
    t.set_header(vec!["apply-to-enforced", "value"]);
    t.add_row(vec![
        "endpoints selected / updated per apply".to_owned(),
        format!("{} / {}", a.endpoints_selected, a.endpoints_updated_per_apply),
    ]);
    t.add_row(vec!["applies".to_owned(), a.applies.to_string()]);
    t.add_row(vec![
        "request -> response p50 / p99 / max".to_owned(),
        format!("{:.1} / {:.1} / {:.1} ms", a.p50_ms, a.p99_ms, a.max_ms),
    ]);
    t.add_row(vec![
        "request -> first allowed connect p50 / p99".to_owned(),
        format!("{:.1} / {:.1} ms", a.to_connected_p50_ms, a.to_connected_p99_ms),
    ]);
    t.add_row(vec![
        "goal: p99 <= 100 ms".to_owned(),
        if a.meets_goal { "met".to_owned() } else { "NOT met".to_owned() },
    ]);
    println!("{t}");
    let mut t = Table::new();
    t.set_header(vec!["plumbing: CNI ADDs through the agent, pods/s", "one at a time", "concurrently", "ratio"]);
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("[{lo:.1}-{hi:.1}]")
    };
    for (mode, pl) in [("tcx", &r.plumbing), ("tc (clsact)", &r.plumbing_tc)] {
        t.add_row(vec![
            format!("{} pods, attach {mode}, median of {}", pl.pods, pl.rounds),
            format!("{:.1} {}", pl.serial_median, spread(&pl.serial_pods_per_s)),
            format!("{:.1} {}", pl.concurrent_median, spread(&pl.concurrent_pods_per_s)),
            format!("{:.2}", pl.speedup),
        ]);
    }
    println!("{t}");
    let p = &r.per_packet;
    let mut t = Table::new();
    t.set_header(vec!["per packet", "1 rule", &format!("{} rules", p.many.rules), "ratio"]);
    t.add_row(vec![
        "from_container ns/run (median of rounds)".to_owned(),
        format!("{:.0}", p.one.from_container_ns),
        format!("{:.0}", p.many.from_container_ns),
        format!("{:.2}", p.ratio),
    ]);
    t.add_row(vec![
        "to_container ns/run".to_owned(),
        format!("{:.0}", p.one.to_container_ns),
        format!("{:.0}", p.many.to_container_ns),
        String::new(),
    ]);
    t.add_row(vec![
        "UDP RR p50 / p99 (us)".to_owned(),
        format!("{:.1} / {:.1}", p.one.rtt_p50_us, p.one.rtt_p99_us),
        format!("{:.1} / {:.1}", p.many.rtt_p50_us, p.many.rtt_p99_us),
        String::new(),
    ]);
    t.add_row(vec!["lost round trips".to_owned(), p.one.lost.to_string(), p.many.lost.to_string(), String::new()]);
    t.add_row(vec![
        "policy apply (median ms)".to_owned(),
        format!("{:.1}", p.one.apply_ms),
        format!("{:.1}", p.many.apply_ms),
        String::new(),
    ]);
    println!("{t}");
    println!("{} rounds x {} round trips, interleaved (A B / B A)", p.rounds, p.round_trips_per_round);
    let mut t = Table::new();
    t.set_header(vec!["agent RSS", "KiB"]);
    t.add_row(vec!["2 endpoints".to_owned(), r.rss_kib_two_endpoints.to_string()]);
    t.add_row(vec![format!("{} endpoints", a.endpoints_selected), r.rss_kib_endpoints.to_string()]);
    t.add_row(vec![
        format!("{} endpoints + {} rules", a.endpoints_selected, p.many.rules),
        r.rss_kib_endpoints_and_rules.to_string(),
    ]);
    t.add_row(vec!["goal (issue 4)".to_owned(), r.rss_goal_kib.to_string()]);
    println!("{t}");
    println!("bulk endpoints set up in {:.1} s", r.setup_bulk_endpoints_s);
}
