//! The agent's Prometheus endpoint: flow metrics (Hubble's names, folded on
//! the ingest thread by the metrics sink) and the agent's own figures, read
//! at each scrape from the published snapshots and counters (no lock of the
//! components), served over HTTP on `metrics_listen`. Socket traffic per pod
//! (the cgroup_skb counters, named by [`crate::cgroups`]) is read at each scrape too.
//!
//! ```text
//!  [flow-ingest] MetricsSink: per-flow hash update; fold into counters once a second
//!  scrape --HTTP GET /metrics--> handler -> spawn_blocking(encode: agent source reads
//!        snapshots, GC counters, map usage (syscalls), ring; then the registry)
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use myelin_bpf::Datapath;
use myelin_observe::metrics::{AgentSource, AgentStats, MapUse, MetricsHandle, PodTraffic};
use myelin_observe::ring::Ring;
use tracing::{info, warn};

use crate::gc::GcStats;
use crate::snapshot::Snapshots;

/// The agent's figures, for the `myelin_*` gauges.
pub struct AgentMetricsSource {
    pub snapshots: Arc<Snapshots>,
    pub datapath: Arc<Datapath>,
    pub gc: Arc<GcStats>,
    pub ring: Arc<Ring>,
    /// The pods' cgroups (None: no cgroup traffic accounting).
    pub cgroup_root: Option<std::path::PathBuf>,
}

impl AgentMetricsSource {
    /// Socket traffic per pod, summed over the pod's cgroups; cgroups of no pod are left out.
    fn pod_traffic(&self) -> Vec<PodTraffic> {
        let Some(root) = self.cgroup_root.as_deref().filter(|_| crate::cgroups::accounting_on(&self.datapath)) else {
            return Vec::new();
        };
        let rows = match crate::cgroups::traffic(&self.datapath, root, &self.snapshots.endpoint_list()) {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "reading cgroup traffic for the metrics");
                return Vec::new();
            }
        };
        let mut by_pod: BTreeMap<(String, String), PodTraffic> = BTreeMap::new();
        for r in rows {
            let (Some(namespace), Some(pod)) = (r.namespace, r.pod) else { continue };
            let t = by_pod.entry((namespace.clone(), pod.clone())).or_insert_with(|| PodTraffic {
                namespace,
                pod,
                ..PodTraffic::default()
            });
            t.ingress_packets += r.ingress_packets;
            t.ingress_bytes += r.ingress_bytes;
            t.egress_packets += r.egress_packets;
            t.egress_bytes += r.egress_bytes;
        }
        by_pod.into_values().collect()
    }
}

impl AgentSource for AgentMetricsSource {
    fn agent_stats(&self) -> AgentStats {
        let endpoints = self.snapshots.endpoints.load();
        let policy = self.snapshots.policy.load();
        let maps = match self.datapath.map_usage() {
            Ok(rows) => rows
                .into_iter()
                .map(|(name, entries, max_entries)| MapUse {
                    name: name.to_owned(),
                    // Conntrack entries are counted by GC, not at each scrape.
                    entries: if name == "ct4" { self.gc.ct_entries.load(Ordering::Relaxed) } else { entries },
                    max_entries,
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, "reading BPF map usage for the metrics");
                Vec::new()
            }
        };
        AgentStats {
            endpoints: endpoints.by_id.len() as u64,
            identities: (policy.table.workloads.len() + policy.table.cidrs.len()) as u64,
            policy_entries: policy.policy_entries,
            maps,
            flow_ring_len: self.ring.view().len as u64,
            flow_ring_capacity: self.ring.capacity() as u64,
            pod_traffic: self.pod_traffic(),
        }
    }
}

/// Serve `/metrics` on `addr` (host:port).
pub async fn serve(addr: &str, handle: MetricsHandle) -> Result<()> {
    let sock: std::net::SocketAddr =
        addr.parse().with_context(|| format!("metrics_listen {addr:?} is not an address:port (e.g. 0.0.0.0:9965)"))?;
    let listener =
        tokio::net::TcpListener::bind(sock).await.with_context(|| format!("binding metrics_listen {sock}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let handle = handle.clone();
            async move {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_owned);
                match tokio::task::spawn_blocking(move || handle.encode_for_accept(accept.as_deref())).await {
                    Ok((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}")).into_response(),
                }
            }
        }),
    );
    info!(addr = %sock, "serving Prometheus metrics at /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}
