//! A real container runtime drives `myelin-cni`.
//!
//! podman (Debian's, `runc`, CNI network backend) runs two busybox containers on
//! a network whose conflist names `myelin-cni`; the plugin forwards ADD/DEL to a
//! real `myelin-agent` running in a private node network namespace. The test
//! proves that:
//! - podman uses the CNI backend and takes the container's address from the
//!   plugin's result (podman's view equals the agent's endpoint),
//! - one container reaches the other over TCP (HTTP) and ICMP, both ways for ICMP,
//!   and the eBPF datapath forwarded that traffic (its per-endpoint counters),
//! - `podman rm -f` runs CNI DEL: the agent has no endpoint left and the host
//!   veths are gone.
//!
//! Everything is hermetic and undone by guards, also on panic: a node netns
//! `myl-pm<pid>`, a temp dir holding podman's whole state (containers.conf,
//! storage, conflist dir, locks, events), the agent's bpffs dir
//! `/sys/fs/bpf/myelin/test-pm<pid>`, the containers' cgroup parent
//! `/myelin-pm<pid>`, and what podman/runc/libcni create on first use
//! (`/var/lib/cni`, `/run/runc`, `/var/lib/containers/cache`) when this run
//! created it. Needs root and the Debian packages
//! podman, runc, busybox-static, iproute2; the binaries come from
//! `cargo build --workspace --bins` (or `$MYELIN_BIN_DIR`).
#![forbid(unsafe_code)]

use myelin_api::{Client, DatapathMetric, Endpoint, Status};
use serde_json::Value;
use std::fmt::Display;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const POD_CIDR: &str = "10.245.0.0/24";
const NODE_ADDR: &str = "172.31.250.1/24";
const NETWORK: &str = "myelin-test";
const IMAGE: &str = "localhost/myelin-busybox:test";
const HTTP_PORT: u16 = 8080;
/// Upper bound of any single command (podman run/exec/rm, ip).
const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// The agent loads eBPF programs; other tests may be busy on the 2 cores.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
const BIN_DIR_ENV: &str = "MYELIN_BIN_DIR";
const BUSYBOX: &str = "/bin/busybox";
/// Applets linked into the image. (Debian's busybox 1.35 `wget -T` segfaults:
/// deadlines come from the `timeout` applet instead.)
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ls", "ps", "sleep", "nc", "ping", "httpd", "wget", "timeout", "ip", "ifconfig", "route",
    "hostname",
];

// ---------------------------------------------------------------- helpers

trait OrDie<T> {
    fn or_die(self, what: impl Display) -> T;
}

impl<T, E: Display> OrDie<T> for Result<T, E> {
    fn or_die(self, what: impl Display) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// A path as a TOML/JSON basic string (JSON string syntax is valid TOML for these).
fn quoted(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).unwrap_or_default()
}

fn elapsed(t0: Instant) -> String {
    format!("{:.1}s", t0.elapsed().as_secs_f64())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Result of one command.
struct Out {
    what: String,
    /// Exited with status 0 (false also when it could not start or ran past its deadline).
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl Out {
    fn describe(&self) -> String {
        format!("{} -> {}\nstdout: {}\nstderr: {}", self.what, self.status, self.stdout.trim(), self.stderr.trim())
    }
}

/// Run `cmd` with a deadline. Output goes to files under `scratch` (never pipes:
/// `podman run -d` leaves conmon behind, which could hold a pipe open).
fn run(scratch: &Path, cmd: &mut Command, timeout: Duration) -> Out {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let what = format!("{cmd:?}");
    let fail =
        |status: String| Out { what: what.clone(), ok: false, status, stdout: String::new(), stderr: String::new() };
    let out_path = scratch.join(format!("cmd-{n}.out"));
    let err_path = scratch.join(format!("cmd-{n}.err"));
    let (stdout, stderr) = match (File::create(&out_path), File::create(&err_path)) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return fail(format!("cannot create output files in {}: {e}", scratch.display())),
    };
    let mut child = match cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr).spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start: {e}")),
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("timed out after {timeout:?} (killed)"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(format!("waiting failed: {e}")),
        }
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    match status {
        Ok(s) => Out { what, ok: s.success(), status: s.to_string(), stdout, stderr },
        Err(status) => Out { what, ok: false, status, stdout, stderr },
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// True when the ELF file has no program interpreter (statically linked).
fn is_static_elf(path: &Path) -> Result<bool, String> {
    let b = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| b.get(o..o + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes);
    let u64_at = |o: usize| b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
    if b.get(..4) != Some(b"\x7fELF".as_slice()) || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err(format!("{} is not a little-endian 64-bit ELF file", path.display()));
    }
    let bad = || format!("{}: truncated ELF header", path.display());
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(bad)?).map_err(|e| e.to_string())?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(bad)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize).ok_or_else(bad)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Root, tools and packages: fail loudly, naming what to install.
fn preflight() {
    let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    assert!(
        is_root,
        "this test must run as root: it creates network namespaces, loads eBPF programs and runs rootful podman \
         (e.g. `sudo -E cargo test -p myelin-e2e-podman`)"
    );
    let mut missing: Vec<String> = Vec::new();
    for (tool, package) in
        [("podman", "podman"), ("runc", "runc"), ("conmon", "conmon"), ("ip", "iproute2"), ("tar", "tar")]
    {
        if find_in_path(tool).is_none() {
            missing.push(format!("{package} (for `{tool}`)"));
        }
    }
    match is_static_elf(Path::new(BUSYBOX)) {
        Ok(true) => {}
        Ok(false) => missing
            .push(format!("busybox-static ({BUSYBOX} is dynamically linked and cannot run alone in the test image)")),
        Err(e) => missing.push(format!("busybox-static ({e})")),
    }
    assert!(
        missing.is_empty(),
        "the podman end-to-end test needs these Debian packages: {}\n  apt-get install podman runc busybox-static iproute2 \
         (or run scripts/setup.sh)",
        missing.join(", ")
    );
}

/// The directory holding `myelin-agent` and `myelin-cni`.
fn bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os(BIN_DIR_ENV) {
        // An explicit directory is the only one looked at.
        candidates.push(PathBuf::from(d));
    } else if let Ok(exe) = std::env::current_exe() {
        // target/debug/deps/<test> -> target/debug
        if let Some(deps) = exe.parent() {
            if let Some(profile) = deps.parent() {
                candidates.push(profile.to_path_buf());
            }
            candidates.push(deps.to_path_buf());
        }
    }
    let found = candidates.iter().find(|d| ["myelin-agent", "myelin-cni"].iter().all(|b| d.join(b).is_file())).cloned();
    match found {
        Some(d) => d,
        None => panic!(
            "cannot find myelin-agent and myelin-cni (looked in: {}); `cargo build --workspace --bins` builds them, or set {BIN_DIR_ENV}",
            candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            PathBuf::from(m.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\"))
        })
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("podman e2e cleanup: unmounting {}: {e}", m.display());
        }
    }
}

// ---------------------------------------------------------------- guards
// Declared in setup order; Rust drops them in reverse: containers (CNI DEL,
// needs the agent) -> agent -> bpffs dir -> node netns -> temp dir.

/// The temp dir holding all of podman's and the agent's files.
struct TempTree {
    path: PathBuf,
}

impl TempTree {
    fn create(path: PathBuf) -> Self {
        if path.exists() {
            // Left by an earlier run with the same pid.
            unmount_under(&path);
            std::fs::remove_dir_all(&path).or_die(format!("removing stale {}", path.display()));
        }
        std::fs::create_dir_all(path.join("cmd")).or_die(format!("creating {}", path.display()));
        Self { path }
    }

    fn scratch(&self) -> PathBuf {
        self.path.join("cmd")
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        unmount_under(&self.path);
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("podman e2e cleanup: removing {}: {e}", self.path.display());
        }
    }
}

/// The node's network namespace: `lo` up and an uplink `eth0` holding the node address.
struct NodeNetns {
    name: String,
    scratch: PathBuf,
}

impl NodeNetns {
    fn create(name: &str, scratch: &Path) -> Self {
        if Path::new("/run/netns").join(name).exists() {
            let _ = run(scratch, Command::new("ip").args(["netns", "del", name]), CMD_TIMEOUT);
        }
        let out = run(scratch, Command::new("ip").args(["netns", "add", name]), CMD_TIMEOUT);
        assert!(out.ok, "creating the node netns failed: {}", out.describe());
        let this = Self { name: name.to_owned(), scratch: scratch.to_path_buf() };
        for args in [
            vec!["link", "set", "lo", "up"],
            // This kernel has no dummy links: a veth pair whose far end also
            // stays in the node netns stands for the uplink.
            vec!["link", "add", "eth0", "type", "veth", "peer", "name", "eth0-far"],
            vec!["addr", "add", NODE_ADDR, "dev", "eth0"],
            vec!["link", "set", "eth0-far", "up"],
            vec!["link", "set", "eth0", "up"],
        ] {
            let out = this.ip(&args);
            assert!(out.ok, "setting up the node netns failed: {}", out.describe());
        }
        this
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> Out {
        run(&self.scratch, Command::new("ip").arg("-n").arg(&self.name).args(args), CMD_TIMEOUT)
    }
}

impl Drop for NodeNetns {
    fn drop(&mut self) {
        // Not through `run`: the scratch dir may be gone if setup failed oddly.
        match Command::new("ip").args(["netns", "del", &self.name]).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "podman e2e cleanup: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("podman e2e cleanup: ip netns del {}: {e}", self.name),
        }
    }
}

/// The agent's bpffs directory (pinned maps and links); its parent
/// `/sys/fs/bpf/myelin` too when this run created it and it is empty.
struct BpfDir {
    path: PathBuf,
    parent_created: Option<PathBuf>,
}

impl BpfDir {
    fn claim(path: PathBuf) -> Self {
        if path.exists() {
            std::fs::remove_dir_all(&path).or_die(format!("removing stale {}", path.display()));
        }
        let parent_created = path.parent().filter(|p| !p.exists()).map(Path::to_path_buf);
        Self { path, parent_created }
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        if self.path.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                eprintln!("podman e2e cleanup: removing {}: {e}", self.path.display());
            }
        }
        if let Some(parent) = &self.parent_created {
            // Fails, as it should, when another agent has its directory there.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The agent child process.
struct Agent {
    child: Child,
    log: PathBuf,
    client: Client,
}

impl Agent {
    fn start(bin: &Path, netns: &Path, config: &Path, socket: &Path, log: PathBuf) -> Self {
        let file = File::create(&log).or_die(format!("creating {}", log.display()));
        let file2 = file.try_clone().or_die("duplicating the agent log fd");
        // `--netns` makes the agent setns() itself: `ip netns exec` would remount
        // /sys and hide the host's bpffs.
        let child = Command::new(bin)
            .arg("--netns")
            .arg(netns)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .or_die(format!("starting {}", bin.display()));
        Self { child, log, client: Client::new(socket).with_timeout(Duration::from_secs(10)) }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text =
            std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Poll `/v1/status` until the agent says healthy.
    fn wait_healthy(&mut self, timeout: Duration) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("myelin-agent exited ({status}) before becoming healthy; its log:\n{}", self.log_tail(200));
            }
            let last = match self.client.get::<Status>("/v1/status") {
                Ok(s) if s.healthy => return s,
                Ok(s) => format!("answers unhealthy: {s:?}"),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "myelin-agent not healthy after {timeout:?} (last: {last}); its log:\n{}",
                self.log_tail(200)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM for a clean stop, SIGKILL if it does not stop in time.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("podman e2e cleanup: myelin-agent ignored SIGTERM for 10s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// podman with all of its state under the temp dir.
#[derive(Clone)]
struct Podman {
    root: PathBuf,
    scratch: PathBuf,
}

impl Podman {
    /// Write containers.conf, storage.conf, registries.conf and the conflist.
    fn configure(root: &Path, scratch: &Path, cni_bin_dir: &Path, socket: &Path) -> Self {
        let p = |s: &str| root.join(s);
        for d in ["net.d", "storage", "runroot", "libpod-tmp", "volumes"] {
            std::fs::create_dir_all(p(d)).or_die(format!("creating {}", p(d).display()));
        }
        let containers_conf = format!(
            r#"# Written by the myelin podman e2e test.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {events}
tmp_dir = {tmp}
lock_type = "file"
volume_path = {volumes}

[network]
network_backend = "cni"
network_config_dir = {netd}
cni_plugin_dirs = [{bin}, "/usr/lib/cni"]
"#,
            events = quoted(&p("events.log")),
            tmp = quoted(&p("libpod-tmp")),
            volumes = quoted(&p("volumes")),
            netd = quoted(&p("net.d")),
            bin = quoted(cni_bin_dir),
        );
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
            quoted(&p("storage")),
            quoted(&p("runroot"))
        );
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{"type": "myelin-cni", "agentSocket": socket.display().to_string()}],
        });
        let files = [
            (p("containers.conf"), containers_conf),
            (p("storage.conf"), storage_conf),
            (p("registries.conf"), "unqualified-search-registries = []\n".to_owned()),
            (p("net.d").join(format!("{NETWORK}.conflist")), format!("{conflist:#}\n")),
        ];
        for (path, text) in files {
            std::fs::write(&path, text).or_die(format!("writing {}", path.display()));
        }
        Self { root: root.to_path_buf(), scratch: scratch.to_path_buf() }
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.root.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.root.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.root.join("registries.conf"))
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION")
            .env_remove("XDG_RUNTIME_DIR")
            .args(args);
        run(&self.scratch, &mut cmd, CMD_TIMEOUT)
    }
}

/// Remove `dir` if, after removing the files named in `files` and every empty
/// subdirectory, it is empty. Works on cgroup directories too (rmdir ignores
/// their control files).
fn prune(dir: &Path, files: &[&str]) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                prune(&e.path(), files);
            } else if files.iter().any(|f| e.file_name() == *f) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// What rootful podman leaves on the host outside its configured dirs: the
/// containers' cgroup parent (one per run, `--cgroup-parent`), and the
/// libcni cache, the runc state root and containers/image's blob-info cache,
/// removed only when this run created them and nothing else is in them.
struct HostLeftovers {
    cgroup_parent: String,
    created: Vec<(PathBuf, &'static [&'static str])>,
}

impl HostLeftovers {
    fn record(cgroup_parent: String) -> Self {
        let candidates: [(&str, &'static [&'static str]); 3] =
            [("/var/lib/cni", &[]), ("/run/runc", &[]), ("/var/lib/containers", &["blob-info-cache-v1.boltdb"])];
        let created = candidates
            .into_iter()
            .filter(|(p, _)| !Path::new(p).exists())
            .map(|(p, files)| (PathBuf::from(p), files))
            .collect();
        Self { cgroup_parent, created }
    }
}

impl Drop for HostLeftovers {
    fn drop(&mut self) {
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let dir = h.path().join(self.cgroup_parent.trim_start_matches('/'));
                if dir.exists() {
                    prune(&dir, &[]);
                    if dir.exists() {
                        eprintln!("podman e2e cleanup: cgroup {} is still in use", dir.display());
                    }
                }
            }
        }
        for (dir, files) in &self.created {
            prune(dir, files);
        }
    }
}

/// Removes every container of the private podman state (CNI DEL through the agent).
struct Containers {
    podman: Podman,
}

impl Drop for Containers {
    fn drop(&mut self) {
        let out = self.podman.run(&["rm", "--all", "--force", "--time", "0"]);
        if !out.ok {
            eprintln!("podman e2e cleanup: {}", out.describe());
        }
    }
}

// ---------------------------------------------------------------- the test

/// What a failing step needs to explain itself.
struct Ctx<'a> {
    agent: &'a Agent,
    node: &'a NodeNetns,
    podman: &'a Podman,
    t0: Instant,
}

impl Ctx<'_> {
    fn step(&self, what: &str) {
        eprintln!("[podman e2e +{}] {what}", elapsed(self.t0));
    }

    fn fail(&self, msg: impl Display) -> ! {
        let mut d = String::new();
        let client = &self.agent.client;
        d += &format!("\n--- agent endpoints: {:?}", client.get::<Vec<Endpoint>>("/v1/endpoints"));
        d += &format!("\n--- agent datapath metrics: {:?}", client.get::<Vec<DatapathMetric>>("/v1/metrics/datapath"));
        for args in [["-d", "link"], ["addr", "show"], ["route", "show"]] {
            let o = self.node.ip(&args);
            d += &format!("\n--- ip -n {} {}:\n{}{}", self.node.name, args.join(" "), o.stdout, o.stderr);
        }
        let o = self.podman.run(&["ps", "--all"]);
        d += &format!("\n--- podman ps --all:\n{}{}", o.stdout, o.stderr);
        d += &format!("\n--- agent log (tail):\n{}", self.agent.log_tail(80));
        panic!("{msg}\n{d}");
    }

    /// Run podman; fail the test (with diagnostics) when it fails.
    fn podman(&self, args: &[&str]) -> String {
        let out = self.podman.run(args);
        if !out.ok {
            self.fail(format!("podman failed: {}", out.describe()));
        }
        out.stdout
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        match self.agent.client.get::<Vec<Endpoint>>("/v1/endpoints") {
            Ok(v) => v,
            Err(e) => self.fail(format!("GET /v1/endpoints failed: {e}")),
        }
    }
}

/// A rootfs with a static busybox, imported as a local image (no registry needed).
fn build_image(ctx: &Ctx<'_>, dir: &Path, index_html: &str) {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "www"] {
        std::fs::create_dir_all(rootfs.join(d)).or_die(format!("creating rootfs/{d}"));
    }
    let bb = rootfs.join("bin/busybox");
    std::fs::copy(BUSYBOX, &bb).or_die(format!("copying {BUSYBOX}"));
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755)).or_die("chmod busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).or_die(format!("linking {applet}"));
    }
    for (path, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("www/index.html", index_html),
    ] {
        std::fs::write(rootfs.join(path), text).or_die(format!("writing rootfs/{path}"));
    }
    let tarball = dir.join("rootfs.tar");
    let out = run(
        &ctx.podman.scratch,
        Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tarball).arg("."),
        CMD_TIMEOUT,
    );
    if !out.ok {
        ctx.fail(format!("packing the rootfs failed: {}", out.describe()));
    }
    let tarball = tarball.display().to_string();
    ctx.podman(&["import", "--quiet", "--change", "CMD=[\"/bin/sh\"]", &tarball, IMAGE]);
}

/// A container's network as podman sees it.
struct PodmanNet {
    ip: String,
    mac: String,
    sandbox: String,
}

fn inspect_net(ctx: &Ctx<'_>, name: &str) -> PodmanNet {
    let text = ctx.podman(&["inspect", "--type", "container", "--format", "{{json .NetworkSettings}}", name]);
    let v: Value = match serde_json::from_str(text.trim()) {
        Ok(v) => v,
        Err(e) => ctx.fail(format!("podman inspect {name}: not JSON ({e}): {text}")),
    };
    let net = &v["Networks"][NETWORK];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let got = PodmanNet { ip: s(&net["IPAddress"]), mac: s(&net["MacAddress"]), sandbox: s(&v["SandboxKey"]) };
    if got.ip.is_empty() {
        ctx.fail(format!("podman reports no address for {name} on {NETWORK}: {v:#}"));
    }
    got
}

/// The agent's endpoint of a container, checked against podman's view.
fn endpoint_of(ctx: &Ctx<'_>, eps: &[Endpoint], name: &str, id: &str, net: &PodmanNet) -> Endpoint {
    let Some(ep) = eps.iter().find(|e| e.container_id == id) else {
        ctx.fail(format!("the agent has no endpoint for container {name} ({id}); endpoints: {eps:#?}"));
    };
    if ep.ifname != "eth0" || ep.ipv4 != net.ip || ep.netns != net.sandbox || !ep.mac.eq_ignore_ascii_case(&net.mac) {
        ctx.fail(format!(
            "podman's view of {name} (ip {}, mac {}, netns {}) does not match the agent's endpoint {ep:#?}",
            net.ip, net.mac, net.sandbox
        ));
    }
    ep.clone()
}

/// `podman exec` with a result instead of a failure.
fn exec(ctx: &Ctx<'_>, container: &str, cmd: &[&str]) -> Out {
    let mut args = vec!["exec", container];
    args.extend_from_slice(cmd);
    ctx.podman.run(&args)
}

#[test]
fn podman_containers_reach_each_other_through_myelin_cni() {
    let t0 = Instant::now();
    preflight();
    let bins = bin_dir();
    let pid = std::process::id();
    let node_name = format!("myl-pm{pid}");
    let (name_a, name_b) = (format!("myl-pm{pid}-a"), format!("myl-pm{pid}-b"));
    let token = format!("hello from {name_b} over myelin");

    let tmp = TempTree::create(std::env::temp_dir().join(format!("myelin-pm{pid}")));
    let scratch = tmp.scratch();
    let node = NodeNetns::create(&node_name, &scratch);
    let bpf = BpfDir::claim(PathBuf::from(format!("/sys/fs/bpf/myelin/test-pm{pid}")));

    // The agent.
    let socket = tmp.path.join("agent.sock");
    let agent_toml = tmp.path.join("agent.toml");
    let config = format!(
        "node_name = {node}\npod_cidr = \"{POD_CIDR}\"\nuplink = \"eth0\"\nstate_dir = {state}\nsocket = {socket}\n\
         bpf_dir = {bpf}\nmasquerade = false\nip_forward = true\n",
        node = quoted(Path::new(&node_name)),
        state = quoted(&tmp.path.join("state")),
        socket = quoted(&socket),
        bpf = quoted(&bpf.path),
    );
    std::fs::write(&agent_toml, config).or_die(format!("writing {}", agent_toml.display()));
    let mut agent =
        Agent::start(&bins.join("myelin-agent"), &node.path(), &agent_toml, &socket, tmp.path.join("agent.log"));
    let status = agent.wait_healthy(AGENT_TIMEOUT);
    eprintln!(
        "[podman e2e +{}] agent healthy: node {} pod_cidr {} node_ip {}",
        elapsed(t0),
        status.node,
        status.pod_cidr,
        status.node_ip
    );

    let podman = Podman::configure(&tmp.path.join("podman"), &scratch, &bins, &socket);
    let cgroup_parent = format!("/myelin-pm{pid}");
    let leftovers = HostLeftovers::record(cgroup_parent.clone());
    let containers = Containers { podman: podman.clone() };
    let ctx = Ctx { agent: &agent, node: &node, podman: &podman, t0 };

    let backend = ctx.podman(&["info", "--format", "{{.Host.NetworkBackend}}"]);
    if backend.trim() != "cni" {
        ctx.fail(format!(
            "podman uses the network backend {:?}, not cni: containers.conf was not honoured",
            backend.trim()
        ));
    }
    let networks = ctx.podman(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    if !networks.lines().any(|l| l.trim() == format!("{NETWORK} myelin-cni")) {
        ctx.fail(format!("podman does not list the network {NETWORK} with driver myelin-cni:\n{networks}"));
    }

    ctx.step("building the busybox image");
    build_image(&ctx, &tmp.path, &format!("{token}\n"));

    ctx.step("starting the containers");
    let port = HTTP_PORT.to_string();
    let last_line = |s: String| s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_owned();
    let run_args = ["run", "--detach", "--network", NETWORK, "--cgroup-parent", &cgroup_parent];
    let id_b = last_line(
        ctx.podman(&[&run_args[..], &["--name", &name_b, IMAGE, "httpd", "-f", "-p", &port, "-h", "/www"]].concat()),
    );
    let id_a = last_line(ctx.podman(&[&run_args[..], &["--name", &name_a, IMAGE, "sleep", "3600"]].concat()));

    // podman's view (from the CNI ADD result) must be the agent's endpoint.
    let (net_a, net_b) = (inspect_net(&ctx, &name_a), inspect_net(&ctx, &name_b));
    let eps = ctx.endpoints();
    if eps.len() != 2 {
        ctx.fail(format!("expected 2 endpoints after two CNI ADDs, the agent has {}: {eps:#?}", eps.len()));
    }
    let ep_a = endpoint_of(&ctx, &eps, &name_a, &id_a, &net_a);
    let ep_b = endpoint_of(&ctx, &eps, &name_b, &id_b, &net_b);
    ctx.step(&format!(
        "{name_a} = {} ({}), {name_b} = {} ({})",
        ep_a.ipv4, ep_a.host_ifname, ep_b.ipv4, ep_b.host_ifname
    ));

    // b's server is up (loopback inside b: no datapath involved yet).
    let local_url = format!("http://127.0.0.1:{HTTP_PORT}/");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = exec(&ctx, &name_b, &["timeout", "5", "wget", "-q", "-O", "-", &local_url]);
        if out.ok && out.stdout.contains(&token) {
            break;
        }
        if Instant::now() >= deadline {
            ctx.fail(format!("httpd in {name_b} does not answer on loopback: {}", out.describe()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    ctx.step("a -> b: TCP (HTTP GET)");
    let url = format!("http://{}:{HTTP_PORT}/", ep_b.ipv4);
    let out = exec(&ctx, &name_a, &["timeout", "10", "wget", "-q", "-O", "-", &url]);
    if !(out.ok && out.stdout.contains(&token)) {
        ctx.fail(format!("{name_a} cannot fetch {url} from {name_b} over TCP: {}", out.describe()));
    }
    ctx.step("a -> b and b -> a: ICMP echo");
    for (from, to) in [(&name_a, &ep_b.ipv4), (&name_b, &ep_a.ipv4)] {
        let out = exec(&ctx, from, &["ping", "-c", "1", "-W", "5", to]);
        if !(out.ok && out.stdout.contains("1 packets received")) {
            ctx.fail(format!("{from} cannot ping {to}: {}", out.describe()));
        }
    }

    // The eBPF datapath carried it (the node netns would also route between
    // the veths on its own): each side forwarded a TCP exchange both ways.
    let metrics = match ctx.agent.client.get::<Vec<DatapathMetric>>("/v1/metrics/datapath") {
        Ok(m) => m,
        Err(e) => ctx.fail(format!("GET /v1/metrics/datapath failed: {e}")),
    };
    for ep in [&ep_a, &ep_b] {
        for direction in ["ingress", "egress"] {
            let forwarded: u64 = metrics
                .iter()
                .filter(|m| m.endpoint_id == ep.id && m.direction == direction && m.reason_name == "forwarded")
                .map(|m| m.packets)
                .sum();
            if forwarded < 3 {
                ctx.fail(format!(
                    "the datapath counted {forwarded} forwarded {direction} packets for endpoint {} ({}), expected at least 3: {metrics:#?}",
                    ep.id, ep.ipv4
                ));
            }
        }
    }

    ctx.step("podman rm -f (CNI DEL)");
    ctx.podman(&["rm", "--force", "--time", "0", &name_a, &name_b]);
    let left = ctx.endpoints();
    if !left.is_empty() {
        ctx.fail(format!("after podman rm -f the agent still has endpoints (CNI DEL did not remove them): {left:#?}"));
    }
    let links = node.ip(&["-o", "link", "show"]);
    for ep in [&ep_a, &ep_b] {
        if links
            .stdout
            .split_whitespace()
            .any(|w| w.trim_end_matches(':').split('@').next() == Some(ep.host_ifname.as_str()))
        {
            ctx.fail(format!(
                "host veth {} is still in the node netns after CNI DEL:\n{}",
                ep.host_ifname, links.stdout
            ));
        }
        if Path::new(&ep.netns).exists() {
            ctx.fail(format!("the container netns {} still exists after podman rm", ep.netns));
        }
    }
    let ps = ctx.podman(&["ps", "--all", "--quiet"]);
    if !ps.trim().is_empty() {
        ctx.fail(format!("podman still lists containers: {ps}"));
    }
    ctx.step("ok");
    drop(containers);
    drop(leftovers);
    drop(agent);
    drop(bpf);
    drop(node);
    drop(tmp);
    eprintln!("[podman e2e +{}] cleaned up", elapsed(t0));
}
