//! The local API: axum on a root-only unix socket. Handlers are thin: they
//! take the endpoint lock and call into [`crate::endpoints`].

use crate::endpoints::{EndpointError, Endpoints};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use myelin_api::{
    ApiError, DatapathMetric, Deleted, Endpoint, EndpointAddRequest, ErrorCode, Feature, LabelsUpdate, Status,
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

async fn add(State(s): State<Shared>, body: Result<Json<EndpointAddRequest>, axum::extract::rejection::JsonRejection>) -> Reply<Endpoint> {
    let Json(req) = body.map_err(|e| Failure(StatusCode::BAD_REQUEST, ApiError { code: ErrorCode::BadRequest, message: e.body_text() }))?;
    Ok(Json(s.endpoints.lock().await.add(req).await?))
}

async fn get_one(State(s): State<Shared>, Path(id): Path<u32>) -> Reply<Endpoint> {
    s.endpoints.lock().await.get(id).cloned().map(Json).ok_or_else(|| EndpointError::NotFound(format!("no endpoint {id}")).into())
}

async fn by_container(State(s): State<Shared>, Path((cid, ifname)): Path<(String, String)>) -> Reply<Endpoint> {
    s.endpoints.lock().await.find(&cid, &ifname).cloned().map(Json).ok_or_else(|| {
        EndpointError::NotFound(format!("no endpoint for container {cid} interface {ifname}")).into()
    })
}

async fn delete(State(s): State<Shared>, Path((cid, ifname)): Path<(String, String)>) -> Reply<Deleted> {
    let existed = s.endpoints.lock().await.delete(&cid, &ifname).await?;
    Ok(Json(Deleted { existed }))
}

async fn check(State(s): State<Shared>, Path((cid, ifname)): Path<(String, String)>) -> Reply<Endpoint> {
    Ok(Json(s.endpoints.lock().await.check(&cid, &ifname).await?))
}

async fn labels(
    State(s): State<Shared>,
    Path(id): Path<u32>,
    body: Result<Json<LabelsUpdate>, axum::extract::rejection::JsonRejection>,
) -> Reply<Endpoint> {
    let Json(update) = body.map_err(|e| Failure(StatusCode::BAD_REQUEST, ApiError { code: ErrorCode::BadRequest, message: e.body_text() }))?;
    Ok(Json(s.endpoints.lock().await.update_labels(id, update)?))
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
