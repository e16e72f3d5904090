//! The tenant of an API request ([`Tenant`]), and the refusal delay of the API's routes;
//! keys and rates are [`crate::http::access`]'s.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use super::ApiState;
use crate::http::error::ApiError;

/// Middleware: holds every 401 and 403 for `api.auth_failure_delay_ms`, so a client guessing
/// keys (or tenants' rights) gets few answers a second. The wait is a timer: other requests,
/// on this connection's runtime or any other, go on meanwhile.
pub async fn slow_refusals(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) && state.config.auth_failure_delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(state.config.auth_failure_delay_ms)).await;
    }
    response
}

/// The authenticated tenant of a request (also charged against its rate).
pub struct Tenant(pub String);

impl FromRequestParts<Arc<ApiState>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Self::Rejection> {
        let tenant = state.auth.tenant_of(&parts.headers)?;
        state.auth.admit(&tenant)?;
        Ok(Tenant(tenant))
    }
}
