//! Flow observability in the agent: the datapath's event settings, the
//! directory enrichment reads (over the published snapshots, never a lock of
//! the components), the observer's ingest thread and the Observer gRPC API on
//! a unix socket (and TCP when configured).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use myelin_bpf::{Datapath, EventSettings, MonitorAggregation};
use myelin_observe::dict::{Dictionary, EndpointDesc};
use myelin_observe::directory::{Directory, PolicyName};
use myelin_observe::pipeline::{self, Observer, PipelineConfig, Sink};
use myelin_observe::server::{FlowStore, ObserverService};
use myelin_policy::Labels;
use tracing::{info, warn};

use crate::config::Config;
use crate::snapshot::Snapshots;

/// What enrichment reads, from the snapshots.
pub struct AgentDirectory {
    snapshots: Arc<Snapshots>,
    node: String,
}

/// Labels as Cilium shows them: `k8s:` for Kubernetes labels, sources kept.
fn cilium_labels(l: &Labels) -> Vec<String> {
    let mut out: Vec<String> = l
        .iter()
        .map(|(k, v)| {
            let key = if k.contains(':') { k.to_owned() } else { format!("k8s:{k}") };
            if v.is_empty() && key.starts_with("reserved:") || key.starts_with("cidr:") {
                key
            } else {
                format!("{key}={v}")
            }
        })
        .collect();
    out.sort();
    out
}

/// The workload of a pod without Kubernetes owner references: the
/// `app.kubernetes.io/name` or `app` label, else the pod itself.
fn workload(labels: &std::collections::BTreeMap<String, String>, pod: &str) -> Option<(String, String)> {
    if let Some(v) = labels.get("app.kubernetes.io/name").or_else(|| labels.get("app")) {
        return Some((v.clone(), "App".into()));
    }
    (!pod.is_empty()).then(|| (pod.to_owned(), "Pod".into()))
}

impl Directory for AgentDirectory {
    fn generation(&self) -> u64 {
        self.snapshots.generation.load(Ordering::Acquire)
    }

    fn endpoint_by_ip(&self, ip: IpAddr) -> Option<EndpointDesc> {
        let IpAddr::V4(v4) = ip else { return None };
        let ep = self.snapshots.endpoint_by_ip(v4)?;
        let pol = self.snapshots.policy.load();
        let labels = pol.table.labels(ep.identity).map(|l| cilium_labels(&l)).unwrap_or_default();
        let pod = ep.pod_name.clone().unwrap_or_default();
        Some(EndpointDesc {
            endpoint_id: ep.id,
            identity: ep.identity,
            cluster: String::new(),
            namespace: ep.namespace.clone().unwrap_or_else(|| "default".into()),
            workload: workload(&ep.labels, &pod),
            pod_name: pod,
            labels,
            node: self.node.clone(),
        })
    }

    fn identity_labels(&self, identity: u32) -> Vec<String> {
        self.snapshots.policy.load().table.labels(identity).map(|l| cilium_labels(&l)).unwrap_or_default()
    }

    fn rule(&self, rule_id: u32) -> Option<PolicyName> {
        let pol = self.snapshots.policy.load();
        let r = pol.rules.get(rule_id)?;
        Some(PolicyName {
            kind: r.kind.clone(),
            namespace: r.namespace.clone().unwrap_or_default(),
            name: r.name.clone(),
            revision: r.revision,
            path: r.path.clone(),
        })
    }

    fn node_name(&self) -> String {
        self.node.clone()
    }

    fn ifname(&self, ifindex: u32) -> Option<String> {
        nix::net::if_::if_indextoname(ifindex).ok().and_then(|c| c.into_string().ok())
    }
}

/// The running observer.
pub struct Observability {
    pub observer: Arc<Observer>,
}

/// Apply the event settings, start ingest and serve the Observer API.
pub async fn start(
    cfg: &Config,
    datapath: &Arc<Datapath>,
    snapshots: Arc<Snapshots>,
    sinks: Vec<Box<dyn Sink>>,
    history: Option<Arc<dyn FlowStore>>,
    dict: Arc<Dictionary>,
    first_seq: u64,
) -> Result<Observability> {
    let settings = EventSettings {
        aggregation: MonitorAggregation::parse(&cfg.monitor_aggregation)?,
        capture_len: cfg.capture_len,
        ..EventSettings::default()
    };
    datapath.set_event_settings(&settings)?;
    let directory: Arc<dyn Directory> = Arc::new(AgentDirectory { snapshots, node: cfg.node_name.clone() });
    let pc = PipelineConfig {
        pin_dir: datapath.pin_dir().to_path_buf(),
        ring_capacity: cfg.flow_ring_capacity,
        poll_interval: Duration::from_millis(20),
        first_seq,
    };
    let observer = pipeline::start(&pc, directory, dict, sinks).context("starting flow ingest")?;
    let service = ObserverService::new(observer.clone(), history);

    let path = cfg.observer_socket();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let svc = service.clone().into_server();
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await {
            warn!(error = %e, "the Observer API stopped");
        }
    });
    info!(socket = %path.display(), aggregation = %settings.aggregation.name(), "serving the Observer API");
    if let Some(addr) = &cfg.observer_listen {
        let addr: std::net::SocketAddr =
            addr.parse().with_context(|| format!("observer_listen {addr:?} is not an address:port"))?;
        let svc = service.into_server();
        tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder().add_service(svc).serve(addr).await {
                warn!(error = %e, %addr, "the Observer API on TCP stopped");
            }
        });
        info!(%addr, "serving the Observer API on TCP");
    }
    Ok(Observability { observer })
}
