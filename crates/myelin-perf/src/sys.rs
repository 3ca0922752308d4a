//! System glue: tools on PATH, commands in namespaces, per-thread setns, and
//! counters read from /proc (netns-aware through /proc/thread-self).

use crate::error::{io, PerfError, Result};
use nix::sched::CloneFlags;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Tools the benchmark runs, with their Debian packages.
pub const TOOLS: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    ("ip", "iproute2"),
    ("iptables-restore", "iptables"),
    ("iptables-save", "iptables"),
    ("nsenter", "util-linux"),
];

/// Fail with the Debian package name when a tool is missing.
pub fn check_tools() -> Result<()> {
    for (tool, package) in TOOLS {
        if which(tool).is_none() {
            return Err(PerfError::MissingTool { tool, package });
        }
    }
    Ok(())
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
        .or_else(|| ["/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|c| c.is_file()))
}

/// Which iptables backend `iptables-restore` is (`nf_tables` or `legacy`), from `iptables -V`.
#[must_use]
pub fn iptables_backend() -> String {
    Command::new("iptables")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "iptables (version unknown)".to_owned())
}

/// Run a command to completion; Err with its stderr when it fails.
pub(crate) fn run(what: &str, cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let fail = |detail: String| PerfError::Command { what: what.to_owned(), command: shown.clone(), detail };
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot start: {e}")))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data).map_err(|e| fail(format!("writing stdin: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        Err(fail(format!("{}: {detail}", out.status)))
    }
}

/// `ip -batch -` (optionally `-n NETNS`).
pub(crate) fn ip_batch(what: &str, netns: Option<&str>, lines: &[String]) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    let text = lines.join("\n") + "\n";
    run(what, &mut cmd, Some(text.as_bytes())).map(drop)
}

/// A command run in the network namespace at `netns` (nsenter: network namespace only).
pub(crate) fn ns_command(netns: &Path, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display())).arg("--").arg(program);
    cmd
}

/// Enter the network namespace at `path` on the calling thread. Only for threads
/// this crate spawned for the purpose (setns affects the calling thread only).
pub(crate) fn enter_netns(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).map_err(io(format!("opening netns {}", path.display())))?;
    nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
        .map_err(|source| PerfError::Setns { path: path.to_path_buf(), source })
}

/// Run `f` on a fresh OS thread inside the network namespace at `path`.
pub(crate) fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(path)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(PerfError::Invalid { what: format!("thread in netns {}", path.display()), message: "panicked".into() })
        })
    })
}

/// Read a file of /proc/thread-self/net (follows the thread's netns) inside `netns`.
pub(crate) fn read_proc_net(netns: &Path, file: &str) -> Result<String> {
    let p = format!("/proc/thread-self/net/{file}");
    in_netns(netns, || std::fs::read_to_string(&p))?.map_err(io(format!("reading {p} in {}", netns.display())))
}

/// `Ip: ForwDatagrams` of a netns: packets its kernel routed from one interface to another.
pub(crate) fn forwarded_datagrams(netns: &Path) -> Result<u64> {
    let snmp = read_proc_net(netns, "snmp")?;
    snmp_field(&snmp, "Ip", "ForwDatagrams").ok_or_else(|| PerfError::Invalid {
        what: format!("/proc/net/snmp of {}", netns.display()),
        message: "no Ip: ForwDatagrams".into(),
    })
}

pub(crate) fn snmp_field(snmp: &str, proto: &str, field: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// (rx_packets, tx_packets) of interface `ifname` in `netns`, from /proc/net/dev.
pub(crate) fn link_packets(netns: &Path, ifname: &str) -> Result<(u64, u64)> {
    let dev = read_proc_net(netns, "dev")?;
    parse_net_dev(&dev, ifname).ok_or_else(|| PerfError::Invalid {
        what: format!("/proc/net/dev of {}", netns.display()),
        message: format!("no interface {ifname}"),
    })
}

pub(crate) fn parse_net_dev(dev: &str, ifname: &str) -> Option<(u64, u64)> {
    dev.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        Some((*v.get(1)?, *v.get(9)?))
    })
}

/// Is something listening on TCP `port` in `netns`?
pub(crate) fn tcp_listening(netns: &Path, port: u16) -> Result<bool> {
    let tcp = read_proc_net(netns, "tcp")?;
    let want = format!(":{port:04X}");
    Ok(tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    }))
}

/// Poll `f` until it returns true or `timeout` passes.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(PerfError::Timeout { what: what.to_owned(), seconds: timeout.as_secs_f64() });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Machine-wide CPU time from /proc/stat: (busy, total) in USER_HZ ticks over all CPUs.
/// Busy is everything but idle and iowait (user, nice, system, irq, softirq, steal).
pub fn cpu_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(io("reading /proc/stat"))?;
    parse_cpu_ticks(&stat)
        .ok_or_else(|| PerfError::Invalid { what: "/proc/stat".into(), message: "no aggregate cpu line".into() })
}

pub(crate) fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

/// USER_HZ: /proc/stat's tick rate (100 on Linux everywhere that matters).
pub const USER_HZ: f64 = 100.0;

/// CPU time of a process (all its threads: utime + stime) in USER_HZ ticks.
#[must_use]
pub fn process_cpu_ticks(pid: i32) -> Option<u64> {
    parse_process_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub(crate) fn parse_process_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after it.
    let mut f = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(11);
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// VmRSS of a process in bytes.
#[must_use]
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Kernel release and CPU model, for the report.
#[must_use]
pub fn machine() -> (String, String, usize) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(std::num::NonZero::get).unwrap_or(1);
    (kernel, model, cpus)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_process_cpu_ticks() {
        let stat = "8169 (myelin (agent)) S 1 8169 8169 0 -1 4194560 9006 0 0 0 1234 567 0 0 20 0 9 0 2419 0";
        assert_eq!(parse_process_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_process_cpu_ticks("12 (x) S 1"), None);
    }

    #[test]
    fn parses_proc_files() {
        let snmp = "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams\nIp: 1 64 10 0 0 7\nIcmp: InMsgs\nIcmp: 3\n";
        assert_eq!(snmp_field(snmp, "Ip", "ForwDatagrams"), Some(7));
        assert_eq!(snmp_field(snmp, "Icmp", "InMsgs"), Some(3));
        assert_eq!(snmp_field(snmp, "Tcp", "X"), None);
        let dev = "Inter-|   Receive\n face |bytes packets\n    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\n  eth0: 5000 40 0 0 0 0 0 0 9000 41 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev, "eth0"), Some((40, 41)));
        assert_eq!(parse_net_dev(dev, "eth1"), None);
        let stat = "cpu  100 5 50 1000 20 1 4 0 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_cpu_ticks(stat), Some((160, 1180)));
    }
}
