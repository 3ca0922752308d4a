//! Small system helpers: running iproute2, entering a netns on a throwaway
//! thread, the cgroup2 mount, processes by pid, finding binaries.

use crate::error::{io, LabError, Result};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `ip [-n NETNS] -force -batch -` with `lines` on stdin.
pub(crate) fn ip_batch(what: &str, netns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    let shown =
        format!("ip {}-batch - <<< {:?}", netns.map(|n| format!("-n {n} ")).unwrap_or_default(), lines.join("; "));
    let fail = |detail: String| LabError::Command { what: what.to_owned(), command: shown.clone(), detail };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start ip: {e} (is iproute2 installed?)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut text = lines.join("\n");
        text.push('\n');
        stdin.write_all(text.as_bytes()).map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Run `f` on a fresh OS thread that has entered the network namespace at `path`.
pub(crate) fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(path).map_err(io("opening netns", path))?;
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|source| LabError::Sys { what: format!("entering netns {}", path.display()), source })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(LabError::State { path: path.to_path_buf(), message: "thread working in this netns panicked".into() })
        })
    })
}

/// Write a sysctl (`net/ipv4/ip_forward` style key) inside a netns.
pub(crate) fn sysctl_in(netns: &Path, key: &str, value: &str) -> Result<()> {
    let file = Path::new("/proc/sys").join(key);
    in_netns(netns, || std::fs::write(&file, value))?.map_err(io(format!("writing {value} to"), &file))
}

/// Mount point of cgroup v2, from /proc/self/mounts.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(io("reading", "/proc/self/mounts"))?;
    parse_cgroup2_mount(&mounts).ok_or_else(|| LabError::State {
        path: "/proc/self/mounts".into(),
        message: "no cgroup2 file system is mounted; mount one (e.g. at /sys/fs/cgroup/unified)".into(),
    })
}

pub(crate) fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    let candidates: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then_some(dir)
        })
        .collect();
    // Prefer the conventional places when several are mounted.
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .find(|p| candidates.contains(p))
        .copied()
        .or_else(|| candidates.first().copied())
        .map(PathBuf::from)
}

/// Start time (clock ticks since boot) of a process, to tell it from a later one with the same pid.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    // Fields after the command: state is field 3, starttime field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// True while `pid` runs (not a zombie) and is still the process started at `started`.
pub(crate) fn alive(pid: i32, started: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some((_, after)) = stat.rsplit_once(')') else { return false };
    let mut f = after.split_whitespace();
    if matches!(f.next(), Some("Z" | "X")) {
        return false;
    }
    match started {
        Some(s) => f.nth(18).and_then(|t| t.parse::<u64>().ok()) == Some(s),
        None => true,
    }
}

/// Send `sig` to `pid` and wait for it to go, up to `timeout`; `reap` is called
/// on every poll (to wait() a child of ours). Returns whether it is gone.
pub(crate) fn signal_and_wait(
    pid: i32,
    started: Option<u64>,
    sig: Signal,
    timeout: Duration,
    reap: &mut dyn FnMut(),
) -> bool {
    if !alive(pid, started) {
        reap();
        return true;
    }
    let _ = kill(Pid::from_raw(pid), sig);
    let deadline = Instant::now() + timeout;
    loop {
        reap();
        if !alive(pid, started) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop a process: `first` (usually SIGTERM), then SIGKILL after `grace`.
pub(crate) fn stop_process(
    pid: i32,
    started: Option<u64>,
    first: Signal,
    grace: Duration,
    reap: &mut dyn FnMut(),
) -> bool {
    signal_and_wait(pid, started, first, grace, reap)
        || signal_and_wait(pid, started, Signal::SIGKILL, Duration::from_secs(10), reap)
}

/// `rmdir`, treating "does not exist" as done.
pub(crate) fn rmdir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing directory", dir)(e)),
    }
}

/// `rmdir` a shared parent directory when it became empty; never an error.
pub(crate) fn rmdir_if_empty(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

/// Look a program up in PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
        .unwrap_or(None)
}

/// Environment variable naming the directory of myelin binaries.
pub const BIN_DIR_ENV: &str = "MYELIN_BIN_DIR";

/// Directories searched for `myelin-agent`, `myelin-cni` and `myelin`, in order:
/// `override_dir`, else `$MYELIN_BIN_DIR`, else the current executable's directory
/// (and its parent when that is a cargo `deps/` directory).
#[must_use]
pub fn bin_dirs(override_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(d) = override_dir {
        return vec![d.to_path_buf()];
    }
    if let Some(d) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(d)];
    }
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(parent) = dir.parent() {
                dirs.push(parent.to_path_buf());
            }
        }
        dirs.insert(0, dir);
    }
    dirs
}

/// Find one of the project's binaries.
pub fn find_binary(name: &str, override_dir: Option<&Path>) -> Result<PathBuf> {
    let dirs = bin_dirs(override_dir);
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| LabError::MissingBinary {
        binary: name.to_owned(),
        searched: if dirs.is_empty() {
            "nowhere: no MYELIN_BIN_DIR and no current executable".to_owned()
        } else {
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        },
    })
}

/// Last `n` lines of a file, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => log_tail(&text, n),
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// The last `n` lines of a log; when the program ended with an error report
/// (`Error: ...`, anyhow's), that report without its stack backtrace (which
/// RUST_BACKTRACE adds and would push the message out of view).
fn log_tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if let Some(start) = lines.iter().rposition(|l| l.starts_with("Error: ")) {
        let end =
            lines[start..].iter().position(|l| l.starts_with("Stack backtrace:")).map_or(lines.len(), |e| start + e);
        let from = end.saturating_sub(n).min(start.saturating_sub(n / 2));
        return lines[from..end].join("\n");
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_shows_the_error_report_not_its_backtrace() {
        let mut log: Vec<String> = (0..30).map(|i| format!("INFO line {i}")).collect();
        log.extend(["Error: starting flow observability", "", "Caused by:", "    bad thing"].map(String::from));
        log.push("Stack backtrace:".into());
        log.extend((0..40).map(|i| format!("  {i}: frame")));
        let t = log_tail(&log.join("\n"), 20);
        assert!(t.contains("Error: starting flow observability") && t.contains("bad thing"), "{t}");
        assert!(!t.contains("frame") && !t.contains("Stack backtrace"), "{t}");
        assert!(t.contains("INFO line 29"), "some context before the error: {t}");
        let plain: String = (0..30).map(|i| format!("line {i}\n")).collect();
        assert_eq!(log_tail(&plain, 2), "line 28\nline 29");
    }

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(parse_cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(parse_cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn own_process_is_alive_and_start_time_matches() {
        let me = i32::try_from(std::process::id()).unwrap();
        let t = start_time(me);
        assert!(t.is_some());
        assert!(alive(me, t));
        assert!(!alive(me, t.map(|t| t + 1)));
    }
}
