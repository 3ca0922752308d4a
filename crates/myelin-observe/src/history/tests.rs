#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::{self, Block, CodecError, Encoder};
use super::segment;
use super::*;
use crate::dict::{Dictionary, EndpointDesc};
use crate::record::{verdict, FlowRecord};

/// A directory removed when the test ends, also on panic.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "myelin-history-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

use crate::testing::SplitMix64 as Rng;

/// A record with every field chosen at random (extremes included).
fn random_record(rng: &mut Rng, time_ns: u64, seq: u64) -> FlowRecord {
    let v6 = rng.below(3) == 0;
    let ip = |rng: &mut Rng| {
        if v6 {
            (u128::from(rng.next()) << 64) | u128::from(rng.next())
        } else {
            u128::from(rng.next() as u32)
        }
    };
    let b = |rng: &mut Rng| rng.pick(255) as u8;
    let w = |rng: &mut Rng| rng.pick(u64::from(u32::MAX)) as u32;
    FlowRecord {
        time_ns,
        seq,
        src_ip: ip(rng),
        dst_ip: if rng.below(5) == 0 { u128::MAX } else { ip(rng) },
        ip_version: if v6 { 6 } else { 4 },
        protocol: b(rng),
        src_port: rng.pick(65535) as u16,
        dst_port: rng.pick(65535) as u16,
        tcp_flags: b(rng),
        icmp_type: b(rng),
        icmp_code: b(rng),
        event_type: b(rng),
        sub_type: b(rng),
        verdict: b(rng),
        drop_reason: b(rng),
        traffic_direction: b(rng),
        obs_point: b(rng),
        trace_reason: b(rng),
        policy_verdict: b(rng),
        match_type: b(rng),
        flags: b(rng),
        src_identity: w(rng),
        dst_identity: w(rng),
        src_ep: w(rng),
        dst_ep: w(rng),
        rule_id: w(rng),
        handshake_us: w(rng),
        ifindex: w(rng),
        orig_len: w(rng),
        tunnel_remote: w(rng),
        endpoint_id: w(rng),
        eth_src: rng.pick(0xffff_ffff_ffff),
        eth_dst: rng.pick(u64::MAX),
    }
}

fn cfg() -> HistoryConfig {
    HistoryConfig {
        max_bytes: 64 * MIB,
        // The test data is from 2023: keep it.
        max_age: Duration::from_secs(100 * 365 * 24 * 3600),
        block_records: 64,
        fsync_interval: None,
        ..HistoryConfig::default()
    }
}

/// Equal record lists, or a panic naming the first difference (not thousands of records).
#[track_caller]
fn same(got: &[FlowRecord], expect: &[FlowRecord], what: &str) {
    if got == expect {
        return;
    }
    let i = got.iter().zip(expect).position(|(a, b)| a != b).unwrap_or(got.len().min(expect.len()));
    panic!(
        "{what}: got {} records, expected {}; first difference at {i}: got {:?}, expected {:?}",
        got.len(),
        expect.len(),
        got.get(i).map(|r| r.seq),
        expect.get(i).map(|r| r.seq)
    );
}

fn all(h: &History) -> Vec<FlowRecord> {
    h.query(&Query::default(), &mut |_| true).unwrap()
}

fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const T0: u64 = 1_700_000_000_000_000_000;

#[test]
fn codec_round_trips_every_field_and_odd_orders() {
    let mut rng = Rng(1);
    let mut enc = Encoder::default();
    let mut buf = Vec::new();
    let mut b = Block::default();
    for case in 0..50 {
        let n = 1 + rng.below(500) as usize;
        let mut t = rng.next() >> 1;
        let mut seq = rng.next();
        let recs: Vec<FlowRecord> = (0..n)
            .map(|_| {
                // Time may go backwards and sequence numbers may jump or wrap.
                t = t.wrapping_add(rng.below(1 << 20)).wrapping_sub(rng.below(1 << 18));
                seq = seq.wrapping_add(if rng.below(10) == 0 { rng.next() } else { 1 });
                random_record(&mut rng, t, seq)
            })
            .collect();
        let h = enc.encode(&recs, &mut buf);
        assert_eq!(h.count as usize, n);
        b.load_tables(&buf).unwrap();
        b.load_columns(&buf).unwrap();
        let back: Vec<FlowRecord> = (0..n).map(|i| b.record(i)).collect();
        same(&back, &recs, &format!("case {case}"));
    }
}

#[test]
fn codec_rejects_damaged_blocks_without_panicking() {
    let mut rng = Rng(2);
    let recs: Vec<FlowRecord> = (0..300).map(|i| random_record(&mut rng, T0 + i * 1000, i)).collect();
    let mut buf = Vec::new();
    Encoder::default().encode(&recs, &mut buf);
    let mut b = Block::default();
    // Every truncation, and a flipped bit at many positions.
    for len in (0..buf.len()).step_by(7) {
        assert!(b.load_tables(&buf[..len]).is_err(), "truncated to {len}");
    }
    for pos in (0..buf.len()).step_by(3) {
        let mut bad = buf.clone();
        bad[pos] ^= 0x10;
        let r = b.load_tables(&bad).and_then(|()| b.load_columns(&bad));
        assert!(r.is_err(), "bit flip at {pos} went unnoticed");
    }
    assert_eq!(b.load_tables(&[0u8; 100]), Err(CodecError::Format(0)));
    // Garbage with a valid checksum (a foreign writer) is malformed, not a panic.
    for seed in 0..200 {
        let mut r = Rng(seed);
        let mut junk: Vec<u8> = (0..r.below(400) as usize + codec::HEADER_LEN).map(|_| r.next() as u8).collect();
        junk[0] = codec::FORMAT;
        let sum = codec::checksum(&junk);
        junk.extend_from_slice(&sum.to_le_bytes());
        let _ = b.load_tables(&junk).and_then(|()| b.load_columns(&junk));
    }
}

#[test]
fn stores_and_returns_every_field_ipv4_ipv6_and_extremes() {
    let dir = TempDir::new("roundtrip");
    let h = History::open(dir.path(), cfg()).unwrap();
    let mut rng = Rng(3);
    let mut recs: Vec<FlowRecord> = (0..1000).map(|i| random_record(&mut rng, T0 + i * 1_000_000, i + 1)).collect();
    // Time zero and the end of time, in blocks of their own.
    recs.insert(0, random_record(&mut rng, 0, 0));
    recs.push(random_record(&mut rng, u64::MAX, 1001));
    h.append(&recs).unwrap();
    h.flush().unwrap();
    same(&all(&h), &recs, "everything");
    let s = h.stats().unwrap();
    assert_eq!((s.records, s.buffered, s.last_seq), (1002, 0, 1001));
    assert_eq!((s.oldest_ns, s.newest_ns), (Some(0), Some(u64::MAX)));
    assert!(s.blocks >= 1002 / 64, "blocks of 64 records: {}", s.blocks);
}

#[test]
fn time_ranges_and_limits_in_both_directions() {
    let dir = TempDir::new("ranges");
    let h = History::open(dir.path(), cfg()).unwrap();
    let mut rng = Rng(4);
    // 10,000 records, one per ms; the last 30 stay in the open block.
    let recs: Vec<FlowRecord> = (0..10_000).map(|i| random_record(&mut rng, T0 + i * 1_000_000, i + 1)).collect();
    h.append(&recs).unwrap();
    assert_eq!(h.stats().unwrap().buffered, 10_000 % 64);
    let t = |i: u64| T0 + i * 1_000_000;
    let q = |since: Option<u64>, until: Option<u64>, newest_first: bool, limit: Option<usize>| Query {
        since_ns: since,
        until_ns: until,
        newest_first,
        limit,
        hint: None,
    };
    let even = |r: &FlowRecord| r.seq & 1 == 0;
    let expect =
        |lo: u64, hi: u64| -> Vec<FlowRecord> { recs[lo as usize..hi as usize].iter().copied().filter(even).collect() };

    let got = h.query(&q(Some(t(1234)), Some(t(5678)), false, None), &mut |r| even(r)).unwrap();
    same(&got, &expect(1234, 5678), "a range");
    // Since is inclusive, until exclusive, at block borders and inside blocks.
    for (lo, hi) in [(0, 64), (63, 65), (64, 128), (9_990, 10_000), (9_969, 9_971), (5, 6)] {
        let got = h.query(&q(Some(t(lo)), Some(t(hi)), false, None), &mut |_| true).unwrap();
        same(&got, &recs[lo as usize..hi as usize], &format!("[{lo}, {hi})"));
    }
    // Oldest first with a limit: the first n; newest first: the last n, returned oldest first.
    let got = h.query(&q(Some(t(100)), Some(t(9_000)), false, Some(25)), &mut |r| even(r)).unwrap();
    same(&got, &expect(100, 9_000)[..25], "first 25");
    let got = h.query(&q(Some(t(100)), Some(t(9_000)), true, Some(25)), &mut |r| even(r)).unwrap();
    let e = expect(100, 9_000);
    same(&got, &e[e.len() - 25..], "last 25");
    // --last 20 without a range reaches into the open block; --first 20 starts at the oldest.
    let got = h.query(&q(None, None, true, Some(20)), &mut |_| true).unwrap();
    same(&got, &recs[10_000 - 20..], "--last 20");
    let got = h.query(&q(None, None, false, Some(20)), &mut |_| true).unwrap();
    same(&got, &recs[..20], "--first 20");
    // A limit larger than the matches returns them all; a range with nothing returns nothing.
    let got = h.query(&q(Some(t(10)), Some(t(20)), true, Some(1000)), &mut |_| true).unwrap();
    same(&got, &recs[10..20], "a limit beyond the matches");
    assert!(h.query(&q(Some(t(20_000)), None, false, None), &mut |_| true).unwrap().is_empty());
    assert!(h.query(&q(None, Some(T0), false, None), &mut |_| true).unwrap().is_empty());
    assert!(h.query(&q(None, None, true, Some(0)), &mut |_| true).unwrap().is_empty());
    // Time skipping: a narrow range decodes few blocks.
    let (_, st) = h.query_with_stats(&q(Some(t(5_000)), Some(t(5_010)), false, None), &mut |_| true).unwrap();
    assert!(st.blocks_decoded <= 2, "{st:?}");
}

/// Records of a synthetic cluster: pod `i` is dictionary id `i + 1`, identity `1000 + i / 4`.
fn cluster_records(n: u64, rng: &mut Rng, rare_pod_every: u64) -> Vec<FlowRecord> {
    (0..n)
        .map(|i| {
            let mut r = random_record(rng, T0 + i * 1000, i + 1);
            let (a, b) = (rng.below(20) as u32, rng.below(20) as u32);
            // Pod 99 talks only in some stretches.
            let a = if rare_pod_every > 0 && (i / 500) % rare_pod_every == 0 && rng.below(10) == 0 { 99 } else { a };
            r.src_ep = a + 1;
            r.dst_ep = b + 1;
            r.src_identity = 1000 + a / 4;
            r.dst_identity = 1000 + b / 4;
            r.verdict = if rng.below(20) == 0 { verdict::DROPPED } else { verdict::FORWARDED };
            r.protocol = [6, 17, 1][rng.below(3) as usize];
            r.event_type = [1, 4, 5][rng.below(3) as usize];
            r.traffic_direction = rng.below(3) as u8;
            r.drop_reason = if r.verdict == verdict::DROPPED { 133 } else { 0 };
            r
        })
        .collect()
}

fn clause_matches(c: &HintClause, r: &FlowRecord) -> bool {
    let has = |s: &Option<Vec<u32>>, v: u32| s.as_ref().is_none_or(|s| s.contains(&v));
    let has8 = |s: &Option<Vec<u8>>, v: u8| s.as_ref().is_none_or(|s| s.contains(&v));
    has(&c.src_ep, r.src_ep)
        && has(&c.dst_ep, r.dst_ep)
        && (has(&c.either_ep, r.src_ep) || has(&c.either_ep, r.dst_ep))
        && has(&c.src_identity, r.src_identity)
        && has(&c.dst_identity, r.dst_identity)
        && (has(&c.either_identity, r.src_identity) || has(&c.either_identity, r.dst_identity))
        && has8(&c.verdict, r.verdict)
        && has8(&c.event_type, r.event_type)
        && has8(&c.protocol, r.protocol)
        && has8(&c.drop_reason, r.drop_reason)
        && has8(&c.traffic_direction, r.traffic_direction)
}

#[test]
fn block_hints_skip_blocks_and_never_change_results() {
    let dir = TempDir::new("hints");
    let h = History::open(dir.path(), HistoryConfig { block_records: 256, ..cfg() }).unwrap();
    let mut rng = Rng(5);
    let recs = cluster_records(20_000, &mut rng, 7);
    h.append(&recs).unwrap();
    h.flush().unwrap();

    // Pod 99's drops: most blocks never see pod 99.
    let clause =
        HintClause { either_ep: Some(vec![100]), verdict: Some(vec![verdict::DROPPED]), ..HintClause::default() };
    let hint = BlockHint { any_of: vec![clause.clone()] };
    let mut pred = |r: &FlowRecord| clause_matches(&clause, r);
    let (plain, ps) = h.query_with_stats(&Query::default(), &mut pred).unwrap();
    let (hinted, hs) = h.query_with_stats(&Query { hint: Some(hint.clone()), ..Query::default() }, &mut pred).unwrap();
    assert!(!plain.is_empty());
    same(&hinted, &plain, "hinted");
    assert!(hs.blocks_skipped_hint > ps.blocks_decoded / 2, "hinted {hs:?}, plain {ps:?}");
    assert!(hs.records_tested == plain.len() as u64, "the hint filters records inside blocks too: {hs:?}");
    // --last 5 of that, with and without the hint.
    let q = Query { newest_first: true, limit: Some(5), hint: Some(hint), ..Query::default() };
    same(&h.query(&q, &mut pred).unwrap(), &plain[plain.len() - 5..], "--last 5 hinted");

    // Random clauses (OR of up to three): same results as the predicate alone.
    for round in 0..150 {
        let mut clauses = Vec::new();
        for _ in 0..=rng.below(3) {
            let mut ids = |max: u64| -> Option<Vec<u32>> {
                (rng.below(3) == 0).then(|| (0..=rng.below(3)).map(|_| rng.below(max) as u32).collect())
            };
            let mut c = HintClause {
                src_ep: ids(22),
                dst_ep: ids(22),
                either_ep: ids(22),
                src_identity: ids(1006).map(|v| v.into_iter().map(|x| x.max(995)).collect()),
                dst_identity: ids(1006).map(|v| v.into_iter().map(|x| x.max(995)).collect()),
                either_identity: ids(1006).map(|v| v.into_iter().map(|x| x.max(995)).collect()),
                ..HintClause::default()
            };
            let mut small = |vals: &[u8]| -> Option<Vec<u8>> {
                (rng.below(3) == 0).then(|| vals.iter().copied().filter(|_| rng.below(2) == 0).collect())
            };
            c.verdict = small(&[0, 1, 2]);
            c.event_type = small(&[1, 4, 5]);
            c.protocol = small(&[1, 6, 17]);
            c.drop_reason = small(&[0, 133]);
            c.traffic_direction = small(&[0, 1, 2]);
            clauses.push(c);
        }
        let mut pred = |r: &FlowRecord| clauses.iter().any(|c| clause_matches(c, r));
        let newest_first = rng.below(2) == 0;
        let limit = (rng.below(2) == 0).then(|| rng.below(50) as usize + 1);
        let since_ns = (rng.below(2) == 0).then(|| T0 + rng.below(20_000_000));
        let base = Query { since_ns, until_ns: None, newest_first, limit, hint: None };
        let plain = h.query(&base, &mut pred).unwrap();
        let hinted =
            h.query(&Query { hint: Some(BlockHint { any_of: clauses.clone() }), ..base.clone() }, &mut pred).unwrap();
        same(&hinted, &plain, &format!("round {round}: {clauses:?}"));
    }
}

#[test]
fn dictionary_and_sequence_survive_a_restart() {
    let dir = TempDir::new("restart");
    let d = Dictionary::new();
    let descs: Vec<EndpointDesc> = (0..50)
        .map(|i| EndpointDesc {
            endpoint_id: i,
            identity: 1000 + i,
            namespace: format!("ns{}", i % 3),
            pod_name: format!("pod-{i}"),
            labels: vec![format!("k8s:app=a{i}"), "k8s:tier=web".into()],
            workload: (i % 2 == 0).then(|| (format!("w{i}"), "Deployment".into())),
            node: "node-1".into(),
            cluster: "default".into(),
        })
        .collect();
    let mut rng = Rng(6);
    let first: Vec<FlowRecord> = (0..500).map(|i| random_record(&mut rng, T0 + i * 1000, i + 1)).collect();
    {
        let h = History::open(dir.path(), cfg()).unwrap();
        for e in &descs[..30] {
            d.intern(e.clone());
        }
        assert_eq!(h.sync_dict(&d.view()).unwrap(), 30);
        for e in &descs[30..] {
            d.intern(e.clone());
        }
        assert_eq!(h.sync_dict(&d.view()).unwrap(), 20);
        assert_eq!(h.sync_dict(&d.view()).unwrap(), 0, "nothing new");
        h.append(&first).unwrap();
        h.flush().unwrap();
        assert_eq!(h.last_seq(), 500);
    }
    let h = History::open(dir.path(), cfg()).unwrap();
    assert_eq!(h.dict_entries().unwrap(), descs);
    assert_eq!(h.last_seq(), 500, "sequence numbers continue after the highest stored");
    same(&all(&h), &first, "after a restart");
    let restored = Dictionary::new();
    restored.restore(h.dict_entries().unwrap());
    assert_eq!(restored.intern(descs[17].clone()), 18, "ids keep their meaning");
    let next: Vec<FlowRecord> =
        (0..100).map(|i| random_record(&mut rng, T0 + 1_000_000 + i * 1000, h.last_seq() + 1 + i)).collect();
    h.append(&next).unwrap();
    h.flush().unwrap();
    drop(h);
    let h = History::open(dir.path(), cfg()).unwrap();
    assert_eq!(h.last_seq(), 600);
    same(&all(&h), &[first, next].concat(), "after a second restart");
}

/// The only segment file of a history.
fn only_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join(SEGMENTS)).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.pop().unwrap()
}

fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

#[test]
fn damaged_blocks_are_skipped_and_a_torn_tail_is_cut_off() {
    let dir = TempDir::new("corrupt");
    let mut rng = Rng(7);
    let recs: Vec<FlowRecord> = (0..640).map(|i| random_record(&mut rng, T0 + i * 1000, i + 1)).collect();
    {
        let h = History::open(dir.path(), cfg()).unwrap();
        h.append(&recs).unwrap();
    }
    // Ten blocks of 64. Damage: garbage over block 2's payload, one flipped byte in block 5,
    // block 7's frame header overwritten, and block 9 cut in the middle (a torn last write).
    let seg = only_segment(dir.path());
    let file = std::fs::File::open(&seg).unwrap();
    let len = file.metadata().unwrap().len();
    let blocks = segment::scan(&file, len).unwrap().blocks;
    drop(file);
    assert_eq!(blocks.len(), 10);
    overwrite(&seg, blocks[2].offset + 100, &[0x5a; 200]);
    overwrite(&seg, blocks[5].offset + u64::from(blocks[5].len) / 2, &[0xff]);
    overwrite(&seg, blocks[7].offset - FRAME_HEADER as u64, b"garbage!");
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(blocks[9].offset + 100).unwrap();
    drop(f);

    let h = History::open(dir.path(), cfg()).unwrap();
    let (got, st) = h.query_with_stats(&Query::default(), &mut |_| true).unwrap();
    let kept = [0, 1, 3, 4, 6, 8];
    let expect: Vec<FlowRecord> =
        recs.iter().enumerate().filter(|(i, _)| kept.contains(&(i / 64))).map(|(_, r)| *r).collect();
    same(&got, &expect, "undamaged blocks");
    assert_eq!(st.blocks_corrupt, 2, "blocks 2 and 5 fail their checksum: {st:?}");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), blocks[9].offset - FRAME_HEADER as u64, "torn tail cut");
    // Newest first skips them too.
    let got = h.query(&Query { newest_first: true, limit: Some(70), ..Query::default() }, &mut |_| true).unwrap();
    same(&got, &expect[expect.len() - 70..], "newest first");
    // Writing goes on after the cut, and a reopen reads it all.
    h.append(&recs[576..]).unwrap();
    h.flush().unwrap();
    drop(h);
    let h = History::open(dir.path(), cfg()).unwrap();
    same(&all(&h), &[expect, recs[576..].to_vec()].concat(), "after the cut");
}

#[test]
fn a_torn_last_write_loses_only_the_last_block() {
    let dir = TempDir::new("torn");
    let mut rng = Rng(8);
    let recs: Vec<FlowRecord> = (0..640).map(|i| random_record(&mut rng, T0 + i * 1000, i + 1)).collect();
    let d = Dictionary::new();
    {
        let h = History::open(dir.path(), cfg()).unwrap();
        for i in 0..5 {
            d.intern(EndpointDesc { pod_name: format!("p{i}"), ..EndpointDesc::default() });
        }
        h.sync_dict(&d.view()).unwrap();
        h.append(&recs).unwrap();
    }
    // Cut the segment and the dictionary in the middle of their last frames, as a crash would.
    for p in [only_segment(dir.path()), dir.path().join(DICT_FILE)] {
        let len = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 20).unwrap();
    }
    let h = History::open(dir.path(), cfg()).unwrap();
    same(&all(&h), &recs[..576], "the first nine blocks survive, the torn tenth is gone");
    assert_eq!(h.last_seq(), 576);
    let names: Vec<String> = h.dict_entries().unwrap().into_iter().map(|e| e.pod_name).collect();
    assert_eq!(names, ["p0", "p1", "p2", "p3"]);
    // And writing goes on: the dictionary entry again, then the block.
    assert_eq!(h.sync_dict(&d.view()).unwrap(), 1);
    h.append(&recs[576..]).unwrap();
    h.flush().unwrap();
    same(&all(&h), &recs, "written on");
    drop(h);
    let h = History::open(dir.path(), cfg()).unwrap();
    same(&all(&h), &recs, "reopened");
    assert_eq!(h.dict_entries().unwrap().len(), 5);
}

#[test]
fn age_retention_drops_old_segments_and_frees_disk() {
    let dir = TempDir::new("age");
    let hour = 3_600_000_000_000u64;
    let c = HistoryConfig {
        max_age: Duration::from_secs(3600),
        segment_max_span: Some(Duration::from_secs(600)),
        block_records: 256,
        max_bytes: 512 * MIB,
        ..cfg()
    };
    let now = now_ns();
    let h = History::open(dir.path(), c.clone()).unwrap();
    let mut rng = Rng(9);
    // Ten hours of flows, 2 per second, ending now.
    let start = now - 10 * hour;
    let recs: Vec<FlowRecord> =
        (0..72_000u64).map(|i| random_record(&mut rng, start + i * 500_000_000, i + 1)).collect();
    h.append(&recs).unwrap();
    h.flush().unwrap();
    let before = h.stats().unwrap();
    assert!(before.segments >= 60, "{before:?}");
    let r = h.enforce_retention(now).unwrap();
    assert!(r.dropped_by_age > 0 && r.dropped_by_size == 0, "{r:?}");
    let cutoff = now - hour;
    let kept = all(&h);
    assert!(kept.iter().all(|r| r.time_ns >= cutoff - 600_000_000_000 - MAX_BLOCK_SPAN_NS), "nothing much older");
    let expect_kept = recs.iter().filter(|r| r.time_ns >= cutoff).count();
    assert!(kept.len() >= expect_kept, "everything within max_age is kept");
    assert_eq!(kept[kept.len() - 1].seq, recs[recs.len() - 1].seq);
    assert_eq!(r.records_dropped as usize, recs.len() - kept.len());
    let after = h.stats().unwrap();
    assert_eq!(after.records as usize, kept.len());
    assert_eq!(h.last_seq(), 72_000, "retention keeps the sequence going");
    assert!(after.disk_bytes < before.disk_bytes / 5, "the files are gone: {before:?} -> {after:?}");
    assert!(r.bytes_after < r.bytes_before / 5, "{r:?}");
    drop(h);
    // Retention on open: an hour later, the rest is gone too.
    let h = History::open(dir.path(), c).unwrap();
    assert_eq!(h.stats().unwrap().records as usize, kept.len(), "nothing is older than an hour yet");
    let r = h.enforce_retention(now + 2 * hour).unwrap();
    assert_eq!(r.records_dropped as usize, kept.len());
    assert!(all(&h).is_empty());
    assert_eq!(h.last_seq(), 72_000, "the sequence survives an empty history");
}

#[test]
fn size_retention_keeps_the_directory_under_max_bytes() {
    let dir = TempDir::new("size");
    let c = HistoryConfig { max_bytes: 8 * MIB, segment_max_bytes: Some(MIB / 2), block_records: 512, ..cfg() };
    let h = History::open(dir.path(), c).unwrap();
    let mut rng = Rng(10);
    // Random records compress badly: about 60 bytes each, 30 MiB in all.
    let n = 500_000u64;
    let mut dropped = 0;
    for chunk in 0..50 {
        let recs: Vec<FlowRecord> = (0..n / 50)
            .map(|i| random_record(&mut rng, T0 + (chunk * (n / 50) + i) * 1000, chunk * (n / 50) + i + 1))
            .collect();
        h.append(&recs).unwrap();
        dropped += h.enforce_retention(T0).unwrap().records_dropped;
    }
    h.flush().unwrap();
    let s = h.stats().unwrap();
    assert!(s.records < n / 2, "most was dropped: {s:?}");
    assert!(s.records > 0);
    let got = all(&h);
    assert_eq!(got.len() as u64, s.records);
    assert_eq!(got.last().unwrap().seq, n, "the newest flows are kept");
    assert_eq!(got.first().unwrap().seq, n - s.records + 1, "the kept flows are the newest, contiguous");
    assert_eq!(dropped, 0, "size is enforced as blocks are written, retention finds nothing left to do");
    assert!(s.disk_bytes <= 8 * MIB && s.disk_bytes > 7 * MIB, "{s:?}");
}

#[test]
fn the_writer_thread_stores_batches_and_dictionary() {
    let dir = TempDir::new("writer");
    let h = Arc::new(History::open(dir.path(), cfg()).unwrap());
    let d = Dictionary::new();
    let mut rng = Rng(11);
    let mut w = HistoryWriter::spawn(
        h.clone(),
        d.clone(),
        WriterConfig { flush_interval: Duration::from_millis(50), ..WriterConfig::default() },
    )
    .unwrap();
    let mut recs = Vec::new();
    for i in 0..100u64 {
        let id = d.intern(EndpointDesc { pod_name: format!("p{}", i % 10), ..EndpointDesc::default() });
        let mut r = random_record(&mut rng, T0 + i * 1000, i + 1);
        r.src_ep = id;
        recs.push(r);
        if i % 10 == 9 {
            crate::pipeline::Sink::batch(&mut w, &recs[recs.len() - 10..]);
        }
    }
    // The flush interval writes the open block without more records coming.
    wait_for("the writer to flush", Duration::from_secs(10), || h.stats().unwrap().records == 100);
    assert_eq!(h.dict_entries().unwrap().len(), 10);
    drop(w);
    same(&all(&h), &recs, "written by the thread");
}

#[test]
fn bad_settings_name_the_field() {
    let dir = TempDir::new("config");
    let e = History::open(dir.path(), HistoryConfig { max_bytes: 1000, ..cfg() }).unwrap_err().to_string();
    assert!(e.contains("max_bytes") && e.contains("1 MiB") && e.contains(&dir.path().display().to_string()), "{e}");
    let e = History::open(dir.path(), HistoryConfig { block_records: 0, ..cfg() }).unwrap_err().to_string();
    assert!(e.contains("block_records"), "{e}");
    let e = History::open(dir.path(), HistoryConfig { max_age: Duration::ZERO, ..cfg() }).unwrap_err().to_string();
    assert!(e.contains("max_age"), "{e}");
    let e = History::open(dir.path(), HistoryConfig { segment_max_bytes: Some(40 * MIB), ..cfg() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("segment_max_bytes") && e.contains("half of max_bytes"), "{e}");
    assert!(!dir.path().exists(), "nothing is created for bad settings");
}

#[test]
fn serves_as_the_observer_flow_store() {
    fn shared<T: Send + Sync>(_: &T) {}
    let dir = TempDir::new("store");
    let h = Arc::new(History::open(dir.path(), cfg()).unwrap());
    shared(&h);
    let mut rng = Rng(12);
    let recs: Vec<FlowRecord> = (0..100).map(|i| random_record(&mut rng, T0 + i * 1000, i + 1)).collect();
    h.append(&recs).unwrap();
    let store: Arc<dyn crate::server::FlowStore> = h;
    let got = store.query(Some(T0 + 10_000), Some(T0 + 20_000), true, Some(3), &mut |_| true).unwrap();
    same(&got, &recs[17..20], "the last three of [10, 20)");
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_history() {
    let dir = TempDir::new("lock");
    let h = History::open(dir.path(), cfg()).unwrap();
    let e = History::open(dir.path(), cfg()).expect_err("a second open must fail");
    assert!(matches!(e, HistoryError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("flow_history_dir"), "{e}");
    drop(h);
    History::open(dir.path(), cfg()).expect("free again once the first is closed");
}
