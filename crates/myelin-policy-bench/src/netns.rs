//! Work inside network namespaces from a process that must stay where it is:
//! a dedicated OS thread per namespace (setns() only moves the calling thread),
//! fed closures over a channel. And RAII guards for what the bench creates.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in one netns, running the closures it is given.
pub struct NetnsWorker {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl NetnsWorker {
    pub fn new(netns: &Path) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let path = netns.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("netns-worker".into())
            .spawn(move || {
                let joined =
                    std::fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display())).and_then(|f| {
                        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|e| format!("setns into {}: {e}", path.display()))
                    });
                let ok = joined.is_ok();
                let _ = ready_tx.send(joined);
                if ok {
                    for job in rx {
                        job();
                    }
                }
            })
            .context("spawning a netns worker thread")?;
        ready_rx.recv().map_err(|_| anyhow!("netns worker died"))?.map_err(|e| anyhow!(e))?;
        Ok(Self { tx: Some(tx), handle: Some(handle) })
    }

    /// Run `f` in the namespace and wait for its result.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
        self.start(f)?.recv().map_err(|_| anyhow!("netns worker panicked"))
    }

    /// Start `f` in the namespace without waiting; the returned receiver gets its result.
    pub fn start<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<mpsc::Receiver<R>> {
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .as_ref()
            .ok_or_else(|| anyhow!("netns worker stopped"))?
            .send(Box::new(move || {
                let _ = rtx.send(f());
            }))
            .map_err(|_| anyhow!("netns worker gone"))?;
        Ok(rrx)
    }
}

impl Drop for NetnsWorker {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Named network namespaces (`ip netns add`), deleted on drop.
pub struct NetnsSet {
    names: Vec<String>,
}

fn ip_batch(lines: &[String]) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch (is iproute2 installed?)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.join("\n").as_bytes()).context("feeding ip -batch")?;
        stdin.write_all(b"\n").context("feeding ip -batch")?;
    }
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!("ip -batch failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl NetnsSet {
    pub fn create(names: Vec<String>) -> Result<Self> {
        let set = Self { names: Vec::new() };
        let lines: Vec<String> = names.iter().map(|n| format!("netns add {n}")).collect();
        let mut set = set;
        set.names = names; // so that a half-done batch is cleaned up too
        ip_batch(&lines).context("creating network namespaces")?;
        Ok(set)
    }

    pub fn path(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.names[i])
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

impl Drop for NetnsSet {
    fn drop(&mut self) {
        let lines: Vec<String> = self
            .names
            .iter()
            .filter(|n| Path::new("/run/netns").join(n).exists())
            .map(|n| format!("netns del {n}"))
            .collect();
        if !lines.is_empty() {
            if let Err(e) = ip_batch(&lines) {
                eprintln!("cleanup: {e:#}");
            }
        }
    }
}

/// Sets `kernel.bpf_stats_enabled` and restores the previous value on drop.
pub struct BpfStatsGuard {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsGuard {
    pub fn enable() -> Result<Self> {
        let old = std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(Self { old: old.trim().to_owned() })
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.old) {
            eprintln!("cleanup: restoring {BPF_STATS} to {}: {e}", self.old);
        }
    }
}

/// Tears the lab down on drop (agent, pods, namespaces, pins, state).
pub struct LabGuard(pub Option<myelin_lab::Lab>);

impl LabGuard {
    pub fn lab(&self) -> &myelin_lab::Lab {
        self.0.as_ref().unwrap_or_else(|| unreachable!("lab taken before drop"))
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            if let Err(e) = lab.down() {
                eprintln!("cleanup: lab down: {e}");
            }
        }
    }
}
