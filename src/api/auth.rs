//! Who is asking: API keys map to tenants, and each tenant has a request rate.
//!
//! Keys are configured as SHA-256 digests, so the config file never holds a usable key. A
//! request carries its key as `Authorization: Bearer <key>` or `x-api-key: <key>`. Without
//! configured keys (loopback only) the tenant is the `x-tenant` header, or `default`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
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
        let key = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).or_else(|| header("x-api-key"));
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
