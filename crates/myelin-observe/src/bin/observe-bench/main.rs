//! Benchmark of the durable flow history (not a test: it reports figures).
//!
//! ```text
//! observe-bench [--records N] [--block-records N] [--dir PATH] [--repeat N] [--only QUERY-NAME-PART]
//! observe-bench --write-until-killed DIR     (helper of the SIGKILL test: appends and reports flushed seqs)
//! observe-bench pipeline [--rates 250000,500000,1000000,1500000] [--rounds 3] [--seconds 3]   (root)
//! ```
//!
//! `pipeline` measures the whole ingest path with events from the kernel (see pipeline.rs).
//!
//! One run prints: append throughput (History::append on one thread, and
//! through the writer thread paced at 1,000,000 flows/s), bytes per stored
//! flow on disk, and filtered queries over everything stored, with and
//! without block hints. The workload is synthetic but shaped like a busy
//! node at Cilium's `medium` monitor aggregation (see `Workload`).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use myelin_observe::dict::{Dictionary, EndpointDesc};
use myelin_observe::history::{BlockHint, HintClause, History, HistoryConfig, HistoryWriter, Query, WriterConfig};
use myelin_observe::pipeline::Sink;
use myelin_observe::record::{flags, point, tcp, verdict, FlowRecord};

mod pipeline;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

use myelin_observe::testing::SplitMix64 as Rng;

/// One side of a flow.
#[derive(Clone, Copy)]
struct Peer {
    ep: u32,
    identity: u32,
    ip: u32,
    /// Index of the local pod (None: remote pod or world).
    local: Option<u32>,
    /// Node address when on another node.
    node: u32,
}

/// A connection in progress: its script of events and how far it got.
struct Conn {
    client: Peer,
    server: Peer,
    proto: u8,
    sport: u16,
    dport: u16,
    rule: u32,
    denied: bool,
    step: u8,
}

/// The synthetic cluster. 300 pods (60 on this node), 75 identities (deployments of about four
/// pods), 30 server deployments on well-known ports, 20 world addresses behind `reserved:world`,
/// the host. 4,096 connections are open at any time; each step takes the next event of a random
/// one, so connections interleave as on a real node. Per connection, at `medium` aggregation
/// (first packet, TCP flag changes, every drop): allowed TCP 81 % (policy verdict, SYN, SYN-ACK,
/// ACK with the handshake latency, PSH-ACK each way, FIN-ACK each way, last ACK), denied TCP 2 %
/// (policy verdict deny, three dropped SYNs, reason 133), DNS over UDP to the DNS pods 15 %
/// (verdict, query, answer), ICMP echo 2 %. Ephemeral ports are random, lengths follow the packet
/// kind, 70 % of peers are on other nodes (tunnel), time advances 1-2,000 ns per flow (1 M/s).
struct Workload {
    rng: Rng,
    pods: Vec<Peer>,
    world: Vec<Peer>,
    conns: Vec<Conn>,
    time: u64,
    seq: u64,
}

const LOCAL_PODS: u32 = 60;
const PODS: u32 = 300;
const SERVICES: u32 = 30;
const PORTS: [u16; 10] = [80, 443, 8080, 8443, 5432, 6379, 9090, 3000, 27017, 9092];
const DNS_DEPLOYMENT: u32 = 74;

impl Workload {
    fn new(seed: u64, start_ns: u64) -> Self {
        let mut rng = Rng(seed);
        let pods = (0..PODS)
            .map(|i| {
                let node = if i < LOCAL_PODS { 0 } else { 1 + i % 4 };
                Peer {
                    ep: i + 1,
                    identity: 256 + i / 4,
                    ip: 0x0a00_0000 | (node << 8) | (i % 250 + 2),
                    local: (i < LOCAL_PODS).then_some(i),
                    node: if node == 0 { 0 } else { 0xc0a8_0000 | node },
                }
            })
            .collect();
        let world = (0..20)
            .map(|i| Peer {
                ep: PODS + 1 + i,
                identity: 2,
                ip: (rng.next() as u32) | 0x0100_0000,
                local: None,
                node: 0,
            })
            .collect();
        let mut w = Self { rng, pods, world, conns: Vec::new(), time: start_ns, seq: 0 };
        for _ in 0..4096 {
            let c = w.new_conn();
            w.conns.push(c);
        }
        w
    }

    /// Entries of the dictionary, ids 1..
    fn dictionary(&self) -> Vec<EndpointDesc> {
        let mut out: Vec<EndpointDesc> = self
            .pods
            .iter()
            .map(|p| {
                let dep = p.identity - 256;
                EndpointDesc {
                    endpoint_id: p.local.map_or(0, |l| l + 100),
                    identity: p.identity,
                    cluster: "default".into(),
                    namespace: format!("ns-{}", dep % 12),
                    pod_name: format!("app-{dep}-{:05x}", p.ep * 7919),
                    labels: vec![
                        format!("k8s:app=app-{dep}"),
                        format!("k8s:io.kubernetes.pod.namespace=ns-{}", dep % 12),
                    ],
                    workload: Some((format!("app-{dep}"), "Deployment".into())),
                    node: format!("node-{}", p.node & 0xff),
                }
            })
            .collect();
        out.extend(self.world.iter().map(|w| EndpointDesc {
            identity: 2,
            labels: vec![format!("cidr:{}/32", std::net::Ipv4Addr::from(w.ip)), "reserved:world".into()],
            ..EndpointDesc::default()
        }));
        out
    }

    fn pod(&mut self, local: bool) -> Peer {
        let i = if local { self.rng.below(u64::from(LOCAL_PODS)) } else { self.rng.below(u64::from(PODS)) };
        self.pods[i as usize]
    }

    fn new_conn(&mut self) -> Conn {
        let kind = self.rng.below(100);
        // One side is on this node.
        let local_client = self.rng.below(2) == 0;
        let client = self.pod(local_client);
        let (server, proto, dport, rule) = if kind < 15 {
            let dns = self.pods[(DNS_DEPLOYMENT * 4 % PODS) as usize];
            (if local_client { dns } else { self.pod(true) }, 17, 53, 31)
        } else if kind < 17 {
            (self.world[self.rng.below(20) as usize], 1, 0, 0)
        } else if kind < 22 && local_client {
            (self.world[self.rng.below(20) as usize], 6, 443, 32)
        } else {
            let svc = self.rng.below(u64::from(SERVICES)) as u32;
            let mut s = self.pods[((svc * 10 + self.rng.below(4) as u32) % PODS) as usize];
            if !local_client && s.local.is_none() {
                s = self.pod(true);
            }
            (s, 6, PORTS[(svc % 10) as usize], 1 + svc)
        };
        let denied = proto == 6 && self.rng.below(100) < 2;
        Conn { client, server, proto, sport: 32768 + self.rng.below(28232) as u16, dport, rule, denied, step: 0 }
    }

    /// The next flow event.
    fn next(&mut self) -> FlowRecord {
        let ci = self.rng.below(self.conns.len() as u64) as usize;
        self.time += 1 + self.rng.below(2000);
        self.seq += 1;
        let mut c = std::mem::replace(
            &mut self.conns[ci],
            Conn {
                client: self.pods[0],
                server: self.pods[0],
                proto: 0,
                sport: 0,
                dport: 0,
                rule: 0,
                denied: false,
                step: 0,
            },
        );
        let (r, done) = self.event(&c);
        c.step += 1;
        self.conns[ci] = if done { self.new_conn() } else { c };
        r
    }

    fn event(&mut self, c: &Conn) -> (FlowRecord, bool) {
        // (reply, tcp flags, length, policy verdict event, drop)
        let (reply, tflags, len, pv, drop, last) = match (c.proto, c.denied, c.step) {
            (6, true, 0) => (false, tcp::SYN, 74, true, true, false),
            (6, true, s) => (false, tcp::SYN, 74, false, true, s == 3),
            (6, false, 0) => (false, tcp::SYN, 74, true, false, false),
            (6, false, 1) => (false, tcp::SYN, 74, false, false, false),
            (6, false, 2) => (true, tcp::SYN | tcp::ACK, 74, false, false, false),
            (6, false, 3) => (false, tcp::ACK, 66, false, false, false),
            (6, false, 4) => (false, tcp::PSH | tcp::ACK, 66 + 100 + self.rng.below(600) as u32, false, false, false),
            (6, false, 5) => (true, tcp::PSH | tcp::ACK, 66 + 200 + self.rng.below(1248) as u32, false, false, false),
            (6, false, 6) => (false, tcp::FIN | tcp::ACK, 66, false, false, false),
            (6, false, 7) => (true, tcp::FIN | tcp::ACK, 66, false, false, false),
            (6, false, _) => (false, tcp::ACK, 66, false, false, true),
            (17, _, 0) => (false, 0, 70 + self.rng.below(30) as u32, true, false, false),
            (17, _, 1) => (false, 0, 70 + self.rng.below(30) as u32, false, false, false),
            (17, _, _) => (true, 0, 100 + self.rng.below(200) as u32, false, false, true),
            (_, _, 0) => (false, 0, 98, false, false, false),
            _ => (true, 0, 98, false, false, true),
        };
        let (src, dst, sport, dport) =
            if reply { (c.server, c.client, c.dport, c.sport) } else { (c.client, c.server, c.sport, c.dport) };
        // Observed where the local side is: leaving it (from-endpoint) or entering it (to-endpoint).
        let (obs, local, dir) = match (src.local, dst.local) {
            (_, Some(l)) => (point::TO_ENDPOINT, l, 1),
            (Some(l), None) => (point::FROM_ENDPOINT, l, 2),
            (None, None) => (point::TO_STACK, 0, 0),
        };
        let remote = if obs == point::TO_ENDPOINT { src } else { dst };
        let pod_mac = 0x0a58_0a00_0000 | u64::from(local);
        let gw_mac = 0x0a58_0a00_00ff;
        let icmp = c.proto == 1;
        let mut r = FlowRecord {
            time_ns: self.time,
            seq: self.seq,
            src_ip: u128::from(src.ip),
            dst_ip: u128::from(dst.ip),
            ip_version: 4,
            protocol: c.proto,
            src_port: if icmp { 0 } else { sport },
            dst_port: if icmp { 0 } else { dport },
            tcp_flags: tflags,
            icmp_type: if icmp {
                if reply {
                    0
                } else {
                    8
                }
            } else {
                0
            },
            event_type: 4,
            verdict: verdict::FORWARDED,
            traffic_direction: dir,
            obs_point: obs,
            trace_reason: if reply {
                3
            } else if c.step == 0 || c.step == 1 {
                1
            } else {
                2
            },
            flags: flags::REPLY_KNOWN | if reply { flags::REPLY } else { 0 },
            src_identity: src.identity,
            dst_identity: dst.identity,
            src_ep: src.ep,
            dst_ep: dst.ep,
            ifindex: 1000 + local,
            orig_len: len,
            endpoint_id: 100 + local,
            eth_src: if obs == point::TO_ENDPOINT { gw_mac } else { pod_mac },
            eth_dst: if obs == point::TO_ENDPOINT { pod_mac } else { gw_mac },
            ..FlowRecord::default()
        };
        if remote.node != 0 {
            r.tunnel_remote = remote.node;
            r.flags |= flags::TUNNEL;
        }
        if pv {
            r.event_type = 5; // policy verdict
            r.obs_point = 0;
            r.policy_verdict = if drop { 2 } else { 1 };
            r.match_type = 2;
            r.rule_id = c.rule;
            r.verdict = if drop { verdict::DROPPED } else { verdict::FORWARDED };
            r.drop_reason = if drop { 133 } else { 0 };
        } else if drop {
            r.event_type = 1;
            r.sub_type = 133;
            r.obs_point = 0;
            r.verdict = verdict::DROPPED;
            r.drop_reason = 133;
            r.rule_id = c.rule;
        }
        if c.proto == 6 && !c.denied && c.step == 3 {
            r.handshake_us = 40 + self.rng.below(900) as u32;
            r.flags |= flags::HANDSHAKE;
        }
        (r, last)
    }
}

/// A directory removed at the end (also on error).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Seconds on a CPU of the thread named `name` (/proc schedstat: nanoseconds).
fn thread_cpu(name: &str) -> Option<f64> {
    for e in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return schedstat(&e.path().join("schedstat"));
        }
    }
    None
}

fn schedstat(p: &Path) -> Option<f64> {
    let s = std::fs::read_to_string(p).ok()?;
    let ns: f64 = s.split(' ').next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Seconds on a CPU of the calling thread. The machine is shared: wall time alone
/// says as much about the neighbours as about the code.
fn my_cpu() -> f64 {
    schedstat(Path::new("/proc/thread-self/schedstat")).unwrap_or(0.0)
}

/// Seconds on a CPU of the whole process, threads that ended included (10 ms ticks).
fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return 0.0 };
    let f: Vec<&str> = rest.split(' ').collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Args {
    records: u64,
    block_records: usize,
    dir: Option<PathBuf>,
    /// Runs of each query (the median is reported).
    repeat: usize,
    /// Run only the queries whose name contains this (for profiling).
    only: Option<String>,
}

fn parse_args() -> Result<Option<Args>> {
    let mut a = Args {
        records: 10_000_000,
        block_records: HistoryConfig::default().block_records,
        dir: None,
        repeat: 3,
        only: None,
    };
    let mut it = std::env::args().skip(1).peekable();
    if it.peek().map(String::as_str) == Some("pipeline") {
        it.next();
        let mut p =
            pipeline::PipelineArgs { rates: vec![250_000, 500_000, 1_000_000, 1_500_000], rounds: 3, seconds: 3.0 };
        while let Some(arg) = it.next() {
            let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--rates" => {
                    p.rates = val("--rates")?
                        .split(',')
                        .map(|r| r.trim().parse::<u64>().map_err(|e| format!("--rates {r:?}: {e}")))
                        .collect::<std::result::Result<_, _>>()?;
                }
                "--rounds" => p.rounds = val("--rounds")?.parse().map_err(|e| format!("--rounds: {e}"))?,
                "--seconds" => p.seconds = val("--seconds")?.parse().map_err(|e| format!("--seconds: {e}"))?,
                other => return Err(format!("pipeline: unknown argument {other:?}").into()),
            }
        }
        pipeline::run(&p)?;
        return Ok(None);
    }
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--records" => a.records = val("--records")?.parse().map_err(|e| format!("--records: {e}"))?,
            "--block-records" => {
                a.block_records = val("--block-records")?.parse().map_err(|e| format!("--block-records: {e}"))?;
            }
            "--dir" => a.dir = Some(PathBuf::from(val("--dir")?)),
            "--repeat" => a.repeat = val("--repeat")?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--only" => a.only = Some(val("--only")?),
            "--write-until-killed" => {
                write_until_killed(Path::new(&val("--write-until-killed")?))?;
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?} (see the top of observe-bench.rs)").into()),
        }
    }
    Ok(Some(a))
}

/// Helper of the SIGKILL test: append flows (time = now), flush every 2,000, and print
/// `flushed SEQ` after each flush, until killed.
fn write_until_killed(dir: &Path) -> Result<()> {
    use std::io::Write;
    let h = History::open(dir, HistoryConfig { max_bytes: 64 << 20, block_records: 512, ..HistoryConfig::default() })?;
    let dict = Dictionary::new();
    dict.restore(h.dict_entries()?);
    let mut w = Workload::new(h.last_seq() + 7, myelin_observe::history::now_ns());
    w.seq = h.last_seq();
    for d in w.dictionary() {
        dict.intern(d);
    }
    h.sync_dict(&dict.view())?;
    let mut out = std::io::stdout().lock();
    loop {
        let batch: Vec<FlowRecord> = (0..2000).map(|_| w.next()).collect();
        h.append(&batch)?;
        h.flush()?;
        writeln!(out, "flushed {}", w.seq)?;
        out.flush()?;
        w.time = w.time.max(myelin_observe::history::now_ns());
    }
}

fn main() -> Result<()> {
    // The agent's allocator setting (one arena), so the consumer threads measured here
    // allocate as they do in the agent.
    let _ = myelin_bpf::use_one_allocator_arena();
    let Some(args) = parse_args()? else { return Ok(()) };
    let dir =
        args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("observe-bench-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir);
    let _guard = TempDir(dir.clone());
    let n = args.records;
    let cfg = HistoryConfig {
        max_bytes: 64 << 30,
        max_age: Duration::from_secs(30 * 24 * 3600),
        block_records: args.block_records,
        ..HistoryConfig::default()
    };
    println!("observe-bench: {n} flows, {} records per block, {}", args.block_records, dir.display());

    // The workload, generated before timing anything.
    let start_ns = myelin_observe::history::now_ns() - n * 1000 - 3_600_000_000_000;
    let t = Instant::now();
    let mut wl = Workload::new(42, start_ns);
    let dict_entries = wl.dictionary();
    let records: Vec<FlowRecord> = (0..n).map(|_| wl.next()).collect();
    let drops = records.iter().filter(|r| r.verdict == verdict::DROPPED).count();
    println!(
        "workload: generated in {:.2} s; {:.1} % dropped, {:.1} % TCP, {:.1} % UDP, span {:.1} s of flow time",
        t.elapsed().as_secs_f64(),
        100.0 * drops as f64 / n as f64,
        100.0 * records.iter().filter(|r| r.protocol == 6).count() as f64 / n as f64,
        100.0 * records.iter().filter(|r| r.protocol == 17).count() as f64 / n as f64,
        (records[records.len() - 1].time_ns - records[0].time_ns) as f64 / 1e9
    );

    // (1) Append throughput, one thread, batches of 4,096 as the ingest thread hands them over.
    let h = History::open(&dir, cfg.clone())?;
    for (i, d) in dict_entries.iter().enumerate() {
        h.put_dict(i as u32 + 1, d)?;
    }
    let t = Instant::now();
    let c = my_cpu();
    for b in records.chunks(4096) {
        h.append(b)?;
    }
    h.flush()?;
    let append = t.elapsed();
    let cpu = my_cpu() - c;
    println!(
        "(1) append: {} flows in {:.2} s ({:.2} s on CPU) = {:.0} flows/s on one thread, {:.0} per CPU second ({:.0} ns of CPU per flow)",
        n,
        append.as_secs_f64(),
        cpu,
        n as f64 / append.as_secs_f64(),
        n as f64 / cpu,
        cpu * 1e9 / n as f64
    );

    // (2) Bytes per stored flow.
    let s = h.stats()?;
    let disk = dir_bytes(&dir);
    println!(
        "(2) disk: {} bytes for {} flows = {:.2} bytes per flow (segments alone {:.2}; {} blocks, {} segments; goal <= 32)",
        disk,
        s.records,
        disk as f64 / s.records as f64,
        s.segment_bytes as f64 / s.records as f64,
        s.blocks,
        s.segments
    );

    // (3) and (4) Queries over everything stored.
    let pod = 7u32; // a local pod
    let pod_dropped = |r: &FlowRecord| (r.src_ep == pod || r.dst_ep == pod) && r.verdict == verdict::DROPPED;
    let hint_dropped = BlockHint {
        any_of: vec![HintClause {
            either_ep: Some(vec![pod]),
            verdict: Some(vec![verdict::DROPPED]),
            ..HintClause::default()
        }],
    };
    let hint_pod = BlockHint { any_of: vec![HintClause { either_ep: Some(vec![pod]), ..HintClause::default() }] };
    let run = |name: &str, q: Query, pred: &dyn Fn(&FlowRecord) -> bool| -> Result<usize> {
        if args.only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            return Ok(0);
        }
        let mut times = Vec::new();
        let mut cpus = Vec::new();
        let mut found = 0;
        let mut stats = None;
        for _ in 0..args.repeat.max(1) {
            let t = Instant::now();
            let c = process_cpu();
            let (got, st) = h.query_with_stats(&q, &mut |r| pred(r))?;
            cpus.push(Duration::from_secs_f64(process_cpu() - c));
            times.push(t.elapsed());
            found = got.len();
            stats = Some(st);
        }
        let st = stats.unwrap_or_default();
        println!(
            "    {name}: {found} flows in {:.3} s, {:.2} s on CPU in all threads (median of {}; {} blocks decoded, {} skipped by time, {} by hint, {} records tested)",
            median(times).as_secs_f64(),
            median(cpus).as_secs_f64(),
            args.repeat.max(1),
            st.blocks_decoded,
            st.blocks_skipped_time,
            st.blocks_skipped_hint,
            st.records_tested
        );
        Ok(found)
    };
    println!("(3) queries over {} stored flows, with block hints (goal < 1 s):", s.records);
    let a = run(
        "pod 7, dropped, whole range (hinted)",
        Query { hint: Some(hint_dropped.clone()), ..Query::default() },
        &pod_dropped,
    )?;
    let pod_any = |r: &FlowRecord| r.src_ep == pod || r.dst_ep == pod;
    let last = Query { newest_first: true, limit: Some(100), hint: Some(hint_pod.clone()), ..Query::default() };
    let b = run("pod 7, --last 100", last.clone(), &pod_any)?;
    let mid = records[records.len() / 2].time_ns;
    let since = Query {
        since_ns: Some(mid),
        until_ns: Some(mid + 1_000_000_000),
        hint: Some(hint_dropped),
        ..Query::default()
    };
    run("pod 7, dropped, --since/--until a 1 s window", since, &pod_dropped)?;
    println!("(4) the same without block hints:");
    let a2 = run("pod 7, dropped, whole range", Query::default(), &pod_dropped)?;
    let b2 = run("pod 7, --last 100", Query { hint: None, ..last }, &pod_any)?;
    if args.only.is_none() && (a != a2 || b != b2) {
        return Err(format!("hinted and plain queries disagree: {a} vs {a2}, {b} vs {b2}").into());
    }
    let all_dropped = |r: &FlowRecord| r.verdict == verdict::DROPPED && r.dst_port == 5432;
    run("all dropped to port 5432 (no hint possible on ports)", Query::default(), &all_dropped)?;

    // (5) What GetFlows does: Hubble FlowFilters compiled by the server's filter code
    // (`--pod NS/POD --verdict DROPPED`) over everything stored, through FlowStore.
    let desc = &dict_entries[pod as usize - 1];
    let pod_name = format!("{}/{}", desc.namespace, desc.pod_name);
    let dict = Dictionary::new();
    dict.restore(dict_entries.clone());
    let view = dict.view();
    let ff = |src: bool| myelin_observe::proto::flow::FlowFilter {
        source_pod: if src { vec![pod_name.clone()] } else { vec![] },
        destination_pod: if src { vec![] } else { vec![pod_name.clone()] },
        verdict: vec![myelin_observe::proto::flow::Verdict::Dropped as i32],
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..args.repeat.max(1) {
        let mut m = myelin_observe::filter::compile_matcher(&[ff(true), ff(false)], &[])?;
        let t = Instant::now();
        let got = myelin_observe::server::FlowStore::query(&h, None, None, false, None, &mut |r| m(r, &view, "node"))?;
        times.push(t.elapsed());
        found = got.len();
    }
    if args.only.is_none() && found != a {
        return Err(format!("the GetFlows path found {found} flows, the direct query {a}").into());
    }
    println!(
        "(5) GetFlows path (--pod {pod_name} --verdict DROPPED as FlowFilters, no hint): {found} flows in {:.3} s \
         (median of {}; goal < 1 s)",
        median(times).as_secs_f64(),
        args.repeat.max(1)
    );
    drop(h);

    // Reopen: what a restart costs.
    let t = Instant::now();
    let h = Arc::new(History::open(&dir, cfg.clone())?);
    println!("reopen: {:.3} s, last_seq {}", t.elapsed().as_secs_f64(), h.last_seq());

    // (1b) Through the writer thread, paced at 1,000,000 flows/s for 5 s.
    let dict = Dictionary::new();
    dict.restore(h.dict_entries()?);
    let cpu0 = thread_cpu("flow-history");
    let mut writer = HistoryWriter::spawn(h.clone(), dict, WriterConfig::default())?;
    let stats = writer.stats();
    let cpu_before = thread_cpu("flow-history").or(cpu0).unwrap_or(0.0);
    let rate = 1_000_000u64;
    let secs = 5u64;
    let mut wl = Workload::new(43, records[records.len() - 1].time_ns + 1);
    wl.seq = h.last_seq();
    let paced: Vec<FlowRecord> = (0..rate * secs).map(|_| wl.next()).collect();
    let t = Instant::now();
    // Batches of 20,000 every 20 ms (the ingest thread's poll interval).
    for (i, b) in paced.chunks(20_000).enumerate() {
        let due = Duration::from_millis(20 * i as u64);
        if let Some(wait) = due.checked_sub(t.elapsed()) {
            std::thread::sleep(wait);
        }
        writer.batch(b);
    }
    let fed = t.elapsed();
    let cpu_after = thread_cpu("flow-history").unwrap_or(cpu_before);
    drop(writer);
    let total = t.elapsed();
    let dropped = stats.dropped_queue.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "(1b) writer thread at {rate} flows/s for {secs} s: fed in {:.2} s, drained in {:.2} s, {} dropped, \
         writer CPU {:.2} s = {:.0} % of a core",
        fed.as_secs_f64(),
        total.as_secs_f64(),
        dropped,
        cpu_after - cpu_before,
        100.0 * (cpu_after - cpu_before) / fed.as_secs_f64()
    );
    Ok(())
}
