//! Who is asking: API keys map to tenants, and each tenant has a request rate. Shared by the
//! HTTP API and the schema registry, which serve the same keys (`[api]`).
//!
//! Keys are configured as SHA-256 digests, so the config file never holds a usable key. A
//! request carries its key as `Authorization: Bearer <key>` (the scheme in any case, as HTTP
//! says), `x-api-key: <key>`, or `Authorization: Basic base64(<user>:<key>)` with any user
//! name (what Confluent's schema registry clients send from `basic.auth.user.info`). Without
//! configured keys (loopback only) the tenant is the `x-tenant` header, or `default`.
//! Refusals (401, 403) are held `api.auth_failure_delay_ms` before they are sent, so
//! guessing keys is slow.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::server::Limits;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub tenant: String,
    /// `sha256sum` of the key, hex (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
}

/// The access rules of a server on a port: keys, admin tenants, request rate, refusal delay
/// and connection limits. The `[api]` section's, which the schema registry shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    pub keys: Vec<ApiKeyConfig>,
    pub admin_tenants: Vec<String>,
    /// Requests per second per tenant (0: unlimited); bursts up to `burst`.
    pub rate_per_s: u32,
    pub burst: u32,
    /// How long a 401 or 403 is held before it is sent.
    pub auth_failure_delay: Duration,
    pub limits: Limits,
}

/// The default of `api.auth_failure_delay_ms`.
pub const DEFAULT_AUTH_FAILURE_DELAY: Duration = Duration::from_millis(250);

impl Default for Access {
    /// No keys (loopback only), no rate limit, the default refusal delay and limits.
    fn default() -> Self {
        Access {
            keys: Vec::new(),
            admin_tenants: Vec::new(),
            rate_per_s: 0,
            burst: 0,
            auth_failure_delay: DEFAULT_AUTH_FAILURE_DELAY,
            limits: Limits::default(),
        }
    }
}

impl Access {
    pub fn keys_configured(&self) -> bool {
        !self.keys.is_empty()
    }
}

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
    pub fn new(access: &Access) -> Auth {
        let keys = access.keys.iter().map(|k| (k.sha256.to_ascii_lowercase(), k.tenant.clone())).collect();
        let limiter = NonZeroU32::new(access.rate_per_s).map(|rate| {
            let burst = NonZeroU32::new(access.burst).unwrap_or(rate);
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
        let key = header("authorization").and_then(|value| bearer_token(value).map(str::to_owned).or_else(|| basic_secret(value)));
        let key = key.or_else(|| header("x-api-key").map(str::to_owned));
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Err(ApiError::unauthorized(
                "an API key is required: `Authorization: Bearer <key>`, `x-api-key: <key>` or `Authorization: Basic` with the key as password",
            ));
        };
        self.keys.get(&sha256_hex(&key)).cloned().ok_or_else(|| ApiError::unauthorized("the API key is not valid"))
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

/// The password of an `Authorization: Basic base64(user:password)` value (scheme in any case).
fn basic_secret(value: &str) -> Option<String> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    decoded.split_once(':').map(|(_, secret)| secret.to_owned())
}

/// Standard base64 (padding optional); `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let text = text.trim_end_matches('=').as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut bits = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            bits |= u32::from(sextet(*c)?) << (18 - 6 * i);
        }
        out.extend_from_slice(&bits.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
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

    #[test]
    fn basic_credentials_carry_the_key_as_password() {
        // base64("sr-user:k1:with-colon"), base64("u:k") without padding, and in any case.
        assert_eq!(basic_secret("Basic c3ItdXNlcjprMTp3aXRoLWNvbG9u").as_deref(), Some("k1:with-colon"));
        assert_eq!(basic_secret("basic dTpr").as_deref(), Some("k"));
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        for value in ["Basic !!!!", "Basic a", "Bearer dTpr", "Basic aGVsbG8="] {
            assert_eq!(basic_secret(value), None, "{value}");
        }
    }
}
