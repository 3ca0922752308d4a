//! Process events out of the `process` object (tp_btf `sched_process_exec`,
//! tracepoint `sched/sched_process_exit`): read from their own ring buffer,
//! `process_events`, by [`ProcessReader`]. The programs run once attached
//! with [`crate::Datapath::attach_tracing`].

use std::path::Path;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle, RingBuffer, RingBufferBuilder};

use crate::datapath::{decode, map_err};
use crate::skel_process::types;
use crate::{sys, BpfError};

/// What happened to the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEventKind {
    /// It executed a file (`execve`).
    Exec,
    /// Its thread-group leader exited.
    Exit,
}

/// One process event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    pub kind: ProcessEventKind,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// The task's cgroup v2 id (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Process id (the thread-group id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The parent's process id.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Exit: the task's exit code (`status << 8 | signal`).
    pub exit_code: u32,
    /// The task's command name (at exec: the new one).
    pub comm: String,
    /// Exec: the path executed.
    pub filename: String,
}

fn c_string(b: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = b.iter().map(|c| c.to_ne_bytes()[0]).take_while(|&c| c != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl ProcessEvent {
    /// Decode a ring buffer record; None if it is malformed.
    #[must_use]
    pub fn parse(record: &[u8]) -> Option<Self> {
        let e: types::process_event = sys::from_bytes(record.get(..std::mem::size_of::<types::process_event>())?)?;
        let kind = match e.r#type {
            1 => ProcessEventKind::Exec,
            2 => ProcessEventKind::Exit,
            _ => return None,
        };
        Some(Self {
            kind,
            ktime_ns: e.ktime_ns,
            cgroup_id: e.cgroup_id,
            pid: e.pid,
            tid: e.tid,
            ppid: e.ppid,
            uid: e.uid,
            gid: e.gid,
            exit_code: e.exit_code,
            comm: c_string(&e.comm),
            filename: c_string(&e.filename),
        })
    }
}

/// Reads the `process_events` ring of a pin directory; the callback gets
/// each decoded event on the thread calling [`ProcessReader::poll`].
pub struct ProcessReader {
    ring: RingBuffer<'static>,
    lost: MapHandle,
}

impl std::fmt::Debug for ProcessReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessReader").finish_non_exhaustive()
    }
}

impl ProcessReader {
    /// Open the ring of the datapath pinned at `pin_dir` (the `process`
    /// object must have been loaded there).
    pub fn open(pin_dir: &Path, mut on_event: impl FnMut(ProcessEvent) + 'static) -> Result<Self, BpfError> {
        let events = MapHandle::from_pinned_path(pin_dir.join("process_events"))
            .map_err(map_err("process_events", "opening the pinned ring buffer"))?;
        let lost = MapHandle::from_pinned_path(pin_dir.join("process_events_lost"))
            .map_err(map_err("process_events_lost", "opening the pinned map"))?;
        let mut b = RingBufferBuilder::new();
        b.add(&events, move |data: &[u8]| {
            if let Some(e) = ProcessEvent::parse(data) {
                on_event(e);
            }
            0
        })
        .map_err(map_err("process_events", "adding the ring buffer"))?;
        let ring = b.build().map_err(map_err("process_events", "mapping the ring buffer"))?;
        Ok(Self { ring, lost })
    }

    /// Wait up to `timeout` for events and hand every available one to the callback.
    pub fn poll(&self, timeout: Duration) -> Result<(), BpfError> {
        let n = self.ring.poll_raw(timeout);
        if n < 0 && n != -libc::EINTR {
            return Err(BpfError::Invalid(format!(
                "polling the process events ring: {}",
                std::io::Error::from_raw_os_error(-n)
            )));
        }
        Ok(())
    }

    /// Events the programs could not queue (ring full), summed over CPUs.
    pub fn lost(&self) -> Result<u64, BpfError> {
        let Some(per_cpu) = self
            .lost
            .lookup_percpu(sys::as_bytes(&0u32), MapFlags::ANY)
            .map_err(map_err("process_events_lost", "reading entry 0"))?
        else {
            return Ok(0);
        };
        per_cpu.iter().map(|b| decode::<u64>("process_events_lost", b)).sum()
    }
}
