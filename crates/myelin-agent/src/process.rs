//! Process events with pod attribution: the agent's user of the `process` object's tracing
//! programs (tp_btf `sched_process_exec`, tracepoint `sched_process_exit`), the seed of runtime
//! visibility. One thread owns the ring buffer reader and the recent events; the API asks it
//! through a channel (answered between polls).
//!
//! ```text
//!  process_events ring --> [process thread] attribute (netns of /proc/<pid>, else the cgroup id
//!                            ^               learned from an earlier event) -> last N events
//!  API GET /v1/process-events --ProcReq (oneshot)--+
//!  Snapshots (endpoints) --> netns inode -> pod, rebuilt when the generation changes
//! ```
//! Attribution by network namespace works for any runtime (the CNI ADD names the pod's netns;
//! the process's `/proc/<pid>/ns/net` is the same inode). A process that exits before its exec
//! is read is attributed by its cgroup when an earlier process of that cgroup was.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use myelin_api::ProcessEventInfo;
use myelin_bpf::{Datapath, ProcessEvent, ProcessEventKind, ProcessReader};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::snapshot::Snapshots;

/// A question for the process thread.
pub enum ProcReq {
    /// The newest events (oldest first), of one pod (`namespace/name`) or all, at most `limit`.
    List { pod: Option<String>, limit: usize, reply: oneshot::Sender<Vec<ProcessEventInfo>> },
}

/// Asks the process thread.
#[derive(Clone)]
pub struct ProcessHandle {
    tx: mpsc::UnboundedSender<ProcReq>,
}

impl ProcessHandle {
    pub async fn list(&self, pod: Option<String>, limit: usize) -> Option<Vec<ProcessEventInfo>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(ProcReq::List { pod, limit, reply }).ok()?;
        rx.await.ok()
    }
}

/// Attach the tracing programs and start the thread that reads their events, keeping the last
/// `capacity`. Errors when the `process` object is not loaded or its programs do not attach.
pub fn start(datapath: &Arc<Datapath>, snapshots: Arc<Snapshots>, capacity: usize) -> Result<ProcessHandle, String> {
    if !datapath.objects().contains(&"process") {
        return Err("the process object is not loaded (see datapath.unavailable)".into());
    }
    let attached = datapath.attach_tracing().map_err(|e| format!("attaching the tracing programs: {e}"))?;
    let pin_dir = datapath.pin_dir().to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel::<ProcReq>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("process".into())
        .spawn(move || {
            let fresh: std::rc::Rc<std::cell::RefCell<Vec<ProcessEvent>>> = std::rc::Rc::default();
            let sink = fresh.clone();
            let reader = match ProcessReader::open(&pin_dir, move |e| sink.borrow_mut().push(e)) {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("opening the process events ring: {e}")));
                    return;
                }
            };
            let mut state = State { snapshots, capacity, ..State::default() };
            loop {
                if let Err(e) = reader.poll(Duration::from_millis(100)) {
                    warn!(error = %e, "process events");
                }
                let batch: Vec<ProcessEvent> = std::mem::take(&mut *fresh.borrow_mut());
                for e in batch {
                    state.record(e);
                }
                loop {
                    match rx.try_recv() {
                        Ok(ProcReq::List { pod, limit, reply }) => {
                            let _ = reply.send(state.list(pod.as_deref(), limit));
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
            }
        })
        .map_err(|e| format!("starting the process thread: {e}"))?;
    ready_rx.recv().map_err(|_| "the process thread died at start".to_owned())??;
    info!(programs = attached, capacity, "process events with pod attribution");
    Ok(ProcessHandle { tx })
}

#[derive(Default)]
struct State {
    snapshots: Arc<Snapshots>,
    capacity: usize,
    events: VecDeque<ProcessEventInfo>,
    /// netns inode -> (endpoint id, namespace/pod), for the snapshot generation `gen`.
    netns: HashMap<u64, (u32, String)>,
    gen: u64,
    /// cgroup id -> (endpoint id, pod), learned from attributed events.
    cgroups: HashMap<u64, (u32, String)>,
}

impl State {
    fn refresh(&mut self) {
        let g = self.snapshots.generation.load(Ordering::Acquire);
        if g == self.gen && !self.netns.is_empty() {
            return;
        }
        self.gen = g;
        self.netns = self
            .snapshots
            .endpoint_list()
            .into_iter()
            .filter_map(|e| {
                let ino = std::fs::metadata(&e.netns).ok()?.ino();
                let pod = format!("{}/{}", e.namespace.as_deref().unwrap_or("default"), e.pod_name.as_deref()?);
                Some((ino, (e.id, pod)))
            })
            .collect();
    }

    fn record(&mut self, e: ProcessEvent) {
        self.refresh();
        let by_netns =
            std::fs::metadata(format!("/proc/{}/ns/net", e.pid)).ok().and_then(|m| self.netns.get(&m.ino()).cloned());
        let who = match by_netns {
            Some(w) => {
                self.cgroups.insert(e.cgroup_id, w.clone());
                Some(w)
            }
            None => self.cgroups.get(&e.cgroup_id).cloned(),
        };
        if who.is_none() {
            // Not in one of this node's pods: the tracing programs see the whole host (and, in a
            // lab, every other node's and the machine's processes); kept out of the pods' record.
            return;
        }
        let time_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        if self.events.len() >= self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(ProcessEventInfo {
            kind: if e.kind == ProcessEventKind::Exec { "exec" } else { "exit" }.into(),
            time_ns,
            pid: e.pid,
            ppid: e.ppid,
            uid: e.uid,
            comm: e.comm,
            filename: e.filename,
            exit_code: e.exit_code,
            cgroup_id: e.cgroup_id,
            pod: who.as_ref().map(|w| w.1.clone()),
            endpoint_id: who.map(|w| w.0),
        });
    }

    fn list(&self, pod: Option<&str>, limit: usize) -> Vec<ProcessEventInfo> {
        let mut out: Vec<ProcessEventInfo> = self
            .events
            .iter()
            .rev()
            .filter(|e| pod.is_none_or(|p| e.pod.as_deref() == Some(p)))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}
