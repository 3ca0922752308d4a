//! The on-disk form of a block of flow records.
//!
//! A block holds up to a few thousand consecutive records, stored column by
//! column so that similar bytes sit together, then compressed with LZ4:
//!
//! ```text
//!  format u8 | count u32 | min_time u64 | max_time u64 | first_seq u64 | last_seq u64
//!  | tables_raw u32 | tables_len u32 | columns_raw u32 | columns_len u32     (little endian)
//!  | tables  (LZ4: the block's own dictionaries, see below)
//!  | columns (LZ4: one entry per record and column)
//!  | checksum u64 of everything before it
//! ```
//!
//! Three per-block tables catch what is correlated within a record, so that a
//! record costs one small index per table instead of its fields:
//! - sides: (dictionary id, identity, address) of a source or a destination;
//! - classes: every one-byte field (verdict, protocol, TCP flags, event type,
//!   reasons, ...) and the rule id together;
//! - locals: (ifindex, endpoint id, tunnel remote, Ethernet source and destination).
//!
//! Entries are numbered by how often the block uses them, so that the high
//! byte of an index into a large table is mostly zero (LZ4 then shrinks it).
//!
//! Columns are byte planes: a column is the number of bytes its largest value
//! needs (0 to 8), then the lowest byte of every record, then the next byte
//! of every record, and so on. Any field of any record is read directly
//! (no varint to walk), and bytes that rarely change sit together for LZ4.
//! The columns: time (offset from the block's earliest), sequence (gap from
//! `first_seq + i`: no plane at all when consecutive), the four table
//! indices, source and destination ports, packet length, handshake latency.
//!
//! The tables are compressed apart from the columns: a query reads them first
//! and skips the block without decompressing its columns when no entry could
//! match (see [`super::BlockHint`]).
//!
//! Measured (observe-bench's workload, 8,192 records per block): about 14
//! bytes per flow. zstd at levels 1 to 6 made the columns only 10-12 %
//! smaller and decoded them 3-4 times slower than LZ4: not worth a C
//! dependency. 4,096 records per block cost 15 bytes per flow, 16,384 and
//! 32,768 about 13.3.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::record::FlowRecord;

/// Version of the block format (first byte of every block).
pub const FORMAT: u8 = 1;
/// Fixed header length.
pub const HEADER_LEN: usize = 1 + 4 + 8 * 4 + 4 * 4;
const TRAILER_LEN: usize = 8;

/// Why a stored block cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("the block is {0} bytes, shorter than its header")]
    Short(usize),
    #[error("the block has format {0}, this build reads format {FORMAT}")]
    Format(u8),
    #[error("the block's checksum does not match its contents (torn or corrupted write)")]
    Checksum,
    #[error("the block's {0} section is not valid LZ4")]
    Lz4(&'static str),
    #[error("the block is malformed: {0}")]
    Malformed(&'static str),
}

/// The fixed header of a block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockHeader {
    pub count: u32,
    pub min_time: u64,
    pub max_time: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    tables_raw: u32,
    tables_len: u32,
    columns_raw: u32,
    columns_len: u32,
}

/// A fast hasher for the per-block tables (the keys are plain integers).
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        // Spread the high bits down: the table uses the low ones for buckets.
        self.0 ^ (self.0 >> 29)
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// One side of a record: dictionary id, identity, address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Side {
    pub ep: u32,
    pub identity: u32,
    pub ip: u128,
}

/// Every one-byte field of a record, and the rule id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Class {
    /// ip_version, protocol, tcp_flags, icmp_type, icmp_code, event_type, sub_type, verdict,
    /// drop_reason, traffic_direction, obs_point, trace_reason, policy_verdict, match_type, flags.
    pub bytes: [u8; 15],
    pub rule_id: u32,
}

impl Class {
    pub const VERDICT: usize = 7;
    pub const PROTOCOL: usize = 1;
    pub const EVENT_TYPE: usize = 5;
    pub const DROP_REASON: usize = 8;
    pub const DIRECTION: usize = 9;

    fn of(r: &FlowRecord) -> Self {
        Self {
            bytes: [
                r.ip_version,
                r.protocol,
                r.tcp_flags,
                r.icmp_type,
                r.icmp_code,
                r.event_type,
                r.sub_type,
                r.verdict,
                r.drop_reason,
                r.traffic_direction,
                r.obs_point,
                r.trace_reason,
                r.policy_verdict,
                r.match_type,
                r.flags,
            ],
            rule_id: r.rule_id,
        }
    }

    fn apply(&self, r: &mut FlowRecord) {
        let b = &self.bytes;
        r.ip_version = b[0];
        r.protocol = b[1];
        r.tcp_flags = b[2];
        r.icmp_type = b[3];
        r.icmp_code = b[4];
        r.event_type = b[5];
        r.sub_type = b[6];
        r.verdict = b[7];
        r.drop_reason = b[8];
        r.traffic_direction = b[9];
        r.obs_point = b[10];
        r.trace_reason = b[11];
        r.policy_verdict = b[12];
        r.match_type = b[13];
        r.flags = b[14];
        r.rule_id = self.rule_id;
    }
}

/// Where the datapath saw the packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Local {
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub tunnel_remote: u32,
    pub eth_src: u64,
    pub eth_dst: u64,
}

impl Local {
    fn of(r: &FlowRecord) -> Self {
        Self {
            ifindex: r.ifindex,
            endpoint_id: r.endpoint_id,
            tunnel_remote: r.tunnel_remote,
            eth_src: r.eth_src,
            eth_dst: r.eth_dst,
        }
    }
}

const COL_TIME: usize = 0;
const COL_SEQ: usize = 1;
const COL_CLASS: usize = 2;
const COL_SRC: usize = 3;
const COL_DST: usize = 4;
const COL_LOCAL: usize = 5;
const COL_SPORT: usize = 6;
const COL_DPORT: usize = 7;
const COL_LEN: usize = 8;
const COL_HANDSHAKE: usize = 9;
const COLUMNS: usize = 10;

/// Interns the entries of one per-block table, counting their uses.
struct Table<K> {
    ids: FastMap<K, u32>,
    keys: Vec<K>,
    uses: Vec<u32>,
    /// Provisional id -> id by frequency.
    remap: Vec<u32>,
    order: Vec<u32>,
}

impl<K: Copy + Eq + Hash> Default for Table<K> {
    fn default() -> Self {
        Self { ids: FastMap::default(), keys: Vec::new(), uses: Vec::new(), remap: Vec::new(), order: Vec::new() }
    }
}

impl<K: Copy + Eq + Hash> Table<K> {
    fn clear(&mut self) {
        self.ids.clear();
        self.keys.clear();
        self.uses.clear();
    }

    #[inline]
    fn intern(&mut self, k: K) -> u32 {
        let next = self.keys.len() as u32;
        let id = *self.ids.entry(k).or_insert(next);
        if id == next {
            self.keys.push(k);
            self.uses.push(0);
        }
        self.uses[id as usize] += 1;
        id
    }

    /// Number entries by use, most used first (ties: first seen first).
    fn rank(&mut self) {
        self.order.clear();
        self.order.extend(0..self.keys.len() as u32);
        let uses = &self.uses;
        self.order.sort_by_key(|&i| std::cmp::Reverse(uses[i as usize]));
        self.remap.clear();
        self.remap.resize(self.keys.len(), 0);
        for (new, &old) in self.order.iter().enumerate() {
            self.remap[old as usize] = new as u32;
        }
    }

    /// Entries in ranked order.
    fn ranked(&self) -> impl Iterator<Item = &K> {
        self.order.iter().map(|&i| &self.keys[i as usize])
    }
}

/// Turns records into blocks. Keeps its buffers between blocks.
#[derive(Default)]
pub struct Encoder {
    sides: Table<Side>,
    classes: Table<Class>,
    locals: Table<Local>,
    /// Provisional (class, src, dst, local) of each record.
    idx: Vec<[u32; 4]>,
    vals: Vec<u64>,
    raw: Vec<u8>,
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A column: the number of byte planes `p` its largest value needs (0 when all are
/// zero), then `p` planes of one byte per record, least significant first.
fn put_planes(out: &mut Vec<u8>, vals: &[u64]) {
    let max = vals.iter().copied().max().unwrap_or(0);
    let p = (64 - max.leading_zeros()).div_ceil(8);
    out.push(p as u8);
    for q in 0..p {
        out.extend(vals.iter().map(|v| (v >> (8 * q)) as u8));
    }
}

fn put_u128_min(out: &mut Vec<u8>, v: u128) {
    let bytes = v.to_be_bytes();
    let skip = (v.leading_zeros() / 8) as usize;
    out.push((16 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

fn compress_into(raw: &[u8], out: &mut Vec<u8>) -> u32 {
    let start = out.len();
    out.resize(start + lz4_flex::block::get_maximum_output_size(raw.len()), 0);
    // The output is sized for the worst case: compression cannot fail.
    let n = lz4_flex::block::compress_into(raw, &mut out[start..]).unwrap_or(0);
    out.truncate(start + n);
    n as u32
}

impl Encoder {
    /// Encode `records` (at least one, in the order they were appended) as one block,
    /// replacing the contents of `out`.
    pub fn encode(&mut self, records: &[FlowRecord], out: &mut Vec<u8>) -> BlockHeader {
        self.sides.clear();
        self.classes.clear();
        self.locals.clear();
        self.idx.clear();
        let mut min_time = u64::MAX;
        let mut max_time = 0;
        for r in records {
            min_time = min_time.min(r.time_ns);
            max_time = max_time.max(r.time_ns);
            let c = self.classes.intern(Class::of(r));
            let s = self.sides.intern(Side { ep: r.src_ep, identity: r.src_identity, ip: r.src_ip });
            let d = self.sides.intern(Side { ep: r.dst_ep, identity: r.dst_identity, ip: r.dst_ip });
            let l = self.locals.intern(Local::of(r));
            self.idx.push([c, s, d, l]);
        }
        if records.is_empty() {
            min_time = 0;
        }
        self.sides.rank();
        self.classes.rank();
        self.locals.rank();

        // Tables.
        let raw = &mut self.raw;
        raw.clear();
        put_varint(raw, self.sides.keys.len() as u64);
        for s in self.sides.ranked() {
            put_varint(raw, u64::from(s.ep));
            put_varint(raw, u64::from(s.identity));
            put_u128_min(raw, s.ip);
        }
        put_varint(raw, self.classes.keys.len() as u64);
        for c in self.classes.ranked() {
            raw.extend_from_slice(&c.bytes);
            put_varint(raw, u64::from(c.rule_id));
        }
        put_varint(raw, self.locals.keys.len() as u64);
        for l in self.locals.ranked() {
            put_varint(raw, u64::from(l.ifindex));
            put_varint(raw, u64::from(l.endpoint_id));
            put_varint(raw, u64::from(l.tunnel_remote));
            put_varint(raw, l.eth_src);
            put_varint(raw, l.eth_dst);
        }
        out.clear();
        out.resize(HEADER_LEN, 0);
        let tables_raw = raw.len() as u32;
        let tables_len = compress_into(raw, out);

        // Columns: every value as byte planes, so that a query reads any field of any
        // record directly. Time is the offset from the block's earliest; the sequence
        // number the gap from `first_seq + i` (no plane when consecutive).
        let first_seq = records.first().map_or(0, |r| r.seq);
        let last_seq = records.last().map_or(0, |r| r.seq);
        raw.clear();
        let vals = &mut self.vals;
        let mut column = |raw: &mut Vec<u8>, f: &dyn Fn(usize, &FlowRecord) -> u64| {
            vals.clear();
            vals.extend(records.iter().enumerate().map(|(i, r)| f(i, r)));
            put_planes(raw, vals);
        };
        column(raw, &|_, r| r.time_ns.wrapping_sub(min_time));
        column(raw, &|i, r| r.seq.wrapping_sub(first_seq.wrapping_add(i as u64)));
        for (k, remap) in
            [(0usize, &self.classes.remap), (1, &self.sides.remap), (2, &self.sides.remap), (3, &self.locals.remap)]
        {
            let idx = &self.idx;
            column(raw, &|i, _| u64::from(remap[idx[i][k] as usize]));
        }
        column(raw, &|_, r| u64::from(r.src_port));
        column(raw, &|_, r| u64::from(r.dst_port));
        column(raw, &|_, r| u64::from(r.orig_len));
        column(raw, &|_, r| u64::from(r.handshake_us));
        let columns_raw = raw.len() as u32;
        let columns_len = compress_into(raw, out);

        let h = BlockHeader {
            count: records.len() as u32,
            min_time,
            max_time,
            first_seq,
            last_seq,
            tables_raw,
            tables_len,
            columns_raw,
            columns_len,
        };
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.push(FORMAT);
        head.extend_from_slice(&h.count.to_le_bytes());
        for v in [h.min_time, h.max_time, h.first_seq, h.last_seq] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        for v in [h.tables_raw, h.tables_len, h.columns_raw, h.columns_len] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        out[..HEADER_LEN].copy_from_slice(&head);
        let sum = checksum(out);
        out.extend_from_slice(&sum.to_le_bytes());
        h
    }
}

/// A 64-bit checksum (four independent lanes of multiply-xorshift over 8-byte words).
#[must_use]
pub fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lanes = [1u64, 2, 3, 4];
    let mut chunks = bytes.chunks_exact(32);
    for c in &mut chunks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&c[i * 8..i * 8 + 8]);
            let x = (*lane ^ u64::from_le_bytes(w)).wrapping_mul(K);
            *lane = x ^ (x >> 29);
        }
    }
    let mut h = bytes.len() as u64;
    for lane in lanes {
        h = (h ^ lane).wrapping_mul(K);
        h ^= h >> 31;
    }
    for c in chunks.remainder().chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
        h ^= h >> 31;
    }
    h
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or(CodecError::Malformed("a number runs past its section"))?;
            self.pos += 1;
            if shift > 63 {
                return Err(CodecError::Malformed("a number is longer than 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    fn u32v(&mut self) -> Result<u32, CodecError> {
        u32::try_from(self.varint()?).map_err(|_| CodecError::Malformed("a 32-bit field is larger than 32 bits"))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or(CodecError::Malformed("a field runs past its section"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u128_min(&mut self) -> Result<u128, CodecError> {
        let n = usize::from(self.bytes(1)?[0]);
        if n > 16 {
            return Err(CodecError::Malformed("an address is longer than 16 bytes"));
        }
        Ok(self.bytes(n)?.iter().fold(0u128, |acc, b| (acc << 8) | u128::from(*b)))
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The header of a stored block (its sections' lengths checked against the
/// block's length; the checksum is checked by [`Block::load_tables`]).
pub fn read_header(v: &[u8]) -> Result<BlockHeader, CodecError> {
    parse_header(v, v.len())
}

/// The header of a block of `total` bytes, from (at least) its first [`HEADER_LEN`] bytes.
pub fn parse_header(v: &[u8], total: usize) -> Result<BlockHeader, CodecError> {
    if total < HEADER_LEN + TRAILER_LEN || v.len() < HEADER_LEN {
        return Err(CodecError::Short(total));
    }
    if v[0] != FORMAT {
        return Err(CodecError::Format(v[0]));
    }
    let h = BlockHeader {
        count: le_u32(v, 1),
        min_time: le_u64(v, 5),
        max_time: le_u64(v, 13),
        first_seq: le_u64(v, 21),
        last_seq: le_u64(v, 29),
        tables_raw: le_u32(v, 37),
        tables_len: le_u32(v, 41),
        columns_raw: le_u32(v, 45),
        columns_len: le_u32(v, 49),
    };
    let body = u64::from(h.tables_len) + u64::from(h.columns_len);
    if (HEADER_LEN + TRAILER_LEN) as u64 + body != total as u64 {
        return Err(CodecError::Malformed("section lengths do not add up to the block's length"));
    }
    if h.min_time > h.max_time {
        return Err(CodecError::Malformed("min_time is after max_time"));
    }
    if h.count == 0 {
        return Err(CodecError::Malformed("a block without records"));
    }
    Ok(h)
}

/// A decoded block. Reused between blocks (its buffers keep their capacity).
#[derive(Default)]
pub struct Block {
    pub header: BlockHeader,
    pub sides: Vec<Side>,
    pub classes: Vec<Class>,
    pub locals: Vec<Local>,
    tables: Vec<u8>,
    columns: Vec<u8>,
    /// Start and byte planes of each column in `columns`.
    cols: [(usize, usize); COLUMNS],
}

fn decompress(src: &[u8], raw_len: u32, out: &mut Vec<u8>, what: &'static str) -> Result<(), CodecError> {
    // A corrupted length must not make us allocate gigabytes: LZ4 expands at most 255x.
    let raw_len = raw_len as usize;
    if raw_len > src.len().saturating_mul(255) + 16 {
        return Err(CodecError::Malformed("a section claims more bytes than LZ4 can expand to"));
    }
    out.clear();
    out.resize(raw_len, 0);
    let n = lz4_flex::block::decompress_into(src, out).map_err(|_| CodecError::Lz4(what))?;
    if n != raw_len {
        return Err(CodecError::Lz4(what));
    }
    Ok(())
}

impl Block {
    /// Check the block's checksum, read its header and its tables (not its columns).
    pub fn load_tables(&mut self, v: &[u8]) -> Result<(), CodecError> {
        let h = read_header(v)?;
        let body_end = v.len() - TRAILER_LEN;
        if checksum(&v[..body_end]) != le_u64(v, body_end) {
            return Err(CodecError::Checksum);
        }
        self.header = h;
        let t = &v[HEADER_LEN..HEADER_LEN + h.tables_len as usize];
        decompress(t, h.tables_raw, &mut self.tables, "tables")?;
        let mut r = Reader::new(&self.tables);
        let n = r.varint()?;
        // Each entry takes at least 3 bytes: a count beyond the section is corruption.
        if n > self.tables.len() as u64 {
            return Err(CodecError::Malformed("the side table is longer than its section"));
        }
        self.sides.clear();
        for _ in 0..n {
            let ep = r.u32v()?;
            let identity = r.u32v()?;
            let ip = r.u128_min()?;
            self.sides.push(Side { ep, identity, ip });
        }
        let n = r.varint()?;
        if n > self.tables.len() as u64 {
            return Err(CodecError::Malformed("the class table is longer than its section"));
        }
        self.classes.clear();
        for _ in 0..n {
            let mut bytes = [0u8; 15];
            bytes.copy_from_slice(r.bytes(15)?);
            let rule_id = r.u32v()?;
            self.classes.push(Class { bytes, rule_id });
        }
        let n = r.varint()?;
        if n > self.tables.len() as u64 {
            return Err(CodecError::Malformed("the local table is longer than its section"));
        }
        self.locals.clear();
        for _ in 0..n {
            let ifindex = r.u32v()?;
            let endpoint_id = r.u32v()?;
            let tunnel_remote = r.u32v()?;
            let eth_src = r.varint()?;
            let eth_dst = r.varint()?;
            self.locals.push(Local { ifindex, endpoint_id, tunnel_remote, eth_src, eth_dst });
        }
        Ok(())
    }

    /// Decompress the columns of the block whose tables [`Block::load_tables`]
    /// read, and check them (every table index within its table).
    pub fn load_columns(&mut self, v: &[u8]) -> Result<(), CodecError> {
        let h = self.header;
        let at = HEADER_LEN + h.tables_len as usize;
        let c = v.get(at..at + h.columns_len as usize).ok_or(CodecError::Malformed("columns past the end"))?;
        decompress(c, h.columns_raw, &mut self.columns, "columns")?;
        let n = h.count as usize;
        let mut pos = 0usize;
        for col in &mut self.cols {
            let p = usize::from(*self.columns.get(pos).ok_or(CodecError::Malformed("a column is missing"))?);
            if p > 8 {
                return Err(CodecError::Malformed("a column has more than eight byte planes"));
            }
            let end = pos + 1 + p * n;
            if end > self.columns.len() {
                return Err(CodecError::Malformed("a column runs past the end"));
            }
            *col = (pos + 1, p);
            pos = end;
        }
        if pos != self.columns.len() {
            return Err(CodecError::Malformed("bytes after the last column"));
        }
        for (col, len) in [
            (COL_CLASS, self.classes.len()),
            (COL_SRC, self.sides.len()),
            (COL_DST, self.sides.len()),
            (COL_LOCAL, self.locals.len()),
        ] {
            // Every index within its table, so that reading records cannot fail.
            let (a, p) = self.cols[col];
            let planes = &self.columns[a..a + p * n];
            let max = match p {
                0 => 0,
                1 => planes.iter().copied().max().map_or(0, u64::from),
                2 => {
                    let (lo, hi) = planes.split_at(n);
                    lo.iter().zip(hi).map(|(l, h)| u16::from(*l) | (u16::from(*h) << 8)).max().map_or(0, u64::from)
                }
                _ => (0..n).map(|i| self.get(col, i)).max().unwrap_or(0),
            };
            if max >= len as u64 {
                return Err(CodecError::Malformed("a table index is past the end of its table"));
            }
        }
        Ok(())
    }

    /// Value of column `c` for record `i` (after [`Block::load_columns`]).
    #[inline(always)]
    fn get(&self, c: usize, i: usize) -> u64 {
        let (a, p) = self.cols[c];
        let n = self.header.count as usize;
        let b = &self.columns;
        match p {
            0 => 0,
            1 => u64::from(b[a + i]),
            2 => u64::from(b[a + i]) | (u64::from(b[a + n + i]) << 8),
            _ => (0..p).fold(0u64, |v, q| v | (u64::from(b[a + q * n + i]) << (8 * q))),
        }
    }

    /// Time of record `i`.
    #[inline(always)]
    pub fn time(&self, i: usize) -> u64 {
        self.header.min_time.wrapping_add(self.get(COL_TIME, i))
    }

    /// Class, source side and destination side of record `i` (after [`Block::load_columns`]).
    #[inline(always)]
    pub fn class_src_dst(&self, i: usize) -> (usize, usize, usize) {
        (self.get(COL_CLASS, i) as usize, self.get(COL_SRC, i) as usize, self.get(COL_DST, i) as usize)
    }

    /// Record `i` of the block (`i < header.count`, after [`Block::load_columns`]).
    #[must_use]
    pub fn record(&self, i: usize) -> FlowRecord {
        let (c, s, d) = self.class_src_dst(i);
        let src = &self.sides[s];
        let dst = &self.sides[d];
        let l = &self.locals[self.get(COL_LOCAL, i) as usize];
        let mut r = FlowRecord {
            time_ns: self.time(i),
            seq: self.header.first_seq.wrapping_add(i as u64).wrapping_add(self.get(COL_SEQ, i)),
            src_ip: src.ip,
            dst_ip: dst.ip,
            src_port: self.get(COL_SPORT, i) as u16,
            dst_port: self.get(COL_DPORT, i) as u16,
            src_identity: src.identity,
            dst_identity: dst.identity,
            src_ep: src.ep,
            dst_ep: dst.ep,
            handshake_us: self.get(COL_HANDSHAKE, i) as u32,
            ifindex: l.ifindex,
            orig_len: self.get(COL_LEN, i) as u32,
            tunnel_remote: l.tunnel_remote,
            endpoint_id: l.endpoint_id,
            eth_src: l.eth_src,
            eth_dst: l.eth_dst,
            ..FlowRecord::default()
        };
        self.classes[c].apply(&mut r);
        r
    }
}
