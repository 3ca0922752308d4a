//! The agent's Prometheus endpoint: flow metrics (Hubble's names, folded on
//! the ingest thread by the metrics sink) and the agent's own figures, read
//! at each scrape from the published snapshots and counters (no lock of the
//! components), served over HTTP on `metrics_listen`.
//!
//! ```text
//!  [flow-ingest] MetricsSink: per-flow hash update; fold into counters once a second
//!  scrape --HTTP GET /metrics--> handler -> spawn_blocking(encode: agent source reads
//!        snapshots, GC counters, map usage (syscalls), ring; then the registry)
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use myelin_bpf::Datapath;
use myelin_observe::metrics::{AgentSource, AgentStats, MapUse, MetricsHandle};
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
