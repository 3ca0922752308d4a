//! The Observer gRPC service (`observer.Observer`, Hubble's wire format).
//!
//! GetFlows answers from the durable history (older flows) and the in-memory
//! ring (recent ones), in time order, filtered with Hubble's whitelist and
//! blacklist semantics; with `follow` it then streams new flows as the ring
//! publishes them (also after `since`, which Hubble cannot do), and reports
//! events the datapath lost as `lost_events` responses.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::dict::DictView;
use crate::flowpb::to_flow;
use crate::pipeline::Observer;
use crate::proto::flow;
use crate::proto::observer::{
    self, get_flows_response::ResponseTypes, observer_server, GetAgentEventsRequest, GetAgentEventsResponse,
    GetDebugEventsRequest, GetDebugEventsResponse, GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest,
    GetNamespacesResponse, GetNodesRequest, GetNodesResponse, ServerStatusRequest, ServerStatusResponse,
};
use crate::record::FlowRecord;

/// Older flows, kept on disk (the durable history).
pub trait FlowStore: Send + Sync {
    /// Matching records with `since <= time_ns < until` (unix ns), in time order; with
    /// `newest_first` the newest `limit` of them (returned oldest first).
    fn query(
        &self,
        since_ns: Option<u64>,
        until_ns: Option<u64>,
        newest_first: bool,
        limit: Option<usize>,
        pred: &mut dyn FnMut(&FlowRecord) -> bool,
    ) -> Result<Vec<FlowRecord>, String>;
}

/// A compiled GetFlows filter: does this record (named by the dictionary, from `node`) pass?
pub type Matcher = Box<dyn FnMut(&FlowRecord, &DictView, &str) -> bool + Send>;

/// The service.
#[derive(Clone)]
pub struct ObserverService {
    observer: Arc<Observer>,
    history: Option<Arc<dyn FlowStore>>,
    version: String,
}

impl ObserverService {
    #[must_use]
    pub fn new(observer: Arc<Observer>, history: Option<Arc<dyn FlowStore>>) -> Self {
        Self { observer, history, version: format!("myelin {}", env!("CARGO_PKG_VERSION")) }
    }

    /// The tonic server of this service.
    #[must_use]
    pub fn into_server(self) -> observer_server::ObserverServer<Self> {
        observer_server::ObserverServer::new(self)
    }
}

#[allow(clippy::result_large_err)] // tonic::Status is what the handlers return
fn ts_ns(t: &crate::proto::Timestamp) -> Result<u64, Status> {
    let s = u64::try_from(t.seconds).map_err(|_| Status::invalid_argument("since/until: before 1970"))?;
    let n = u64::try_from(t.nanos).map_err(|_| Status::invalid_argument("since/until: negative nanos"))?;
    Ok(s.saturating_mul(1_000_000_000).saturating_add(n))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn timestamp(ns: u64) -> crate::proto::Timestamp {
    crate::proto::Timestamp {
        seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(ns % 1_000_000_000).unwrap_or(0),
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

/// What a GetFlows asks, checked.
struct Plan {
    since: Option<u64>,
    until: Option<u64>,
    /// 0: no limit.
    number: usize,
    first: bool,
    follow: bool,
}

#[allow(clippy::result_large_err)] // tonic::Status is what the handlers return
fn plan(r: &GetFlowsRequest) -> Result<Plan, Status> {
    let since = r.since.as_ref().map(ts_ns).transpose()?;
    let until = r.until.as_ref().map(ts_ns).transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err(Status::invalid_argument("since is after until"));
        }
    }
    if r.follow && until.is_some() {
        return Err(Status::invalid_argument("follow and until cannot be combined: a followed stream has no end"));
    }
    if r.first && r.follow && since.is_none() && r.number == 0 {
        return Err(Status::invalid_argument("first without number or since selects nothing to follow from"));
    }
    Ok(Plan { since, until, number: usize::try_from(r.number).unwrap_or(usize::MAX), first: r.first, follow: r.follow })
}

impl ObserverService {
    fn response(&self, r: &FlowRecord, dict: &DictView) -> GetFlowsResponse {
        let dir = &self.observer.directory;
        let rule = |id: u32| dir.rule(id);
        let f = to_flow(r, dict, &rule, &self.observer.node);
        GetFlowsResponse {
            node_name: self.observer.node.clone(),
            time: f.time,
            response_types: Some(ResponseTypes::Flow(f)),
        }
    }

    fn lost(&self, count: u64) -> GetFlowsResponse {
        GetFlowsResponse {
            node_name: self.observer.node.clone(),
            time: Some(timestamp(now_ns())),
            response_types: Some(ResponseTypes::LostEvents(flow::LostEvent {
                source: flow::LostEventSource::PerfEventRingBuffer as i32,
                num_events_lost: count,
                cpu: None,
                first: None,
                last: None,
            })),
        }
    }

    /// The backlog part of a GetFlows: matching records from history and ring, in time order.
    #[allow(clippy::result_large_err)] // tonic::Status is what the handlers return
    fn backlog(&self, p: &Plan, m: &mut Matcher) -> Result<(Vec<FlowRecord>, u64), Status> {
        let ring = self.observer.ring.view();
        let dict = self.observer.dict.view();
        let node = self.observer.node.as_str();
        let last_seq = ring.last_seq().unwrap_or(0);
        let in_range = |r: &FlowRecord| p.since.is_none_or(|s| r.time_ns >= s) && p.until.is_none_or(|u| r.time_ns < u);
        // With follow and neither since nor number, nothing of the past is sent.
        if p.follow && p.since.is_none() && p.number == 0 {
            return Ok((Vec::new(), last_seq));
        }
        let limit = (p.number > 0).then_some(p.number);
        let ring_first = ring.iter().next().map(|r| (r.time_ns, r.seq));
        let ring_matches: Vec<FlowRecord> = ring.iter().filter(|r| in_range(r) && m(r, &dict, node)).copied().collect();
        // Older than the ring: from history, when the range reaches before the ring and
        // the ring alone does not already give the newest `number` (--last N).
        let history_limit = match limit {
            Some(n) if !p.first => n.checked_sub(ring_matches.len()).filter(|k| *k > 0),
            other => other,
        };
        let wants_history = match ring_first {
            None => true,
            Some((t, _)) => p.since.is_none_or(|s| s <= t) && (p.first || limit.is_none() || history_limit.is_some()),
        };
        let mut out: Vec<FlowRecord> = Vec::new();
        if let (true, Some(h)) = (wants_history, &self.history) {
            // Up to the ring's first record (inclusive of its time: records of the same
            // nanosecond with older sequence numbers are only in history).
            let until = match (p.until, ring_first) {
                (Some(u), Some((t, _))) => Some(u.min(t.saturating_add(1))),
                (u, None) => u,
                (None, Some((t, _))) => Some(t.saturating_add(1)),
            };
            let mut pred = |r: &FlowRecord| m(r, &dict, node);
            let older = h
                .query(p.since, until, !p.first, history_limit, &mut pred)
                .map_err(|e| Status::internal(format!("reading the flow history: {e}")))?;
            out.extend(older.into_iter().filter(|r| ring_first.is_none_or(|(_, s)| r.seq < s)));
        }
        out.extend(ring_matches);
        if let Some(n) = limit {
            if p.first {
                out.truncate(n);
            } else if out.len() > n {
                out.drain(..out.len() - n);
            }
        }
        Ok((out, last_seq))
    }
}

#[tonic::async_trait]
impl observer_server::Observer for ObserverService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        let p = plan(&req)?;
        let mut matcher =
            crate::filter::compile_matcher(&req.whitelist, &req.blacklist).map_err(Status::invalid_argument)?;
        let (tx, rx) = mpsc::channel::<Result<GetFlowsResponse, Status>>(1024);
        let this = self.clone();
        tokio::spawn(async move {
            // The backlog scans up to millions of records: off the async workers.
            let backlog = {
                let this = this.clone();
                let p2 = Plan { ..p };
                tokio::task::spawn_blocking(move || {
                    let r = this.backlog(&p2, &mut matcher);
                    (r, matcher)
                })
                .await
            };
            let Ok((result, mut matcher)) = backlog else { return };
            let (records, mut last_seq) = match result {
                Ok(v) => v,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let dict = this.observer.dict.view();
            for r in &records {
                if tx.send(Ok(this.response(r, &dict))).await.is_err() {
                    return;
                }
            }
            if !p.follow {
                return;
            }
            let mut newest = this.observer.ring.subscribe();
            let mut lost_seen = this.observer.stats.lost_kernel.load(Ordering::Relaxed);
            let node = this.observer.node.clone();
            loop {
                tokio::select! {
                    changed = newest.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                let lost = this.observer.stats.lost_kernel.load(Ordering::Relaxed);
                if lost > lost_seen {
                    if tx.send(Ok(this.lost(lost - lost_seen))).await.is_err() {
                        return;
                    }
                    lost_seen = lost;
                }
                let view = this.observer.ring.view();
                let dict = this.observer.dict.view();
                let mut out = Vec::new();
                if view.first_seq().is_some_and(|f| f > last_seq + 1) && last_seq != 0 {
                    // The ring wrapped past what this follower saw: say so.
                    let skipped = view.first_seq().unwrap_or(0) - last_seq - 1;
                    out.push(GetFlowsResponse {
                        node_name: node.clone(),
                        time: Some(timestamp(now_ns())),
                        response_types: Some(ResponseTypes::LostEvents(flow::LostEvent {
                            source: flow::LostEventSource::HubbleRingBuffer as i32,
                            num_events_lost: skipped,
                            cpu: None,
                            first: None,
                            last: None,
                        })),
                    });
                }
                let from = last_seq;
                for r in view.iter().filter(|r| r.seq > from) {
                    if p.until.is_none_or(|u| r.time_ns < u) && matcher(r, &dict, &node) {
                        out.push(this.response(r, &dict));
                    }
                    last_seq = r.seq;
                }
                for resp in out {
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GetAgentEventsStream = Pin<Box<dyn Stream<Item = Result<GetAgentEventsResponse, Status>> + Send>>;

    async fn get_agent_events(
        &self,
        _request: Request<GetAgentEventsRequest>,
    ) -> Result<Response<Self::GetAgentEventsStream>, Status> {
        Err(Status::unimplemented("GetAgentEvents: Myelin reports agent events in its logs, not through this API yet"))
    }

    type GetDebugEventsStream = Pin<Box<dyn Stream<Item = Result<GetDebugEventsResponse, Status>> + Send>>;

    async fn get_debug_events(
        &self,
        _request: Request<GetDebugEventsRequest>,
    ) -> Result<Response<Self::GetDebugEventsStream>, Status> {
        Err(Status::unimplemented("GetDebugEvents: the Myelin datapath emits no debug events"))
    }

    async fn get_nodes(&self, _request: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        let o = &self.observer;
        let ring = o.ring.view();
        Ok(Response::new(GetNodesResponse {
            nodes: vec![observer::Node {
                name: o.node.clone(),
                version: self.version.clone(),
                address: String::new(),
                state: crate::proto::relay::NodeState::NodeConnected as i32,
                tls: None,
                uptime_ns: u64::try_from(o.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                num_flows: ring.len as u64,
                max_flows: o.ring.capacity() as u64,
                seen_flows: o.stats.seen.load(Ordering::Relaxed),
            }],
        }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        // Namespaces of the flows in the ring (about the recent past, as Hubble).
        let ring = self.observer.ring.view();
        let dict = self.observer.dict.view();
        let mut seen = std::collections::BTreeSet::new();
        for r in ring.iter() {
            for id in [r.src_ep, r.dst_ep] {
                if let Some(d) = dict.get(id) {
                    if !d.namespace.is_empty() {
                        seen.insert((d.cluster.clone(), d.namespace.clone()));
                    }
                }
            }
        }
        Ok(Response::new(GetNamespacesResponse {
            namespaces: seen
                .into_iter()
                .map(|(cluster, namespace)| observer::Namespace { cluster, namespace })
                .collect(),
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let o = &self.observer;
        let ring = o.ring.view();
        let uptime = o.started.elapsed();
        let seen = o.stats.seen.load(Ordering::Relaxed);
        Ok(Response::new(ServerStatusResponse {
            num_flows: ring.len as u64,
            max_flows: o.ring.capacity() as u64,
            seen_flows: seen,
            uptime_ns: u64::try_from(uptime.as_nanos()).unwrap_or(u64::MAX),
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: vec![],
            version: self.version.clone(),
            flows_rate: if uptime.as_secs_f64() > 0.0 { seen as f64 / uptime.as_secs_f64() } else { 0.0 },
        }))
    }
}
