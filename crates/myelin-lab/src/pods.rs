//! Pods: their namespaces and cgroups, plumbed and unplumbed by driving the
//! real CNI plugin as a container runtime would; their labels and named ports.

use crate::error::{io, LabError, Result};
use crate::lab::Lab;
use crate::naming;
use crate::plan::{NodeInfo, PodInfo};
use crate::procs;
use crate::sys;
use myelin_api::{Client, Endpoint, LabelsUpdate};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

impl Lab {
    /// Create the namespaces of the planned pods and plumb each through the CNI plugin.
    pub(crate) fn build_pods(&mut self) -> Result<()> {
        let s = self.state.clone();
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
        Ok(())
    }

    pub(crate) fn build_pod(&mut self, i: usize) -> Result<()> {
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
        // The labels came with the ADD; named ports have no CNI convention, so they follow.
        if !p.ports.is_empty() {
            let update = LabelsUpdate { labels: p.labels.clone(), ports: Some(p.ports.clone()) };
            let _: Endpoint = client
                .put(&format!("/v1/endpoints/{}/labels", ep.id), &update)
                .map_err(api(format!("setting named ports of pod {}/{} (endpoint {})", p.namespace, p.name, ep.id)))?;
        }
        Ok(())
    }

    pub(crate) fn run_cni(&self, command: &str, p: &PodInfo, node: &NodeInfo) -> Result<Vec<u8>> {
        let cni = sys::find_binary("myelin-cni", self.bin_dir.as_deref())?;
        let cni_dir = cni.parent().map(Path::to_path_buf).unwrap_or_default();
        let pod = format!("{}/{}", p.namespace, p.name);
        let conf = cni_config(p, node);
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

    pub(crate) fn remove_pod(&mut self, i: usize, cni_del: bool) -> Result<()> {
        let p = self.state.pods[i].clone();
        // As a runtime stops a pod's containers before tearing its network down: end what runs
        // in the pod's cgroup or netns (it would keep the deleted netns alive), then CNI DEL.
        let cgroups: Vec<PathBuf> = p.cgroup_dir.iter().cloned().collect();
        let ended = procs::end_processes(&cgroups, std::slice::from_ref(&p.netns_path), procs::END_TIMEOUT);
        let all_ended = ended.is_ok();
        let mut first_err = ended.err();
        if cni_del {
            if let Ok(node) = self.node(&p.node) {
                if let Err(e) = self.run_cni("DEL", &p, &node) {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let (Some(cg), true) = (&p.cgroup_dir, all_ended) {
            if let Err(e) = sys::rmdir_if_exists(cg) {
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
}

/// The network config the lab hands the plugin on stdin, as a runtime would: the pod's labels
/// ride in the CNI conventions' `args.cni.labels`, so its endpoint has them from the ADD on.
pub(crate) fn cni_config(p: &PodInfo, node: &NodeInfo) -> serde_json::Value {
    let labels: Vec<serde_json::Value> =
        p.labels.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect();
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "myelin",
        "type": "myelin-cni",
        "agentSocket": node.agent_socket,
        "args": {"cni": {"labels": labels}},
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::spec::LabSpec;
    use std::path::PathBuf;

    #[test]
    fn the_cni_config_carries_the_pod_labels_in_args_cni_labels() {
        let s = plan("t3", LabSpec::demo(), PathBuf::from("/run/myelin/lab/t3"), None);
        let pod = s.pods.iter().find(|p| p.name == "db").unwrap();
        let conf = cni_config(pod, &s.nodes[0]);
        let labels = conf.pointer("/args/cni/labels").and_then(serde_json::Value::as_array).unwrap();
        assert_eq!(labels.len(), pod.labels.len());
        for (k, v) in &pod.labels {
            assert!(labels.contains(&serde_json::json!({"key": k, "value": v})), "{k}={v} missing in {conf}");
        }
        assert_eq!(conf["agentSocket"], s.nodes[0].agent_socket.display().to_string());
    }
}
