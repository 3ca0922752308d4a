//! `myelin perf --propagation`: how fast a new pod's address and identity reach the other
//! nodes of a cluster.
//!
//! ```text
//!  3-node lab (vxlan + etcd), node1 with a pod CIDR big enough for N pods
//!  main thread:    for i in 0..N: lab.add_pod(p<i> on node1, labels {app: perf-prop, perf-pod: p<i>})
//!                  (CNI ADD as the lab does it); t_added[i] = when it returned
//!  map poller:     every ~1 ms, for each pod not yet seen everywhere: look its /32 up in the
//!                  pinned ipcache of node1 (its identity), node2 and node3 (same identity?)
//!  label poller:   for each pod whose identity is known and not yet seen on node2:
//!                  GET node2 /v1/identities/<id>, labels carry perf-pod=p<i>?
//!  latency = first seen - t_added; p50/p90/p99/max per node; goal: p99 < 500 ms
//! ```
//! The lab is torn down when the run ends, fails or is interrupted.

use crate::error::{PerfError, Result};
use crate::report::{Goal, GoalStatus, Machine};
use crate::sys;
use crate::topo::Check;
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use myelin_api::{Client, IdentityInfo, Status};
use myelin_lab::{Lab, LabOptions, LabSpec, PodSpec};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The label every benchmark pod carries with its own value: one identity per pod.
pub const POD_LABEL: &str = "perf-pod";
/// The goal: a new pod is known on every other node within this, at p99.
pub const GOAL_P99_MS: f64 = 500.0;
/// Cluster identities start here (below are reserved ones).
const FIRST_CLUSTER_IDENTITY: u32 = 256;

/// Knobs of a propagation run.
#[derive(Clone)]
pub struct PropagationOptions {
    /// Pods to add on node1.
    pub pods: u32,
    /// Period of the map poller.
    pub poll_period: Duration,
    /// How long to wait after the last ADD for the stragglers.
    pub settle_timeout: Duration,
    pub bin_dir: Option<PathBuf>,
    pub cancel: Arc<AtomicBool>,
    pub progress: Option<crate::ProgressFn>,
}

impl Default for PropagationOptions {
    fn default() -> Self {
        Self {
            pods: 1000,
            poll_period: Duration::from_millis(1),
            settle_timeout: Duration::from_secs(30),
            bin_dir: None,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: None,
        }
    }
}

impl std::fmt::Debug for PropagationOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PropagationOptions")
            .field("pods", &self.pods)
            .field("poll_period", &self.poll_period)
            .field("settle_timeout", &self.settle_timeout)
            .finish_non_exhaustive()
    }
}

/// Everything one propagation run found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PropagationReport {
    /// Always "propagation" (tells this JSON from the datapath report's).
    pub benchmark: String,
    pub machine: Machine,
    pub settings: PropagationSettings,
    pub elapsed_seconds: f64,
    pub adds: AddStats,
    /// One row per thing measured (ipcache on node2, node3, both; labels on node2; node1 local).
    pub latencies: Vec<LatencyRow>,
    pub checks: Vec<Check>,
    pub goals: Vec<Goal>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PropagationSettings {
    pub pods: u32,
    pub nodes: u32,
    pub routing: String,
    pub kvstore: String,
    pub node1_pod_cidr: String,
    pub map_poll_period_ms: f64,
    pub settle_timeout_seconds: f64,
}

/// The ADDs on node1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddStats {
    pub added: u32,
    pub seconds: f64,
    /// Pods per second over the whole add phase.
    pub per_second: f64,
    /// How long one `add_pod` took (CNI ADD, endpoint lookup, the lab's state file), ms.
    pub add_ms: Quantiles,
}

/// Nearest-rank quantiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// None when there are no samples.
    #[must_use]
    pub fn of(samples_ms: &[f64]) -> Option<Quantiles> {
        let mut s: Vec<f64> = samples_ms.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let at = |q: f64| {
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
            s[rank - 1]
        };
        Some(Quantiles { count: s.len(), p50: at(0.5), p90: at(0.9), p99: at(0.99), max: s[s.len() - 1] })
    }
}

/// Latency from a pod's ADD returning on node1 to its first sighting somewhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyRow {
    pub id: String,
    pub what: String,
    /// Pods never seen there before the run ended.
    pub missing: usize,
    /// Pods already there at the first look after their ADD returned (latency below the poll period).
    pub at_first_look: usize,
    pub latency_ms: Option<Quantiles>,
}

/// One pod being watched.
#[derive(Debug, Clone)]
struct Track {
    ip: Ipv4Addr,
    value: String,
    added: Instant,
    identity: Option<u32>,
    local: Option<Instant>,
    /// node2, node3.
    remote: [Option<Instant>; 2],
    remote_first_look: [bool; 2],
    labels: Option<Instant>,
    label_first_look: bool,
    looked: bool,
}

impl Track {
    fn maps_done(&self) -> bool {
        self.remote.iter().all(Option::is_some)
    }
}

fn lock(t: &Mutex<Vec<Track>>) -> MutexGuard<'_, Vec<Track>> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lab, torn down on drop (also on error, panic or interruption).
struct LabGuard(Option<Lab>);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            let name = lab.name().to_owned();
            if lab.down().is_err() {
                let _ = Lab::down_by_name(&name);
            }
        }
    }
}

/// A pinned ipcache map, opened read-only in spirit: only lookups.
struct Ipcache {
    map: MapHandle,
}

impl Ipcache {
    fn open(pin_dir: &Path) -> Result<Ipcache> {
        let path = pin_dir.join("ipcache");
        let map = MapHandle::from_pinned_path(&path).map_err(|e| PerfError::Invalid {
            what: format!("opening the pinned ipcache {}", path.display()),
            message: e.to_string(),
        })?;
        Ok(Ipcache { map })
    }

    /// The identity of the longest prefix holding `ip`, if any.
    fn lookup(&self, ip: Ipv4Addr) -> Option<u32> {
        let v = self.map.lookup(&ipcache_key(ip), MapFlags::ANY).ok()??;
        Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
    }
}

/// `struct ipcache_key { __u32 prefixlen; __u32 ip4 /* network order */ }` for ip/32.
fn ipcache_key(ip: Ipv4Addr) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&32u32.to_ne_bytes());
    k[4..].copy_from_slice(&ip.octets());
    k
}

/// The smallest pod CIDR prefix length (at most /24) that holds `pods` pods plus the
/// network, gateway and broadcast addresses.
fn prefix_for(pods: u32) -> u8 {
    let need = u64::from(pods) + 3;
    let mut len: u8 = 24;
    while len > 12 && (1u64 << (32 - u32::from(len))) < need {
        len -= 1;
    }
    len
}

fn say(opts: &PropagationOptions, line: &str) {
    if let Some(p) = &opts.progress {
        p(line);
    }
}

fn cancelled(opts: &PropagationOptions) -> Result<()> {
    if opts.cancel.load(Ordering::Relaxed) {
        Err(PerfError::Interrupted)
    } else {
        Ok(())
    }
}

fn status(client: &Client, node: &str) -> Result<Status> {
    client.get("/v1/status").map_err(|source| PerfError::Api { what: format!("GET /v1/status of {node}"), source })
}

/// Run the propagation benchmark. Needs root, etcd and the myelin binaries.
pub fn run(opts: &PropagationOptions) -> Result<PropagationReport> {
    let started = Instant::now();
    if !nix::unistd::Uid::effective().is_root() {
        return Err(PerfError::Invalid {
            what: "myelin perf --propagation".into(),
            message: "builds a 3-node lab (namespaces, eBPF, etcd): run it as root".into(),
        });
    }
    if opts.pods == 0 || opts.pods > 8000 {
        return Err(PerfError::Invalid { what: "--pods".into(), message: format!("{} is not in 1..=8000", opts.pods) });
    }
    let (kernel, cpu_model, cpus) = sys::machine();
    let machine = Machine {
        kernel,
        cpu_model,
        cpus,
        loadavg_at_start: std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).unwrap_or_default(),
        iptables: sys::iptables_backend(),
    };
    let cidr = format!("10.240.0.0/{}", prefix_for(opts.pods));
    let yaml = format!(
        "nodes: [{{name: node1, podCIDR: {cidr}}}, {{name: node2, podCIDR: 10.250.2.0/24}}, \
         {{name: node3, podCIDR: 10.250.3.0/24}}]\nrouting: vxlan\nkvstore: etcd\nnamespaces: [{{name: default}}]\n"
    );
    let spec = LabSpec::from_yaml(&yaml, "propagation benchmark lab")?;
    let name = format!("pf{}prop", std::process::id() % 100_000);
    say(opts, &format!("building a 3-node lab {name} (vxlan, etcd; node1 pod CIDR {cidr})"));
    let lab = Lab::up(spec, &name, LabOptions { bin_dir: opts.bin_dir.clone(), ..LabOptions::default() })?;
    let mut guard = LabGuard(Some(lab));
    let result = measure(&mut guard, opts, &cidr);
    if let Some(lab) = &guard.0 {
        say(opts, &format!("tearing the lab down ({} pods)", lab.pods().len()));
    }
    drop(guard);
    let (adds, latencies, checks, notes) = result?;
    let goals = goals(&latencies);
    Ok(PropagationReport {
        benchmark: "propagation".into(),
        machine,
        settings: PropagationSettings {
            pods: opts.pods,
            nodes: 3,
            routing: "vxlan".into(),
            kvstore: "etcd".into(),
            node1_pod_cidr: cidr,
            map_poll_period_ms: opts.poll_period.as_secs_f64() * 1000.0,
            settle_timeout_seconds: opts.settle_timeout.as_secs_f64(),
        },
        elapsed_seconds: started.elapsed().as_secs_f64(),
        adds,
        latencies,
        checks,
        goals,
        notes,
    })
}

type Measured = (AddStats, Vec<LatencyRow>, Vec<Check>, Vec<String>);

fn measure(guard: &mut LabGuard, opts: &PropagationOptions, cidr: &str) -> Result<Measured> {
    let lab = guard.0.as_mut().ok_or_else(|| PerfError::Invalid { what: "lab".into(), message: "gone".into() })?;
    let nodes: Vec<_> = ["node1", "node2", "node3"].iter().map(|n| lab.node(n)).collect::<Result<_, _>>()?;
    let clients: Vec<Client> = nodes.iter().map(|n| Client::new(&n.agent_socket)).collect();
    let mut checks = Vec::new();

    // Every agent connected and aware of the two others before the first pod.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = Vec::new();
    for (n, c) in nodes.iter().zip(&clients) {
        loop {
            cancelled(opts)?;
            let cluster = status(c, &n.name)?.cluster.unwrap_or_default();
            if cluster.connected && cluster.nodes == 2 {
                before.push(format!("{}: connected, {} other nodes", n.name, cluster.nodes));
                break;
            }
            if Instant::now() > deadline {
                return Err(PerfError::Invalid {
                    what: format!("agent of {}", n.name),
                    message: format!("not connected to etcd with 2 other nodes within 30 s: {cluster:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    checks.push(Check {
        claim: "all three agents are connected to etcd and know each other".into(),
        evidence: before.join("; "),
        ok: true,
    });

    let maps: Vec<Ipcache> = nodes.iter().map(|n| Ipcache::open(&n.bpf_dir)).collect::<Result<_>>()?;
    let tracks: Arc<Mutex<Vec<Track>>> = Arc::new(Mutex::new(Vec::with_capacity(opts.pods as usize)));
    let stop = Arc::new(AtomicBool::new(false));
    let label_client = Client::new(&nodes[1].agent_socket).with_timeout(Duration::from_secs(2));

    let (add_ms, add_seconds, polls) = std::thread::scope(|s| -> Result<(Vec<f64>, f64, (u64, u64))> {
        let map_poller = {
            let (tracks, stop, maps) = (tracks.clone(), stop.clone(), &maps);
            let period = opts.poll_period;
            s.spawn(move || poll_maps(&tracks, &stop, maps, period))
        };
        let label_poller = {
            let (tracks, stop, client) = (tracks.clone(), stop.clone(), &label_client);
            s.spawn(move || poll_labels(&tracks, &stop, client))
        };
        let added = add_pods(lab, opts, &tracks);
        let settled = added.as_ref().ok().map(|_| settle(&tracks, opts));
        stop.store(true, Ordering::SeqCst);
        let map_polls = map_poller.join().unwrap_or(0);
        let label_polls = label_poller.join().unwrap_or(0);
        let (add_ms, add_seconds) = added?;
        if let Some(Err(e)) = settled {
            return Err(e);
        }
        Ok((add_ms, add_seconds, (map_polls, label_polls)))
    })?;

    let tracks = lock(&tracks).clone();
    let ms = |from: Instant, to: Option<Instant>| to.map(|t| t.saturating_duration_since(from).as_secs_f64() * 1000.0);
    let row = |id: &str, what: &str, seen: &dyn Fn(&Track) -> Option<Instant>, first: &dyn Fn(&Track) -> bool| {
        let lat: Vec<f64> = tracks.iter().filter_map(|t| ms(t.added, seen(t))).collect();
        LatencyRow {
            id: id.into(),
            what: what.into(),
            missing: tracks.len() - lat.len(),
            at_first_look: tracks.iter().filter(|t| seen(t).is_some() && first(t)).count(),
            latency_ms: Quantiles::of(&lat),
        }
    };
    let latencies = vec![
        row(
            "ipcache-all-remote",
            "address -> identity in the pinned ipcache of node2 AND node3 (the later of the two)",
            &|t| Some(t.remote[0]?.max(t.remote[1]?)),
            &|t| t.remote_first_look.iter().all(|b| *b),
        ),
        row("ipcache-node2", "address -> identity in node2's pinned ipcache", &|t| t.remote[0], &|t| {
            t.remote_first_look[0]
        }),
        row("ipcache-node3", "address -> identity in node3's pinned ipcache", &|t| t.remote[1], &|t| {
            t.remote_first_look[1]
        }),
        row(
            "identity-labels-node2",
            "the identity's labels known to node2's agent (GET /v1/identities/<id>)",
            &|t| t.labels,
            &|t| t.label_first_look,
        ),
        row("ipcache-node1-local", "(reference) the pod's own node1 ipcache entry", &|t| t.local, &|_| false),
    ];

    // After the run: the agents' own counts agree with what the maps showed.
    let mut after = Vec::new();
    let mut counts_ok = true;
    for (n, c) in nodes.iter().zip(&clients).skip(1) {
        let cluster = status(c, &n.name)?.cluster.unwrap_or_default();
        counts_ok &= cluster.remote_ips >= tracks.len() && cluster.identities >= tracks.len();
        after.push(format!("{}: remote_ips={}, identities={}", n.name, cluster.remote_ips, cluster.identities));
    }
    checks.push(Check {
        claim: format!("node2 and node3 know all {} pods and their identities (agent status)", tracks.len()),
        evidence: after.join("; "),
        ok: counts_ok,
    });
    let distinct: std::collections::BTreeSet<u32> = tracks.iter().filter_map(|t| t.identity).collect();
    checks.push(Check {
        claim: "every pod has an identity of its own (distinct label sets)".into(),
        evidence: format!(
            "{} pods, {} with a cluster identity in node1's ipcache, {} distinct",
            tracks.len(),
            tracks.iter().filter(|t| t.identity.is_some()).count(),
            distinct.len()
        ),
        ok: distinct.len() == tracks.len(),
    });

    #[allow(clippy::cast_possible_truncation)]
    let added = tracks.len() as u32;
    #[allow(clippy::cast_precision_loss)]
    let per_second = if add_seconds > 0.0 { f64::from(added) / add_seconds } else { f64::NAN };
    let adds = AddStats { added, seconds: add_seconds, per_second, add_ms: Quantiles::of(&add_ms).unwrap_or_default() };
    let notes = vec![
        format!(
            "pods are added one after another on node1 with Lab::add_pod, as `myelin lab` does (CNI ADD through myelin-cni, the endpoint looked up, the lab's state file rewritten): the ADD rate includes that bookkeeping; node1 pod CIDR {cidr}"
        ),
        format!(
            "latency = first sighting - the moment add_pod returned; the map poller looked each pending pod's /32 up in the three pinned ipcache maps every {:.1} ms ({} sweeps); the label poller asked node2's API per pending identity ({} sweeps), so label times include one API round trip",
            opts.poll_period.as_secs_f64() * 1000.0,
            polls.0,
            polls.1
        ),
        format!(
            "{} CPUs shared by etcd, three agents, the pollers and the ADDs: the numbers are for this machine under this load, not for a real cluster",
            sys::machine().2
        ),
    ];
    Ok((adds, latencies, checks, notes))
}

/// Add the pods one after another; returns each add's duration (ms) and the whole phase (s).
fn add_pods(lab: &mut Lab, opts: &PropagationOptions, tracks: &Mutex<Vec<Track>>) -> Result<(Vec<f64>, f64)> {
    let phase = Instant::now();
    let mut durations = Vec::with_capacity(opts.pods as usize);
    for i in 0..opts.pods {
        cancelled(opts)?;
        let value = format!("p{i}");
        let spec = PodSpec::new("default", &value, "node1", &[("app", "perf-prop"), (POD_LABEL, &value)]);
        let t0 = Instant::now();
        let info = lab.add_pod(spec)?;
        let added = Instant::now();
        durations.push(added.duration_since(t0).as_secs_f64() * 1000.0);
        let ip: Ipv4Addr = info.ip.as_deref().and_then(|s| s.parse().ok()).ok_or_else(|| PerfError::Invalid {
            what: format!("pod default/{value}"),
            message: "has no IPv4 address after its ADD".into(),
        })?;
        lock(tracks).push(Track {
            ip,
            value,
            added,
            identity: None,
            local: None,
            remote: [None, None],
            remote_first_look: [false, false],
            labels: None,
            label_first_look: false,
            looked: false,
        });
        if (i + 1) % 100 == 0 || i + 1 == opts.pods {
            #[allow(clippy::cast_precision_loss)]
            let rate = f64::from(i + 1) / phase.elapsed().as_secs_f64();
            say(opts, &format!("added {}/{} pods ({rate:.0}/s)", i + 1, opts.pods));
        }
    }
    Ok((durations, phase.elapsed().as_secs_f64()))
}

/// Wait until every pod was seen everywhere, or the settle timeout passes.
fn settle(tracks: &Mutex<Vec<Track>>, opts: &PropagationOptions) -> Result<()> {
    let deadline = Instant::now() + opts.settle_timeout;
    loop {
        cancelled(opts)?;
        let pending = lock(tracks).iter().filter(|t| !t.maps_done() || t.labels.is_none()).count();
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            say(
                opts,
                &format!("{pending} pod(s) not seen everywhere {} s after the last ADD", opts.settle_timeout.as_secs()),
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The map poller: returns how many sweeps it made.
fn poll_maps(tracks: &Mutex<Vec<Track>>, stop: &AtomicBool, maps: &[Ipcache], period: Duration) -> u64 {
    let mut sweeps = 0;
    let mut done_prefix = 0;
    while !stop.load(Ordering::Relaxed) {
        {
            let mut ts = lock(tracks);
            let now = Instant::now();
            for t in ts.iter_mut().skip(done_prefix) {
                if t.maps_done() {
                    continue;
                }
                let first = !t.looked;
                t.looked = true;
                if t.identity.is_none() {
                    if let Some(id) = maps[0].lookup(t.ip).filter(|id| *id >= FIRST_CLUSTER_IDENTITY) {
                        t.identity = Some(id);
                        t.local = Some(now);
                    }
                }
                for j in 0..2 {
                    if t.remote[j].is_none() && t.identity.is_some() && maps[j + 1].lookup(t.ip) == t.identity {
                        t.remote[j] = Some(now);
                        t.remote_first_look[j] = first;
                    }
                }
            }
            while done_prefix < ts.len() && ts[done_prefix].maps_done() {
                done_prefix += 1;
            }
        }
        sweeps += 1;
        std::thread::sleep(period);
    }
    sweeps
}

/// The label poller (node2's API): returns how many sweeps it made.
fn poll_labels(tracks: &Mutex<Vec<Track>>, stop: &AtomicBool, client: &Client) -> u64 {
    let mut sweeps = 0;
    let mut looked: std::collections::BTreeSet<usize> = std::collections::BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let pending: Vec<(usize, u32, String)> = lock(tracks)
            .iter()
            .enumerate()
            .filter(|(_, t)| t.labels.is_none())
            .filter_map(|(i, t)| Some((i, t.identity?, t.value.clone())))
            .collect();
        for (i, id, value) in pending {
            let info: std::result::Result<IdentityInfo, _> = client.get(&format!("/v1/identities/{id}"));
            let now = Instant::now();
            let first = looked.insert(i);
            if info.is_ok_and(|info| info.labels.get(POD_LABEL) == Some(&value)) {
                if let Some(t) = lock(tracks).get_mut(i) {
                    t.labels = Some(now);
                    t.label_first_look = first;
                }
            }
        }
        sweeps += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    sweeps
}

/// The goal on the slowest remote node's ipcache and on node2's labels: p99 < 500 ms and
/// nothing missing.
fn goals(rows: &[LatencyRow]) -> Vec<Goal> {
    let judge = |id: &str| -> (GoalStatus, String) {
        let Some(r) = rows.iter().find(|r| r.id == id) else {
            return (GoalStatus::NotMeasurableYet, "n/a".into());
        };
        let Some(q) = &r.latency_ms else { return (GoalStatus::NotMet, format!("never seen ({} missing)", r.missing)) };
        let ok = q.p99 < GOAL_P99_MS && r.missing == 0;
        let status = if ok { GoalStatus::Met } else { GoalStatus::NotMet };
        (
            status,
            format!(
                "p99 {:.1} ms (p50 {:.1}, p90 {:.1}, max {:.1}) over {} pods{}",
                q.p99,
                q.p50,
                q.p90,
                q.max,
                q.count,
                if r.missing > 0 { format!(", {} never seen", r.missing) } else { String::new() }
            ),
        )
    };
    let (s1, d1) = judge("ipcache-all-remote");
    let (s2, d2) = judge("identity-labels-node2");
    vec![
        Goal {
            id: "ipcache-propagation".into(),
            goal: format!(
                "A new pod's address and identity are in every other node's ipcache within {GOAL_P99_MS:.0} ms (p99)"
            ),
            status: s1,
            detail: d1,
        },
        Goal {
            id: "identity-propagation".into(),
            goal: format!("A new pod's identity labels are known to another node within {GOAL_P99_MS:.0} ms (p99)"),
            status: s2,
            detail: d2,
        },
    ]
}

/// The goals as a Markdown table (as [`crate::goals_markdown`]).
#[must_use]
pub fn goals_markdown(r: &PropagationReport) -> String {
    let mut s = String::from("| goal | status | where we stand |\n|---|---|---|\n");
    for g in &r.goals {
        let _ = writeln!(s, "| {} | {} | {} |", g.goal, g.status, g.detail.replace('|', "/"));
    }
    s
}

fn q_cell(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The report as tables for people.
#[must_use]
pub fn render(r: &PropagationReport) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "myelin perf --propagation: kernel {}, {} × {}, load at start {}\n{} pods on node1 of a {}-node lab ({}, kvstore {}; node1 pod CIDR {})",
        m.kernel,
        m.cpus,
        m.cpu_model,
        m.loadavg_at_start,
        r.settings.pods,
        r.settings.nodes,
        r.settings.routing,
        r.settings.kvstore,
        r.settings.node1_pod_cidr
    );
    let a = &r.adds;
    let _ = writeln!(
        s,
        "ADDs: {} pods in {:.1} s = {:.1} pods/s; one add_pod: p50 {} ms, p90 {}, p99 {}, max {}\n",
        a.added,
        a.seconds,
        a.per_second,
        q_cell(a.add_ms.p50),
        q_cell(a.add_ms.p90),
        q_cell(a.add_ms.p99),
        q_cell(a.add_ms.max)
    );
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic).set_header(vec![
        "ADD returned -> seen (ms)",
        "p50",
        "p90",
        "p99",
        "max",
        "seen",
        "missing",
        "at first look",
    ]);
    for row in &r.latencies {
        let mut cells = vec![format!("{}: {}", row.id, row.what)];
        match &row.latency_ms {
            Some(q) => cells.extend([q_cell(q.p50), q_cell(q.p90), q_cell(q.p99), q_cell(q.max), q.count.to_string()]),
            None => cells.extend(["n/a".into(), "n/a".into(), "n/a".into(), "n/a".into(), "0".into()]),
        }
        cells.push(row.missing.to_string());
        cells.push(row.at_first_look.to_string());
        t.add_row(cells);
    }
    let _ = writeln!(s, "{t}\n");
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["check", "evidence"]);
    for c in &r.checks {
        t.add_row(vec![format!("{} {}", if c.ok { "✓" } else { "✗" }, c.claim), c.evidence.clone()]);
    }
    let _ = writeln!(s, "{t}\n");
    crate::report::goals_notes_took(&mut s, &r.goals, &r.notes, r.elapsed_seconds);
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let q = Quantiles::of(&v).unwrap();
        assert_eq!((q.count, q.p50, q.p90, q.p99, q.max), (100, 50.0, 90.0, 99.0, 100.0));
        let q = Quantiles::of(&[3.0]).unwrap();
        assert_eq!((q.p50, q.p99, q.max), (3.0, 3.0, 3.0));
        assert!(Quantiles::of(&[]).is_none());
    }

    #[test]
    fn pod_cidr_fits_the_pods() {
        assert_eq!(prefix_for(20), 24);
        assert_eq!(prefix_for(253), 24);
        assert_eq!(prefix_for(254), 23);
        assert_eq!(prefix_for(1000), 22);
        assert_eq!(prefix_for(2045), 21);
        assert_eq!(prefix_for(2046), 20);
    }

    #[test]
    fn ipcache_key_is_prefixlen_then_network_order_address() {
        let k = ipcache_key(Ipv4Addr::new(10, 240, 0, 7));
        assert_eq!(&k[..4], &32u32.to_ne_bytes());
        assert_eq!(&k[4..], &[10, 240, 0, 7]);
    }

    #[test]
    fn goals_need_every_pod_and_a_fast_p99() {
        let row = |id: &str, lat: &[f64], missing: usize| LatencyRow {
            id: id.into(),
            what: String::new(),
            missing,
            at_first_look: 0,
            latency_ms: Quantiles::of(lat),
        };
        let g = goals(&[row("ipcache-all-remote", &[10.0, 20.0], 0), row("identity-labels-node2", &[10.0, 600.0], 0)]);
        assert_eq!((g[0].status, g[1].status), (GoalStatus::Met, GoalStatus::NotMet));
        let g = goals(&[row("ipcache-all-remote", &[10.0], 1), row("identity-labels-node2", &[], 2)]);
        assert_eq!((g[0].status, g[1].status), (GoalStatus::NotMet, GoalStatus::NotMet));
        assert!(g[0].detail.contains("1 never seen"), "{}", g[0].detail);
    }
}
