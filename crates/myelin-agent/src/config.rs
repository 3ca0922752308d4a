//! Agent configuration: a TOML file plus flags. Unknown keys are errors.

use ipnet::Ipv4Net;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of this node; names its bpffs directory by default.
    pub node_name: String,
    /// This node's pod CIDR, e.g. "10.244.1.0/24". Its first host address is the pods' gateway.
    pub pod_cidr: Option<Ipv4Net>,
    /// The node's uplink interface; the node address is taken from it unless `node_ip` is set.
    pub uplink: String,
    pub node_ip: Option<Ipv4Addr>,
    /// Directory of the agent's own state (the redb store).
    pub state_dir: PathBuf,
    /// Root-only unix socket of the local API.
    pub socket: PathBuf,
    /// Per-node bpffs directory holding the pinned maps and links.
    pub bpf_dir: Option<PathBuf>,
    /// Masquerade pod traffic leaving through the uplink to the node address (kernel nftables).
    pub masquerade: bool,
    /// Destinations reached without masquerade besides this node's pod CIDR: the other
    /// nodes' pod CIDRs in a natively routed cluster (Cilium's ipv4-native-routing-cidr).
    pub native_routing_cidrs: Vec<Ipv4Net>,
    /// Turn on IPv4 forwarding in the node's netns (needed for pod-to-world through the kernel).
    pub ip_forward: bool,
    /// "text" or "json".
    pub log_format: String,
    /// How tc programs attach: "auto" (TCX when the kernel has it, else clsact), "tcx" or "tc".
    pub attach_mode: String,
    /// Cgroup (v2) directory holding the node's pods: the socket load balancer attaches there.
    /// None: socket load balancing is off.
    pub cgroup_root: Option<PathBuf>,
    /// Attach the XDP prefilter (deny list) on the uplink.
    pub xdp_prefilter: bool,
    /// Seconds between conntrack garbage collections.
    pub gc_interval_s: u64,
    /// Hours a retired rule id stays resolvable (flow history's horizon).
    pub rule_retention_hours: u64,
    /// Serve `POST /v1/debug/stall` (tests only).
    pub debug_api: bool,
    /// Unix socket of the Hubble-compatible Observer gRPC API (root only); default:
    /// `observer.sock` next to the API socket.
    pub observer_socket: Option<PathBuf>,
    /// Also serve the Observer API on TCP at this address (e.g. "127.0.0.1:4245"); None: off.
    pub observer_listen: Option<String>,
    /// Prometheus metrics at http://<this>/metrics (e.g. "0.0.0.0:9965"); None: off.
    pub metrics_listen: Option<String>,
    /// Metrics and their context options, Hubble's syntax (e.g. "drop:sourceContext=namespace").
    pub metrics: Vec<String>,
    /// Which packets make flow events: none, low, medium, maximum (Cilium's monitor
    /// aggregation), or off (no events).
    pub monitor_aggregation: String,
    /// Packet bytes captured per event (0..=256).
    pub capture_len: u16,
    /// Flows kept in memory.
    pub flow_ring_capacity: usize,
    /// Directory of the durable flow history (None: in memory only).
    pub flow_history_dir: Option<PathBuf>,
    /// Keep history at most this many hours and this many megabytes.
    pub flow_history_max_age_hours: u64,
    pub flow_history_max_mb: u64,
    /// Name of the cluster (the kvstore's `<cluster>` key segment; nodes of one cluster share it).
    pub cluster_name: String,
    /// etcd client URLs (e.g. `["http://172.30.0.250:2379"]`); empty: no kvstore, identities
    /// are node-local and other nodes' pods are "world" to policy.
    pub kvstore_endpoints: Vec<String>,
    /// TTL of this node's etcd lease: how long its entries outlive the agent (seconds).
    pub kvstore_lease_ttl_s: u64,
    /// The cluster's pod address pool (e.g. "10.244.0.0/16"): without `pod_cidr`, the node
    /// claims a subnet of it in etcd (Cilium's cluster-pool IPAM) and keeps it.
    pub cluster_pool_ipv4_cidr: Option<Ipv4Net>,
    /// Prefix length of the subnet each node gets from the pool.
    pub cluster_pool_ipv4_mask_size: u8,
    /// Attach the process tracing programs and keep the pods' process events (exec/exit with
    /// the pod they ran in), served at `GET /v1/process-events`.
    pub process_events: bool,
    /// How pods on other nodes are reached: "native" (the underlay routes pod CIDRs; identity
    /// from the ipcache), "vxlan" or "geneve" (an overlay carrying the sender's identity in the VNI).
    pub routing: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            pod_cidr: None,
            uplink: "eth0".into(),
            node_ip: None,
            state_dir: PathBuf::from("/var/lib/myelin"),
            socket: PathBuf::from(myelin_api::DEFAULT_AGENT_SOCKET),
            bpf_dir: None,
            masquerade: true,
            native_routing_cidrs: Vec::new(),
            ip_forward: true,
            log_format: "text".into(),
            attach_mode: "auto".into(),
            cgroup_root: None,
            xdp_prefilter: false,
            gc_interval_s: 30,
            rule_retention_hours: 24 * 7,
            debug_api: false,
            observer_socket: None,
            observer_listen: None,
            metrics_listen: None,
            // What the dashboards in dashboards/ need: flows, drops and verdicts per workload pair.
            metrics: myelin_observe::metrics::DASHBOARD_METRICS.iter().map(|m| (*m).to_owned()).collect(),
            monitor_aggregation: "medium".into(),
            capture_len: 128,
            flow_ring_capacity: 65_536,
            flow_history_dir: Some(PathBuf::from("/var/lib/myelin/flows")),
            flow_history_max_age_hours: 24 * 7,
            flow_history_max_mb: 1024,
            cluster_name: "default".into(),
            kvstore_endpoints: Vec::new(),
            kvstore_lease_ttl_s: 15,
            routing: "native".into(),
            cluster_pool_ipv4_cidr: None,
            cluster_pool_ipv4_mask_size: 24,
            process_events: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_path_buf(), message },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.message().to_owned() + &e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default(),
        })
    }

    /// Check what can be checked without the kernel.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.is_empty() {
            return Err(ConfigError::Invalid("node_name is required (set it in the file or with --node-name)".into()));
        }
        if let Some(pool) = self.cluster_pool_ipv4_cidr {
            if self.kvstore_endpoints.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "cluster_pool_ipv4_cidr {pool} needs kvstore_endpoints: nodes claim their pod CIDR in etcd"
                )));
            }
            if pool.network() != pool.addr() {
                return Err(ConfigError::Invalid(format!(
                    "cluster_pool_ipv4_cidr {pool}: host bits are set; did you mean {}?",
                    pool.trunc()
                )));
            }
            let m = self.cluster_pool_ipv4_mask_size;
            if m < pool.prefix_len() || m > 29 {
                return Err(ConfigError::Invalid(format!(
                    "cluster_pool_ipv4_mask_size {m}: between the pool's /{} and /29",
                    pool.prefix_len()
                )));
            }
            if self.pod_cidr.is_some() {
                return Err(ConfigError::Invalid(
                    "pod_cidr and cluster_pool_ipv4_cidr are both set: give the node its CIDR, or let it claim one \
                     from the pool, not both"
                        .into(),
                ));
            }
        }
        let Some(cidr) = self.pod_cidr else {
            if self.cluster_pool_ipv4_cidr.is_some() {
                return self.validate_rest();
            }
            return Err(ConfigError::Invalid(
                "pod_cidr is required (e.g. pod_cidr = \"10.244.1.0/24\"), or cluster_pool_ipv4_cidr with a kvstore"
                    .into(),
            ));
        };
        if cidr.prefix_len() > 29 {
            return Err(ConfigError::Invalid(format!(
                "pod_cidr {cidr}: prefix /{} leaves no room for pods; use /29 or shorter",
                cidr.prefix_len()
            )));
        }
        if cidr.network() != cidr.addr() {
            return Err(ConfigError::Invalid(format!(
                "pod_cidr {cidr}: host bits are set; did you mean {}?",
                cidr.trunc()
            )));
        }
        self.validate_rest()
    }

    /// Everything but the pod CIDR.
    fn validate_rest(&self) -> Result<(), ConfigError> {
        if !matches!(self.attach_mode.as_str(), "auto" | "tcx" | "tc") {
            return Err(ConfigError::Invalid(format!(
                "attach_mode {:?}: must be \"auto\", \"tcx\" or \"tc\"",
                self.attach_mode
            )));
        }
        // The datapath's own parser: the config accepts exactly what the agent can apply.
        if let Err(e) = myelin_bpf::MonitorAggregation::parse(&self.monitor_aggregation) {
            return Err(ConfigError::Invalid(format!("monitor_aggregation: {e}")));
        }
        // The metrics list is checked here too, so a typo fails the start with the key named.
        if self.metrics_listen.is_some() {
            let mc = myelin_observe::metrics::MetricsConfig { metrics: self.metrics.clone() };
            if let Err(e) = myelin_observe::metrics::Metrics::new(&mc) {
                return Err(ConfigError::Invalid(format!("metrics: {e}")));
            }
        }
        if self.capture_len > 256 {
            return Err(ConfigError::Invalid(format!("capture_len {}: at most 256 bytes", self.capture_len)));
        }
        if self.flow_ring_capacity == 0 {
            return Err(ConfigError::Invalid("flow_ring_capacity must be at least 1".into()));
        }
        if self.gc_interval_s == 0 {
            return Err(ConfigError::Invalid("gc_interval_s must be at least 1".into()));
        }
        // Stored flows name the rules that decided them: a rule id must stay resolvable for as
        // long as the history may return a flow naming it.
        if self.flow_history_dir.is_some() && self.rule_retention_hours < self.flow_history_max_age_hours {
            return Err(ConfigError::Invalid(format!(
                "rule_retention_hours {} is shorter than flow_history_max_age_hours {}: stored flows would name rules \
                 that no longer resolve; set rule_retention_hours to at least {}",
                self.rule_retention_hours, self.flow_history_max_age_hours, self.flow_history_max_age_hours
            )));
        }
        if !matches!(self.routing.as_str(), "native" | "vxlan" | "geneve") {
            return Err(ConfigError::Invalid(format!(
                "routing {:?}: must be \"native\", \"vxlan\" or \"geneve\"",
                self.routing
            )));
        }
        if self.routing != "native" && self.kvstore_endpoints.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "routing {:?} needs kvstore_endpoints: the overlay learns other nodes and their pods from etcd; \
                 set kvstore_endpoints or use routing = \"native\"",
                self.routing
            )));
        }
        if self.cluster_name.is_empty()
            || self.cluster_name.len() > 63
            || !self.cluster_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err(ConfigError::Invalid(format!(
                "cluster_name {:?}: use 1 to 63 letters, digits, '-', '.' or '_'",
                self.cluster_name
            )));
        }
        for e in &self.kvstore_endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() <= "https://".len() {
                return Err(ConfigError::Invalid(format!(
                    "kvstore_endpoints {e:?}: an etcd client URL like \"http://10.0.0.1:2379\""
                )));
            }
        }
        if !(1..=3600).contains(&self.kvstore_lease_ttl_s) {
            return Err(ConfigError::Invalid(format!(
                "kvstore_lease_ttl_s {}: between 1 and 3600 seconds",
                self.kvstore_lease_ttl_s
            )));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log_format {:?}: must be \"text\" or \"json\"",
                self.log_format
            )));
        }
        Ok(())
    }

    pub fn bpf_dir(&self) -> PathBuf {
        self.bpf_dir.clone().unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/myelin").join(&self.node_name))
    }

    /// The Observer API's socket.
    #[must_use]
    pub fn observer_socket(&self) -> PathBuf {
        self.observer_socket.clone().unwrap_or_else(|| self.socket.with_file_name("observer.sock"))
    }

    /// The pods' default gateway: the first host address of the pod CIDR.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.pod_cidr.and_then(|c| c.hosts().next())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c = Config::from_toml("node_name = \"n1\"\npod_cidr = \"10.244.1.0/24\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.uplink, "eth0");
        assert!(c.masquerade);
        assert_eq!(c.gateway(), Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(c.bpf_dir(), PathBuf::from("/sys/fs/bpf/myelin/n1"));
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = Config::from_toml("node_name = \"n1\"\npod_cdir = \"10.0.0.0/24\"\n").unwrap_err();
        assert!(e.to_string().contains("pod_cdir"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let e = Config::from_toml("pod_cidr = \"10.244.1.0/24\"").unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("node_name"), "{e}");
        let e = Config::from_toml("node_name=\"a\"\npod_cidr = \"10.244.1.7/24\"").unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("host bits"), "{e}");
        let e = Config::from_toml("node_name=\"a\"\npod_cidr = \"10.244.1.0/30\"").unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("/30"), "{e}");
        assert!(Config::from_toml("node_name = 3").is_err());
        let base = "node_name=\"a\"\npod_cidr = \"10.244.1.0/24\"\n";
        let e = Config::from_toml(&format!("{base}rule_retention_hours = 24\nflow_history_max_age_hours = 48"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("rule_retention_hours 24") && e.to_string().contains("at least 48"), "{e}");
        // Without a history nothing can name a retired rule later.
        let c =
            Config::from_toml(&format!("{base}rule_retention_hours = 24\nflow_history_max_age_hours = 48")).unwrap();
        Config { flow_history_dir: None, ..c }.validate().unwrap();
        let e = Config::from_toml(&format!("{base}routing = \"vxlan\"")).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("kvstore_endpoints"), "{e}");
        let e = Config::from_toml(&format!("{base}routing = \"ipip\"")).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("routing \"ipip\""), "{e}");
        let e = Config::from_toml(&format!("{base}kvstore_endpoints = [\"172.30.0.250:2379\"]"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        Config::from_toml(&format!("{base}routing = \"geneve\"\nkvstore_endpoints = [\"http://10.0.0.1:2379\"]"))
            .unwrap()
            .validate()
            .unwrap();
    }
}
