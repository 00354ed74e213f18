//! Native control plane: `GET /health`, `GET /openapi.json`, and `/v1/sandboxes` create, list,
//! get, timeout, delete.

use crate::AppState;
use crate::error::ApiError;
use crate::service::CreateRequest;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::time::Duration;

/// The OpenAPI 3.1 document of the whole API.
pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/v1/sandboxes", post(create).get(list))
        .route("/v1/sandboxes/{id}", get(info).delete(kill))
        .route("/v1/sandboxes/{id}/timeout", post(timeout))
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The API description; like every endpoint but `/health`, it needs a key.
async fn openapi(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    st.svc.authenticate(&headers)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], OPENAPI))
}

async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let caller = st.svc.authenticate(&headers)?;
    let Json(req) = body?;
    let c = st.svc.create(&caller, req).await?;
    let mut v =
        serde_json::to_value(c.sandbox.info()).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("access_token".into(), c.access_token.into());
    }
    Ok((StatusCode::CREATED, Json(v)))
}

async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let caller = st.svc.authenticate(&headers)?;
    let v: Vec<_> = st.svc.list(&caller).iter().map(|s| s.info()).collect();
    Ok(Json(serde_json::json!({ "sandboxes": v })))
}

async fn info(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let caller = st.svc.authenticate(&headers)?;
    Ok(Json(st.svc.get(&caller, &id)?.info_with_usage()))
}

async fn kill(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let caller = st.svc.authenticate(&headers)?;
    st.svc.kill(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutBody {
    timeout: u64,
}

async fn timeout(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<TimeoutBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let caller = st.svc.authenticate(&headers)?;
    let Json(b) = body?;
    let sb = st
        .svc
        .set_timeout(&caller, &id, Duration::from_secs(b.timeout))?;
    Ok(Json(sb.info()))
}
