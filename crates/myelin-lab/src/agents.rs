//! The agents of a lab's nodes: their config files, starting, waiting for
//! health, telling them the namespaces' labels, stopping.

use crate::error::{io, LabError, Result};
use crate::lab::Lab;
use crate::sys;
use myelin_api::{Client, Status};
use nix::sys::signal::Signal;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

impl Lab {
    /// Start every node's agent, then wait until each is healthy and knows the namespaces.
    pub(crate) fn start_agents(&mut self) -> Result<()> {
        let s = self.state.clone();
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
        if s.spec.cluster_pool.is_some() {
            self.learn_pod_cidrs()?;
        }
        Ok(())
    }

    /// With a cluster pool: each agent's claimed pod CIDR, recorded, and routed like the lab's
    /// own (the fabric to every node; in native routing, every node to the others).
    fn learn_pod_cidrs(&mut self) -> Result<()> {
        for i in 0..self.state.nodes.len() {
            let n = self.state.nodes[i].clone();
            let st: Status = Client::new(&n.agent_socket).get("/v1/status").map_err(|e| LabError::Agent {
                node: n.name.clone(),
                message: format!("reading its claimed pod CIDR: {e}"),
                log: n.agent_log.clone(),
                tail: sys::tail(&n.agent_log, 20),
            })?;
            self.say(&format!("{} claimed pod CIDR {} from the cluster pool", n.name, st.pod_cidr));
            self.state.nodes[i].pod_cidr = st.pod_cidr;
        }
        self.save()?;
        self.route_pod_cidrs()
    }

    pub(crate) fn write_agent_config(&self, i: usize) -> Result<()> {
        #[derive(Serialize)]
        struct AgentConfig<'a> {
            node_name: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            pod_cidr: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            cluster_pool_ipv4_cidr: Option<&'a str>,
            uplink: &'a str,
            state_dir: &'a Path,
            socket: &'a Path,
            bpf_dir: &'a Path,
            masquerade: bool,
            native_routing_cidrs: Vec<&'a str>,
            ip_forward: bool,
            observer_socket: PathBuf,
            metrics_listen: String,
            flow_history_dir: PathBuf,
            cluster_name: &'a str,
            kvstore_endpoints: Vec<String>,
            routing: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            cgroup_root: Option<PathBuf>,
        }
        let n = &self.state.nodes[i];
        std::fs::create_dir_all(&n.agent_state_dir).map_err(io("creating", &n.agent_state_dir))?;
        // The node's pods' cgroups are below this: its socket programs and cgroup accounting.
        let cgroup_root = self.state.cgroup_root.as_ref().map(|r| r.join(&n.name));
        if let Some(cg) = &cgroup_root {
            std::fs::create_dir_all(cg).map_err(io("creating the node's cgroup", cg))?;
        }
        let cfg = AgentConfig {
            node_name: &n.name,
            pod_cidr: (!n.pod_cidr.is_empty()).then_some(n.pod_cidr.as_str()),
            cluster_pool_ipv4_cidr: self.state.spec.cluster_pool.as_deref(),
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
                .filter(|m| m.name != n.name && !m.pod_cidr.is_empty())
                .map(|m| m.pod_cidr.as_str())
                .collect(),
            ip_forward: true,
            // Per node, in the node's directory: agents of one lab share the machine.
            observer_socket: n.observer_socket(),
            metrics_listen: n.metrics_listen(),
            flow_history_dir: n.flow_history_dir(),
            // The lab is the cluster; kvstore_lease_ttl_s is left to lab.yaml `agent:`.
            cluster_name: &self.state.name,
            kvstore_endpoints: self.kvstore_endpoints(),
            routing: self.state.routing.as_str(),
            cgroup_root,
        };
        let bad = |message: String| LabError::State { path: n.agent_config.clone(), message };
        let mut table = toml::Table::try_from(&cfg).map_err(|e| bad(e.to_string()))?;
        for (k, v) in &self.state.spec.agent {
            if table.contains_key(k) {
                return Err(bad(format!("lab.yaml agent.{k}: the lab sets {k} itself; remove it from agent:")));
            }
            let v = toml::Value::try_from(v)
                .map_err(|e| bad(format!("lab.yaml agent.{k}: {e} (use a string, number, boolean or list)")))?;
            table.insert(k.clone(), v);
        }
        let text = toml::to_string(&table).map_err(|e| bad(e.to_string()))?;
        std::fs::write(&n.agent_config, text).map_err(io("writing", &n.agent_config))
    }

    pub(crate) fn start_agent(&mut self, i: usize) -> Result<()> {
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
    pub(crate) fn push_namespaces(&self, i: usize) -> Result<()> {
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

    pub(crate) fn wait_agent(&mut self, i: usize) -> Result<()> {
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

    pub(crate) fn stop_agent(&mut self, i: usize, signal: Signal) -> Result<()> {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::spec::LabSpec;

    /// A temporary directory removed on drop, even when the test fails.
    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn agent_config_gives_each_node_its_observer_socket_metrics_and_history() {
        let dir = TempDir(std::env::temp_dir().join(format!("myelin-lab-cfg-{}", std::process::id())));
        let mut spec = LabSpec::demo();
        spec.nodes.push(spec.nodes[0].clone());
        spec.nodes[1].name = "node2".into();
        let lab = Lab::for_test(plan("t3", spec, dir.0.clone(), None));
        for (i, n) in lab.state.nodes.iter().enumerate() {
            lab.write_agent_config(i).unwrap();
            let text = std::fs::read_to_string(&n.agent_config).unwrap();
            let cfg: toml::Table = toml::from_str(&text).unwrap();
            let node_dir = dir.0.join(&n.name);
            assert_eq!(cfg["observer_socket"].as_str(), Some(node_dir.join("observer.sock").to_str().unwrap()));
            assert_eq!(cfg["flow_history_dir"].as_str(), Some(node_dir.join("flows").to_str().unwrap()));
            assert_eq!(cfg["metrics_listen"].as_str(), Some(format!("{}:9965", n.address).as_str()));
        }
        assert_ne!(lab.state.nodes[0].observer_socket(), lab.state.nodes[1].observer_socket());
        assert_ne!(lab.state.nodes[0].metrics_listen(), lab.state.nodes[1].metrics_listen());
    }

    #[test]
    fn agent_config_names_the_cluster_its_kvstore_and_routing() {
        let dir = TempDir(std::env::temp_dir().join(format!("myelin-lab-kvcfg-{}", std::process::id())));
        let cfg_of = |spec: LabSpec| {
            let lab = Lab::for_test(plan("t6", spec, dir.0.clone(), None));
            lab.write_agent_config(0).unwrap();
            toml::from_str::<toml::Table>(&std::fs::read_to_string(&lab.state.nodes[0].agent_config).unwrap()).unwrap()
        };
        let mut spec = LabSpec::demo();
        spec.nodes.push(crate::spec::NodeSpec { name: "node2".into(), pod_cidr: None });
        spec.kvstore_members = Some(3);
        let cfg = cfg_of(spec.clone());
        assert_eq!(cfg["cluster_name"].as_str(), Some("t6"));
        assert_eq!(cfg["routing"].as_str(), Some("vxlan"));
        let endpoints: Vec<&str> =
            cfg["kvstore_endpoints"].as_array().unwrap().iter().filter_map(toml::Value::as_str).collect();
        assert_eq!(endpoints, ["http://172.30.0.250:2379", "http://172.30.0.251:2379", "http://172.30.0.252:2379"]);
        assert!(!cfg.contains_key("kvstore_lease_ttl_s"), "left to lab.yaml agent:");

        spec.agent.insert("kvstore_lease_ttl_s".into(), serde_json::json!(5));
        assert_eq!(cfg_of(spec.clone())["kvstore_lease_ttl_s"].as_integer(), Some(5));
        spec.agent.insert("routing".into(), serde_json::json!("native"));
        let lab = Lab::for_test(plan("t6", spec, dir.0.clone(), None));
        let e = lab.write_agent_config(0).unwrap_err().to_string();
        assert!(e.contains("agent.routing"), "the lab sets routing itself: {e}");

        let cfg = cfg_of(LabSpec::demo());
        assert_eq!(cfg["routing"].as_str(), Some("native"));
        assert_eq!(cfg["kvstore_endpoints"].as_array().map(Vec::len), Some(0));
    }
}
