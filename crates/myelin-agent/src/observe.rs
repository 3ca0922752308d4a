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
use myelin_observe::history::{History, HistoryConfig, HistoryWriter, WriterConfig};
use myelin_observe::metrics::{Metrics, MetricsConfig, MetricsSink};
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
        let Some(ep) = self.snapshots.endpoint_by_ip(v4) else {
            // A pod of another node, named by the kvstore.
            let remote = self.snapshots.remote.load();
            let r = remote.by_ip.get(&v4)?;
            let labels = self.snapshots.policy.load().table.labels(r.identity);
            let pod = r.pod.clone().unwrap_or_default();
            return Some(EndpointDesc {
                endpoint_id: 0,
                identity: r.identity,
                cluster: String::new(),
                namespace: r.namespace.clone().unwrap_or_default(),
                workload: labels.as_ref().and_then(|l| workload(l.as_map(), &pod)),
                pod_name: pod,
                labels: labels.map(|l| cilium_labels(&l)).unwrap_or_default(),
                node: r.node.clone(),
            });
        };
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
    pub history: Option<Arc<History>>,
}

impl Observability {
    /// Buffers and counters, for the agent's status (reads the history's files: blocking).
    #[must_use]
    pub fn status(&self) -> myelin_api::FlowStatus {
        let ring = self.observer.ring.view();
        let history = self.history.as_ref().and_then(|h| {
            let st = h.stats().ok()?;
            Some(myelin_api::FlowHistoryStatus {
                dir: h.dir().display().to_string(),
                stored: st.records,
                buffered: st.buffered as u64,
                disk_bytes: st.disk_bytes,
                oldest_ns: st.oldest_ns,
                newest_ns: st.newest_ns,
                last_seq: st.last_seq,
            })
        });
        myelin_api::FlowStatus {
            ring_flows: ring.len,
            ring_capacity: self.observer.ring.capacity(),
            seen: self.observer.stats.seen.load(Ordering::Relaxed),
            lost: self.observer.stats.lost_kernel.load(Ordering::Relaxed),
            history,
        }
    }
}

/// Open the durable flow history (when configured): the dictionary gets its stored
/// entries back (ids keep their meaning) and sequence numbers go on from the last
/// stored one.
fn open_history(cfg: &Config, dict: &Arc<Dictionary>) -> Result<OpenedHistory> {
    let Some(dir) = &cfg.flow_history_dir else {
        info!("no flow_history_dir: flows are kept in memory only");
        return Ok(OpenedHistory { history: None, first_seq: 1, writer: None });
    };
    let hc = HistoryConfig {
        max_bytes: cfg.flow_history_max_mb.saturating_mul(1024 * 1024),
        max_age: Duration::from_secs(cfg.flow_history_max_age_hours.saturating_mul(3600)),
        ..HistoryConfig::default()
    };
    let history = Arc::new(History::open(dir, hc).with_context(|| {
        format!(
            "opening the flow history (flow_history_dir {}, flow_history_max_mb {}, flow_history_max_age_hours {})",
            dir.display(),
            cfg.flow_history_max_mb,
            cfg.flow_history_max_age_hours
        )
    })?);
    let entries = history.dict_entries().context("reading the flow history's dictionary")?;
    let restored = entries.len();
    dict.restore(entries);
    let first_seq = history.last_seq() + 1;
    let writer = HistoryWriter::spawn(history.clone(), dict.clone(), WriterConfig::default())
        .context("starting the flow history writer")?;
    info!(dir = %dir.display(), restored, first_seq, "flow history open");
    Ok(OpenedHistory { history: Some(history), first_seq, writer: Some(Box::new(writer)) })
}

/// The history, the first sequence number of this run, and the history's writer sink.
struct OpenedHistory {
    history: Option<Arc<History>>,
    first_seq: u64,
    writer: Option<Box<dyn Sink>>,
}

/// Apply the event settings, open the history, start ingest and serve the Observer API.
pub async fn start(
    cfg: &Config,
    datapath: &Arc<Datapath>,
    snapshots: Arc<Snapshots>,
    gc: Arc<crate::gc::GcStats>,
    mut sinks: Vec<Box<dyn Sink>>,
) -> Result<Observability> {
    let settings = EventSettings {
        aggregation: MonitorAggregation::parse(&cfg.monitor_aggregation)?,
        capture_len: cfg.capture_len,
        ..EventSettings::default()
    };
    datapath.set_event_settings(&settings)?;
    let dict = Dictionary::new();
    let OpenedHistory { history, first_seq, writer } = {
        let (cfg, dict) = (cfg.clone(), dict.clone());
        tokio::task::spawn_blocking(move || open_history(&cfg, &dict)).await??
    };
    sinks.extend(writer);
    // Metrics (when served): checked before anything starts, folded on the ingest thread.
    let metrics = match &cfg.metrics_listen {
        Some(_) => {
            let m = Metrics::new(&MetricsConfig { metrics: cfg.metrics.clone() })
                .with_context(|| format!("the agent config's `metrics` list {:?}", cfg.metrics))?;
            let handle = m.handle();
            sinks.push(Box::new(MetricsSink::new(m, dict.clone())));
            Some(handle)
        }
        None => None,
    };
    let directory: Arc<dyn Directory> =
        Arc::new(AgentDirectory { snapshots: snapshots.clone(), node: cfg.node_name.clone() });
    let pc = PipelineConfig {
        pin_dir: datapath.pin_dir().to_path_buf(),
        ring_capacity: cfg.flow_ring_capacity,
        poll_interval: Duration::from_millis(20),
        first_seq,
    };
    let observer = pipeline::start(&pc, directory, dict, sinks).context("starting flow ingest")?;
    if let (Some(handle), Some(addr)) = (&metrics, &cfg.metrics_listen) {
        handle.set_agent_source(Arc::new(crate::metrics::AgentMetricsSource {
            snapshots,
            datapath: datapath.clone(),
            gc,
            ring: observer.ring.clone(),
            cgroup_root: cfg.cgroup_root.clone(),
        }));
        crate::metrics::serve(addr, handle.clone()).await?;
    }
    let store: Option<Arc<dyn FlowStore>> = history.clone().map(|h| h as Arc<dyn FlowStore>);
    let service = ObserverService::new(observer.clone(), store);

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
    Ok(Observability { observer, history })
}
