//! Connection-tracking garbage collection: its own thread and timer, its own
//! handle on the datapath; the map walk (blocking syscalls) never runs on the
//! async workers and never waits for another component.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use myelin_bpf::Datapath;
use tracing::{debug, warn};

/// Runs and removals since start.
#[derive(Debug, Default)]
pub struct GcStats {
    pub runs: AtomicU64,
    pub removed: AtomicU64,
    /// Connections tracked after the last run.
    pub ct_entries: AtomicU64,
}

/// Start collecting expired connections every `interval`.
pub fn spawn(datapath: Arc<Datapath>, interval: Duration) -> std::io::Result<Arc<GcStats>> {
    let stats = Arc::new(GcStats::default());
    let s = stats.clone();
    std::thread::Builder::new().name("ct-gc".into()).spawn(move || loop {
        std::thread::sleep(interval);
        match datapath.ct_gc_report() {
            Ok((n, remaining)) => {
                s.removed.fetch_add(n as u64, Ordering::Relaxed);
                s.ct_entries.store(remaining as u64, Ordering::Relaxed);
                if n > 0 {
                    debug!(removed = n, "conntrack gc");
                }
            }
            Err(e) => warn!(error = %e, "conntrack gc"),
        }
        s.runs.fetch_add(1, Ordering::Relaxed);
    })?;
    Ok(stats)
}
