//! The history writer: a thread of its own, so that encoding, compression
//! and disk writes never hold up the ingest thread.
//!
//! ```text
//!  [ingest thread] Sink::batch(records) --copy, try_send (bounded; full: count as dropped)-->
//!  [flow-history thread] new dictionary entries -> History::sync_dict
//!                        records -> History::append (full blocks written as they fill)
//!                        every flush_interval: History::flush (the open block reaches the journal)
//!                        every retention_interval: History::enforce_retention
//!  drop(HistoryWriter): the channel closes, the thread flushes and ends, drop joins it
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{now_ns, History};
use crate::dict::Dictionary;
use crate::pipeline::{Sink, Stats};
use crate::record::FlowRecord;

/// Settings of the writer thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Write the open block at least this often: what a SIGKILL can lose.
    pub flush_interval: Duration,
    /// Apply age retention this often (size is checked after every block).
    pub retention_interval: Duration,
    /// Batches the channel holds before records are dropped (and counted).
    pub queue_batches: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(1),
            retention_interval: Duration::from_secs(30),
            queue_batches: 1024,
        }
    }
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records dropped because the writer fell behind (the queue was full).
    pub dropped_queue: AtomicU64,
    /// Records lost to write errors.
    pub lost_write: AtomicU64,
    /// Records handed to the history.
    pub written: AtomicU64,
}

/// The ingest side of the writer: a [`Sink`] for the pipeline.
pub struct HistoryWriter {
    tx: Option<SyncSender<Vec<FlowRecord>>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<WriterStats>,
    /// Dropped records already reported.
    reported: u64,
}

impl std::fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryWriter").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl HistoryWriter {
    /// Start the writer thread. `dict` is the dictionary the records name (restored
    /// from [`History::dict_entries`] before ingest starts).
    pub fn spawn(history: Arc<History>, dict: Arc<Dictionary>, cfg: WriterConfig) -> std::io::Result<Self> {
        let stored = history.stats().map_or(0, |s| s.dict_entries);
        if (dict.view().len() as u64) < u64::from(stored) {
            warn!(
                stored,
                in_memory = dict.view().len(),
                "flow history: the dictionary has fewer entries than the history stores; restore it from \
                 History::dict_entries() before ingest, or new flows will be stored under wrong names"
            );
        }
        let (tx, rx) = mpsc::sync_channel::<Vec<FlowRecord>>(cfg.queue_batches.max(1));
        let stats = Arc::new(WriterStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new().name("flow-history".into()).spawn(move || {
            let mut last_flush = Instant::now();
            let mut last_retention = Instant::now();
            let mut last_warn: Option<Instant> = None;
            let mut report = |what: &str, e: &super::HistoryError| {
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_warn = Some(Instant::now());
                    warn!(error = %e, "flow history: {what}");
                }
            };
            loop {
                let wait = cfg.flush_interval.saturating_sub(last_flush.elapsed());
                let closed = match rx.recv_timeout(wait) {
                    Ok(batch) => {
                        if let Err(e) = history.sync_dict(&dict.view()) {
                            report("storing dictionary entries", &e);
                        }
                        match history.append(&batch) {
                            Ok(()) => {
                                st.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            }
                            Err(e) => {
                                st.lost_write.fetch_add(batch.len() as u64, Ordering::Relaxed);
                                report("appending flows", &e);
                            }
                        }
                        false
                    }
                    Err(RecvTimeoutError::Timeout) => false,
                    Err(RecvTimeoutError::Disconnected) => true,
                };
                if closed || last_flush.elapsed() >= cfg.flush_interval {
                    last_flush = Instant::now();
                    if let Err(e) = history.sync_dict(&dict.view()).and_then(|_| history.flush()) {
                        report("flushing", &e);
                    }
                }
                if closed {
                    return;
                }
                if last_retention.elapsed() >= cfg.retention_interval {
                    last_retention = Instant::now();
                    if let Err(e) = history.enforce_retention(now_ns()) {
                        report("applying retention", &e);
                    }
                }
            }
        })?;
        Ok(Self { tx: Some(tx), thread: Some(thread), stats, reported: 0 })
    }

    /// The writer's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }
}

impl Sink for HistoryWriter {
    fn batch(&mut self, records: &[FlowRecord]) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(records.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(v) | TrySendError::Disconnected(v)) => {
                self.stats.dropped_queue.fetch_add(v.len() as u64, Ordering::Relaxed);
            }
        }
    }

    fn tick(&mut self, _stats: &Stats) {
        let dropped = self.stats.dropped_queue.load(Ordering::Relaxed);
        if dropped > self.reported {
            warn!(
                dropped = dropped - self.reported,
                total = dropped,
                "flow history: the writer fell behind; records were not stored (they are in the ring)"
            );
            self.reported = dropped;
        }
    }
}

impl Drop for HistoryWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
