//! Shared topology and traffic helpers of the in-kernel tests (see
//! tests/datapath.rs for the topology).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use myelin_bpf::{ensure_bpffs, remove_pin_dir, Datapath, EndpointEntry, LoadOptions, MetricRow, NodeConfig};
use nix::sched::{setns, CloneFlags};

pub const NETPROBE: &str = include_str!("../netprobe.py");
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 99, 1);

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests load eBPF programs and create network namespaces: run them as root \
         (e.g. `sudo -E cargo test -p myelin-bpf`)"
    );
}

pub fn unique(tag: &str) -> String {
    format!("myt{}-{}-{tag}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| run(&["python3", "-c", "import sys; print(sys.executable)"]).trim().to_string())
}

/// `ip netns exec <ns> python3 -c netprobe.py <args>`.
pub fn netprobe(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, python(), "-c", NETPROBE]).args(args);
    c
}

pub fn netprobe_out(ns: &str, args: &[&str]) -> String {
    let out = netprobe(ns, args).output().expect("spawning netprobe");
    assert!(out.status.success(), "netprobe {args:?} in {ns} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn ping(ns: &str, dst: Ipv4Addr, count: u32, src: Option<Ipv4Addr>) -> u32 {
    let dst = dst.to_string();
    let count_s = count.to_string();
    let mut args = vec!["ping", dst.as_str(), count_s.as_str(), "1.0"];
    let src_s = src.map(|s| s.to_string());
    if let Some(s) = &src_s {
        args.push(s);
    }
    netprobe_out(ns, &args).parse().expect("ping prints a count")
}

/// Poll `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `f` on a fresh OS thread that has joined the netns `ns` (setns only
/// affects the calling thread, so never do it on the harness thread).
pub fn in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns into the node netns");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

pub fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("ifindex of {name}: {e}"))
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = remove_pin_dir(&self.0);
    }
}

/// Kills a background helper on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub host_if: String,
    pub host_mac: [u8; 6],
    pub ep_id: u32,
    pub identity: u32,
}

pub struct Lab {
    // Drop order: datapath fds, pin dir, pods, node.
    pub dp: Option<Datapath>,
    pub opts: LoadOptions,
    pub pin: PinDir,
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl Lab {
    /// Two pods with identity 0.
    pub fn new() -> Self {
        Self::with_identities(&[0, 0])
    }

    /// One pod per identity: pod i (1-based) is 10.200.0.(1+i), endpoint
    /// id 100+i, host veth lxc<i>.
    pub fn with_identities(identities: &[u32]) -> Self {
        Self::with_options(identities, LoadOptions::default())
    }

    /// Like [`Lab::with_identities`], loading with `opts` (objects, attach mode).
    pub fn with_options(identities: &[u32], opts: LoadOptions) -> Self {
        let mut lab = Self::unloaded(identities, opts);
        lab.load_and_plumb();
        lab
    }

    /// Namespaces, pods and veths, nothing loaded.
    pub fn unloaded(identities: &[u32], opts: LoadOptions) -> Self {
        require_root();
        ensure_bpffs(Path::new("/sys/fs/bpf")).expect("bpffs");
        let pin = PinDir(PathBuf::from(format!("/sys/fs/bpf/{}", unique("pins"))));
        let node = Netns::new("node");
        let n = node.0.clone();
        // The node address lives on lo (no dummy driver on every machine).
        run(&["ip", "-n", &n, "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
        run(&["ip", "netns", "exec", &n, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]);
        let fwd = run(&["ip", "netns", "exec", &n, "cat", "/proc/sys/net/ipv4/ip_forward"]);
        assert_eq!(fwd.trim(), "0", "node netns must not forward: only eBPF may");

        let mut lab = Self { dp: None, opts, pin, pods: Vec::new(), node };
        for (i, id) in (1u8..).zip(identities) {
            let mut pod = lab.add_pod(i);
            pod.identity = *id;
            lab.pods.push(pod);
        }
        lab
    }

    pub fn add_pod(&self, i: u8) -> Pod {
        let pod = Pod {
            ns: Netns::new(&format!("pod{i}")),
            ip: Ipv4Addr::new(10, 200, 0, 1 + i),
            mac: [0x02, 0, 0, 0, 0x01, i],
            host_if: format!("lxc{i}"),
            host_mac: [0x02, 0, 0, 0, 0x02, i],
            ep_id: 100 + u32::from(i),
            identity: 0,
        };
        self.plumb_veth(&pod);
        pod
    }

    /// Create the veth pair and the pod/node side addresses and routes.
    pub fn plumb_veth(&self, pod: &Pod) {
        let (n, p) = (&self.node.0, &pod.ns.0);
        run(&[
            "ip",
            "-n",
            n,
            "link",
            "add",
            &pod.host_if,
            "address",
            &mac_str(pod.host_mac),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "address",
            &mac_str(pod.mac),
            "netns",
            p,
        ]);
        run(&["ip", "-n", p, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", p, "addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"]);
        run(&["ip", "-n", p, "route", "add", &format!("{GATEWAY}/32"), "dev", "eth0", "scope", "link"]);
        run(&["ip", "-n", p, "route", "add", "default", "via", &GATEWAY.to_string(), "dev", "eth0"]);
        run(&["ip", "-n", n, "link", "set", &pod.host_if, "up"]);
        run(&["ip", "-n", n, "route", "add", &format!("{}/32", pod.ip), "dev", &pod.host_if]);
        run(&[
            "ip",
            "-n",
            n,
            "neigh",
            "add",
            &pod.ip.to_string(),
            "lladdr",
            &mac_str(pod.mac),
            "dev",
            &pod.host_if,
            "nud",
            "permanent",
        ]);
    }

    /// Load the datapath (or reload it on the same pin dir), write endpoints,
    /// attach. Returns what attach_endpoint said per pod.
    pub fn load_and_plumb(&mut self) -> Vec<bool> {
        let pin = self.pin.0.clone();
        // (ip, host ifname, entry without ifindex: that is read in the node netns)
        let pods: Vec<(Ipv4Addr, String, EndpointEntry)> = self
            .pods
            .iter()
            .map(|p| {
                let ep = EndpointEntry {
                    ifindex: 0,
                    endpoint_id: p.ep_id,
                    identity: p.identity,
                    flags: 0,
                    mac: p.mac,
                    host_mac: p.host_mac,
                };
                (p.ip, p.host_if.clone(), ep)
            })
            .collect();
        let opts = self.opts.clone();
        let (dp, attached) = in_netns(&self.node.0, move || {
            let dp = Datapath::load_with(&pin, &opts).expect("load datapath");
            dp.set_node_config(&NodeConfig {
                node_ip: NODE_IP,
                gateway: GATEWAY,
                pod_cidr: Ipv4Addr::new(10, 200, 0, 0),
                pod_cidr_prefix: 24,
            })
            .expect("node config");
            let mut attached = Vec::new();
            for (ip, ifname, mut ep) in pods {
                ep.ifindex = ifindex(&ifname);
                dp.upsert_endpoint(ip, &ep).expect("upsert endpoint");
                attached.push(dp.attach_endpoint(&ifname, ep.ifindex).expect("attach endpoint"));
                assert!(dp.endpoint_attached(&ifname), "{ifname} attached");
            }
            dp.activate().expect("activate");
            (dp, attached)
        });
        self.dp = Some(dp);
        attached
    }

    pub fn dp(&self) -> &Datapath {
        self.dp.as_ref().expect("datapath loaded")
    }

    pub fn a(&self) -> &Pod {
        &self.pods[0]
    }

    pub fn b(&self) -> &Pod {
        &self.pods[1]
    }

    pub fn metric(&self, ep: u32, dir: u8, reason: u8) -> u64 {
        metric_of(&self.dp().metrics().expect("metrics"), ep, dir, reason)
    }
}

pub fn metric_of(rows: &[MetricRow], ep: u32, dir: u8, reason: u8) -> u64 {
    rows.iter().filter(|r| r.endpoint_id == ep && r.direction == dir && r.reason == reason).map(|r| r.packets).sum()
}

/// Start a netprobe server in `ns` and wait for it to say "ready".
pub fn start_server(ns: &str, args: &[&str]) -> (ChildGuard, BufReader<std::process::ChildStdout>) {
    let mut child = netprobe(ns, args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn server");
    let stdout = child.stdout.take().expect("server stdout");
    let guard = ChildGuard(child);
    let mut out = BufReader::new(stdout);
    let mut line = String::new();
    out.read_line(&mut line).expect("read server banner");
    assert_eq!(line.trim(), "ready", "server {args:?} did not start");
    (guard, out)
}

/// A long-running netprobe server (echo servers run until their stdin closes).
pub struct Server {
    _stdin: std::process::ChildStdin,
    _guard: ChildGuard,
}

/// Start a netprobe server in `ns` that runs until dropped.
pub fn serve(ns: &str, args: &[&str]) -> Server {
    let mut child = netprobe(ns, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    let stdin = child.stdin.take().expect("server stdin");
    let stdout = child.stdout.take().expect("server stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("server banner");
    assert_eq!(line.trim(), "ready", "server {args:?} in {ns} did not start");
    Server { _stdin: stdin, _guard: guard }
}

/// A cgroup v2 directory for the test, removed on drop.
pub struct Cgroup(pub PathBuf);

impl Cgroup {
    pub fn new() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = mounts
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .and_then(|l| l.split(' ').nth(4))
            .expect("a cgroup2 mount (this machine: /sys/fs/cgroup/unified)");
        let dir = PathBuf::from(root).join(unique("cg"));
        std::fs::create_dir(&dir).expect("create cgroup");
        Self(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `sh -c` that joins cgroup `cg`, then runs netprobe in pod netns `ns`.
pub fn in_cgroup_cmd(cg: &Cgroup, ns: &str, args: &[&str]) -> Command {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {ns} {} -c \"$NETPROBE\" \"$@\"",
        cg.0.display(),
        python()
    );
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).arg("sh").args(args).env("NETPROBE", NETPROBE);
    c
}

/// Run netprobe in pod netns `ns` from a process that joined cgroup `cg` first.
pub fn in_cgroup(cg: &Cgroup, ns: &str, args: &[&str]) -> String {
    let out = in_cgroup_cmd(cg, ns, args).output().expect("run netprobe in the cgroup");
    assert!(out.status.success(), "netprobe in cgroup failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
