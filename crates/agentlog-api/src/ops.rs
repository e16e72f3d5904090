//! `/healthz` (the process answers), `/readyz` (the projection has read the history and no
//! supervised component is restarting),
//! `/metrics` (Prometheus); `/openapi.json` is served by [`super::openapi`].

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::answers::Readiness;
use super::auth::Tenant;
use crate::components::Phase;
use crate::http::error::ApiError;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "the projection has caught up with the log and no component of this process is restarting", body = super::answers::Readiness),
        (status = 503, description = "still catching up, or a component is restarting (`components` says which and why)", body = super::answers::Readiness)))]
pub async fn readyz(State(state): State<Arc<ApiState>>) -> (StatusCode, Json<Readiness>) {
    let mut waiting_for = Vec::new();
    if !state.projection.is_caught_up() {
        waiting_for.push("the projection to read the log's history".to_string());
    }
    if let Some(trouble) = state.projection.trouble() {
        waiting_for.push(crate::redact::paths_in(&trouble));
    }
    // Bounded: while a cluster is down every watermark lookup waits out its request timeout,
    // and a readiness probe must answer within the prober's own timeout.
    let lag = match tokio::time::timeout(READY_LAG_TIMEOUT, state.projection.lag(&state.log)).await {
        Ok(Ok(by_topic)) => Some(by_topic.values().sum::<i64>()),
        Ok(Err(error)) => {
            waiting_for.push(crate::redact::paths_in(&format!("the event log to answer: {error}")));
            None
        }
        Err(_) => {
            waiting_for.push(format!("the event log to answer (no answer within {} ms)", READY_LAG_TIMEOUT.as_millis()));
            None
        }
    };
    // `agentlog dev` supervises its components; a standalone `agentlog api` has none.
    let mut components = state.components.as_ref().map(|board| board.snapshot()).unwrap_or_default();
    for (name, component) in &mut components {
        component.last_error = component.last_error.as_deref().map(crate::redact::paths_in);
        if component.state == Phase::Restarting {
            let error = component.last_error.as_deref().unwrap_or("unknown");
            waiting_for.push(format!("component `{name}` to start again ({} failed runs in a row; last error: {error})", component.failures_in_a_row));
        }
    }
    let ready = waiting_for.is_empty();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready, lag_records: lag, waiting_for, components }))
}

/// How long `/readyz` waits for the log's high watermarks.
const READY_LAG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition (totals over all tenants)", content_type = "text/plain"), (status = 401), (status = 403, description = "not an admin tenant")))]
pub async fn metrics(State(state): State<Arc<ApiState>>, Tenant(tenant): Tenant) -> Result<Response, ApiError> {
    // The metrics count every tenant's tasks: with keys, only admin tenants may read them
    // (a scraper sends an admin key), as a tenant's own view is `/v1/stats`.
    if !state.is_admin(&tenant) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("tenant `{tenant}` is not in api.admin_tenants; /metrics counts every tenant's tasks"),
        ));
    }
    let text = super::metrics::render(&state).await.map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found("no_route", format!("no route {}", uri.path()))
}
