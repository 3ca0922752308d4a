//! Planning a lab: every name, address and path computed before anything is
//! created, and the state (lab.json) that records them.

use crate::naming;
use crate::spec::{KvstoreKind, LabSpec, PodSpec, Routing};
use myelin_api::{Labels, NamedPort};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Root of every lab's state directory.
pub const STATE_ROOT: &str = "/run/myelin/lab";
/// Root of every lab's bpffs directories.
pub const BPF_ROOT: &str = "/sys/fs/bpf/myelin/lab";

pub(crate) const UNDERLAY: &str = "172.30.0";
pub(crate) const WORLD: &str = "198.51.100";
pub(crate) const STATE_FILE: &str = "lab.json";
/// Port of every lab agent's Prometheus endpoint, on the node's underlay address.
pub const METRICS_PORT: u16 = 9965;
/// Underlay address (last octet) of the first etcd member; the others follow.
pub(crate) const KVSTORE_FIRST_OCTET: usize = 250;
/// etcd's client and peer ports.
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

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

impl NodeInfo {
    /// The node's own directory in the lab's state directory (agent socket, config, log, store).
    #[must_use]
    pub fn dir(&self) -> PathBuf {
        self.agent_config.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// Unix socket of the agent's Observer API (Hubble's gRPC).
    #[must_use]
    pub fn observer_socket(&self) -> PathBuf {
        self.dir().join("observer.sock")
    }

    /// Directory of the agent's durable flow history.
    #[must_use]
    pub fn flow_history_dir(&self) -> PathBuf {
        self.dir().join("flows")
    }

    /// Where the agent serves Prometheus metrics: the node's underlay address.
    #[must_use]
    pub fn metrics_listen(&self) -> String {
        format!("{}:{METRICS_PORT}", self.address)
    }

    /// The full URL of the agent's Prometheus endpoint (reachable from the lab's fabric and nodes).
    #[must_use]
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_listen())
    }
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

/// The lab's etcd cluster: one namespace on the underlay, one address per member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KvstoreInfo {
    pub(crate) netns: String,
    pub(crate) netns_path: PathBuf,
    /// `--initial-cluster-token`, unique per lab so members of two labs never join up.
    pub(crate) cluster_token: String,
    pub(crate) members: Vec<KvMemberInfo>,
}

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KvMemberInfo {
    /// etcd `--name`: `kv0`, `kv1`, ...
    pub(crate) name: String,
    /// Underlay address, without prefix.
    pub(crate) address: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) pid: Option<i32>,
    /// Start time of the etcd process (to recognise it after pid reuse).
    pub(crate) start_time: Option<u64>,
}

impl KvMemberInfo {
    pub(crate) fn client_url(&self) -> String {
        format!("http://{}:{ETCD_CLIENT_PORT}", self.address)
    }

    pub(crate) fn peer_url(&self) -> String {
        format!("http://{}:{ETCD_PEER_PORT}", self.address)
    }
}

impl KvstoreInfo {
    /// `--initial-cluster`: every member's name and peer URL.
    pub(crate) fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
    }

    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(KvMemberInfo::client_url).collect()
    }
}

/// Everything `down` needs, persisted as lab.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LabState {
    pub(crate) name: String,
    pub(crate) spec: LabSpec,
    pub(crate) state_dir: PathBuf,
    pub(crate) bpf_root: PathBuf,
    /// `<cgroup2>/myelin/<lab>`, when the lab has pods.
    pub(crate) cgroup_root: Option<PathBuf>,
    pub(crate) fabric_netns: String,
    pub(crate) nodes: Vec<NodeInfo>,
    pub(crate) external: Vec<ExternalInfo>,
    pub(crate) pods: Vec<PodInfo>,
    /// The routing mode in effect (the spec's, defaults applied).
    #[serde(default = "native")]
    pub(crate) routing: Routing,
    /// The etcd cluster, when `kvstore: etcd`.
    #[serde(default)]
    pub(crate) kvstore: Option<KvstoreInfo>,
}

/// Labs recorded before `routing` existed were natively routed.
fn native() -> Routing {
    Routing::Native
}

pub(crate) fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// Compute every name and address of a lab before anything is created.
pub(crate) fn plan(name: &str, spec: LabSpec, state_dir: PathBuf, cgroup_root: Option<PathBuf>) -> LabState {
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
                // With a cluster pool the agent claims it; learned once the agent runs.
                pod_cidr: if spec.cluster_pool.is_some() {
                    String::new()
                } else {
                    n.pod_cidr.clone().unwrap_or_else(|| format!("10.244.{}.0/24", i + 1))
                },
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
    let kvstore = plan_kvstore(name, &spec, &state_dir);
    LabState {
        routing: spec.routing_mode(),
        kvstore,
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

/// The etcd members of a lab with `kvstore: etcd`: addresses from 172.30.0.250 on, data and
/// log under `<state>/kv/<member>/`.
fn plan_kvstore(name: &str, spec: &LabSpec, state_dir: &Path) -> Option<KvstoreInfo> {
    if spec.kvstore_kind() != KvstoreKind::Etcd {
        return None;
    }
    let netns = naming::kvstore_netns(name);
    let members = (0..spec.kvstore_member_count())
        .map(|i| {
            let member = format!("kv{i}");
            let dir = state_dir.join(naming::KVSTORE).join(&member);
            KvMemberInfo {
                address: format!("{UNDERLAY}.{}", KVSTORE_FIRST_OCTET + i),
                data_dir: dir.join("data"),
                log: dir.join("etcd.log"),
                name: member,
                pid: None,
                start_time: None,
            }
        })
        .collect();
    Some(KvstoreInfo { netns_path: naming::netns_path(&netns), netns, cluster_token: cluster_token(name), members })
}

/// A token unique to this lab and this `up`: its name, the time and our pid.
fn cluster_token(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let salt = format!("{name}/{nanos}/{}", std::process::id());
    format!("myelin-lab-{name}-{:016x}", naming::fnv1a(&salt))
}

pub(crate) fn plan_pod(lab: &str, p: &PodSpec, cgroup_root: Option<&Path>) -> PodInfo {
    let netns = naming::pod_netns(lab, &p.namespace, &p.name);
    let container_id = naming::container_id(lab, &p.namespace, &p.name);
    // Per node (its agent's cgroup_root), named by container id as containerd names a
    // sandbox's scope (the agent names cgroups by pod that way).
    let cgroup_dir = cgroup_root.map(|r| r.join(&p.node).join(&container_id));
    PodInfo {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        node: p.node.clone(),
        netns_path: naming::netns_path(&netns),
        netns,
        container_id,
        cgroup_dir,
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
        assert_eq!(s.nodes[0].observer_socket(), PathBuf::from("/run/myelin/lab/t1/node1/observer.sock"));
        assert_eq!(s.nodes[0].flow_history_dir(), PathBuf::from("/run/myelin/lab/t1/node1/flows"));
        assert_eq!(s.nodes[0].metrics_url(), format!("http://{}:9965/metrics", s.nodes[0].address));
        assert_eq!(s.external[0].ip, "198.51.100.10");
        assert_eq!(s.external[0].netns, "myl-t1-x-world1");
        let db = s.pods.iter().find(|p| p.name == "db").unwrap();
        assert_eq!(db.netns, "myl-t1-p-prod-db");
        assert_eq!(db.cgroup_dir, Some(PathBuf::from(format!("/cg/myelin/t1/{}/myl-t1-prod-db", db.node))));
        assert_eq!(db.container_id, "myl-t1-prod-db");
        assert_eq!(s.routing, Routing::Native);
        assert!(s.kvstore.is_none(), "the demo has one node and no kvstore");
    }

    #[test]
    fn plan_places_etcd_members_on_the_underlay_with_their_own_dirs() {
        let mut spec = LabSpec::demo();
        spec.nodes.push(crate::spec::NodeSpec { name: "node2".into(), pod_cidr: None });
        spec.kvstore_members = Some(3);
        let s = plan("t1", spec.clone(), PathBuf::from("/run/myelin/lab/t1"), None);
        assert_eq!(s.routing, Routing::Vxlan, "the default with two nodes");
        let kv = s.kvstore.as_ref().unwrap();
        assert_eq!(kv.netns, "myl-t1-kv");
        assert_eq!(
            kv.endpoints(),
            ["http://172.30.0.250:2379", "http://172.30.0.251:2379", "http://172.30.0.252:2379"]
        );
        assert_eq!(
            kv.initial_cluster(),
            "kv0=http://172.30.0.250:2380,kv1=http://172.30.0.251:2380,kv2=http://172.30.0.252:2380"
        );
        assert_eq!(kv.members[1].data_dir, PathBuf::from("/run/myelin/lab/t1/kv/kv1/data"));
        assert_eq!(kv.members[1].log, PathBuf::from("/run/myelin/lab/t1/kv/kv1/etcd.log"));
        let again = plan("t1", spec, PathBuf::from("/run/myelin/lab/t1"), None);
        assert_ne!(again.kvstore.unwrap().cluster_token, kv.cluster_token, "a new token for every up");
    }
}
