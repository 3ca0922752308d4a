//! The in-memory ring of recent flows: a fixed number of records, published
//! in chunks as immutable snapshots (readers never block the ingest thread
//! and never see a half-written record), with a watch channel that tells
//! followers the newest sequence number.

use std::collections::VecDeque;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::record::FlowRecord;

/// A run of consecutive records (sequence numbers `first..first + len`).
#[derive(Debug)]
pub struct Chunk {
    pub records: Vec<FlowRecord>,
}

impl Chunk {
    #[must_use]
    pub fn first_seq(&self) -> u64 {
        self.records.first().map_or(0, |r| r.seq)
    }

    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.records.last().map_or(0, |r| r.seq)
    }
}

/// A snapshot of the ring.
#[derive(Debug, Default)]
pub struct RingView {
    pub chunks: VecDeque<Arc<Chunk>>,
    /// Records in the view.
    pub len: usize,
}

impl RingView {
    /// Every record, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &FlowRecord> {
        self.chunks.iter().flat_map(|c| c.records.iter())
    }

    /// The oldest sequence number held (None: empty).
    #[must_use]
    pub fn first_seq(&self) -> Option<u64> {
        self.chunks.front().map(|c| c.first_seq())
    }

    /// The newest sequence number held (None: empty).
    #[must_use]
    pub fn last_seq(&self) -> Option<u64> {
        self.chunks.back().map(|c| c.last_seq())
    }
}

/// The ring: one writer (publish), any number of readers (view).
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    view: ArcSwap<RingView>,
    newest: watch::Sender<u64>,
}

impl Ring {
    /// A ring holding the newest `capacity` records (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Arc<Self> {
        let (newest, _) = watch::channel(0);
        Arc::new(Self { capacity: capacity.max(1), view: ArcSwap::default(), newest })
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A snapshot of what the ring holds now.
    #[must_use]
    pub fn view(&self) -> Arc<RingView> {
        self.view.load_full()
    }

    /// Watch the newest sequence number (for followers).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    /// Append a chunk, dropping the oldest chunks beyond the capacity.
    pub fn publish(&self, records: Vec<FlowRecord>) {
        if records.is_empty() {
            return;
        }
        let chunk = Arc::new(Chunk { records });
        let last = chunk.last_seq();
        let old = self.view.load_full();
        let mut chunks = old.chunks.clone();
        let mut len = old.len + chunk.records.len();
        chunks.push_back(chunk);
        // Drop the oldest records beyond the capacity: whole chunks, then the
        // oldest part of the front chunk (copied: readers may hold it).
        while len > self.capacity {
            let excess = len - self.capacity;
            let Some(front) = chunks.pop_front() else { break };
            if front.records.len() <= excess {
                len -= front.records.len();
            } else {
                chunks.push_front(Arc::new(Chunk { records: front.records[excess..].to_vec() }));
                len -= excess;
            }
        }
        self.view.store(Arc::new(RingView { chunks, len }));
        self.newest.send_replace(last);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn recs(from: u64, n: u64) -> Vec<FlowRecord> {
        (from..from + n).map(|seq| FlowRecord { seq, ..FlowRecord::default() }).collect()
    }

    #[test]
    fn keeps_the_newest_capacity_and_readers_keep_their_snapshot() {
        let ring = Ring::new(10);
        let mut rx = ring.subscribe();
        ring.publish(recs(1, 4));
        let early = ring.view();
        ring.publish(recs(5, 4));
        ring.publish(recs(9, 4));
        let v = ring.view();
        assert_eq!(v.len, 10, "exactly the newest 10");
        assert_eq!((v.first_seq(), v.last_seq()), (Some(3), Some(12)));
        assert_eq!(early.len, 4, "an old snapshot is unaffected");
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 12);
        let seqs: Vec<u64> = v.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (3..=12).collect::<Vec<_>>());
        assert_eq!(early.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4], "its records too");
        // A chunk larger than the ring: its newest records.
        ring.publish(recs(13, 25));
        let v = ring.view();
        assert_eq!((v.len, v.first_seq(), v.last_seq()), (10, Some(28), Some(37)));
    }
}
