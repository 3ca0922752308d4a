//! The observer's ingest side: one thread reads the datapath's event ring,
//! turns events into records (decode + naming), publishes them to the
//! in-memory ring in batches, hands them to history and metrics, and keeps
//! the counters the Observer API reports.
//!
//! ```text
//!  BPF ring buffer --poll (batched wakeups, 20 ms timer)--> [ingest thread]
//!      Ingest::record (decode, dictionary) -> batch
//!      batch -> Ring::publish (snapshot; followers woken through a watch channel)
//!            -> sinks (history writer, metrics): each gets the batch, never blocks ingest
//!  kernel lost counters (per CPU) -> Stats::lost_kernel
//! ```

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use myelin_bpf::{EventReader, RawEvent};
use tracing::{info, warn};

use crate::dict::Dictionary;
use crate::directory::Directory;
use crate::ingest::Ingest;
use crate::record::FlowRecord;
use crate::ring::Ring;

/// Counters of the observer.
#[derive(Debug, Default)]
pub struct Stats {
    /// Flows seen since start.
    pub seen: AtomicU64,
    /// Events the datapath could not queue (the kernel's counters, summed over CPUs).
    pub lost_kernel: AtomicU64,
    /// Records that did not parse (short records).
    pub malformed: AtomicU64,
}

/// Something that takes every batch of records (history, metrics). Called on
/// the ingest thread: it must hand the work off, never block.
pub trait Sink: Send {
    fn batch(&mut self, records: &[FlowRecord]);
    /// Called about once a second with the lost counters (for metrics).
    fn tick(&mut self, _stats: &Stats) {}
}

/// What the Observer API and the agent share.
pub struct Observer {
    pub ring: Arc<Ring>,
    pub dict: Arc<Dictionary>,
    pub directory: Arc<dyn Directory>,
    pub stats: Arc<Stats>,
    pub started: Instant,
    pub node: String,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Observer {
    /// Stop ingest and wait for it: the sinks are dropped (the history writer flushes
    /// its open block). Blocking; idempotent.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Settings of the ingest side.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The datapath's pin directory (where `events` and `events_lost` are).
    pub pin_dir: PathBuf,
    /// Flows kept in memory.
    pub ring_capacity: usize,
    /// How long a quiet ring may wait before its records are drained.
    pub poll_interval: Duration,
    /// The first sequence number (after a restart: one past the newest stored flow).
    pub first_seq: u64,
}

/// Start the ingest thread.
pub fn start(
    config: &PipelineConfig,
    directory: Arc<dyn Directory>,
    dict: Arc<Dictionary>,
    mut sinks: Vec<Box<dyn Sink>>,
) -> std::io::Result<Arc<Observer>> {
    let ring = Ring::new(config.ring_capacity);
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let observer = Arc::new(Observer {
        ring: ring.clone(),
        dict: dict.clone(),
        directory: directory.clone(),
        stats: stats.clone(),
        started: Instant::now(),
        node: directory.node_name(),
        stop: stop.clone(),
        thread: std::sync::Mutex::new(None),
    });
    let pin_dir = config.pin_dir.clone();
    let poll = config.poll_interval;
    let first_seq = config.first_seq;
    let handle = std::thread::Builder::new().name("flow-ingest".into()).spawn(move || {
        if let Err(e) = run(&pin_dir, poll, first_seq, &ring, &stats, &stop, directory, dict, &mut sinks) {
            warn!(error = %e, "flow ingest stopped: flows are NOT observed");
        }
    })?;
    *observer.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
    Ok(observer)
}

#[allow(clippy::too_many_arguments)]
fn run(
    pin_dir: &Path,
    poll: Duration,
    first_seq: u64,
    ring: &Ring,
    stats: &Stats,
    stop: &AtomicBool,
    directory: Arc<dyn Directory>,
    dict: Arc<Dictionary>,
    sinks: &mut [Box<dyn Sink>],
) -> Result<(), myelin_bpf::BpfError> {
    let pending: Rc<RefCell<Vec<FlowRecord>>> = Rc::default();
    let malformed = Rc::new(std::cell::Cell::new(0u64));
    let ingest = Rc::new(RefCell::new(Ingest::new(directory, dict, first_seq)));
    let reader = {
        let (pending, malformed, ingest) = (pending.clone(), malformed.clone(), ingest.clone());
        EventReader::open(pin_dir, move |rec| match RawEvent::parse(rec) {
            Some(e) => {
                let r = ingest.borrow_mut().record(&e);
                pending.borrow_mut().push(r);
            }
            None => malformed.set(malformed.get() + 1),
        })?
    };
    info!(pin_dir = %pin_dir.display(), "observing flows");
    let mut last_tick = Instant::now();
    let mut last_clock = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        reader.poll(poll)?;
        let batch = std::mem::take(&mut *pending.borrow_mut());
        if !batch.is_empty() {
            stats.seen.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for s in sinks.iter_mut() {
                s.batch(&batch);
            }
            ring.publish(batch);
        }
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            if let Ok(lost) = reader.lost_per_cpu() {
                stats.lost_kernel.store(lost.iter().sum(), Ordering::Relaxed);
            }
            stats.malformed.store(malformed.get(), Ordering::Relaxed);
            for s in sinks.iter_mut() {
                s.tick(stats);
            }
        }
        if last_clock.elapsed() >= Duration::from_secs(60) {
            last_clock = Instant::now();
            ingest.borrow_mut().resync_clock();
        }
    }
    Ok(())
}
