//! The local API: axum on a root-only unix socket. Reads come from the
//! published snapshots (no lock, never waiting for a component); writes are
//! commands to the component that owns the state, answered when done.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use myelin_api::{
    ApiError, AppliedPolicy, DatapathMetric, Deleted, Endpoint, EndpointAddRequest, EndpointPolicy, ErrorCode,
    ExplainRequest, ExplainResponse, IdentityInfo, LabelsUpdate, NamespaceLabels, PolicyApply, PolicyChange,
    PolicyDelete, PolicyEntryInfo, PolicyStat, RuleInfo, Stall, Status,
};
use myelin_bpf::Datapath;

use crate::endpoints::plumb::Plumber;
use crate::endpoints::{EndpointError, EndpointsHandle};
use crate::gc::GcStats;
use crate::policy::{EngineError, Gone, PolicyHandle};
use crate::snapshot::Snapshots;

/// What the handlers share.
pub struct AgentState {
    pub snapshots: Arc<Snapshots>,
    pub endpoints: EndpointsHandle,
    pub ipam: crate::ipam::IpamHandle,
    pub policy: PolicyHandle,
    pub plumber: Plumber,
    pub datapath: Arc<Datapath>,
    pub gc: Arc<GcStats>,
    pub observability: Option<Arc<crate::observe::Observability>>,
    /// Everything of the status that does not change after start.
    pub status: Status,
    pub debug_api: bool,
    /// Where the pods' cgroups are (None: socket programs and cgroup accounting off).
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Process events with pod attribution (None: `process_events` off or unavailable).
    pub process: Option<crate::process::ProcessHandle>,
    /// The kvstore link, as the cluster component reports it (None: no kvstore).
    pub cluster: Option<tokio::sync::watch::Receiver<myelin_api::ClusterStatus>>,
}

pub type Shared = Arc<AgentState>;

pub struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

fn fail(code: ErrorCode, message: impl Into<String>) -> Failure {
    let status = match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound | ErrorCode::NetnsNotFound => StatusCode::NOT_FOUND,
        ErrorCode::AlreadyExists => StatusCode::CONFLICT,
        ErrorCode::PoolExhausted => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Failure(status, ApiError { code, message: message.into() })
}

impl From<EndpointError> for Failure {
    fn from(e: EndpointError) -> Self {
        fail(e.code(), e.to_string())
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::Policy(_) => ErrorCode::BadRequest,
            EngineError::NotFound(_) => ErrorCode::NotFound,
            _ => ErrorCode::Internal,
        };
        fail(code, e.to_string())
    }
}

impl From<Gone> for Failure {
    fn from(e: Gone) -> Self {
        fail(ErrorCode::Internal, e.to_string())
    }
}

impl From<myelin_bpf::BpfError> for Failure {
    fn from(e: myelin_bpf::BpfError) -> Self {
        fail(ErrorCode::Internal, e.to_string())
    }
}

type Reply<T> = Result<Json<T>, Failure>;
type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(b: Body<T>) -> Result<T, Failure> {
    b.map(|Json(v)| v).map_err(|e| fail(ErrorCode::BadRequest, e.body_text()))
}

/// Run a blocking datapath read off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, myelin_bpf::BpfError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f).await.map_err(|e| fail(ErrorCode::Internal, e.to_string()))?.map_err(Failure::from)
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/endpoints", get(list).post(add))
        .route("/v1/endpoints/{id}", get(get_one))
        .route("/v1/endpoints/{id}/labels", put(labels))
        .route("/v1/endpoints/by-container/{cid}/{ifname}", get(by_container).delete(delete))
        .route("/v1/endpoints/by-container/{cid}/{ifname}/check", post(check))
        .route("/v1/metrics/datapath", get(metrics))
        .route("/v1/ipam", get(ipam))
        .route("/v1/cgroup-traffic", get(cgroup_traffic))
        .route("/v1/policies", get(policies).post(apply))
        .route("/v1/policies/delete", post(delete_policies))
        .route("/v1/policies/explain", post(explain))
        .route("/v1/identities", get(identities))
        .route("/v1/identities/{id}", get(identity))
        .route("/v1/rules", get(rules))
        .route("/v1/rules/{id}", get(rule))
        .route("/v1/namespaces/{name}", put(namespace))
        .route("/v1/endpoints/{id}/policy", get(endpoint_policy))
        .route("/v1/metrics/policy", get(policy_metrics))
        .route("/v1/debug/stall", post(stall))
        .route("/v1/process-events", get(process_events))
        .fallback(|| async { fail(ErrorCode::NotFound, "no such API route") })
        .with_state(state)
}

async fn status(State(s): State<Shared>) -> Json<Status> {
    let eps = s.snapshots.endpoints.load();
    let mut st = s.status.clone();
    st.endpoints = eps.by_id.len();
    st.adopted_endpoints = eps.adopted;
    st.datapath.gc_runs = s.gc.runs.load(Ordering::Relaxed);
    st.datapath.gc_removed = s.gc.removed.load(Ordering::Relaxed);
    st.cluster = s.cluster.as_ref().map(|c| c.borrow().clone());
    if let Some(o) = s.observability.clone() {
        // The history's figures read its files: off the async workers.
        st.flows = tokio::task::spawn_blocking(move || o.status()).await.ok();
    }
    Json(st)
}

async fn list(State(s): State<Shared>) -> Json<Vec<Endpoint>> {
    Json(s.snapshots.endpoint_list())
}

async fn add(State(s): State<Shared>, b: Body<EndpointAddRequest>) -> Reply<Endpoint> {
    let req = body(b)?;
    Ok(Json(s.endpoints.add(req).await?))
}

async fn get_one(State(s): State<Shared>, Path(id): Path<u32>) -> Reply<Endpoint> {
    s.snapshots.endpoint(id).map(Json).ok_or_else(|| fail(ErrorCode::NotFound, format!("no endpoint {id}")))
}

async fn by_container(State(s): State<Shared>, Path((cid, ifname)): Path<(String, String)>) -> Reply<Endpoint> {
    s.snapshots
        .find(&cid, &ifname)
        .map(Json)
        .ok_or_else(|| fail(ErrorCode::NotFound, format!("no endpoint for container {cid} interface {ifname}")))
}

async fn delete(State(s): State<Shared>, Path((cid, ifname)): Path<(String, String)>) -> Reply<Deleted> {
    let existed = s.endpoints.delete(cid, ifname).await?;
    Ok(Json(Deleted { existed }))
}

// The body (the CNI sends `{}`) is taken so the connection is read to its end before answering.
async fn check(
    State(s): State<Shared>,
    Path((cid, ifname)): Path<(String, String)>,
    _body: axum::body::Bytes,
) -> Reply<Endpoint> {
    let ep = s
        .snapshots
        .find(&cid, &ifname)
        .ok_or_else(|| fail(ErrorCode::NotFound, format!("no endpoint for container {cid} interface {ifname}")))?;
    s.plumber.check(&ep).await?;
    Ok(Json(ep))
}

async fn labels(State(s): State<Shared>, Path(id): Path<u32>, b: Body<LabelsUpdate>) -> Reply<Endpoint> {
    let update = body(b)?;
    let mut ep = s.endpoints.labels(id, update).await?;
    let ids = s.policy.endpoints(vec![ep.clone()], vec![]).await.map_err(|e| fail(ErrorCode::Internal, e))?;
    ep.identity = ids.get(&id).copied().unwrap_or(ep.identity);
    Ok(Json(ep))
}

async fn policies(State(s): State<Shared>) -> Json<Vec<AppliedPolicy>> {
    Json(s.snapshots.policy.load().policies.as_ref().clone())
}

async fn apply(State(s): State<Shared>, b: Body<PolicyApply>) -> Reply<PolicyChange> {
    let req = body(b)?;
    let files: Vec<(String, String)> = req.files.into_iter().map(|f| (f.name, f.content)).collect();
    Ok(Json(s.policy.apply(files).await??))
}

async fn delete_policies(State(s): State<Shared>, b: Body<PolicyDelete>) -> Reply<PolicyChange> {
    let req = body(b)?;
    Ok(Json(s.policy.delete(req.ids).await??))
}

async fn namespace(
    State(s): State<Shared>,
    Path(name): Path<String>,
    b: Body<NamespaceLabels>,
) -> Reply<NamespaceLabels> {
    let req = body(b)?;
    for (k, v) in &req.labels {
        crate::endpoints::validate_label(k, v)?;
    }
    Ok(Json(s.policy.namespace(name, req.labels).await??))
}

fn identity_info(s: &Snapshots, id: u32) -> Option<IdentityInfo> {
    let pol = s.policy.load();
    let labels = pol.table.labels(id)?;
    let scope = if myelin_policy::ReservedIdentity::from_id(id).is_some() {
        "reserved"
    } else if pol.table.cidrs.contains_key(&id) {
        "cidr"
    } else {
        "workload"
    };
    let mut endpoints: Vec<u32> = pol.identity_of.iter().filter(|(_, i)| **i == id).map(|(e, _)| *e).collect();
    endpoints.sort_unstable();
    Some(IdentityInfo {
        id,
        labels: labels.as_map().clone(),
        scope: scope.into(),
        endpoints,
        refcount: pol.refcounts.get(&id).copied().unwrap_or(0),
    })
}

async fn identities(State(s): State<Shared>) -> Json<Vec<IdentityInfo>> {
    let ids = s.snapshots.policy.load().table.all_ids();
    Json(ids.into_iter().filter_map(|id| identity_info(&s.snapshots, id)).collect())
}

async fn identity(State(s): State<Shared>, Path(id): Path<u32>) -> Reply<IdentityInfo> {
    identity_info(&s.snapshots, id).map(Json).ok_or_else(|| fail(ErrorCode::NotFound, format!("no identity {id}")))
}

async fn rules(State(s): State<Shared>) -> Json<Vec<RuleInfo>> {
    Json(s.snapshots.policy.load().rules.all().into_values().collect())
}

async fn rule(State(s): State<Shared>, Path(id): Path<u32>) -> Reply<RuleInfo> {
    s.snapshots.policy.load().rules.get(id).cloned().map(Json).ok_or_else(|| {
        fail(ErrorCode::NotFound, format!("no rule {id} (never handed out, or retired longer than the retention)"))
    })
}

fn direction_word(d: u8) -> String {
    if d == 0 { "ingress" } else { "egress" }.into()
}

async fn endpoint_policy(State(s): State<Shared>, Path(id): Path<u32>) -> Reply<EndpointPolicy> {
    let ep = s.snapshots.endpoint(id).ok_or_else(|| fail(ErrorCode::NotFound, format!("no endpoint {id}")))?;
    let dp = s.datapath.clone();
    let installed = blocking(move || dp.endpoint_policy(id)).await?;
    let (ingress_enforced, egress_enforced, entries) = installed.unwrap_or((false, false, Vec::new()));
    let rules = s.snapshots.policy.load().rules.clone();
    Ok(Json(EndpointPolicy {
        endpoint_id: id,
        identity: ep.identity,
        ingress_enforced,
        egress_enforced,
        entries: entries
            .into_iter()
            .map(|e| PolicyEntryInfo {
                direction: direction_word(e.direction),
                identity: e.identity,
                protocol: e.protocol,
                port: e.port,
                port_prefix_len: e.port_prefix_len,
                verdict: if e.default {
                    "default"
                } else if e.deny {
                    "deny"
                } else {
                    "allow"
                }
                .into(),
                rule_id: e.rule_id,
                rule: rules.describe(e.rule_id),
            })
            .collect(),
    }))
}

async fn policy_metrics(State(s): State<Shared>) -> Reply<Vec<PolicyStat>> {
    let dp = s.datapath.clone();
    let rows = blocking(move || dp.policy_stats()).await?;
    let rules = s.snapshots.policy.load().rules.clone();
    Ok(Json(
        rows.into_iter()
            .map(|r| PolicyStat {
                endpoint_id: r.endpoint_id,
                direction: direction_word(r.direction),
                verdict: myelin_bpf::verdict_name(r.verdict).into(),
                rule_id: r.rule_id,
                rule: rules.describe(r.rule_id),
                packets: r.packets,
                bytes: r.bytes,
            })
            .collect(),
    ))
}

fn parse_peer(s: &Snapshots, p: &str) -> Result<myelin_policy::FlowPeer, Failure> {
    if let Some((ns, pod)) = p.split_once('/') {
        if let Ok(net) = p.parse::<ipnet::Ipv4Net>() {
            return Ok(myelin_policy::FlowPeer::Ip(net.network()));
        }
        let ep = s
            .endpoint_list()
            .into_iter()
            .find(|e| e.namespace.as_deref().unwrap_or("default") == ns && e.pod_name.as_deref() == Some(pod))
            .ok_or_else(|| fail(ErrorCode::NotFound, format!("no local endpoint for pod {ns}/{pod}")))?;
        return Ok(myelin_policy::FlowPeer::Endpoint(u64::from(ep.id)));
    }
    p.parse::<std::net::Ipv4Addr>()
        .map(myelin_policy::FlowPeer::Ip)
        .map_err(|_| fail(ErrorCode::BadRequest, format!("peer {p:?} is not NAMESPACE/POD, an IPv4 address or a CIDR")))
}

fn parse_protocol(p: &str) -> Result<u8, Failure> {
    match p.to_ascii_uppercase().as_str() {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        "ICMP" => Ok(1),
        n => n.parse().map_err(|_| {
            fail(ErrorCode::BadRequest, format!("protocol {p:?} is not TCP, UDP, SCTP, ICMP or a number"))
        }),
    }
}

async fn explain(State(s): State<Shared>, b: Body<ExplainRequest>) -> Reply<ExplainResponse> {
    let req = body(b)?;
    let from = parse_peer(&s.snapshots, &req.from)?;
    let to = parse_peer(&s.snapshots, &req.to)?;
    let proto = parse_protocol(&req.protocol)?;
    let x = s.policy.explain(from, to, proto, req.port).await??;
    Ok(Json(ExplainResponse {
        verdict: x.final_verdict.to_string(),
        text: x.to_string(),
        detail: serde_json::to_value(&x).unwrap_or_default(),
    }))
}

async fn ipam(State(s): State<Shared>) -> Json<myelin_api::IpamState> {
    Json(myelin_api::IpamState::clone(&s.snapshots.ipam.load()))
}

async fn cgroup_traffic(State(s): State<Shared>) -> Reply<Vec<myelin_api::CgroupTraffic>> {
    let Some(root) = s.cgroup_root.clone().filter(|_| crate::cgroups::accounting_on(&s.datapath)) else {
        return Err(fail(
            ErrorCode::NotFound,
            "cgroup traffic accounting is off: set cgroup_root in the agent config to the cgroup holding the pods \
             (see /v1/status features: cgroup_traffic)",
        ));
    };
    let (dp, endpoints) = (s.datapath.clone(), s.snapshots.endpoint_list());
    Ok(Json(blocking(move || crate::cgroups::traffic(&dp, &root, &endpoints)).await?))
}

async fn metrics(State(s): State<Shared>) -> Reply<Vec<DatapathMetric>> {
    let dp = s.datapath.clone();
    let rows = blocking(move || dp.metrics()).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| DatapathMetric {
                endpoint_id: r.endpoint_id,
                direction: direction_word(r.direction),
                reason: r.reason,
                reason_name: myelin_bpf::reason_name(r.reason).into(),
                packets: r.packets,
                bytes: r.bytes,
            })
            .collect(),
    ))
}

#[derive(serde::Deserialize)]
struct ProcessQuery {
    pod: Option<String>,
    limit: Option<usize>,
}

async fn process_events(
    State(s): State<Shared>,
    q: axum::extract::Query<ProcessQuery>,
) -> Reply<Vec<myelin_api::ProcessEventInfo>> {
    let Some(p) = &s.process else {
        return Err(fail(
            ErrorCode::NotFound,
            "process events are off: set process_events = true in the agent config (see /v1/status features)",
        ));
    };
    let list = p.list(q.pod.clone(), q.limit.unwrap_or(1000)).await;
    list.map(Json).ok_or_else(|| fail(ErrorCode::Internal, "the process events component stopped"))
}

async fn stall(State(s): State<Shared>, b: Body<Stall>) -> Reply<Stall> {
    if !s.debug_api {
        return Err(fail(ErrorCode::NotFound, "the debug API is off (debug_api = true in the agent config)"));
    }
    let req = body(b)?;
    let d = Duration::from_millis(req.millis.min(60_000));
    match req.component.as_str() {
        "policy" => s.policy.stall(d).await?,
        "endpoints" => s.endpoints.stall(d).await?,
        "ipam" => s.ipam.stall(d).await.map_err(|e| fail(ErrorCode::Internal, e.to_string()))?,
        other => {
            return Err(fail(
                ErrorCode::BadRequest,
                format!("component {other:?}: use \"policy\", \"endpoints\" or \"ipam\""),
            ))
        }
    }
    Ok(Json(req))
}
