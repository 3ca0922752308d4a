#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic with context
//! Lab lifecycle against the real binaries (root only): up -> status -> exec ->
//! down leaves the machine as it was; a failed up leaves nothing behind; nothing run in a
//! lab outlives its `lab exec`, its pod or the lab.
//!
//! Needs `cargo build --workspace --bins` first (the lab finds `myelin-agent`,
//! `myelin-cni` and `myelin` next to this test binary, or in $MYELIN_BIN_DIR).

mod common;

use common::{lab_name, require_root, wait_until, Teardown};
use myelin_lab::{Lab, LabError, LabOptions, LabSpec, NamespaceSpec, NodeSpec, PodSpec};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What a lab may leave behind, restricted to names containing the lab's name.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    netns: BTreeSet<String>,
    bpf: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    state: bool,
    agents: BTreeSet<String>,
}

fn walk(dir: &Path, out: &mut BTreeSet<String>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.insert(p.display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, out);
            }
        }
    }
}

fn snapshot(lab: &str) -> Snapshot {
    let mine = |s: &String| {
        s.contains(&format!("myl-{lab}-")) || s.contains(&format!("/{lab}/")) || s.ends_with(&format!("/{lab}"))
    };
    // Named namespaces, from the directory and from iproute2.
    let mut netns: BTreeSet<String> = std::fs::read_dir("/var/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    netns.extend(
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split_whitespace().next().unwrap_or("").to_owned()),
    );
    let mut bpf = BTreeSet::new();
    walk(Path::new("/sys/fs/bpf/myelin"), &mut bpf);
    let mut cgroups = BTreeSet::new();
    walk(&myelin_lab::cgroup2_mount().expect("cgroup2").join("myelin"), &mut cgroups);
    let mut agents = BTreeSet::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("myelin-agent") && cmd.contains(&format!("/run/myelin/lab/{lab}/")) {
                agents.insert(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    Snapshot {
        netns: netns.into_iter().filter(|n| mine(n)).collect(),
        bpf: bpf.into_iter().filter(|n| mine(n)).collect(),
        cgroups: cgroups.into_iter().filter(|n| mine(n)).collect(),
        state: Path::new(myelin_lab::STATE_ROOT).join(lab).exists(),
        agents,
    }
}

fn empty() -> Snapshot {
    Snapshot {
        netns: BTreeSet::new(),
        bpf: BTreeSet::new(),
        cgroups: BTreeSet::new(),
        state: false,
        agents: BTreeSet::new(),
    }
}

fn two_pod_spec() -> LabSpec {
    LabSpec {
        nodes: vec![NodeSpec { name: "node1".into(), pod_cidr: None }],
        namespaces: vec![NamespaceSpec { name: "default".into(), labels: Default::default() }],
        pods: vec![
            PodSpec::new("default", "a", "node1", &[("app", "a")]),
            PodSpec::new("default", "b", "node1", &[("app", "b")]),
        ],
        external: vec![myelin_lab::ExternalSpec { name: "world1".into() }],
        agent: Default::default(),
        routing: None,
        kvstore: None,
        kvstore_members: None,
        cluster_pool: None,
    }
}

fn run_in(lab: &Lab, target: &str, argv: &[&str]) -> String {
    let out = lab.exec_command(target, argv).expect("exec command").output().expect("run exec command");
    assert!(out.status.success(), "{argv:?} in {target}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn up_status_exec_down_restores_the_machine() {
    require_root();
    let name = lab_name("u");
    let before = snapshot(&name);
    assert_eq!(before, empty(), "leftovers of an earlier lab {name}");
    let _teardown = Teardown(name.clone());

    let mut lab = Lab::up(two_pod_spec(), &name, LabOptions::default()).unwrap_or_else(|e| panic!("lab up: {e}"));
    let status = lab.status();
    assert_eq!(status.pods.len(), 2);
    for p in &status.pods {
        let ip = p.ip.as_deref().unwrap_or_else(|| panic!("pod {} has no IP", p.name));
        assert!(ip.starts_with("10.244.1."), "pod {} got {ip}, outside node1's pod CIDR", p.name);
        assert!(p.endpoint_id.is_some(), "pod {} has no endpoint id", p.name);
    }
    assert!(status.nodes[0].agent_running);
    let during = snapshot(&name);
    assert_eq!(during.netns.len(), 5, "fabric, node, external and 2 pods: {:?}", during.netns);
    assert_eq!(during.agents.len(), 1, "{:?}", during.agents);

    // exec lands in the pod's netns and cgroup.
    let a = lab.pod("default", "a").expect("pod a");
    let addrs = run_in(&lab, "default/a", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(a.ip.as_deref().unwrap_or("?")), "{addrs}");
    let cg = run_in(&lab, "default/a", &["cat", "/proc/self/cgroup"]);
    assert!(cg.contains(&format!("myelin/{name}/node1/{}", a.container_id)), "{cg}");
    let node_addrs = run_in(&lab, "node1", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(node_addrs.contains("172.30.0.10/24"), "{node_addrs}");
    let ext_addrs = run_in(&lab, "world1", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(ext_addrs.contains("198.51.100.10/24"), "{ext_addrs}");

    // The agent comes back after SIGKILL; pods come and go.
    let old_pid = lab.node("node1").expect("node1").agent_pid;
    lab.restart_agent("node1", Signal::SIGKILL).unwrap_or_else(|e| panic!("restart agent: {e}"));
    assert_ne!(lab.node("node1").expect("node1").agent_pid, old_pid);
    let c =
        lab.add_pod(PodSpec::new("default", "c", "node1", &[("app", "c")])).unwrap_or_else(|e| panic!("add pod: {e}"));
    assert!(c.ip.is_some() && c.endpoint_id.is_some(), "{c:?}");
    lab.delete_pod("default", "c").unwrap_or_else(|e| panic!("delete pod: {e}"));
    assert!(!c.netns_path.exists(), "pod netns left behind");

    // Lab::load sees the same lab.
    assert_eq!(Lab::load(&name).expect("load").status().pods.len(), 2);

    lab.down().unwrap_or_else(|e| panic!("lab down: {e}"));
    assert_eq!(snapshot(&name), before, "lab down left things behind");
    assert!(!Lab::down_by_name(&name).expect("second down"), "down is idempotent");
}

/// A directory holding a fake `myelin-agent` that dies at once.
fn dying_agent_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("myelin-lab-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let agent = dir.join("myelin-agent");
    std::fs::write(&agent, "#!/bin/sh\necho 'fake agent: cannot start' >&2\nexit 3\n").expect("write fake agent");
    std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    dir
}

#[test]
fn failed_up_without_binaries_leaves_nothing_behind() {
    require_root();
    let name = lab_name("m");
    let _teardown = Teardown(name.clone());
    let opts = LabOptions { bin_dir: Some(PathBuf::from("/nonexistent/myelin-bin")), ..LabOptions::default() };
    let err = Lab::up(two_pod_spec(), &name, opts).expect_err("up without binaries must fail");
    assert!(matches!(err, LabError::MissingBinary { ref binary, .. } if binary == "myelin-agent"), "{err}");
    assert!(err.to_string().contains("cargo build --workspace --bins"), "{err}");
    assert_eq!(snapshot(&name), empty());
    assert!(!Lab::down_by_name(&name).expect("down"), "the failed up removed its state already");
}

#[test]
fn failed_agent_start_reports_its_log_and_leaves_nothing_behind() {
    require_root();
    let name = lab_name("d");
    let _teardown = Teardown(name.clone());
    let dir = dying_agent_dir(&name);
    let opts = LabOptions { bin_dir: Some(dir.clone()), ..LabOptions::default() };
    let err = Lab::up(two_pod_spec(), &name, opts).expect_err("up with a dying agent must fail");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, LabError::Agent { .. }), "{err}");
    assert!(err.to_string().contains("fake agent: cannot start"), "error lacks the agent log tail: {err}");
    assert_eq!(snapshot(&name), empty());
}

#[test]
fn invalid_spec_fails_before_creating_anything() {
    require_root();
    let name = lab_name("v");
    let mut spec = two_pod_spec();
    spec.pods[1].node = "node9".into();
    let err = Lab::up(spec, &name, LabOptions::default()).expect_err("pod on a missing node");
    assert!(err.to_string().starts_with("pods[1].node"), "{err}");
    assert_eq!(snapshot(&name), empty());
}

#[test]
fn two_labs_coexist_and_down_by_name_removes_only_its_own() {
    require_root();
    let (a, b) = (lab_name("ca"), lab_name("cb"));
    let _ta = Teardown(a.clone());
    let _tb = Teardown(b.clone());
    let spec = LabSpec { pods: Vec::new(), ..two_pod_spec() };
    let la = Lab::up(spec.clone(), &a, LabOptions::default()).unwrap_or_else(|e| panic!("lab {a}: {e}"));
    let lb = Lab::up(spec, &b, LabOptions::default()).unwrap_or_else(|e| panic!("lab {b}: {e}"));
    assert!(Lab::down_by_name(&a).expect("down a"));
    assert_eq!(snapshot(&a), empty());
    assert_eq!(snapshot(&b).netns.len(), 3, "lab {b} must be untouched");
    drop(la);
    lb.down().expect("down b");
    assert_eq!(snapshot(&b), empty());
}

// ---- no orphans: what runs in a lab ends with its exec, its pod, or the lab ----

/// Identity of a network namespace: the nsfs (device, inode) of a netns file or /proc/PID/ns/net.
fn netns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Start time of a process (field 22 of /proc/PID/stat), to tell it from a later one with its pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// True while `pid` is the process started at `started` and not a zombie.
fn running(pid: i32, started: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, None | Some("Z" | "X")) && start_time(pid) == started
}

/// Every process (pid, start time, command line) whose network namespace is one of `ids`.
fn processes_in(ids: &BTreeSet<(u64, u64)>) -> Vec<(i32, Option<u64>, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if netns_id(&e.path().join("ns/net")).is_some_and(|id| ids.contains(&id)) {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push((pid, start_time(pid), String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

/// A child process that is killed and reaped when dropped, so a failing test leaves none behind.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Wait until a child of ours has exited (reaping it), or panic.
fn wait_exit(child: &mut Spawned, what: &str) -> std::process::ExitStatus {
    let child = &mut child.0;
    let mut status = None;
    wait_until(what, std::time::Duration::from_secs(10), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.expect("exit status")
}

/// `cmd` running in the netns at `netns` through `ip netns exec` (so in none of the lab's
/// cgroups), once it really runs there.
fn spawn_in_netns(netns: &str, argv: &[&str]) -> Spawned {
    let child = Spawned(
        std::process::Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("ip netns exec"),
    );
    let want = netns_id(&Path::new("/var/run/netns").join(netns)).expect("netns exists");
    let pid = i32::try_from(child.0.id()).unwrap();
    wait_until(&format!("{argv:?} to run in {netns}"), std::time::Duration::from_secs(10), || {
        netns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(want)
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(argv[0].as_bytes()))
    });
    child
}

/// The pid of the `sleep 1000` running in a pod's cgroup, once there is one.
fn sleep_in_cgroup(cgroup: &Path) -> i32 {
    let mut found = None;
    wait_until(&format!("sleep 1000 in {}", cgroup.display()), std::time::Duration::from_secs(10), || {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        found = procs
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .find(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x001000\x00"));
        found.is_some()
    });
    found.expect("sleep pid")
}

#[test]
fn killing_lab_exec_ends_its_command() {
    use std::os::unix::process::ExitStatusExt;
    require_root();
    let name = lab_name("x");
    let _teardown = Teardown(name.clone());
    let spec = LabSpec { pods: vec![PodSpec::new("default", "a", "node1", &[("app", "a")])], ..two_pod_spec() };
    let lab = Lab::up(spec, &name, LabOptions::default()).unwrap_or_else(|e| panic!("lab up: {e}"));
    let cgroup = lab.pod("default", "a").expect("pod a").cgroup_dir.expect("pod cgroup");
    let myelin = myelin_lab::find_binary("myelin", None).expect("myelin binary");
    for signal in [Signal::SIGKILL, Signal::SIGTERM] {
        let mut exec = Spawned(
            std::process::Command::new(&myelin)
                .args(["lab", "exec", "--name", &name, "default/a", "--", "sleep", "1000"])
                .stdin(std::process::Stdio::null())
                .spawn()
                .expect("myelin lab exec"),
        );
        let sleep = sleep_in_cgroup(&cgroup);
        let started = start_time(sleep);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(exec.0.id()).unwrap()), signal).unwrap();
        let status = wait_exit(&mut exec, &format!("myelin lab exec to end after {signal}"));
        assert_eq!(status.signal(), Some(signal as i32), "lab exec reports how its command ended: {status}");
        wait_until(
            &format!("the command of a {signal}ed `myelin lab exec` (sleep, pid {sleep}) to end"),
            std::time::Duration::from_secs(5),
            || !running(sleep, started),
        );
    }
    lab.down().unwrap_or_else(|e| panic!("lab down: {e}"));
    assert_eq!(snapshot(&name), empty());
}

#[test]
fn pod_delete_and_lab_down_end_every_process_in_the_labs_pods_and_namespaces() {
    require_root();
    let name = lab_name("o");
    let _teardown = Teardown(name.clone());
    let mut lab = Lab::up(two_pod_spec(), &name, LabOptions::default()).unwrap_or_else(|e| panic!("lab up: {e}"));

    // Pod delete: what runs in the pod (through exec, and beside its cgroup) ends with it.
    let c = lab.add_pod(PodSpec::new("default", "c", "node1", &[("app", "c")])).unwrap_or_else(|e| panic!("{e}"));
    let mut in_c = Spawned(lab.exec_command("default/c", &["sleep", "1000"]).expect("exec").spawn().expect("spawn"));
    let mut beside_c = spawn_in_netns(&c.netns, &["sleep", "1000"]);
    sleep_in_cgroup(c.cgroup_dir.as_deref().expect("pod cgroup"));
    lab.delete_pod("default", "c").unwrap_or_else(|e| panic!("delete pod: {e}"));
    wait_exit(&mut in_c, "the process exec'd in the deleted pod to end");
    wait_exit(&mut beside_c, "the process in the deleted pod's netns (outside its cgroup) to end");
    assert!(!c.netns_path.exists(), "pod netns left behind");
    assert!(!c.cgroup_dir.as_deref().expect("pod cgroup").exists(), "pod cgroup left behind");

    // Lab down: a process in a pod (exec, so in its cgroup), one in a pod's netns outside its
    // cgroup, one in a node's netns and one in an external host's, none started by the lab.
    let a = lab.pod("default", "a").expect("pod a");
    let b = lab.pod("default", "b").expect("pod b");
    let node = lab.node("node1").expect("node1");
    let world = lab.external("world1").expect("world1");
    let mut children = vec![
        (
            "exec'd in pod a",
            Spawned(lab.exec_command("default/a", &["sleep", "1000"]).expect("exec").spawn().expect("spawn")),
        ),
        ("in pod b's netns", spawn_in_netns(&b.netns, &["sleep", "1000"])),
        ("in the node's netns", spawn_in_netns(&node.netns, &["sleep", "1000"])),
        ("in the external host's netns", spawn_in_netns(&world.netns, &["sleep", "1000"])),
    ];
    sleep_in_cgroup(a.cgroup_dir.as_deref().expect("pod cgroup"));
    let ids: BTreeSet<(u64, u64)> =
        lab.netns_names().iter().filter_map(|n| netns_id(&Path::new("/var/run/netns").join(n))).collect();
    assert_eq!(ids.len(), 5, "fabric, node, external and 2 pods");
    let before = processes_in(&ids);
    for (what, child) in &children {
        let pid = i32::try_from(child.0.id()).unwrap();
        assert!(before.iter().any(|(p, _, _)| *p == pid), "the process {what} (pid {pid}) is seen in a lab netns");
    }
    lab.down().unwrap_or_else(|e| panic!("lab down: {e}"));
    for (what, child) in &mut children {
        wait_exit(child, &format!("the process {what} to end with the lab"));
    }
    // No process that was in a lab netns survives to keep it alive (the agent included).
    let survivors: Vec<_> = before.iter().filter(|(pid, started, _)| running(*pid, *started)).collect();
    assert!(survivors.is_empty(), "processes keep deleted lab namespaces alive: {survivors:?}");
    assert_eq!(snapshot(&name), empty(), "lab down left things behind");
}
