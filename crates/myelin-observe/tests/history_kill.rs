//! The flow history after a SIGKILL: a writer process (the bench binary's
//! `--write-until-killed` mode) appends and flushes flows and reports each
//! flushed sequence number; the test kills it with SIGKILL mid-stream, opens
//! the history and finds every flow that was reported flushed, readable by
//! time, with the sequence continuing after it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use myelin_observe::history::{History, HistoryConfig, Query};
use myelin_observe::record::FlowRecord;

/// A directory removed when the test ends, also on panic.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when the test ends, also on panic.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn history_survives_sigkill_of_the_writer() {
    let dir = TempDir(std::env::temp_dir().join(format!("myelin-history-kill-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_observe-bench"))
            .arg("--write-until-killed")
            .arg(&dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting observe-bench --write-until-killed"),
    );
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Wait until at least 100,000 flows were reported flushed (deadline: 120 s).
    let mut flushed = 0u64;
    while flushed < 100_000 {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("the writer reported {flushed} flushed flows, then nothing: {e}"));
        flushed = line.strip_prefix("flushed ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    }
    // SIGKILL, while it is still writing.
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");
    // Whatever it reported after our last read was flushed too.
    while let Ok(line) = rx.try_recv() {
        if let Some(n) = line.strip_prefix("flushed ").and_then(|n| n.parse().ok()) {
            flushed = flushed.max(n);
        }
    }

    let cfg = HistoryConfig { max_bytes: 64 << 20, block_records: 512, ..HistoryConfig::default() };
    let h = History::open(&dir.0, cfg.clone()).unwrap();
    assert!(h.last_seq() >= flushed, "last_seq {} < flushed {flushed}", h.last_seq());
    let all = h.query(&Query::default(), &mut |_| true).unwrap();
    assert!(all.len() as u64 >= flushed, "{} stored, {flushed} were flushed", all.len());
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "sequence numbers are consecutive from 1");
    }
    // By time: the last minute holds them all; `--since` the middle flow returns the newer half.
    let mid = all[all.len() / 2];
    let since = h.query(&Query { since_ns: Some(mid.time_ns), ..Query::default() }, &mut |_| true).unwrap();
    assert_eq!(since.first().map(|r| r.seq), Some(mid.seq));
    assert_eq!(since.len(), all.len() - all.len() / 2);
    let dict = h.dict_entries().unwrap();
    assert!(
        dict.len() >= 320 && dict[6].pod_name.starts_with("app-"),
        "the dictionary survived: {} entries",
        dict.len()
    );

    // The agent goes on after the restart: the next sequence number follows the last stored.
    let next = FlowRecord { time_ns: all[all.len() - 1].time_ns + 1, seq: h.last_seq() + 1, ..FlowRecord::default() };
    h.append(&[next]).unwrap();
    h.flush().unwrap();
    drop(h);
    let h = History::open(&dir.0, cfg).unwrap();
    let last = h.query(&Query { newest_first: true, limit: Some(1), ..Query::default() }, &mut |_| true).unwrap();
    assert_eq!(last, vec![next]);
}
