//! The durable local flow history: every flow the node saw, on disk,
//! compressed, queried by time range and filter, kept by age and by size, and
//! still there after the agent was killed and restarted.
//!
//! ```text
//!  append(records) -> open block (in memory; up to block_records, spanning at most 10 s)
//!      seal (full, flush(), span) -> codec: columns + per-block tables, LZ4, checksum
//!      -> one write(2) of one frame at the end of the current segment  flows/NNNNNNNNNNNNNNNNNNNN.blk
//!      -> index in memory: (offset, header: count, time range, seq range) per block
//!  put_dict(id, desc) -> one frame appended to dict.log, before any block that names it
//!
//!  query(since, until, order, limit, hint, pred):
//!      index: blocks whose time range overlaps (no I/O) -> pread the block -> checksum
//!      -> tables: could any record match the hint? -> columns -> records in range -> pred
//!
//!  retention (on open, after every block for size, periodically for age):
//!      whole segments are deleted, oldest first; a new segment starts every
//!      `segment_max_bytes` or `segment_max_span`.
//!  open: read every frame header (not the blocks) to rebuild the index; a torn
//!      frame at the end of the newest segment is cut off; damage elsewhere is skipped.
//! ```
//!
//! Why files and not an LSM store: the data is written once in time order,
//! read by time range and deleted by whole time ranges, which is what a
//! sequence of append-only files does with one write per byte (an LSM tree
//! writes each byte to its journal and again to its tables), exact disk
//! accounting and immediate deletion. fjall 2.11 was tried first: deleting a
//! partition while its memtable is being flushed panics its flush thread
//! ("removal index (is 0) should be < len (is 0)" in flush/queue.rs), which is
//! exactly what retention by partition does.
//!
//! Durability: a block is one `write(2)` before `append`/`flush` returns, so a
//! SIGKILLed agent loses only the records of the open block (the writer
//! thread flushes it every second: at most one second of flows). Segments
//! and the dictionary are fsynced every `fsync_interval` (1 s by default)
//! against power loss. A block that does not decode (checksum, torn or
//! foreign bytes) is skipped and counted, never a panic.
//!
//! Records come back in the order they were appended (their time order, and
//! within a block sequence order).
//!
//! In the agent:
//! ```text
//!  let history = Arc::new(History::open(dir, HistoryConfig { max_bytes, max_age, ..Default::default() })?);
//!  dict.restore(history.dict_entries()?);            // ids keep their meaning
//!  first_seq = history.last_seq() + 1;                // sequence numbers go on
//!  sinks.push(Box::new(HistoryWriter::spawn(history.clone(), dict.clone(), WriterConfig::default())?));
//!  ObserverService::new(observer, Some(history), ...) // FlowStore: GetFlows since/until
//! ```

mod codec;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use codec::CodecError;
pub use writer::{HistoryWriter, WriterConfig, WriterStats};

use crate::dict::{DictView, EndpointDesc};
use crate::record::FlowRecord;
use codec::{Block, BlockHeader, Encoder};
use segment::{BlockRef, BLOCK_MAGIC, DICT_MAGIC, FRAME_HEADER};

/// A block never spans more than this much time.
pub const MAX_BLOCK_SPAN_NS: u64 = 10 * 1_000_000_000;

const SEGMENTS: &str = "flows";
const SEGMENT_EXT: &str = "blk";
const DICT_FILE: &str = "dict.log";
const LAST_SEQ_FILE: &str = "last_seq";
const MIB: u64 = 1024 * 1024;

/// Settings of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Keep the directory under this many bytes (segments, dictionary and all). At least 1 MiB.
    pub max_bytes: u64,
    /// Drop flows older than this (whole segments: up to `segment_max_span` later).
    pub max_age: Duration,
    /// Records per block (1..=1,048,576). Larger blocks compress better; smaller ones
    /// let queries skip more finely.
    pub block_records: usize,
    /// Start a new segment when the current one holds this many bytes (at most half of
    /// `max_bytes`; default: a sixteenth of it, at least 64 KiB): the granularity of size retention.
    pub segment_max_bytes: Option<u64>,
    /// Start a new segment when the current one spans this much time
    /// (default: `max_age` / 24, between 1 s and 1 h): the granularity of age retention.
    pub segment_max_span: Option<Duration>,
    /// fsync at most this often, when flushing (None: leave it to the OS). A SIGKILL
    /// loses nothing already written either way; a power cut loses up to this much.
    pub fsync_interval: Option<Duration>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * MIB,
            max_age: Duration::from_secs(7 * 24 * 3600),
            block_records: 8192,
            segment_max_bytes: None,
            segment_max_span: None,
            fsync_interval: Some(Duration::from_secs(1)),
        }
    }
}

/// What went wrong, with the directory and what to do.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("flow history {path}: {field}: {message}")]
    Config { path: PathBuf, field: &'static str, message: String },
    #[error("flow history {path}: {what}: {source} (check free space and that the agent may write there)")]
    Io { path: PathBuf, what: String, source: std::io::Error },
    #[error(
        "flow history {path}: another process (an agent of the same node?) has it open; \
         stop it or give this agent its own flow_history_dir"
    )]
    Locked { path: PathBuf },
}

fn io_err(path: &Path, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HistoryError {
    let path = path.to_path_buf();
    let what = what.into();
    move |source| HistoryError::Io { path, what, source }
}

/// A segment's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SegMeta {
    blocks: u64,
    records: u64,
    min_time: u64,
    max_time: u64,
    last_seq: u64,
}

impl SegMeta {
    fn add(&mut self, h: &BlockHeader) {
        if self.blocks == 0 {
            self.min_time = h.min_time;
            self.max_time = h.max_time;
        } else {
            self.min_time = self.min_time.min(h.min_time);
            self.max_time = self.max_time.max(h.max_time);
        }
        self.last_seq = self.last_seq.max(h.last_seq);
        self.blocks += 1;
        self.records += u64::from(h.count);
    }
}

/// One segment file and the index of its blocks.
struct Segment {
    id: u64,
    path: PathBuf,
    file: Arc<File>,
    blocks: Vec<BlockRef>,
    /// Length of the file (whole frames).
    bytes: u64,
    meta: SegMeta,
}

/// The writer's side: the open block and the segment it goes to.
struct Writer {
    open: Vec<FlowRecord>,
    open_min: u64,
    open_max: u64,
    enc: Encoder,
    buf: Vec<u8>,
    /// Id of the segment new blocks go to (None: start one).
    current: Option<u64>,
    next_id: u64,
    last_sync: Instant,
    /// Segments written since the last fsync (synced at the next one).
    unsynced: Vec<Arc<File>>,
}

/// What a query's filter requires of a flow, as far as a block's tables can
/// tell: a flow can match only if it satisfies at least one clause (no
/// clauses: no requirement). The caller derives it from its filter and must
/// never require what the predicate does not (the hint only skips work; the
/// predicate still decides).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockHint {
    pub any_of: Vec<HintClause>,
}

/// Requirements that all hold (None: no requirement on that field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HintClause {
    /// The source's dictionary id is one of these.
    pub src_ep: Option<Vec<u32>>,
    /// The destination's dictionary id is one of these.
    pub dst_ep: Option<Vec<u32>>,
    /// The source's or the destination's dictionary id is one of these.
    pub either_ep: Option<Vec<u32>>,
    pub src_identity: Option<Vec<u32>>,
    pub dst_identity: Option<Vec<u32>>,
    pub either_identity: Option<Vec<u32>>,
    pub verdict: Option<Vec<u8>>,
    pub event_type: Option<Vec<u8>>,
    pub protocol: Option<Vec<u8>>,
    pub drop_reason: Option<Vec<u8>>,
    pub traffic_direction: Option<Vec<u8>>,
}

/// A query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Flows with `since_ns <= time_ns` (unix ns).
    pub since_ns: Option<u64>,
    /// Flows with `time_ns < until_ns`.
    pub until_ns: Option<u64>,
    /// With `limit`: the newest `limit` matching flows instead of the oldest (`--last N`).
    /// Results are oldest first either way.
    pub newest_first: bool,
    pub limit: Option<usize>,
    pub hint: Option<BlockHint>,
}

/// What a query did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Blocks whose columns were decoded.
    pub blocks_decoded: u64,
    /// Blocks skipped by their time range (index only, not read).
    pub blocks_skipped_time: u64,
    /// Blocks skipped by the hint (tables only).
    pub blocks_skipped_hint: u64,
    /// Blocks that did not decode (skipped).
    pub blocks_corrupt: u64,
    /// Records handed to the predicate.
    pub records_tested: u64,
}

/// What retention did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted because all their flows were older than `max_age`.
    pub dropped_by_age: usize,
    /// Segments deleted to get under `max_bytes`.
    pub dropped_by_size: usize,
    pub records_dropped: u64,
    /// Bytes of the history's files before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Figures of the history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Stored records (not counting `buffered`).
    pub records: u64,
    pub blocks: u64,
    /// Bytes of the segments (blocks and their frames).
    pub segment_bytes: u64,
    pub segments: usize,
    /// Records appended but not yet in a block.
    pub buffered: usize,
    /// Bytes of every file under the directory (measured).
    pub disk_bytes: u64,
    pub oldest_ns: Option<u64>,
    pub newest_ns: Option<u64>,
    pub last_seq: u64,
    pub dict_entries: u32,
}

/// The dictionary log.
struct DictLog {
    file: File,
    /// Entries stored (ids 1..=n).
    len: u32,
    bytes: u64,
    dirty: bool,
}

/// The history. Share it (`Arc`): one thread appends, any number query.
pub struct History {
    dir: PathBuf,
    seg_dir: PathBuf,
    cfg: HistoryConfig,
    segment_max_bytes: u64,
    segment_max_span_ns: u64,
    /// Segments, oldest first.
    segments: RwLock<Vec<Segment>>,
    writer: Mutex<Writer>,
    dict: Mutex<DictLog>,
    last_seq: AtomicU64,
    /// Held while open (flock on `LOCK`).
    _lock: nix::fcntl::Flock<File>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Unix time now, in nanoseconds.
#[must_use]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Bytes of every file under `dir` (files that vanish while counting are skipped).
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = match e {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

fn segment_path(seg_dir: &Path, id: u64) -> PathBuf {
    seg_dir.join(format!("{id:020}.{SEGMENT_EXT}"))
}

/// fsync a directory (so that a file created or removed in it stays so after a power cut).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Dictionary frame payload: id, JSON, checksum of both.
fn dict_payload(id: u32, json: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(json.len() + 12);
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(json);
    let sum = codec::checksum(&p);
    p.extend_from_slice(&sum.to_le_bytes());
    p
}

fn parse_dict_payload(p: &[u8]) -> Option<(u32, &[u8])> {
    if p.len() < 12 {
        return None;
    }
    let (body, sum) = p.split_at(p.len() - 8);
    let sum = u64::from_le_bytes(sum.try_into().ok()?);
    if codec::checksum(body) != sum {
        return None;
    }
    let id = u32::from_le_bytes(body[..4].try_into().ok()?);
    Some((id, &body[4..]))
}

impl History {
    /// Open (or create) the history in `dir`, rebuild its index from the
    /// segments' frame headers, and apply retention.
    pub fn open(dir: &Path, cfg: HistoryConfig) -> Result<Self, HistoryError> {
        let path = dir.to_path_buf();
        let bad = |field: &'static str, message: String| HistoryError::Config { path: path.clone(), field, message };
        if cfg.max_bytes < MIB {
            return Err(bad("max_bytes", format!("{} is below the minimum of 1 MiB (1048576)", cfg.max_bytes)));
        }
        if cfg.max_age < Duration::from_secs(1) {
            return Err(bad("max_age", format!("{:?} is shorter than one second", cfg.max_age)));
        }
        if !(1..=1 << 20).contains(&cfg.block_records) {
            return Err(bad("block_records", format!("{} is not in 1..=1048576", cfg.block_records)));
        }
        if let Some(b) = cfg.segment_max_bytes {
            if b == 0 || b > cfg.max_bytes / 2 {
                return Err(bad(
                    "segment_max_bytes",
                    format!(
                        "{b} must be above 0 and at most half of max_bytes ({}), or size retention could not \
                         keep under max_bytes; leave it unset for max_bytes / 16",
                        cfg.max_bytes / 2
                    ),
                ));
            }
        }
        if cfg.segment_max_span.is_some_and(|s| s < Duration::from_millis(1)) {
            return Err(bad("segment_max_span", "must be at least 1 ms; leave it unset for max_age / 24".into()));
        }
        let segment_max_bytes = cfg.segment_max_bytes.unwrap_or((cfg.max_bytes / 16).max(64 * 1024));
        let span =
            cfg.segment_max_span.unwrap_or((cfg.max_age / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600)));
        let seg_dir = dir.join(SEGMENTS);
        std::fs::create_dir_all(&seg_dir).map_err(io_err(&seg_dir, "creating the directory"))?;
        // One process at a time: two writers would interleave frames.
        let lock_path = dir.join("LOCK");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "opening the lock file"))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| HistoryError::Locked { path: path.clone() })?;

        // Segments, oldest first.
        let mut ids: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(&seg_dir).map_err(io_err(&seg_dir, "listing segments"))? {
            let e = e.map_err(io_err(&seg_dir, "listing segments"))?;
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(&format!(".{SEGMENT_EXT}")))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            ids.push(id);
        }
        ids.sort_unstable();
        let mut segments = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let p = segment_path(&seg_dir, id);
            let file = OpenOptions::new().read(true).append(true).open(&p).map_err(io_err(&p, "opening a segment"))?;
            let len = file.metadata().map_err(io_err(&p, "reading a segment's length"))?.len();
            let scan = segment::scan(&file, len).map_err(io_err(&p, "reading a segment's frames"))?;
            if scan.skipped > 0 {
                warn!(segment = %p.display(), bytes = scan.skipped, "flow history: damaged bytes between blocks skipped");
            }
            if scan.blocks.is_empty() {
                info!(segment = %p.display(), bytes = len, "flow history: removing a segment without any whole block");
                drop(file);
                std::fs::remove_file(&p).map_err(io_err(&p, "removing an empty segment"))?;
                continue;
            }
            let mut bytes = len;
            if scan.valid_len < len && i + 1 == ids.len() {
                // A write cut short by a crash: cut it off, so that appending starts on a whole frame.
                warn!(segment = %p.display(), bytes = len - scan.valid_len, "flow history: a torn block at the end (crash while writing) is cut off");
                file.set_len(scan.valid_len).map_err(io_err(&p, "cutting off a torn block"))?;
                bytes = scan.valid_len;
            }
            let mut meta = SegMeta::default();
            for b in &scan.blocks {
                meta.add(&b.header);
            }
            segments.push(Segment { id, path: p, file: Arc::new(file), blocks: scan.blocks, bytes, meta });
        }
        let next_id = ids.last().map_or(1, |l| l + 1);

        let seq_path = dir.join(LAST_SEQ_FILE);
        let stored_last = match std::fs::read(&seq_path) {
            Ok(v) => <[u8; 8]>::try_from(v.as_slice()).map_or(0, u64::from_le_bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&seq_path, "reading the last sequence number")(e)),
        };
        let last_seq = segments.iter().map(|s| s.meta.last_seq).fold(stored_last, u64::max);

        let dict_path = dir.join(DICT_FILE);
        let mut dfile = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&dict_path)
            .map_err(io_err(&dict_path, "opening the dictionary"))?;
        let (frames, valid) =
            segment::read_dict_frames(&mut dfile).map_err(io_err(&dict_path, "reading the dictionary"))?;
        let dict_bytes = dfile.metadata().map_err(io_err(&dict_path, "reading the dictionary's length"))?.len();
        if valid < dict_bytes {
            warn!(file = %dict_path.display(), bytes = dict_bytes - valid, "flow history: a torn dictionary entry at the end is cut off");
            dfile.set_len(valid).map_err(io_err(&dict_path, "cutting off a torn entry"))?;
        }
        let dict_len = frames.iter().filter_map(|f| parse_dict_payload(f)).map(|(id, _)| id).max().unwrap_or(0);

        let h = Self {
            _lock: lock,
            dir: path,
            seg_dir,
            segment_max_bytes,
            segment_max_span_ns: dur_ns(span),
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                open: Vec::with_capacity(cfg.block_records),
                open_min: 0,
                open_max: 0,
                enc: Encoder::default(),
                buf: Vec::new(),
                current: None,
                next_id,
                last_sync: Instant::now(),
                unsynced: Vec::new(),
            }),
            cfg,
            dict: Mutex::new(DictLog { file: dfile, len: dict_len, bytes: valid, dirty: false }),
            last_seq: AtomicU64::new(last_seq),
        };
        let r = h.enforce_retention(now_ns())?;
        if r.dropped_by_age + r.dropped_by_size > 0 {
            info!(dir = %h.dir.display(), by_age = r.dropped_by_age, by_size = r.dropped_by_size, records = r.records_dropped, "flow history: retention on open");
        }
        Ok(h)
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings it was opened with.
    #[must_use]
    pub fn config(&self) -> &HistoryConfig {
        &self.cfg
    }

    /// The highest sequence number appended (stored, or buffered in the open block). After a
    /// restart, continue at `last_seq() + 1`.
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Append records (in the order they were seen). Full blocks are written
    /// as they fill; the rest waits in the open block for more or for [`History::flush`].
    /// On a write error the block being written is lost (the error says how many flows);
    /// the rest of `records` is still appended, and the first error is returned.
    pub fn append(&self, records: &[FlowRecord]) -> Result<(), HistoryError> {
        let mut w = lock(&self.writer);
        let mut first_err = None;
        for r in records {
            if w.open.is_empty() {
                w.open_min = r.time_ns;
                w.open_max = r.time_ns;
            } else {
                let lo = w.open_min.min(r.time_ns);
                let hi = w.open_max.max(r.time_ns);
                if hi - lo > MAX_BLOCK_SPAN_NS {
                    if let Err(e) = self.seal(&mut w) {
                        first_err.get_or_insert(e);
                    }
                    w.open_min = r.time_ns;
                    w.open_max = r.time_ns;
                } else {
                    w.open_min = lo;
                    w.open_max = hi;
                }
            }
            w.open.push(*r);
            self.last_seq.fetch_max(r.seq, Ordering::AcqRel);
            if w.open.len() >= self.cfg.block_records {
                if let Err(e) = self.seal(&mut w) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Write the open block (if any), so that it survives the process; fsync
    /// what was written if `fsync_interval` has passed since the last fsync.
    pub fn flush(&self) -> Result<(), HistoryError> {
        let mut w = lock(&self.writer);
        self.seal(&mut w)?;
        if self.cfg.fsync_interval.is_some_and(|i| w.last_sync.elapsed() >= i) {
            self.sync(&mut w)?;
        }
        Ok(())
    }

    /// fsync the dictionary, then the segments written since the last fsync (names
    /// before the flows that use them).
    fn sync(&self, w: &mut Writer) -> Result<(), HistoryError> {
        w.last_sync = Instant::now();
        {
            let mut d = lock(&self.dict);
            if d.dirty {
                d.file.sync_data().map_err(io_err(&self.dir.join(DICT_FILE), "syncing the dictionary"))?;
                d.dirty = false;
            }
        }
        for f in w.unsynced.drain(..) {
            f.sync_data().map_err(io_err(&self.seg_dir, "syncing a segment"))?;
        }
        Ok(())
    }

    /// Encode and write the open block.
    fn seal(&self, w: &mut Writer) -> Result<(), HistoryError> {
        if w.open.is_empty() {
            return Ok(());
        }
        let Writer { open, enc, buf, .. } = w;
        let h = enc.encode(open, buf);
        let lost = open.len();
        open.clear();
        // Frame header and payload in one buffer: one write.
        let plen = buf.len();
        let mut frame = Vec::with_capacity(FRAME_HEADER + plen);
        frame.extend_from_slice(&segment::frame_header(BLOCK_MAGIC, plen as u32));
        frame.extend_from_slice(buf);
        let lost_err = |e: HistoryError| {
            warn!(records = lost, error = %e, "flow history: a block of flows was lost");
            e
        };
        let (id, file, at) = self.target_segment(w, &h, frame.len() as u64).map_err(lost_err)?;
        if let Err(e) = file.as_ref().write_all(&frame) {
            // Take the partial frame back, so the next block starts on a whole frame.
            let _ = file.set_len(at);
            let p = segment_path(&self.seg_dir, id);
            return Err(lost_err(io_err(&p, format!("writing a block of {lost} flows"))(e)));
        }
        let r = BlockRef { offset: at + FRAME_HEADER as u64, len: plen as u32, header: h };
        {
            let mut segs = self.segments.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = segs.iter_mut().find(|s| s.id == id) {
                s.blocks.push(r);
                s.bytes = at + frame.len() as u64;
                s.meta.add(&h);
            }
        }
        if !w.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            w.unsynced.push(file);
        }
        if self.total_bytes() > self.cfg.max_bytes {
            self.shrink(w, None, &mut RetentionReport::default())?;
        }
        Ok(())
    }

    /// The segment the next block goes to (a new one when the current one is full or
    /// old), its file and the offset the frame will start at.
    fn target_segment(
        &self,
        w: &mut Writer,
        h: &BlockHeader,
        bytes: u64,
    ) -> Result<(u64, Arc<File>, u64), HistoryError> {
        if let Some(cur) = w.current {
            let segs = self.segments.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = segs.iter().find(|s| s.id == cur) {
                let full = s.bytes + bytes > self.segment_max_bytes;
                let old = h.min_time.saturating_sub(s.meta.min_time) >= self.segment_max_span_ns;
                if s.meta.blocks == 0 || !(full || old) {
                    return Ok((s.id, s.file.clone(), s.bytes));
                }
            }
        }
        // The segment being left is complete: make it durable before starting the next.
        if !w.unsynced.is_empty() && self.cfg.fsync_interval.is_some() {
            self.sync(w)?;
        }
        let id = w.next_id;
        w.next_id += 1;
        let path = segment_path(&self.seg_dir, id);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path, "creating a segment"))?;
        if self.cfg.fsync_interval.is_some() {
            sync_dir(&self.seg_dir).map_err(io_err(&self.seg_dir, "syncing the segment directory"))?;
        }
        let file = Arc::new(file);
        let seg = Segment { id, path, file: file.clone(), blocks: Vec::new(), bytes: 0, meta: SegMeta::default() };
        self.segments.write().unwrap_or_else(PoisonError::into_inner).push(seg);
        w.current = Some(id);
        Ok((id, file, 0))
    }

    /// Bytes of the history's files (as written; the directory walk of [`History::stats`] agrees).
    fn total_bytes(&self) -> u64 {
        let segs: u64 = self.segments.read().unwrap_or_else(PoisonError::into_inner).iter().map(|s| s.bytes).sum();
        segs + lock(&self.dict).bytes + 8
    }

    /// Delete segments: those all older than `age_cutoff`, then the oldest
    /// until the files are under `max_bytes` (never the newest).
    fn shrink(
        &self,
        w: &mut Writer,
        age_cutoff: Option<u64>,
        report: &mut RetentionReport,
    ) -> Result<(), HistoryError> {
        let fixed = lock(&self.dict).bytes + 8;
        let mut victims: Vec<(Segment, bool)> = Vec::new();
        {
            let mut segs = self.segments.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(cutoff) = age_cutoff {
                let (old, keep): (Vec<Segment>, Vec<Segment>) =
                    segs.drain(..).partition(|s| s.meta.blocks > 0 && s.meta.max_time < cutoff);
                *segs = keep;
                victims.extend(old.into_iter().map(|s| (s, true)));
            }
            let mut total = fixed + segs.iter().map(|s| s.bytes).sum::<u64>();
            while total > self.cfg.max_bytes && segs.len() > 1 {
                let s = segs.remove(0);
                total -= s.bytes;
                victims.push((s, false));
            }
        }
        if victims.is_empty() {
            return Ok(());
        }
        // The sequence must go on after a restart even if every block is gone.
        self.save_last_seq()?;
        for (s, by_age) in victims {
            if w.current == Some(s.id) {
                w.current = None;
            }
            w.unsynced.retain(|f| !Arc::ptr_eq(f, &s.file));
            // Queries still reading it keep their open file; the space goes when they finish.
            std::fs::remove_file(&s.path).map_err(io_err(&s.path, "deleting a segment"))?;
            report.records_dropped += s.meta.records;
            if by_age {
                report.dropped_by_age += 1;
            } else {
                report.dropped_by_size += 1;
            }
        }
        Ok(())
    }

    fn save_last_seq(&self) -> Result<(), HistoryError> {
        let p = self.dir.join(LAST_SEQ_FILE);
        let tmp = self.dir.join(format!("{LAST_SEQ_FILE}.tmp"));
        std::fs::write(&tmp, self.last_seq().to_le_bytes()).map_err(io_err(&tmp, "saving the last sequence number"))?;
        std::fs::rename(&tmp, &p).map_err(io_err(&p, "saving the last sequence number"))
    }

    /// Delete what is past `max_age` (relative to `now_ns`) or beyond `max_bytes`.
    /// Runs on open; the writer thread runs it periodically; size is also checked after every block.
    pub fn enforce_retention(&self, now_ns: u64) -> Result<RetentionReport, HistoryError> {
        let mut w = lock(&self.writer);
        let mut report = RetentionReport { bytes_before: self.total_bytes(), ..RetentionReport::default() };
        let cutoff = now_ns.saturating_sub(dur_ns(self.cfg.max_age));
        self.shrink(&mut w, Some(cutoff), &mut report)?;
        report.bytes_after = self.total_bytes();
        Ok(report)
    }

    /// Store dictionary entry `id` (ids start at 1). Call before appending records that name it.
    pub fn put_dict(&self, id: u32, desc: &EndpointDesc) -> Result<(), HistoryError> {
        let path = self.dir.join(DICT_FILE);
        let json = serde_json::to_vec(desc)
            .map_err(|e| io_err(&path, format!("encoding dictionary entry {id}"))(std::io::Error::other(e)))?;
        let payload = dict_payload(id, &json);
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&segment::frame_header(DICT_MAGIC, payload.len() as u32));
        frame.extend_from_slice(&payload);
        let mut d = lock(&self.dict);
        let at = d.bytes;
        if let Err(e) = d.file.write_all(&frame) {
            let _ = d.file.set_len(at);
            return Err(io_err(&path, format!("writing dictionary entry {id}"))(e));
        }
        d.bytes += frame.len() as u64;
        d.len = d.len.max(id);
        d.dirty = true;
        Ok(())
    }

    /// Store the entries of `view` not stored yet (ids after the highest stored).
    /// Returns how many were written.
    pub fn sync_dict(&self, view: &DictView) -> Result<usize, HistoryError> {
        let stored = lock(&self.dict).len;
        let mut written = 0;
        for (id, desc) in view.iter().skip(stored as usize) {
            self.put_dict(id, desc)?;
            written += 1;
        }
        Ok(written)
    }

    /// The stored dictionary, ids 1..=n in order (for [`crate::dict::Dictionary::restore`]).
    /// A missing or unreadable entry becomes an empty description (ids stay aligned).
    pub fn dict_entries(&self) -> Result<Vec<EndpointDesc>, HistoryError> {
        let path = self.dir.join(DICT_FILE);
        let mut f = File::open(&path).map_err(io_err(&path, "opening the dictionary"))?;
        let (frames, _) = segment::read_dict_frames(&mut f).map_err(io_err(&path, "reading the dictionary"))?;
        let mut entries: Vec<(u32, EndpointDesc)> = Vec::new();
        for p in &frames {
            let Some((id, json)) = parse_dict_payload(p) else {
                warn!(file = %path.display(), "flow history: a dictionary entry fails its checksum; ignored");
                continue;
            };
            match serde_json::from_slice(json) {
                Ok(desc) => entries.push((id, desc)),
                Err(e) => {
                    warn!(file = %path.display(), id, error = %e, "flow history: unreadable dictionary entry; its flows will be unnamed")
                }
            }
        }
        entries.sort_by_key(|(id, _)| *id);
        let mut out: Vec<EndpointDesc> = Vec::new();
        for (id, desc) in entries {
            let Some(i) = (id as usize).checked_sub(1) else { continue };
            if i < out.len() {
                out[i] = desc; // a later copy of the same id wins
                continue;
            }
            if i > out.len() {
                warn!(file = %path.display(), from = out.len() + 1, to = i, "flow history: dictionary entries missing; their flows will be unnamed");
                out.resize(i, EndpointDesc::default());
            }
            out.push(desc);
        }
        Ok(out)
    }

    /// Figures (walks the directory for `disk_bytes`).
    pub fn stats(&self) -> Result<HistoryStats, HistoryError> {
        let buffered = lock(&self.writer).open.len();
        let (records, blocks, segment_bytes, segments, oldest_ns, newest_ns) = {
            let segs = self.segments.read().unwrap_or_else(PoisonError::into_inner);
            let live = segs.iter().filter(|s| s.meta.blocks > 0);
            (
                segs.iter().map(|s| s.meta.records).sum(),
                segs.iter().map(|s| s.meta.blocks).sum(),
                segs.iter().map(|s| s.bytes).sum(),
                segs.len(),
                live.clone().map(|s| s.meta.min_time).min(),
                live.map(|s| s.meta.max_time).max(),
            )
        };
        let disk_bytes = dir_bytes(&self.dir).map_err(io_err(&self.dir, "measuring the directory"))?;
        Ok(HistoryStats {
            records,
            blocks,
            segment_bytes,
            segments,
            buffered,
            disk_bytes,
            oldest_ns,
            newest_ns,
            last_seq: self.last_seq(),
            dict_entries: lock(&self.dict).len,
        })
    }

    /// Matching flows (see [`Query`]), oldest first, including those still in the open block.
    pub fn query(&self, q: &Query, pred: &mut dyn FnMut(&FlowRecord) -> bool) -> Result<Vec<FlowRecord>, HistoryError> {
        self.query_with_stats(q, pred).map(|(r, _)| r)
    }

    /// [`History::query`], and what it did.
    pub fn query_with_stats(
        &self,
        q: &Query,
        pred: &mut dyn FnMut(&FlowRecord) -> bool,
    ) -> Result<(Vec<FlowRecord>, QueryStats), HistoryError> {
        let mut run = QueryRun::new(q);
        if run.limit == Some(0) {
            return Ok((Vec::new(), run.stats));
        }
        let open: Vec<FlowRecord> = lock(&self.writer).open.clone();
        // The blocks to read, from the index alone.
        let mut todo: Vec<(Arc<File>, BlockRef)> = Vec::new();
        {
            let segs = self.segments.read().unwrap_or_else(PoisonError::into_inner);
            for s in segs.iter() {
                if s.meta.blocks == 0 || s.meta.max_time < run.since || run.until.is_some_and(|u| s.meta.min_time >= u)
                {
                    run.stats.blocks_skipped_time += s.meta.blocks;
                    continue;
                }
                for b in &s.blocks {
                    if b.header.max_time < run.since || run.until.is_some_and(|u| b.header.min_time >= u) {
                        run.stats.blocks_skipped_time += 1;
                    } else {
                        todo.push((s.file.clone(), *b));
                    }
                }
            }
        }
        let clauses: Vec<Clause> =
            q.hint.as_ref().map(|h| h.any_of.iter().map(Clause::new).collect()).unwrap_or_default();
        let dec = Decoder::new(run.since, run.until, &clauses, &self.seg_dir);
        let stats = if q.newest_first {
            let mut stats = QueryStats::default();
            if run.records(open.iter().rev(), pred) {
                stats = self.scan(Box::new(todo.iter().rev()), todo.len(), dec, &mut run, pred)?.0;
            }
            run.out.reverse();
            stats
        } else {
            let (stats, more) = self.scan(Box::new(todo.iter()), todo.len(), dec, &mut run, pred)?;
            if more {
                run.records(open.iter(), pred);
            }
            stats
        };
        run.stats.blocks_decoded += stats.blocks_decoded;
        run.stats.blocks_skipped_time += stats.blocks_skipped_time;
        run.stats.blocks_skipped_hint += stats.blocks_skipped_hint;
        run.stats.blocks_corrupt += stats.blocks_corrupt;
        if run.stats.blocks_corrupt > 0 {
            warn!(dir = %self.dir.display(), blocks = run.stats.blocks_corrupt, "flow history: blocks that do not decode were skipped");
        }
        Ok((run.out, run.stats))
    }

    /// Run the query over `blocks` (in the order given): without a hint and with many
    /// blocks, decoded on a helper thread (reading, checking and decompressing overlap
    /// with making records and the predicate, which stay on the calling thread).
    /// Returns the decoder's counts and false once the limit is reached.
    fn scan<'a>(
        &self,
        blocks: Box<dyn Iterator<Item = &'a (Arc<File>, BlockRef)> + Send + 'a>,
        count: usize,
        mut dec: Decoder<'_>,
        run: &mut QueryRun,
        pred: &mut dyn FnMut(&FlowRecord) -> bool,
    ) -> Result<(QueryStats, bool), HistoryError> {
        // With a hint, the calling thread has little to do per block: the hand-over
        // between threads would cost more than it saves.
        let parallel = dec.clauses.is_empty()
            && count >= PARALLEL_BLOCKS
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        if !parallel {
            let mut d = Decoded::default();
            for (f, r) in blocks {
                if dec.decode(f, r, &mut d)? && !run.consume(&d, pred) {
                    return Ok((dec.stats, false));
                }
            }
            return Ok((dec.stats, true));
        }
        std::thread::scope(|sc| {
            // Two decoded blocks in flight; the consumer hands them back for reuse.
            let (tx, rx) = mpsc::sync_channel::<Decoded>(2);
            let (back, spare) = mpsc::channel::<Decoded>();
            let producer = std::thread::Builder::new()
                .name("flow-query".into())
                .spawn_scoped(sc, move || -> Result<QueryStats, HistoryError> {
                    for (f, r) in blocks {
                        let mut d = spare.try_recv().unwrap_or_default();
                        if dec.decode(f, r, &mut d)? && tx.send(d).is_err() {
                            break; // the consumer has all it wants
                        }
                    }
                    Ok(dec.stats)
                })
                .map_err(io_err(&self.dir, "starting a query thread"))?;
            let mut more = true;
            while let Ok(d) = rx.recv() {
                if !run.consume(&d, pred) {
                    more = false;
                    break;
                }
                let _ = back.send(d);
            }
            drop(rx);
            match producer.join() {
                Ok(stats) => Ok((stats?, more)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// A hint clause with sorted sets.
struct Clause {
    src_ep: Option<Vec<u32>>,
    dst_ep: Option<Vec<u32>>,
    either_ep: Option<Vec<u32>>,
    src_identity: Option<Vec<u32>>,
    dst_identity: Option<Vec<u32>>,
    either_identity: Option<Vec<u32>>,
    verdict: Option<Vec<u8>>,
    event_type: Option<Vec<u8>>,
    protocol: Option<Vec<u8>>,
    drop_reason: Option<Vec<u8>>,
    traffic_direction: Option<Vec<u8>>,
}

fn sorted<T: Ord + Copy>(v: &Option<Vec<T>>) -> Option<Vec<T>> {
    v.as_ref().map(|v| {
        let mut v = v.clone();
        v.sort_unstable();
        v.dedup();
        v
    })
}

fn within<T: Ord>(set: &Option<Vec<T>>, v: &T) -> bool {
    set.as_ref().is_none_or(|s| s.binary_search(v).is_ok())
}

impl Clause {
    fn new(c: &HintClause) -> Self {
        Self {
            src_ep: sorted(&c.src_ep),
            dst_ep: sorted(&c.dst_ep),
            either_ep: sorted(&c.either_ep),
            src_identity: sorted(&c.src_identity),
            dst_identity: sorted(&c.dst_identity),
            either_identity: sorted(&c.either_identity),
            verdict: sorted(&c.verdict),
            event_type: sorted(&c.event_type),
            protocol: sorted(&c.protocol),
            drop_reason: sorted(&c.drop_reason),
            traffic_direction: sorted(&c.traffic_direction),
        }
    }
}

/// A clause evaluated against one block's tables.
#[derive(Default)]
struct ClauseMaps {
    class: Vec<bool>,
    src: Vec<bool>,
    dst: Vec<bool>,
    either_ep: Option<Vec<bool>>,
    either_identity: Option<Vec<bool>>,
}

impl ClauseMaps {
    /// Evaluate `c` on the tables of `b`; false if no record of the block can satisfy it.
    fn prepare(&mut self, c: &Clause, b: &Block) -> bool {
        use codec::Class;
        self.class.clear();
        self.class.extend(b.classes.iter().map(|k| {
            within(&c.verdict, &k.bytes[Class::VERDICT])
                && within(&c.event_type, &k.bytes[Class::EVENT_TYPE])
                && within(&c.protocol, &k.bytes[Class::PROTOCOL])
                && within(&c.drop_reason, &k.bytes[Class::DROP_REASON])
                && within(&c.traffic_direction, &k.bytes[Class::DIRECTION])
        }));
        self.src.clear();
        self.src.extend(b.sides.iter().map(|s| within(&c.src_ep, &s.ep) && within(&c.src_identity, &s.identity)));
        self.dst.clear();
        self.dst.extend(b.sides.iter().map(|s| within(&c.dst_ep, &s.ep) && within(&c.dst_identity, &s.identity)));
        self.either_ep =
            c.either_ep.as_ref().map(|set| b.sides.iter().map(|s| set.binary_search(&s.ep).is_ok()).collect());
        self.either_identity = c
            .either_identity
            .as_ref()
            .map(|set| b.sides.iter().map(|s| set.binary_search(&s.identity).is_ok()).collect());
        self.class.iter().any(|x| *x)
            && self.src.iter().any(|x| *x)
            && self.dst.iter().any(|x| *x)
            && self.either_ep.as_ref().is_none_or(|m| m.iter().any(|x| *x))
            && self.either_identity.as_ref().is_none_or(|m| m.iter().any(|x| *x))
    }

    #[inline]
    fn pass(&self, c: usize, s: usize, d: usize) -> bool {
        self.class[c]
            && self.src[s]
            && self.dst[d]
            && self.either_ep.as_ref().is_none_or(|m| m[s] || m[d])
            && self.either_identity.as_ref().is_none_or(|m| m[s] || m[d])
    }
}

/// Queries without a hint reading at least this many blocks decode them on a helper thread.
const PARALLEL_BLOCKS: usize = 8;

/// A block ready for the predicate.
#[derive(Default)]
struct Decoded {
    block: Block,
    /// With a hint: the records it lets through (`hinted`).
    candidates: Vec<u32>,
    hinted: bool,
    /// Every record is within the query's time range.
    whole: bool,
}

/// The part of a query that needs no predicate: read a block, check it, evaluate the hint.
struct Decoder<'a> {
    since: u64,
    until: Option<u64>,
    clauses: &'a [Clause],
    maps: Vec<ClauseMaps>,
    /// Indices into `maps` of clauses the current block can satisfy.
    live: Vec<usize>,
    buf: Vec<u8>,
    seg_dir: &'a Path,
    stats: QueryStats,
}

impl<'a> Decoder<'a> {
    fn new(since: u64, until: Option<u64>, clauses: &'a [Clause], seg_dir: &'a Path) -> Self {
        Self {
            since,
            until,
            clauses,
            maps: clauses.iter().map(|_| ClauseMaps::default()).collect(),
            live: Vec::new(),
            buf: Vec::new(),
            seg_dir,
            stats: QueryStats::default(),
        }
    }

    /// Read and decode block `r` of `f` into `d`; false when nothing in it can match
    /// (or it does not decode: counted, skipped).
    fn decode(&mut self, f: &File, r: &BlockRef, d: &mut Decoded) -> Result<bool, HistoryError> {
        self.buf.resize(r.len as usize, 0);
        match f.read_exact_at(&mut self.buf, r.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.stats.blocks_corrupt += 1;
                return Ok(false);
            }
            Err(e) => return Err(io_err(self.seg_dir, "reading a block")(e)),
        }
        let v = &self.buf;
        let b = &mut d.block;
        let Ok(h) = codec::read_header(v) else {
            self.stats.blocks_corrupt += 1;
            return Ok(false);
        };
        if h.max_time < self.since || self.until.is_some_and(|u| h.min_time >= u) {
            self.stats.blocks_skipped_time += 1;
            return Ok(false);
        }
        if b.load_tables(v).is_err() {
            self.stats.blocks_corrupt += 1;
            return Ok(false);
        }
        self.live.clear();
        for (i, (c, m)) in self.clauses.iter().zip(self.maps.iter_mut()).enumerate() {
            if m.prepare(c, b) {
                self.live.push(i);
            }
        }
        d.hinted = !self.clauses.is_empty();
        if d.hinted && self.live.is_empty() {
            self.stats.blocks_skipped_hint += 1;
            return Ok(false);
        }
        if b.load_columns(v).is_err() {
            self.stats.blocks_corrupt += 1;
            return Ok(false);
        }
        self.stats.blocks_decoded += 1;
        d.whole = h.min_time >= self.since && self.until.is_none_or(|u| h.max_time < u);
        // With a hint: the records it lets through, from the index columns alone.
        d.candidates.clear();
        if d.hinted {
            for i in 0..h.count as usize {
                let (c, s, dst) = b.class_src_dst(i);
                if self.live.iter().any(|&k| self.maps[k].pass(c, s, dst)) {
                    d.candidates.push(i as u32);
                }
            }
            if d.candidates.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The predicate's side of one query.
struct QueryRun {
    since: u64,
    until: Option<u64>,
    newest_first: bool,
    limit: Option<usize>,
    out: Vec<FlowRecord>,
    stats: QueryStats,
}

impl QueryRun {
    fn new(q: &Query) -> Self {
        Self {
            since: q.since_ns.unwrap_or(0),
            until: q.until_ns,
            newest_first: q.newest_first,
            limit: q.limit,
            out: Vec::new(),
            stats: QueryStats::default(),
        }
    }

    #[inline]
    fn in_range(&self, t: u64) -> bool {
        t >= self.since && self.until.is_none_or(|u| t < u)
    }

    fn full(&self) -> bool {
        self.limit.is_some_and(|n| self.out.len() >= n)
    }

    /// Records not in a block (the open block); false once the limit is reached.
    fn records<'a>(
        &mut self,
        recs: impl Iterator<Item = &'a FlowRecord>,
        pred: &mut dyn FnMut(&FlowRecord) -> bool,
    ) -> bool {
        for r in recs {
            if !self.in_range(r.time_ns) {
                continue;
            }
            self.stats.records_tested += 1;
            if pred(r) {
                self.out.push(*r);
                if self.full() {
                    return false;
                }
            }
        }
        true
    }

    /// The records of a decoded block through the predicate; false once the limit is reached.
    fn consume(&mut self, d: &Decoded, pred: &mut dyn FnMut(&FlowRecord) -> bool) -> bool {
        let b = &d.block;
        let mut visit = |this: &mut Self, i: usize| -> bool {
            if !d.whole && !this.in_range(b.time(i)) {
                return true;
            }
            let r = b.record(i);
            this.stats.records_tested += 1;
            if pred(&r) {
                this.out.push(r);
                if this.full() {
                    return false;
                }
            }
            true
        };
        let n = b.header.count as usize;
        match (d.hinted, self.newest_first) {
            (true, false) => d.candidates.iter().all(|&i| visit(self, i as usize)),
            (true, true) => d.candidates.iter().rev().all(|&i| visit(self, i as usize)),
            (false, false) => (0..n).all(|i| visit(self, i)),
            (false, true) => (0..n).rev().all(|i| visit(self, i)),
        }
    }
}

impl crate::server::FlowStore for History {
    fn query(
        &self,
        since_ns: Option<u64>,
        until_ns: Option<u64>,
        newest_first: bool,
        limit: Option<usize>,
        pred: &mut dyn FnMut(&FlowRecord) -> bool,
    ) -> Result<Vec<FlowRecord>, String> {
        let q = Query { since_ns, until_ns, newest_first, limit, hint: None };
        History::query(self, &q, pred).map_err(|e| e.to_string())
    }
}
