//! `observe-bench pipeline`: flow events made by the real datapath in the
//! kernel, through the real ring buffer, decode, enrichment, the in-memory
//! ring and the durable history, at fixed offered rates (root, bpffs).
//!
//! ```text
//!  producer thread: BPF_PROG_TEST_RUN of from_container (lxc object), `rate/1000`
//!      runs every millisecond on 256 different TCP SYN frames whose sources are no
//!      endpoint -> the datapath drops each (reason 132) and emits a drop event with
//!      128 captured bytes into the `events` ring buffer
//!  [flow-ingest] EventReader -> Ingest (decode, directory, dictionary) -> Ring
//!  [flow-history] HistoryWriter -> History (blocks, LZ4, segment files)
//! ```
//!
//! A round offers one rate for a few seconds, then waits for the pipeline to
//! drain. It counts events the kernel produced, events it could not queue
//! (ring buffer full), records the observer saw and records the history writer
//! had to drop, and the CPU time of the two consumer threads. "Sustained
//! without loss" means every round at that rate lost nothing anywhere.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use myelin_bpf::{Datapath, EventSettings, LoadOptions, MonitorAggregation};
use myelin_observe::dict::{Dictionary, EndpointDesc};
use myelin_observe::directory::{Directory, PolicyName};
use myelin_observe::history::{History, HistoryConfig, HistoryWriter, WriterConfig};
use myelin_observe::pipeline::{self, PipelineConfig, Sink};

use super::{thread_cpu, Result, TempDir};

pub struct PipelineArgs {
    /// Offered rates (events per second).
    pub rates: Vec<u64>,
    pub rounds: usize,
    pub seconds: f64,
}

/// Names for the synthetic addresses: 10.99.0.x are local pods, the rest world.
struct BenchDirectory;

impl Directory for BenchDirectory {
    fn generation(&self) -> u64 {
        0
    }
    fn endpoint_by_ip(&self, ip: IpAddr) -> Option<EndpointDesc> {
        let IpAddr::V4(v4) = ip else { return None };
        let o = v4.octets();
        (o[0] == 10 && o[1] == 99 && o[2] == 0).then(|| EndpointDesc {
            endpoint_id: u32::from(o[3]) + 1,
            identity: 1000 + u32::from(o[3]) / 4,
            cluster: "default".into(),
            namespace: format!("ns{}", o[3] % 8),
            pod_name: format!("pod-{}", o[3]),
            labels: vec![format!("k8s:app=app{}", o[3] / 4)],
            workload: Some((format!("app{}", o[3] / 4), "App".into())),
            node: "bench".into(),
        })
    }
    fn identity_labels(&self, identity: u32) -> Vec<String> {
        vec![format!("k8s:app=app{}", identity.saturating_sub(1000))]
    }
    fn rule(&self, _rule_id: u32) -> Option<PolicyName> {
        None
    }
    fn node_name(&self) -> String {
        "bench".into()
    }
    fn ifname(&self, _ifindex: u32) -> Option<String> {
        Some("lo".into())
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + TCP SYN frame from 10.99.0.`i` to 10.99.1.`j`.
fn syn_frame(i: u8, j: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(74);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, i, 0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 99, 0, i, 10, 99, 1, j];
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let sport = 10_000u16 + u16::from(i);
    let mut tcp = Vec::with_capacity(40);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&80u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(&[2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7]);
    f.extend_from_slice(&tcp);
    f
}

/// The pin directory of the bench's datapath, removed at the end.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = myelin_bpf::remove_pin_dir(&self.0);
    }
}

struct Round {
    offered: u64,
    produced: u64,
    secs: f64,
    seen: u64,
    lost_kernel: u64,
    dropped_history: u64,
    cpu_ingest: f64,
    cpu_history: f64,
}

impl Round {
    fn rate(&self) -> f64 {
        self.produced as f64 / self.secs
    }
    fn lost(&self) -> u64 {
        self.lost_kernel + self.dropped_history + self.produced.saturating_sub(self.seen)
    }
    /// Consumer CPU (ingest + history threads) as a fraction of a core per 100,000 events/s.
    fn cpu_per_100k(&self) -> f64 {
        let cores = (self.cpu_ingest + self.cpu_history) / self.secs;
        cores / (self.rate() / 100_000.0)
    }
}

fn lost_kernel(dp: &Datapath) -> Result<u64> {
    Ok(dp.events_lost()?.iter().sum())
}

pub fn run(args: &PipelineArgs) -> Result<()> {
    if !nix_is_root() {
        return Err("observe-bench pipeline loads eBPF programs: run it as root".into());
    }
    myelin_bpf::ensure_bpffs(std::path::Path::new(myelin_bpf::BPFFS_ROOT))?;
    let pin = PinDir(PathBuf::from(myelin_bpf::BPFFS_ROOT).join(format!("myelin-obench-{}", std::process::id())));
    let dp = Datapath::load_with(
        &pin.0,
        &LoadOptions { objects: Some(vec![&myelin_bpf::objects::LXC]), ..Default::default() },
    )?;
    dp.set_event_settings(&EventSettings { aggregation: MonitorAggregation::Medium, ..EventSettings::default() })?;
    let capture = dp.event_settings()?.capture_len;

    let hist_dir = std::env::temp_dir().join(format!("observe-bench-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&hist_dir);
    let _hist_guard = TempDir(hist_dir.clone());
    let history = Arc::new(History::open(&hist_dir, HistoryConfig { max_bytes: 8 << 30, ..HistoryConfig::default() })?);
    let dict = Dictionary::new();
    let writer = HistoryWriter::spawn(history.clone(), dict.clone(), WriterConfig::default())?;
    let writer_stats = writer.stats();
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(writer)];
    let pc = PipelineConfig {
        pin_dir: pin.0.clone(),
        ring_capacity: 65_536,
        poll_interval: Duration::from_millis(20),
        first_seq: 1,
    };
    let observer = pipeline::start(&pc, Arc::new(BenchDirectory), dict, sinks)?;
    let frames: Vec<Vec<u8>> = (0..=255u8).map(|i| syn_frame(i, i.wrapping_mul(7))).collect();

    // Warm-up: the event really comes out, and the reader is running.
    let (ret, _) = myelin_bpf::testing::run_program(&dp, "from_container", &frames[0], 1)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while observer.stats.seen.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            return Err(format!("no event came out of the datapath (from_container returned {ret})").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "pipeline: events from the kernel's from_container (drop, reason 132, {capture} captured bytes) -> ring buffer -> \
         decode + enrichment -> ring -> history; {} rounds of {:.1} s per rate",
        args.rounds, args.seconds
    );
    println!(
        "{:>10} {:>22} {:>8} {:>26} {:>24}",
        "offered/s", "produced/s (min-max)", "lost", "consumer CPU (% of core)", "CPU per 100k/s (% core)"
    );
    let mut verdicts = Vec::new();
    for &rate in &args.rates {
        let mut rounds = Vec::new();
        for _ in 0..args.rounds {
            rounds.push(round(&dp, &observer, &frames, rate, args.seconds, &writer_stats)?);
        }
        let rates: Vec<f64> = rounds.iter().map(Round::rate).collect();
        let (lo, hi) = (rates.iter().copied().fold(f64::MAX, f64::min), rates.iter().copied().fold(0.0, f64::max));
        let lost: u64 = rounds.iter().map(Round::lost).sum();
        let cpu: Vec<f64> = rounds.iter().map(|r| 100.0 * (r.cpu_ingest + r.cpu_history) / r.secs).collect();
        let per: Vec<f64> = rounds.iter().map(|r| 100.0 * r.cpu_per_100k()).collect();
        let span = |v: &[f64]| {
            format!("{:.1}-{:.1}", v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max))
        };
        println!(
            "{:>10} {:>22} {:>8} {:>26} {:>24}",
            rate,
            format!("{:.0}-{:.0}", lo, hi),
            lost,
            span(&cpu),
            span(&per)
        );
        for r in &rounds {
            if r.lost() > 0 {
                println!(
                    "           round lost {}: kernel ring full {}, history queue {}, not seen {}",
                    r.lost(),
                    r.lost_kernel,
                    r.dropped_history,
                    r.produced.saturating_sub(r.seen)
                );
            }
        }
        verdicts.push((rate, lo, lost, rounds.iter().map(|r| r.offered).sum::<u64>()));
    }
    let best = verdicts.iter().filter(|(_, _, lost, _)| *lost == 0).map(|(_, lo, _, _)| *lo).fold(0.0, f64::max);
    let met = verdicts.iter().any(|(_, lo, lost, _)| *lost == 0 && *lo >= 1_000_000.0);
    println!(
        "goal: >= 1,000,000 events/s through decode, enrichment and storage without loss: {} \
         (highest rate every round of which delivered everything: {:.0}/s)",
        if met { "MET" } else { "NOT MET" },
        best
    );
    drop(observer);
    Ok(())
}

fn round(
    dp: &Datapath,
    observer: &pipeline::Observer,
    frames: &[Vec<u8>],
    rate: u64,
    seconds: f64,
    writer: &myelin_observe::history::WriterStats,
) -> Result<Round> {
    let seen0 = observer.stats.seen.load(Ordering::Relaxed);
    let lost0 = lost_kernel(dp)?;
    let dropped0 = writer.dropped_queue.load(Ordering::Relaxed);
    let (ci0, ch0) = (thread_cpu("flow-ingest").unwrap_or(0.0), thread_cpu("flow-history").unwrap_or(0.0));
    let per_ms = u32::try_from((rate / 1000).max(1))?;
    let ticks = (seconds * 1000.0) as u64;
    let t = Instant::now();
    let mut produced = 0u64;
    for tick in 0..ticks {
        let due = Duration::from_millis(tick);
        if let Some(wait) = due.checked_sub(t.elapsed()) {
            std::thread::sleep(wait);
        }
        let frame = &frames[(tick % frames.len() as u64) as usize];
        myelin_bpf::testing::run_program(dp, "from_container", frame, per_ms)?;
        produced += u64::from(per_ms);
    }
    let secs = t.elapsed().as_secs_f64();
    // Drain: everything produced was either seen or lost in the kernel.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = observer.stats.seen.load(Ordering::Relaxed) - seen0;
        let lost = lost_kernel(dp)? - lost0;
        if seen + lost >= produced || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The consumers' CPU is read once they are idle again.
    std::thread::sleep(Duration::from_millis(100));
    Ok(Round {
        offered: rate,
        produced,
        secs,
        seen: observer.stats.seen.load(Ordering::Relaxed) - seen0,
        lost_kernel: lost_kernel(dp)? - lost0,
        dropped_history: writer.dropped_queue.load(Ordering::Relaxed) - dropped0,
        cpu_ingest: thread_cpu("flow-ingest").unwrap_or(0.0) - ci0,
        cpu_history: thread_cpu("flow-history").unwrap_or(0.0) - ch0,
    })
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
