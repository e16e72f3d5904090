//! Who is asking: API keys map to tenants, and each tenant has a request rate.
//!
//! Keys are configured as SHA-256 digests, so the config file never holds a usable key. A
//! request carries its key as `Authorization: Bearer <key>` (the scheme in any case, as HTTP
//! says) or `x-api-key: <key>`. Without configured keys (loopback only) the tenant is the
//! `x-tenant` header, or `default`. Refusals (401, 403) are held `api.auth_failure_delay_ms`
//! before they are sent, so guessing keys is slow.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};

use super::ApiConfig;
use super::ApiState;
use super::error::ApiError;

pub const DEFAULT_TENANT: &str = "default";

pub struct Auth {
    /// SHA-256 (lowercase hex) of a key → tenant.
    keys: HashMap<String, String>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Auth {
    pub fn new(config: &ApiConfig) -> Auth {
        let keys = config.keys.iter().map(|k| (k.sha256.to_ascii_lowercase(), k.tenant.clone())).collect();
        let limiter = NonZeroU32::new(config.rate_per_s).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Auth { keys, limiter }
    }

    pub fn keys_configured(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The tenant of a request, or 401.
    pub fn tenant_of(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        if self.keys.is_empty() {
            return Ok(header("x-tenant").filter(|t| !t.is_empty()).unwrap_or(DEFAULT_TENANT).to_string());
        }
        let key = header("authorization").and_then(bearer_token).or_else(|| header("x-api-key"));
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Err(ApiError::unauthorized("an API key is required: `Authorization: Bearer <key>` or `x-api-key: <key>`"));
        };
        self.keys.get(&sha256_hex(key)).cloned().ok_or_else(|| ApiError::unauthorized("the API key is not valid"))
    }

    /// Takes one request from the tenant's rate, or 429 with the seconds to wait.
    pub fn admit(&self, tenant: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&tenant.to_string()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::too_many("rate_limited", format!("tenant `{tenant}` is over its request rate"), wait.as_secs_f64().ceil() as u64)
        })
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1): `bearer` and `BEARER` are the same scheme.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer k1", "bearer k1", "BEARER k1", "bEaReR  k1 "] {
            assert_eq!(bearer_token(value), Some("k1"), "{value}");
        }
        for value in ["Basic k1", "Bearerk1", "k1"] {
            assert_eq!(bearer_token(value), None, "{value}");
        }
    }
}
