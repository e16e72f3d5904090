//! `/healthz` (the process answers), `/readyz` (the projection has read the history),
//! `/metrics` (Prometheus) and `/openapi.json`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "the projection has caught up with the log"), (status = 503, description = "still catching up")))]
pub async fn readyz(State(state): State<Arc<ApiState>>) -> (StatusCode, Json<Value>) {
    let ready = state.projection.is_caught_up();
    let lag = state.projection.lag(&state.log).await.ok().map(|by_topic| by_topic.values().sum::<i64>());
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "lag_records": lag })))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let text = super::metrics::render(&state).await.map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "this document")))]
pub async fn openapi(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(super::openapi::document(state.agents.keys().map(String::as_str), state.config.max_batch))
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found("no_route", format!("no route {}", uri.path()))
}
