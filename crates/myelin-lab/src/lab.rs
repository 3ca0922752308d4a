//! The `Lab` handle and its public API: up, load, down, inspect, exec, change.
//! The work is done by the sibling modules: `plan` (names, addresses, paths,
//! state), `topology` (fabric, nodes, externals), `kvstore` (etcd), `agents`,
//! `pods` (CNI) and `teardown`.

use crate::error::{io, LabError, Result};
use crate::naming;
use crate::plan::{plan, plan_pod, state_dir, ExternalInfo, LabState, NodeInfo, PodInfo, STATE_FILE};
use crate::spec::{check_pod, LabSpec, PodSpec};
use crate::status::{ExternalStatus, LabStatus, NodeStatus, PodStatus};
use crate::sys;
use myelin_api::Client;
use nix::sys::signal::Signal;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

/// Called with one human-readable line per build step.
pub type ProgressFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Knobs of [`Lab::up`].
#[derive(Clone)]
pub struct LabOptions {
    /// Directory of `myelin-agent`, `myelin-cni` and `myelin`; see [`crate::bin_dirs`].
    pub bin_dir: Option<PathBuf>,
    /// How long an agent may take to answer healthy.
    pub agent_timeout: Duration,
    /// How long an etcd member may take to answer healthy.
    pub kvstore_timeout: Duration,
    /// The etcd binary for `kvstore: etcd`; default: `etcd` on PATH, else `/usr/bin/etcd`.
    pub etcd: Option<PathBuf>,
    /// Progress reporting; `None` is silent.
    pub progress: Option<ProgressFn>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            bin_dir: None,
            agent_timeout: Duration::from_secs(20),
            kvstore_timeout: Duration::from_secs(30),
            etcd: None,
            progress: None,
        }
    }
}

impl std::fmt::Debug for LabOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabOptions")
            .field("bin_dir", &self.bin_dir)
            .field("agent_timeout", &self.agent_timeout)
            .field("kvstore_timeout", &self.kvstore_timeout)
            .field("etcd", &self.etcd)
            .finish_non_exhaustive()
    }
}

/// Where [`Lab::exec_command`] runs a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTarget {
    /// The network namespace file to enter.
    pub netns: PathBuf,
    /// The cgroup v2 directory to join first (pods only).
    pub cgroup: Option<PathBuf>,
}

/// A lab: a handle on its state; the lab lives on after the handle is dropped.
pub struct Lab {
    pub(crate) state: LabState,
    pub(crate) bin_dir: Option<PathBuf>,
    pub(crate) agent_timeout: Duration,
    pub(crate) kvstore_timeout: Duration,
    pub(crate) etcd: Option<PathBuf>,
    pub(crate) progress: Option<ProgressFn>,
    /// Agents and etcd members this process started, so they can be reaped.
    pub(crate) children: HashMap<String, Child>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("name", &self.state.name).finish_non_exhaustive()
    }
}

/// Reaps the agents and etcd members of ours that have exited (e.g. ended by a `lab down` run
/// from another process), so they do not linger as zombies; the running ones live on.
impl Drop for Lab {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.try_wait();
        }
    }
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
            kvstore_timeout: opts.kvstore_timeout,
            etcd: opts.etcd,
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
        let defaults = LabOptions::default();
        Ok(Lab {
            state,
            bin_dir: defaults.bin_dir,
            agent_timeout: defaults.agent_timeout,
            kvstore_timeout: defaults.kvstore_timeout,
            etcd: defaults.etcd,
            progress: None,
            children: HashMap::new(),
        })
    }

    /// Use these binaries and timeouts for later operations (exec, add_pod, restart_agent,
    /// start_kvstore_member).
    #[must_use]
    pub fn with_options(mut self, opts: LabOptions) -> Self {
        self.bin_dir = opts.bin_dir;
        self.agent_timeout = opts.agent_timeout;
        self.kvstore_timeout = opts.kvstore_timeout;
        self.etcd = opts.etcd;
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

    /// Tear the lab down: agents, etcd, pod processes, namespaces, cgroups, pins, state.
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
        v.extend(s.kvstore.iter().map(|kv| kv.netns.clone()));
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
                    observer_socket: n.observer_socket().display().to_string(),
                    metrics_url: n.metrics_url(),
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
            routing: s.routing.to_string(),
            kvstore: self.kvstore_status(),
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

    /// Where a command for TARGET runs: its netns and, for a pod, its cgroup.
    /// TARGET is `namespace/pod`, a node name or an external host name.
    pub fn exec_target(&self, target: &str) -> Result<ExecTarget> {
        if let Some((ns, pod)) = target.split_once('/') {
            let p = self.pod(ns, pod)?;
            Ok(ExecTarget { netns: p.netns_path, cgroup: p.cgroup_dir })
        } else if let Ok(n) = self.node(target) {
            Ok(ExecTarget { netns: n.netns_path, cgroup: None })
        } else if let Ok(x) = self.external(target) {
            Ok(ExecTarget { netns: x.netns_path, cgroup: None })
        } else {
            Err(self.not_found("target (namespace/pod, node or external host)", target))
        }
    }

    /// A command running `argv` in a target's netns (and, for a pod, in its cgroup):
    /// `myelin lab enter --netns PATH [--cgroup DIR] -- ARGV`, which joins them and execs
    /// ARGV, so the spawned process *is* the command (signals reach it; nothing is left behind).
    /// TARGET is `namespace/pod`, a node name or an external host name.
    pub fn exec_command<S: AsRef<std::ffi::OsStr>>(&self, target: &str, argv: &[S]) -> Result<Command> {
        let t = self.exec_target(target)?;
        let myelin = sys::find_binary("myelin", self.bin_dir.as_deref())?;
        let mut cmd = Command::new(myelin);
        cmd.args(["lab", "enter", "--netns"]).arg(t.netns);
        if let Some(cg) = t.cgroup {
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

    /// Kill a node's agent with SIGKILL and wait until it is gone. Its datapath (programs, pinned
    /// maps) and pods stay, as after a crash; [`Lab::restart_agent`] starts it again.
    pub fn kill_agent(&mut self, node: &str) -> Result<()> {
        let i = self.node_index(node)?;
        self.stop_agent(i, Signal::SIGKILL)
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
        self.build_topology()?;
        // The agents are configured with the kvstore's endpoints: it comes first.
        self.start_kvstore()?;
        self.start_agents()?;
        self.build_pods()?;
        self.save()
    }

    // ---- helpers ----

    pub(crate) fn ip_batch_root(&self, what: &str, lines: &[String]) -> Result<()> {
        sys::ip_batch(what, None, lines)
    }

    pub(crate) fn save(&self) -> Result<()> {
        let path = self.state.state_dir.join(STATE_FILE);
        let tmp = self.state.state_dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| LabError::State { path: path.clone(), message: e.to_string() })?;
        let mut f = File::create(&tmp).map_err(io("writing", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming into place", &path))
    }

    pub(crate) fn say(&self, line: &str) {
        if let Some(p) = &self.progress {
            p(line);
        }
    }

    pub(crate) fn not_found(&self, kind: &'static str, name: &str) -> LabError {
        LabError::NotFound { lab: self.state.name.clone(), kind, name: name.to_owned() }
    }

    pub(crate) fn node_index(&self, name: &str) -> Result<usize> {
        self.state.nodes.iter().position(|n| n.name == name).ok_or_else(|| self.not_found("node", name))
    }

    pub(crate) fn cgroup_root_or_detect(&mut self) -> Result<Option<PathBuf>> {
        if self.state.cgroup_root.is_none() {
            self.state.cgroup_root = Some(sys::cgroup2_mount()?.join("myelin").join(&self.state.name));
        }
        Ok(self.state.cgroup_root.clone())
    }
}

#[cfg(test)]
impl Lab {
    /// A handle on a planned state, for unit tests (nothing is built or started).
    pub(crate) fn for_test(state: LabState) -> Lab {
        Lab {
            state,
            bin_dir: None,
            agent_timeout: Duration::from_secs(1),
            kvstore_timeout: Duration::from_secs(1),
            etcd: None,
            progress: None,
            children: HashMap::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::plan::plan;

    #[test]
    fn status_json_has_the_documented_shape() {
        let mut s = plan("t2", LabSpec::demo(), PathBuf::from("/run/myelin/lab/t2"), None);
        s.pods[0].ip = Some("10.244.1.2".into());
        s.pods[0].endpoint_id = Some(7);
        let lab = Lab::for_test(s);
        let v = serde_json::to_value(lab.status()).unwrap();
        assert_eq!(v["name"], "t2");
        let node = &v["nodes"][0];
        for key in ["name", "addresses", "agent_socket", "observer_socket", "metrics_url", "pod_cidr"] {
            assert!(node.get(key).is_some(), "nodes[0].{key} missing in {node}");
        }
        assert_eq!(node["addresses"][0], "172.30.0.10");
        assert_eq!(node["observer_socket"], "/run/myelin/lab/t2/node1/observer.sock");
        assert_eq!(node["metrics_url"], "http://172.30.0.10:9965/metrics");
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
        assert_eq!(v["routing"], "native");
        assert_eq!(v["kvstore"], serde_json::json!({"kind": "none", "endpoints": [], "members": []}));
    }

    #[test]
    fn status_json_shows_the_kvstore_members() {
        let mut spec = LabSpec::demo();
        spec.nodes.push(crate::spec::NodeSpec { name: "node2".into(), pod_cidr: None });
        spec.kvstore_members = Some(3);
        let lab = Lab::for_test(plan("t5", spec, PathBuf::from("/run/myelin/lab/t5"), None));
        let v = serde_json::to_value(lab.status()).unwrap();
        assert_eq!(v["routing"], "vxlan");
        assert_eq!(v["kvstore"]["kind"], "etcd");
        assert_eq!(v["kvstore"]["endpoints"][2], "http://172.30.0.252:2379");
        let m = &v["kvstore"]["members"][1];
        assert_eq!(
            (&m["name"], &m["address"], &m["pid"], &m["running"]),
            (&"kv1".into(), &"172.30.0.251".into(), &serde_json::Value::Null, &false.into())
        );
        assert_eq!(lab.kvstore_endpoints().len(), 3);
        assert_eq!(lab.kvstore_netns(), Some(PathBuf::from("/var/run/netns/myl-t5-kv")));
        assert!(lab.netns_names().contains(&"myl-t5-kv".to_owned()), "teardown removes the kvstore's netns");
    }
}
