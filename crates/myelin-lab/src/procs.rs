//! Ending what runs in a lab: every process in the pods' cgroups (`cgroup.kill`) and every
//! process whose network namespace is one of the lab's, however it got there (`lab exec`,
//! `ip netns exec`, a stray agent). A process left in a deleted namespace keeps it alive.

use crate::error::{io, LabError, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`end_processes`] waits for the killed processes to be gone.
pub(crate) const END_TIMEOUT: Duration = Duration::from_secs(10);

/// Identity of a network namespace: the nsfs (device, inode) behind a netns file or
/// `/proc/PID/ns/net`. None when there is no such file (or the process is a zombie).
fn netns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Pids of the processes in a cgroup (zombies are not listed); none when it does not exist.
fn cgroup_pids(dir: &Path) -> Result<Vec<i32>> {
    let procs = dir.join("cgroup.procs");
    match std::fs::read_to_string(&procs) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("reading", &procs)(e)),
    }
}

/// Pids of the processes (thread-group leaders) whose network namespace is in `ids`,
/// this process excepted.
fn netns_pids(ids: &BTreeSet<(u64, u64)>) -> Result<Vec<i32>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let dir = std::fs::read_dir("/proc").map_err(io("listing", "/proc"))?;
    Ok(dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|&pid| pid != me && pid > 1)
        .filter(|pid| netns_id(Path::new(&format!("/proc/{pid}/ns/net"))).is_some_and(|id| ids.contains(&id)))
        .collect())
}

/// Kill everything in a cgroup: `cgroup.kill` (cgroup v2, kernel >= 5.14), else SIGKILL to
/// each listed process.
fn kill_cgroup(dir: &Path, pids: &[i32]) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for &p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

fn describe(pid: i32) -> String {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
    format!("{pid} ({})", cmd.trim())
}

/// End every process in `cgroups` and in the network namespaces at `netns` (SIGKILL), and wait
/// until none is left, up to `timeout`. Missing cgroups and namespace files are skipped.
pub(crate) fn end_processes(cgroups: &[PathBuf], netns: &[PathBuf], timeout: Duration) -> Result<()> {
    let ids: BTreeSet<(u64, u64)> = netns.iter().filter_map(|p| netns_id(p)).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = BTreeSet::new();
        for cg in cgroups {
            let pids = cgroup_pids(cg)?;
            if !pids.is_empty() {
                kill_cgroup(cg, &pids);
                left.extend(pids);
            }
        }
        for pid in netns_pids(&ids)? {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            left.insert(pid);
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let shown: Vec<String> = left.iter().map(|&p| describe(p)).collect();
            return Err(LabError::Processes {
                message: format!(
                    "processes still run in the lab's cgroups or namespaces {timeout:?} after SIGKILL: {}",
                    shown.join(", ")
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_end_when_there_is_no_cgroup_and_no_namespace() {
        let missing = PathBuf::from("/nonexistent/myelin-lab-test");
        end_processes(std::slice::from_ref(&missing), std::slice::from_ref(&missing), Duration::ZERO).unwrap();
    }

    #[test]
    fn this_process_is_never_a_target() {
        let mine: BTreeSet<(u64, u64)> = netns_id(Path::new("/proc/self/ns/net")).into_iter().collect();
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(!netns_pids(&mine).unwrap().contains(&me));
    }
}
