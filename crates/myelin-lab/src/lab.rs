//! Building, inspecting and tearing down a lab.

use crate::error::{io, LabError, Result};
use crate::naming;
use crate::spec::{check_pod, LabSpec, PodSpec};
use crate::status::{ExternalStatus, LabStatus, NodeStatus, PodStatus};
use crate::sys;
use myelin_api::{Client, Endpoint, Labels, LabelsUpdate, NamedPort, Status};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Root of every lab's state directory.
pub const STATE_ROOT: &str = "/run/myelin/lab";
/// Root of every lab's bpffs directories.
pub const BPF_ROOT: &str = "/sys/fs/bpf/myelin/lab";

const UNDERLAY: &str = "172.30.0";
const WORLD: &str = "198.51.100";
const STATE_FILE: &str = "lab.json";

/// Called with one human-readable line per build step.
pub type ProgressFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Knobs of [`Lab::up`].
#[derive(Clone)]
pub struct LabOptions {
    /// Directory of `myelin-agent`, `myelin-cni` and `myelin`; see [`crate::bin_dirs`].
    pub bin_dir: Option<PathBuf>,
    /// How long an agent may take to answer healthy.
    pub agent_timeout: Duration,
    /// Progress reporting; `None` is silent.
    pub progress: Option<ProgressFn>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self { bin_dir: None, agent_timeout: Duration::from_secs(20), progress: None }
    }
}

impl std::fmt::Debug for LabOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabOptions")
            .field("bin_dir", &self.bin_dir)
            .field("agent_timeout", &self.agent_timeout)
            .finish_non_exhaustive()
    }
}

/// A node of a running lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub netns: String,
    pub netns_path: PathBuf,
    /// Underlay address, without prefix.
    pub address: String,
    pub pod_cidr: String,
    pub agent_socket: PathBuf,
    pub agent_pid: Option<i32>,
    /// Start time of the agent process (to recognise it after pid reuse).
    pub agent_start_time: Option<u64>,
    pub agent_config: PathBuf,
    pub agent_log: PathBuf,
    pub agent_state_dir: PathBuf,
    pub bpf_dir: PathBuf,
}

/// A pod of a running lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub netns_path: PathBuf,
    pub container_id: String,
    pub cgroup_dir: Option<PathBuf>,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    /// Set once the CNI ADD succeeded.
    pub ip: Option<String>,
    pub endpoint_id: Option<u32>,
}

/// An external host of a running lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalInfo {
    pub name: String,
    pub netns: String,
    pub netns_path: PathBuf,
    pub ip: String,
}

/// Everything `down` needs, persisted as lab.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabState {
    name: String,
    spec: LabSpec,
    state_dir: PathBuf,
    bpf_root: PathBuf,
    /// `<cgroup2>/myelin/<lab>`, when the lab has pods.
    cgroup_root: Option<PathBuf>,
    fabric_netns: String,
    nodes: Vec<NodeInfo>,
    external: Vec<ExternalInfo>,
    pods: Vec<PodInfo>,
}

/// A lab: a handle on its state; the lab lives on after the handle is dropped.
pub struct Lab {
    state: LabState,
    bin_dir: Option<PathBuf>,
    agent_timeout: Duration,
    progress: Option<ProgressFn>,
    /// Agents this process started, so they can be reaped.
    children: HashMap<String, Child>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("name", &self.state.name).finish_non_exhaustive()
    }
}

fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// Tears the lab down when `up` fails or panics before it is disarmed.
struct UpGuard<'a> {
    lab: Option<&'a mut Lab>,
}

impl Drop for UpGuard<'_> {
    fn drop(&mut self) {
        if let Some(lab) = self.lab.take() {
            lab.say("cleaning up the half-built lab");
            if let Err(e) = lab.teardown() {
                lab.say(&format!("cleanup: {e}"));
            }
        }
    }
}

impl Lab {
    /// Build a lab: namespaces, fabric, agents, pods. On error (or panic) whatever
    /// was built is removed again.
    pub fn up(spec: LabSpec, name: &str, opts: LabOptions) -> Result<Lab> {
        naming::check_lab_name(name)?;
        spec.validate()?;
        let dir = state_dir(name);
        let state_file = dir.join(STATE_FILE);
        if state_file.exists() || naming::netns_path(&naming::fabric_netns(name)).exists() {
            return Err(LabError::LabExists { name: name.to_owned(), path: dir });
        }
        let cgroup_root =
            if spec.pods.is_empty() { None } else { Some(sys::cgroup2_mount()?.join("myelin").join(name)) };
        let state = plan(name, spec, dir.clone(), cgroup_root);
        let mut lab = Lab {
            state,
            bin_dir: opts.bin_dir,
            agent_timeout: opts.agent_timeout,
            progress: opts.progress,
            children: HashMap::new(),
        };
        std::fs::create_dir_all(&dir).map_err(io("creating lab state directory", &dir))?;
        lab.save()?;
        let mut guard = UpGuard { lab: Some(&mut lab) };
        let built = guard.lab.as_deref_mut().map_or(Ok(()), Lab::build);
        if built.is_ok() {
            guard.lab = None; // disarm
        }
        drop(guard);
        built?;
        Ok(lab)
    }

    /// Open an existing lab from its state file.
    pub fn load(name: &str) -> Result<Lab> {
        naming::check_lab_name(name)?;
        let path = state_dir(name).join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NoSuchLab { name: name.to_owned(), path })
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let state: LabState =
            serde_json::from_str(&text).map_err(|e| LabError::State { path, message: e.to_string() })?;
        Ok(Lab {
            state,
            bin_dir: None,
            agent_timeout: Duration::from_secs(20),
            progress: None,
            children: HashMap::new(),
        })
    }

    /// Use binaries from `dir` for later operations (exec, add_pod, restart_agent).
    #[must_use]
    pub fn with_options(mut self, opts: LabOptions) -> Self {
        self.bin_dir = opts.bin_dir;
        self.agent_timeout = opts.agent_timeout;
        self.progress = opts.progress;
        self
    }

    /// Tear down a lab by name, from its state file, however far its `up` got.
    /// Returns false when there was no such lab (down is idempotent).
    pub fn down_by_name(name: &str) -> Result<bool> {
        match Lab::load(name) {
            Ok(lab) => lab.down().map(|()| true),
            Err(LabError::NoSuchLab { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Tear the lab down: agents, pod processes, namespaces, cgroups, pins, state.
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.state.name
    }

    #[must_use]
    pub fn spec(&self) -> &LabSpec {
        &self.state.spec
    }

    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.state.state_dir
    }

    /// The lab's bpffs root, `/sys/fs/bpf/myelin/lab/<lab>`.
    #[must_use]
    pub fn bpf_root(&self) -> &Path {
        &self.state.bpf_root
    }

    /// The lab's cgroup root, `<cgroup2>/myelin/<lab>`, when it has pods.
    #[must_use]
    pub fn cgroup_root(&self) -> Option<&Path> {
        self.state.cgroup_root.as_deref()
    }

    /// Every netns name the lab owns.
    #[must_use]
    pub fn netns_names(&self) -> Vec<String> {
        let s = &self.state;
        let mut v = vec![s.fabric_netns.clone()];
        v.extend(s.nodes.iter().map(|n| n.netns.clone()));
        v.extend(s.external.iter().map(|x| x.netns.clone()));
        v.extend(s.pods.iter().map(|p| p.netns.clone()));
        v
    }

    /// Status for people and scripts, from the state file (agents are not asked).
    #[must_use]
    pub fn status(&self) -> LabStatus {
        let s = &self.state;
        LabStatus {
            name: s.name.clone(),
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.name.clone(),
                    addresses: vec![n.address.clone()],
                    agent_socket: n.agent_socket.display().to_string(),
                    pod_cidr: n.pod_cidr.clone(),
                    netns: n.netns.clone(),
                    agent_pid: n.agent_pid,
                    agent_running: n.agent_pid.is_some_and(|p| sys::alive(p, n.agent_start_time)),
                    agent_log: n.agent_log.display().to_string(),
                })
                .collect(),
            pods: s
                .pods
                .iter()
                .map(|p| PodStatus {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: p.node.clone(),
                    ip: p.ip.clone(),
                    endpoint_id: p.endpoint_id,
                    labels: p.labels.clone(),
                    netns: p.netns.clone(),
                })
                .collect(),
            external: s
                .external
                .iter()
                .map(|x| ExternalStatus { name: x.name.clone(), ip: x.ip.clone(), netns: x.netns.clone() })
                .collect(),
            state_dir: s.state_dir.display().to_string(),
        }
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Result<PodInfo> {
        self.state
            .pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
            .ok_or_else(|| self.not_found("pod", &format!("{namespace}/{name}")))
    }

    pub fn node(&self, name: &str) -> Result<NodeInfo> {
        self.state.nodes.iter().find(|n| n.name == name).cloned().ok_or_else(|| self.not_found("node", name))
    }

    pub fn external(&self, name: &str) -> Result<ExternalInfo> {
        self.state
            .external
            .iter()
            .find(|x| x.name == name)
            .cloned()
            .ok_or_else(|| self.not_found("external host", name))
    }

    /// All pods, in creation order.
    #[must_use]
    pub fn pods(&self) -> Vec<PodInfo> {
        self.state.pods.clone()
    }

    /// All nodes.
    #[must_use]
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.state.nodes.clone()
    }

    /// A client of a node's agent.
    pub fn client(&self, node: &str) -> Result<Client> {
        Ok(Client::new(self.node(node)?.agent_socket))
    }

    /// A command running `argv` in a target's netns (and, for a pod, in its cgroup):
    /// `myelin lab enter --netns PATH [--cgroup DIR] -- ARGV`.
    /// TARGET is `namespace/pod`, a node name or an external host name.
    pub fn exec_command<S: AsRef<std::ffi::OsStr>>(&self, target: &str, argv: &[S]) -> Result<Command> {
        let (netns, cgroup) = if let Some((ns, pod)) = target.split_once('/') {
            let p = self.pod(ns, pod)?;
            (p.netns_path, p.cgroup_dir)
        } else if let Ok(n) = self.node(target) {
            (n.netns_path, None)
        } else if let Ok(x) = self.external(target) {
            (x.netns_path, None)
        } else {
            return Err(self.not_found("target (namespace/pod, node or external host)", target));
        };
        let myelin = sys::find_binary("myelin", self.bin_dir.as_deref())?;
        let mut cmd = Command::new(myelin);
        cmd.args(["lab", "enter", "--netns"]).arg(netns);
        if let Some(cg) = cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        cmd.arg("--").args(argv);
        Ok(cmd)
    }

    /// Kill a node's agent with `signal`, wait for it to exit, start it again and
    /// wait until it is healthy.
    pub fn restart_agent(&mut self, node: &str, signal: Signal) -> Result<()> {
        let i = self.node_index(node)?;
        self.stop_agent(i, signal)?;
        self.start_agent(i)?;
        self.wait_agent(i)
    }

    /// Add a pod to the running lab (CNI ADD, labels and named ports).
    pub fn add_pod(&mut self, pod: PodSpec) -> Result<PodInfo> {
        let namespaces: BTreeSet<&str> = self.state.spec.namespaces.iter().map(|n| n.name.as_str()).collect();
        check_pod(&pod, "pod", &namespaces, &self.state.spec.nodes)?;
        if self.pod(&pod.namespace, &pod.name).is_ok() {
            return Err(LabError::Invalid {
                field: "pod".into(),
                message: format!("pod {} exists already", pod.key()),
            });
        }
        let cgroup_root = self.cgroup_root_or_detect()?;
        let info = plan_pod(&self.state.name, &pod, cgroup_root.as_deref());
        if self.netns_names().contains(&info.netns) {
            return Err(LabError::Invalid {
                field: "pod".into(),
                message: format!("netns name {} of pod {} is taken", info.netns, pod.key()),
            });
        }
        self.state.spec.pods.push(pod);
        self.state.pods.push(info);
        self.save()?;
        let i = self.state.pods.len() - 1;
        let built = self.ip_batch_root("creating pod netns", &[format!("netns add {}", self.state.pods[i].netns)]);
        let built = built.and_then(|()| self.build_pod(i));
        if let Err(e) = built {
            let _ = self.remove_pod(i, false);
            return Err(e);
        }
        Ok(self.state.pods[i].clone())
    }

    /// Delete a pod: CNI DEL, kill its processes, remove its netns and cgroup.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Result<()> {
        let i = self
            .state
            .pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
            .ok_or_else(|| self.not_found("pod", &format!("{namespace}/{name}")))?;
        self.remove_pod(i, true)
    }

    // ---- building ----

    fn build(&mut self) -> Result<()> {
        let s = self.state.clone();
        self.say(&format!(
            "creating {} network namespaces (fabric, {} node(s), {} external host(s))",
            1 + s.nodes.len() + s.external.len(),
            s.nodes.len(),
            s.external.len()
        ));
        let mut adds = vec![format!("netns add {}", s.fabric_netns)];
        adds.extend(s.nodes.iter().map(|n| format!("netns add {}", n.netns)));
        adds.extend(s.external.iter().map(|x| format!("netns add {}", x.netns)));
        self.ip_batch_root("creating network namespaces", &adds)?;

        self.say("wiring the fabric: bridges underlay 172.30.0.0/24 and world 198.51.100.0/24");
        let mut fab = vec![
            "link set lo up".to_owned(),
            "link add underlay type bridge".to_owned(),
            "link add world type bridge".to_owned(),
            format!("addr add {UNDERLAY}.254/24 dev underlay"),
            format!("addr add {WORLD}.254/24 dev world"),
            "link set underlay up".to_owned(),
            "link set world up".to_owned(),
        ];
        for (i, n) in s.nodes.iter().enumerate() {
            fab.push(format!("link add u{i} type veth peer name eth0 netns {}", n.netns));
            fab.push(format!("link set u{i} master underlay up"));
        }
        for (j, x) in s.external.iter().enumerate() {
            fab.push(format!("link add w{j} type veth peer name eth0 netns {}", x.netns));
            fab.push(format!("link set w{j} master world up"));
        }
        // Native routing: the fabric knows each node's pod CIDR (as a BGP-speaking
        // router would), so external hosts reach pods with their own addresses.
        for n in &s.nodes {
            fab.push(format!("route add {} via {}", n.pod_cidr, n.address));
        }
        sys::ip_batch("wiring the fabric", Some(&s.fabric_netns), &fab)?;
        sys::sysctl_in(&naming::netns_path(&s.fabric_netns), "net/ipv4/ip_forward", "1")?;

        for (i, n) in s.nodes.iter().enumerate() {
            let mut lines = vec![
                "link set lo up".to_owned(),
                format!("addr add {}/24 dev eth0", n.address),
                "link set eth0 up".to_owned(),
                format!("route add default via {UNDERLAY}.254"),
            ];
            // Native routing between nodes: other nodes' pod CIDRs via their underlay address.
            for (j, m) in s.nodes.iter().enumerate() {
                if i != j {
                    lines.push(format!("route add {} via {}", m.pod_cidr, m.address));
                }
            }
            sys::ip_batch(&format!("configuring node {}", n.name), Some(&n.netns), &lines)?;
        }
        for x in &s.external {
            let lines = vec![
                "link set lo up".to_owned(),
                format!("addr add {}/24 dev eth0", x.ip),
                "link set eth0 up".to_owned(),
                format!("route add default via {WORLD}.254"),
            ];
            sys::ip_batch(&format!("configuring external host {}", x.name), Some(&x.netns), &lines)?;
        }

        for i in 0..s.nodes.len() {
            self.say(&format!("starting myelin-agent on {}", s.nodes[i].name));
            self.write_agent_config(i)?;
            self.start_agent(i)?;
        }
        for i in 0..s.nodes.len() {
            self.wait_agent(i)?;
            self.push_namespaces(i)?;
            self.say(&format!("agent on {} is healthy", s.nodes[i].name));
        }

        if !s.pods.is_empty() {
            self.say(&format!("creating {} pod(s) through myelin-cni", s.pods.len()));
            let adds: Vec<String> = s.pods.iter().map(|p| format!("netns add {}", p.netns)).collect();
            self.ip_batch_root("creating pod network namespaces", &adds)?;
            for i in 0..s.pods.len() {
                self.build_pod(i)?;
                let p = &self.state.pods[i];
                self.say(&format!("pod {}/{} on {}: {}", p.namespace, p.name, p.node, p.ip.as_deref().unwrap_or("?")));
            }
        }
        self.save()
    }

    fn write_agent_config(&self, i: usize) -> Result<()> {
        #[derive(Serialize)]
        struct AgentConfig<'a> {
            node_name: &'a str,
            pod_cidr: &'a str,
            uplink: &'a str,
            state_dir: &'a Path,
            socket: &'a Path,
            bpf_dir: &'a Path,
            masquerade: bool,
            native_routing_cidrs: Vec<&'a str>,
            ip_forward: bool,
        }
        let n = &self.state.nodes[i];
        std::fs::create_dir_all(&n.agent_state_dir).map_err(io("creating", &n.agent_state_dir))?;
        let cfg = AgentConfig {
            node_name: &n.name,
            pod_cidr: &n.pod_cidr,
            uplink: "eth0",
            state_dir: &n.agent_state_dir,
            socket: &n.agent_socket,
            bpf_dir: &n.bpf_dir,
            masquerade: true,
            // Pods on other nodes are reached natively routed, unNATed.
            native_routing_cidrs: self
                .state
                .nodes
                .iter()
                .filter(|m| m.name != n.name)
                .map(|m| m.pod_cidr.as_str())
                .collect(),
            ip_forward: true,
        };
        let text = toml::to_string(&cfg)
            .map_err(|e| LabError::State { path: n.agent_config.clone(), message: e.to_string() })?;
        std::fs::write(&n.agent_config, text).map_err(io("writing", &n.agent_config))
    }

    fn start_agent(&mut self, i: usize) -> Result<()> {
        let agent = sys::find_binary("myelin-agent", self.bin_dir.as_deref())?;
        let n = self.state.nodes[i].clone();
        if let Some(dir) = n.agent_log.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.agent_log)
            .map_err(io("opening", &n.agent_log))?;
        let log2 = log.try_clone().map_err(io("duplicating", &n.agent_log))?;
        // A new session so the agent outlives the CLI's terminal; `setsid` execs in
        // place (we are not a process-group leader), so the pid is the agent's.
        let mut cmd = match sys::which("setsid") {
            Some(setsid) => {
                let mut c = Command::new(setsid);
                c.arg(&agent);
                c
            }
            None => {
                let mut c = Command::new(&agent);
                std::os::unix::process::CommandExt::process_group(&mut c, 0);
                c
            }
        };
        cmd.arg("--config").arg(&n.agent_config).arg("--netns").arg(&n.netns_path);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().map_err(|e| LabError::Command {
            what: format!("starting the agent of node {}", n.name),
            command: format!("{cmd:?}"),
            detail: e.to_string(),
        })?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        self.state.nodes[i].agent_pid = Some(pid);
        self.state.nodes[i].agent_start_time = sys::start_time(pid);
        self.children.insert(n.name.clone(), child);
        self.save()
    }

    /// Tell a node's agent the namespaces' labels (as a Kubernetes watcher would):
    /// they are part of the endpoints' security identities.
    fn push_namespaces(&self, i: usize) -> Result<()> {
        let client = Client::new(&self.state.nodes[i].agent_socket);
        for ns in &self.state.spec.namespaces {
            let body = myelin_api::NamespaceLabels { labels: ns.labels.clone() };
            let _: myelin_api::NamespaceLabels =
                client.put(&format!("/v1/namespaces/{}", ns.name), &body).map_err(|source| LabError::Api {
                    what: format!("setting the labels of namespace {}", ns.name),
                    socket: self.state.nodes[i].agent_socket.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn wait_agent(&mut self, i: usize) -> Result<()> {
        let n = self.state.nodes[i].clone();
        let fail = |message: String| LabError::Agent {
            node: n.name.clone(),
            message,
            log: n.agent_log.clone(),
            tail: sys::tail(&n.agent_log, 20),
        };
        let client = Client::new(&n.agent_socket).with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + self.agent_timeout;
        let mut last;
        loop {
            if let Some(child) = self.children.get_mut(&n.name) {
                if let Ok(Some(status)) = child.try_wait() {
                    self.children.remove(&n.name);
                    return Err(fail(format!("exited ({status}) before it became healthy")));
                }
            } else if !n.agent_pid.is_some_and(|p| sys::alive(p, n.agent_start_time)) {
                return Err(fail("is not running".into()));
            }
            match client.get::<Status>("/v1/status") {
                Ok(s) if s.healthy => return Ok(()),
                Ok(s) => last = format!("answers but is not healthy yet ({} features probed)", s.features.len()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "not healthy after {:?} on {}: {last}",
                    self.agent_timeout,
                    n.agent_socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_agent(&mut self, i: usize, signal: Signal) -> Result<()> {
        let n = self.state.nodes[i].clone();
        if let Some(pid) = n.agent_pid {
            let mut child = self.children.remove(&n.name);
            let mut reap = || {
                if let Some(c) = child.as_mut() {
                    let _ = c.try_wait();
                }
            };
            let grace = if signal == Signal::SIGKILL { Duration::from_secs(10) } else { Duration::from_secs(15) };
            if !sys::stop_process(pid, n.agent_start_time, signal, grace, &mut reap) {
                return Err(LabError::State {
                    path: n.agent_log.clone(),
                    message: format!("agent of node {} (pid {pid}) does not exit even after SIGKILL", n.name),
                });
            }
        }
        self.state.nodes[i].agent_pid = None;
        self.state.nodes[i].agent_start_time = None;
        self.save()
    }

    fn build_pod(&mut self, i: usize) -> Result<()> {
        let p = self.state.pods[i].clone();
        let node = self.node(&p.node)?;
        sys::ip_batch(&format!("pod {}/{}", p.namespace, p.name), Some(&p.netns), &["link set lo up".to_owned()])?;
        if let Some(cg) = &p.cgroup_dir {
            std::fs::create_dir_all(cg).map_err(io("creating pod cgroup", cg))?;
        }
        let out = self.run_cni("ADD", &p, &node)?;
        let result: serde_json::Value = serde_json::from_slice(&out).map_err(|e| LabError::Cni {
            command: "ADD".into(),
            pod: format!("{}/{}", p.namespace, p.name),
            message: format!("result is not JSON ({e}): {}", String::from_utf8_lossy(&out)),
        })?;
        let ip = result
            .pointer("/ips/0/address")
            .and_then(serde_json::Value::as_str)
            .and_then(|a| a.split('/').next())
            .ok_or_else(|| LabError::Cni {
                command: "ADD".into(),
                pod: format!("{}/{}", p.namespace, p.name),
                message: format!("result has no ips[0].address: {result}"),
            })?
            .to_owned();
        self.state.pods[i].ip = Some(ip);
        let client = Client::new(&node.agent_socket);
        let api = |what: String| {
            let socket = node.agent_socket.clone();
            move |source| LabError::Api { what, socket, source }
        };
        let ep: Endpoint = client
            .get(&format!("/v1/endpoints/by-container/{}/eth0", p.container_id))
            .map_err(api(format!("looking up the endpoint of pod {}/{}", p.namespace, p.name)))?;
        self.state.pods[i].endpoint_id = Some(ep.id);
        self.save()?;
        let update = LabelsUpdate { labels: p.labels.clone(), ports: Some(p.ports.clone()) };
        let _: Endpoint = client
            .put(&format!("/v1/endpoints/{}/labels", ep.id), &update)
            .map_err(api(format!("setting labels of pod {}/{} (endpoint {})", p.namespace, p.name, ep.id)))?;
        Ok(())
    }

    fn run_cni(&self, command: &str, p: &PodInfo, node: &NodeInfo) -> Result<Vec<u8>> {
        let cni = sys::find_binary("myelin-cni", self.bin_dir.as_deref())?;
        let cni_dir = cni.parent().map(Path::to_path_buf).unwrap_or_default();
        let pod = format!("{}/{}", p.namespace, p.name);
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "myelin",
            "type": "myelin-cni",
            "agentSocket": node.agent_socket,
        });
        let fail = |message: String| LabError::Cni { command: command.to_owned(), pod: pod.clone(), message };
        let mut child = Command::new(&cni)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &p.container_id)
            .env("CNI_NETNS", &p.netns_path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &cni_dir)
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", p.namespace, p.name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", cni.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes()).map_err(|e| fail(format!("writing the config: {e}")))?;
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            // CNI errors are JSON on stdout: {"code", "msg", "details"}.
            let stdout = String::from_utf8_lossy(&out.stdout);
            let msg = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| {
                    let msg = v.get("msg")?.as_str()?.to_owned();
                    let details = v.get("details").and_then(serde_json::Value::as_str).unwrap_or("");
                    Some(if details.is_empty() { msg } else { format!("{msg}: {details}") })
                })
                .unwrap_or_else(|| stdout.trim().to_owned());
            Err(fail(format!("{} ({}) {}", msg, out.status, String::from_utf8_lossy(&out.stderr).trim())))
        }
    }

    fn remove_pod(&mut self, i: usize, cni_del: bool) -> Result<()> {
        let p = self.state.pods[i].clone();
        let mut first_err = None;
        if cni_del {
            if let Ok(node) = self.node(&p.node) {
                if let Err(e) = self.run_cni("DEL", &p, &node) {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(cg) = &p.cgroup_dir {
            if let Err(e) = sys::empty_cgroup(cg, Duration::from_secs(10)).and_then(|()| sys::rmdir_if_exists(cg)) {
                first_err.get_or_insert(e);
            }
        }
        if naming::netns_path(&p.netns).exists() {
            if let Err(e) = self.ip_batch_root("deleting pod netns", &[format!("netns del {}", p.netns)]) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.state.pods.remove(i);
        self.state.spec.pods.retain(|s| !(s.namespace == p.namespace && s.name == p.name));
        self.save()
    }

    // ---- tearing down ----

    fn teardown(&mut self) -> Result<()> {
        let mut errors: Vec<String> = Vec::new();
        fn note(errors: &mut Vec<String>, r: Result<()>) {
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        }
        for i in 0..self.state.nodes.len() {
            if self.state.nodes[i].agent_pid.is_some() {
                self.say(&format!("stopping the agent of {}", self.state.nodes[i].name));
            }
            note(&mut errors, self.stop_agent(i, Signal::SIGTERM));
        }
        for p in &self.state.pods {
            if let Some(cg) = &p.cgroup_dir {
                note(
                    &mut errors,
                    sys::empty_cgroup(cg, Duration::from_secs(10)).and_then(|()| sys::rmdir_if_exists(cg)),
                );
            }
        }
        if let Some(root) = &self.state.cgroup_root {
            note(&mut errors, sys::rmdir_if_exists(root));
            if let Some(parent) = root.parent() {
                sys::rmdir_if_empty(parent);
            }
        }
        let present: Vec<String> = self.netns_names().into_iter().filter(|n| naming::netns_path(n).exists()).collect();
        if !present.is_empty() {
            self.say(&format!("deleting {} network namespaces", present.len()));
            let lines: Vec<String> = present.iter().map(|n| format!("netns del {n}")).collect();
            // -force: go on after a failure; check what is left afterwards.
            let _ = Command::new("ip")
                .args(["-force", "-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .and_then(|mut c| {
                    if let Some(mut stdin) = c.stdin.take() {
                        stdin.write_all((lines.join("\n") + "\n").as_bytes())?;
                    }
                    c.wait()
                });
            for n in present.iter().filter(|n| naming::netns_path(n).exists()) {
                note(&mut errors, sys::ip_batch("deleting netns", None, &[format!("netns del {n}")]));
            }
        }
        let bpf = self.state.bpf_root.clone();
        match std::fs::remove_dir_all(&bpf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => note(&mut errors, Err(io("removing bpffs directory", &bpf)(e))),
        }
        if let Some(lab_root) = bpf.parent() {
            sys::rmdir_if_empty(lab_root);
            if let Some(myelin) = lab_root.parent() {
                sys::rmdir_if_empty(myelin);
            }
        }
        if errors.is_empty() {
            let dir = self.state.state_dir.clone();
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => note(&mut errors, Err(io("removing state directory", &dir)(e))),
            }
            sys::rmdir_if_empty(Path::new(STATE_ROOT));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::State {
                path: self.state.state_dir.join(STATE_FILE),
                message: format!(
                    "lab {} was not fully removed (the state file is kept; run down again): {}",
                    self.state.name,
                    errors.join("; ")
                ),
            })
        }
    }

    // ---- helpers ----

    fn ip_batch_root(&self, what: &str, lines: &[String]) -> Result<()> {
        sys::ip_batch(what, None, lines)
    }

    fn save(&self) -> Result<()> {
        let path = self.state.state_dir.join(STATE_FILE);
        let tmp = self.state.state_dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| LabError::State { path: path.clone(), message: e.to_string() })?;
        let mut f = File::create(&tmp).map_err(io("writing", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming into place", &path))
    }

    fn say(&self, line: &str) {
        if let Some(p) = &self.progress {
            p(line);
        }
    }

    fn not_found(&self, kind: &'static str, name: &str) -> LabError {
        LabError::NotFound { lab: self.state.name.clone(), kind, name: name.to_owned() }
    }

    fn node_index(&self, name: &str) -> Result<usize> {
        self.state.nodes.iter().position(|n| n.name == name).ok_or_else(|| self.not_found("node", name))
    }

    fn cgroup_root_or_detect(&mut self) -> Result<Option<PathBuf>> {
        if self.state.cgroup_root.is_none() {
            self.state.cgroup_root = Some(sys::cgroup2_mount()?.join("myelin").join(&self.state.name));
        }
        Ok(self.state.cgroup_root.clone())
    }
}

/// Compute every name and address of a lab before anything is created.
fn plan(name: &str, spec: LabSpec, state_dir: PathBuf, cgroup_root: Option<PathBuf>) -> LabState {
    let bpf_root = Path::new(BPF_ROOT).join(name);
    let nodes = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let netns = naming::node_netns(name, &n.name);
            let dir = state_dir.join(&n.name);
            NodeInfo {
                name: n.name.clone(),
                netns_path: naming::netns_path(&netns),
                netns,
                address: format!("{UNDERLAY}.{}", 10 + i),
                pod_cidr: n.pod_cidr.clone().unwrap_or_else(|| format!("10.244.{}.0/24", i + 1)),
                agent_socket: dir.join("agent.sock"),
                agent_pid: None,
                agent_start_time: None,
                agent_config: dir.join("agent.toml"),
                agent_log: dir.join("agent.log"),
                agent_state_dir: dir.join("store"),
                bpf_dir: bpf_root.join(&n.name),
            }
        })
        .collect();
    let external = spec
        .external
        .iter()
        .enumerate()
        .map(|(j, x)| {
            let netns = naming::external_netns(name, &x.name);
            ExternalInfo {
                name: x.name.clone(),
                netns_path: naming::netns_path(&netns),
                netns,
                ip: format!("{WORLD}.{}", 10 + j),
            }
        })
        .collect();
    let pods = spec.pods.iter().map(|p| plan_pod(name, p, cgroup_root.as_deref())).collect();
    LabState {
        name: name.to_owned(),
        fabric_netns: naming::fabric_netns(name),
        state_dir,
        bpf_root,
        cgroup_root,
        nodes,
        external,
        pods,
        spec,
    }
}

fn plan_pod(lab: &str, p: &PodSpec, cgroup_root: Option<&Path>) -> PodInfo {
    let netns = naming::pod_netns(lab, &p.namespace, &p.name);
    PodInfo {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        node: p.node.clone(),
        netns_path: naming::netns_path(&netns),
        netns,
        container_id: naming::container_id(lab, &p.namespace, &p.name),
        cgroup_dir: cgroup_root.map(|r| r.join(format!("{}_{}", p.namespace, p.name))),
        labels: p.labels.clone(),
        ports: p.ports.clone(),
        ip: None,
        endpoint_id: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn plan_assigns_addresses_cidrs_and_paths() {
        let spec = LabSpec::demo();
        let s = plan("t1", spec, PathBuf::from("/run/myelin/lab/t1"), Some(PathBuf::from("/cg/myelin/t1")));
        assert_eq!(s.fabric_netns, "myl-t1-fab");
        assert_eq!(s.nodes[0].netns, "myl-t1-node1");
        assert_eq!(s.nodes[0].address, "172.30.0.10");
        assert_eq!(s.nodes[0].pod_cidr, "10.244.1.0/24");
        assert_eq!(s.nodes[0].bpf_dir, PathBuf::from("/sys/fs/bpf/myelin/lab/t1/node1"));
        assert_eq!(s.nodes[0].agent_socket, PathBuf::from("/run/myelin/lab/t1/node1/agent.sock"));
        assert_eq!(s.external[0].ip, "198.51.100.10");
        assert_eq!(s.external[0].netns, "myl-t1-x-world1");
        let db = s.pods.iter().find(|p| p.name == "db").unwrap();
        assert_eq!(db.netns, "myl-t1-p-prod-db");
        assert_eq!(db.cgroup_dir, Some(PathBuf::from("/cg/myelin/t1/prod_db")));
        assert_eq!(db.container_id, "myl-t1-prod-db");
    }

    #[test]
    fn status_json_has_the_documented_shape() {
        let mut s = plan("t2", LabSpec::demo(), PathBuf::from("/run/myelin/lab/t2"), None);
        s.pods[0].ip = Some("10.244.1.2".into());
        s.pods[0].endpoint_id = Some(7);
        let lab = Lab {
            state: s,
            bin_dir: None,
            agent_timeout: Duration::from_secs(1),
            progress: None,
            children: HashMap::new(),
        };
        let v = serde_json::to_value(lab.status()).unwrap();
        assert_eq!(v["name"], "t2");
        let node = &v["nodes"][0];
        for key in ["name", "addresses", "agent_socket", "pod_cidr"] {
            assert!(node.get(key).is_some(), "nodes[0].{key} missing in {node}");
        }
        assert_eq!(node["addresses"][0], "172.30.0.10");
        assert_eq!(node["pod_cidr"], "10.244.1.0/24");
        let pod = &v["pods"][0];
        for key in ["namespace", "name", "node", "ip", "endpoint_id", "labels"] {
            assert!(pod.get(key).is_some(), "pods[0].{key} missing in {pod}");
        }
        assert_eq!(pod["ip"], "10.244.1.2");
        assert_eq!(pod["endpoint_id"], 7);
        assert_eq!(pod["labels"]["app"], "frontend");
        assert_eq!(v["external"][0]["name"], "world1");
        assert_eq!(v["external"][0]["ip"], "198.51.100.10");
    }
}
