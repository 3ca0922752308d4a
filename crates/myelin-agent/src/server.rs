//! The local API: axum on a root-only unix socket. Handlers are thin: they
//! take the endpoint lock and call into [`crate::endpoints`].

use crate::endpoints::{EndpointError, Endpoints};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use myelin_api::{
    ApiError, AppliedPolicy, DatapathMetric, Deleted, Endpoint, EndpointAddRequest, EndpointPolicy, ErrorCode,
    ExplainRequest, ExplainResponse, Feature, IdentityInfo, LabelsUpdate, NamespaceLabels, PolicyApply, PolicyChange,
    PolicyDelete, PolicyEntryInfo, PolicyStat, Status,
};
use std::sync::Arc;
use tokio::sync::Mutex;

pub struct AgentState {
    pub endpoints: Mutex<Endpoints>,
    pub status: Status,
    pub features: Vec<Feature>,
}

pub type Shared = Arc<AgentState>;

pub struct Failure(StatusCode, ApiError);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<EndpointError> for Failure {
    fn from(e: EndpointError) -> Self {
        let code = e.code();
        let status = match code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound | ErrorCode::NetnsNotFound => StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists => StatusCode::CONFLICT,
            ErrorCode::PoolExhausted => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, ApiError { code, message: e.to_string() })
    }
}

type Reply<T> = Result<Json<T>, Failure>;

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
        .route("/v1/policies", get(policies).post(apply))
        .route("/v1/policies/delete", post(delete_policies))
        .route("/v1/policies/explain", post(explain))
        .route("/v1/identities", get(identities))
        .route("/v1/identities/{id}", get(identity))
        .route("/v1/namespaces/{name}", put(namespace))
        .route("/v1/endpoints/{id}/policy", get(endpoint_policy))
        .route("/v1/metrics/policy", get(policy_metrics))
        .fallback(|| async {
            Failure(StatusCode::NOT_FOUND, ApiError { code: ErrorCode::NotFound, message: "no such API route".into() })
        })
        .with_state(state)
}

async fn status(State(s): State<Shared>) -> Json<Status> {
    let eps = s.endpoints.lock().await;
    let mut st = s.status.clone();
    st.endpoints = eps.len();
    st.adopted_endpoints = eps.adopted();
    st.features = s.features.clone();
    Json(st)
}

async fn list(State(s): State<Shared>) -> Json<Vec<Endpoint>> {
    Json(s.endpoints.lock().await.list())
}

async fn add(
    State(s): State<Shared>,
    body: Result<Json<EndpointAddRequest>, axum::extract::rejection::JsonRejection>,
) -> Reply<Endpoint> {
    let Json(req) = body.map_err(|e| {
        Failure(StatusCode::BAD_REQUEST, ApiError { code: ErrorCode::BadRequest, message: e.body_text() })
    })?;
    Ok(Json(s.endpoints.lock().await.add(req).await?))
}

async fn get_one(State(s): State<Shared>, Path(id): Path<u32>) -> Reply<Endpoint> {
    s.endpoints
        .lock()
        .await
        .get(id)
        .cloned()
        .map(Json)
        .ok_or_else(|| EndpointError::NotFound(format!("no endpoint {id}")).into())
}

async fn by_container(State(s): State<Shared>, Path((cid, ifname)): Path<(String, String)>) -> Reply<Endpoint> {
    s.endpoints
        .lock()
        .await
        .find(&cid, &ifname)
        .cloned()
        .map(Json)
        .ok_or_else(|| EndpointError::NotFound(format!("no endpoint for container {cid} interface {ifname}")).into())
}

async fn delete(State(s): State<Shared>, Path((cid, ifname)): Path<(String, String)>) -> Reply<Deleted> {
    let existed = s.endpoints.lock().await.delete(&cid, &ifname).await?;
    Ok(Json(Deleted { existed }))
}

// The body (the CNI sends `{}`) is taken so the connection is read to its end before answering.
async fn check(
    State(s): State<Shared>,
    Path((cid, ifname)): Path<(String, String)>,
    _body: axum::body::Bytes,
) -> Reply<Endpoint> {
    Ok(Json(s.endpoints.lock().await.check(&cid, &ifname).await?))
}

async fn labels(
    State(s): State<Shared>,
    Path(id): Path<u32>,
    body: Result<Json<LabelsUpdate>, axum::extract::rejection::JsonRejection>,
) -> Reply<Endpoint> {
    let Json(update) = body.map_err(|e| {
        Failure(StatusCode::BAD_REQUEST, ApiError { code: ErrorCode::BadRequest, message: e.body_text() })
    })?;
    Ok(Json(s.endpoints.lock().await.update_labels(id, update)?))
}

fn bad_json(e: &axum::extract::rejection::JsonRejection) -> Failure {
    Failure(StatusCode::BAD_REQUEST, ApiError { code: ErrorCode::BadRequest, message: e.body_text() })
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

async fn policies(State(s): State<Shared>) -> Json<Vec<AppliedPolicy>> {
    let eps = s.endpoints.lock().await;
    Json(
        eps.policy()
            .policies()
            .map(|p| AppliedPolicy {
                kind: p.policy.kind.to_string(),
                namespace: p.policy.namespace.clone(),
                name: p.policy.name.clone(),
                yaml: p.yaml.clone(),
                warnings: p.policy.warnings.clone(),
            })
            .collect(),
    )
}

async fn apply(State(s): State<Shared>, body: Body<PolicyApply>) -> Reply<PolicyChange> {
    let Json(req) = body.map_err(|e| bad_json(&e))?;
    let files: Vec<(String, String)> = req.files.into_iter().map(|f| (f.name, f.content)).collect();
    Ok(Json(s.endpoints.lock().await.apply_policies(&files)?))
}

async fn delete_policies(State(s): State<Shared>, body: Body<PolicyDelete>) -> Reply<PolicyChange> {
    let Json(req) = body.map_err(|e| bad_json(&e))?;
    Ok(Json(s.endpoints.lock().await.delete_policies(&req.ids)?))
}

async fn namespace(
    State(s): State<Shared>,
    Path(name): Path<String>,
    body: Body<NamespaceLabels>,
) -> Reply<NamespaceLabels> {
    let Json(req) = body.map_err(|e| bad_json(&e))?;
    Ok(Json(s.endpoints.lock().await.set_namespace_labels(&name, req.labels)?))
}

fn identity_info(eps: &Endpoints, id: u32) -> Option<IdentityInfo> {
    let table = eps.policy().table();
    let labels = table.labels(id)?;
    let scope = if myelin_policy::ReservedIdentity::from_id(id).is_some() {
        "reserved"
    } else if table.cidrs.contains_key(&id) {
        "cidr"
    } else {
        "workload"
    };
    Some(IdentityInfo {
        id,
        labels: labels.as_map().clone(),
        scope: scope.into(),
        endpoints: eps.list().iter().filter(|e| e.identity == id).map(|e| e.id).collect(),
        refcount: eps.policy().identities().refcount(id),
    })
}

async fn identities(State(s): State<Shared>) -> Json<Vec<IdentityInfo>> {
    let eps = s.endpoints.lock().await;
    let ids = eps.policy().table().all_ids();
    Json(ids.into_iter().filter_map(|id| identity_info(&eps, id)).collect())
}

async fn identity(State(s): State<Shared>, Path(id): Path<u32>) -> Reply<IdentityInfo> {
    let eps = s.endpoints.lock().await;
    identity_info(&eps, id).map(Json).ok_or_else(|| EndpointError::NotFound(format!("no identity {id}")).into())
}

fn verdict_word(deny: bool) -> String {
    if deny { "deny" } else { "allow" }.into()
}

async fn endpoint_policy(State(s): State<Shared>, Path(id): Path<u32>) -> Reply<EndpointPolicy> {
    let eps = s.endpoints.lock().await;
    let ep = eps.get(id).cloned().ok_or_else(|| EndpointError::NotFound(format!("no endpoint {id}")))?;
    let installed = eps.datapath().endpoint_policy(id).map_err(EndpointError::from)?;
    let (ingress_enforced, egress_enforced, entries) = installed.unwrap_or((false, false, Vec::new()));
    Ok(Json(EndpointPolicy {
        endpoint_id: id,
        identity: ep.identity,
        ingress_enforced,
        egress_enforced,
        entries: entries
            .into_iter()
            .map(|e| PolicyEntryInfo {
                direction: if e.direction == 0 { "ingress" } else { "egress" }.into(),
                identity: e.identity,
                protocol: e.protocol,
                port: e.port,
                port_prefix_len: e.port_prefix_len,
                verdict: verdict_word(e.deny),
                rule_id: e.rule_id,
                rule: eps.policy().rules().describe(e.rule_id),
            })
            .collect(),
    }))
}

async fn policy_metrics(State(s): State<Shared>) -> Reply<Vec<PolicyStat>> {
    let eps = s.endpoints.lock().await;
    let rows = eps.datapath().policy_stats().map_err(EndpointError::from)?;
    Ok(Json(
        rows.into_iter()
            .map(|r| PolicyStat {
                endpoint_id: r.endpoint_id,
                direction: if r.direction == 0 { "ingress" } else { "egress" }.into(),
                verdict: myelin_bpf::verdict_name(r.verdict).into(),
                rule_id: r.rule_id,
                rule: eps.policy().rules().describe(r.rule_id),
                packets: r.packets,
                bytes: r.bytes,
            })
            .collect(),
    ))
}

fn parse_peer(eps: &Endpoints, s: &str) -> Result<myelin_policy::FlowPeer, EndpointError> {
    if let Some((ns, pod)) = s.split_once('/') {
        if let Ok(net) = s.parse::<ipnet::Ipv4Net>() {
            return Ok(myelin_policy::FlowPeer::Ip(net.network()));
        }
        let ep = eps
            .list()
            .into_iter()
            .find(|e| e.namespace.as_deref().unwrap_or("default") == ns && e.pod_name.as_deref() == Some(pod))
            .ok_or_else(|| EndpointError::NotFound(format!("no local endpoint for pod {ns}/{pod}")))?;
        return Ok(myelin_policy::FlowPeer::Endpoint(u64::from(ep.id)));
    }
    s.parse::<std::net::Ipv4Addr>()
        .map(myelin_policy::FlowPeer::Ip)
        .map_err(|_| EndpointError::BadRequest(format!("peer {s:?} is not NAMESPACE/POD, an IPv4 address or a CIDR")))
}

fn parse_protocol(p: &str) -> Result<u8, EndpointError> {
    match p.to_ascii_uppercase().as_str() {
        "TCP" => Ok(6),
        "UDP" => Ok(17),
        "SCTP" => Ok(132),
        "ICMP" => Ok(1),
        n => n
            .parse()
            .map_err(|_| EndpointError::BadRequest(format!("protocol {p:?} is not TCP, UDP, SCTP, ICMP or a number"))),
    }
}

async fn explain(State(s): State<Shared>, body: Body<ExplainRequest>) -> Reply<ExplainResponse> {
    let Json(req) = body.map_err(|e| bad_json(&e))?;
    let mut eps = s.endpoints.lock().await;
    let from = parse_peer(&eps, &req.from)?;
    let to = parse_peer(&eps, &req.to)?;
    let proto = parse_protocol(&req.protocol)?;
    let x = eps.explain(from, to, proto, req.port)?;
    Ok(Json(ExplainResponse {
        verdict: x.final_verdict.to_string(),
        text: x.to_string(),
        detail: serde_json::to_value(&x).unwrap_or_default(),
    }))
}

async fn ipam(State(s): State<Shared>) -> Json<myelin_api::IpamState> {
    Json(s.endpoints.lock().await.ipam_state())
}

async fn metrics(State(s): State<Shared>) -> Reply<Vec<DatapathMetric>> {
    let eps = s.endpoints.lock().await;
    let rows = eps.datapath().metrics().map_err(EndpointError::from)?;
    Ok(Json(
        rows.into_iter()
            .map(|r| DatapathMetric {
                endpoint_id: r.endpoint_id,
                direction: if r.direction == 0 { "ingress" } else { "egress" }.into(),
                reason: r.reason,
                reason_name: myelin_bpf::reason_name(r.reason).into(),
                packets: r.packets,
                bytes: r.bytes,
            })
            .collect(),
    ))
}
