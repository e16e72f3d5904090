//! The HTTP API (`/v1`, JSON, OpenAPI at `/openapi.json`): submit, read, list, cancel and
//! stream tasks; agents, agent types with lag, jobs, stats; dead letters; health, readiness
//! and Prometheus metrics. Reads come from the projection (RocksDB); writes go to the log.
//! A live web dashboard ([`dashboard`], at `/`) is served beside it: files built into the
//! binary whose scripts call this API with the operator's key.
//!
//! API keys (stored as SHA-256 digests in config) map requests to tenants. Without keys the
//! API serves one tenant and binds only to loopback addresses: anything else is refused at
//! start-up, since it would let anyone on the network submit work.
//!
//! A crate of its own, on top of every other layer (log, events, tasks, projection) and below
//! the binary; the root package re-exports it as `agentlog::api`. [`components`], the
//! supervision of what one process runs, lives here because `/readyz` shows its board.

pub mod admin;
pub mod answers;
pub mod auth;
pub mod components;
pub mod dashboard;
pub mod idempotency;
pub mod latency_buckets;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod process_metrics;
pub mod reads;
pub mod signals;
pub mod stream;
pub mod task_stream;
pub mod tasks;
pub mod traced;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The layers below, under the names the modules of this crate use (`crate::log`, …).
pub(crate) use agentlog_events::{events, http, redact, trace};
pub(crate) use agentlog_log as log;
pub(crate) use agentlog_log::backoff;
pub(crate) use agentlog_projection as projection;
pub(crate) use agentlog_tasks::agent;

use crate::agent::{AgentTypeConfig, TaskClient};
use crate::http::access::{Access, Auth};
use crate::http::error::ApiError;
use crate::http::{loopback, server};
use crate::log::EventLog;
use crate::projection::Projection;

/// `[api]` in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the HTTP API listens on. Non-loopback addresses need `keys`.
    pub listen: String,
    /// Longest `wait_ms` a request may ask for.
    pub max_wait_ms: u64,
    /// Most tasks one `POST /v1/tasks/batch` may carry.
    pub max_batch: usize,
    /// API keys: each maps a key (by its SHA-256 digest, hex) to a tenant.
    pub keys: Vec<ApiKeyConfig>,
    /// Requests per second per tenant (0: unlimited); bursts up to `burst`.
    pub rate_per_s: u32,
    pub burst: u32,
    /// Most open (submitted, not finished) tasks per tenant (0: unlimited). Counted from the
    /// projection, so it trails submissions by the projection's lag.
    pub max_in_flight: u64,
    /// Admin tenants: they may replay and snapshot the projection (`/v1/admin/...`) and see
    /// the runtime configuration of agent types (URLs, programs) in `/v1/agent-types`, when
    /// keys are configured; without keys (loopback only) anyone on this machine may.
    pub admin_tenants: Vec<String>,
    /// Most connections served at once; past it a connection waits to be accepted.
    pub max_connections: usize,
    /// How long a connection may take to start its next request (after it is accepted, or
    /// after the previous response) before it is closed.
    pub idle_timeout_ms: u64,
    /// How long a request's head (request line and headers) may take from its first byte.
    pub header_read_timeout_ms: u64,
    /// Most open event streams (`/v1/stream/outcomes`, `/v1/tasks/{id}/stream`) per tenant; 429 past it.
    pub max_streams_per_tenant: usize,
    /// How long a 401 or 403 is held before it is sent (0: not at all), so guessing keys is
    /// slow. Other requests are not held up.
    pub auth_failure_delay_ms: u64,
    /// Most labels one task may carry.
    pub max_labels: usize,
    /// Longest label key, in bytes.
    pub max_label_key_bytes: usize,
    /// Longest label value, in bytes.
    pub max_label_value_bytes: usize,
    /// Longest idempotency key, in bytes: keys are kept (per tenant) in the projection.
    pub max_idempotency_key_bytes: usize,
    /// Longest ordering key, in bytes: a worker keeps the key of every task it holds, and the
    /// projection keeps it in the task's view.
    pub max_ordering_key_bytes: usize,
    /// Longest cancel reason, in bytes: every cancel request lands in the task's timeline.
    pub max_cancel_reason_bytes: usize,
    /// Most idempotency keys this process keeps in memory while its projection does not show
    /// them yet; past it a keyed submit answers 503 (retryable).
    pub max_idempotency_claims: usize,
}

/// `[[api.keys]]`, owned by the shared HTTP layer (the registry serves the same keys).
pub use crate::http::access::ApiKeyConfig;

/// A projection read that failed is the server's fault: 500, logged here (the projection and
/// the HTTP layer below know nothing of each other).
pub(crate) fn store_failed(error: crate::projection::StoreError) -> ApiError {
    tracing::error!(%error, "projection read failed");
    ApiError::internal(error.to_string())
}

impl ApiConfig {
    /// The access rules these settings give a server: the API's, and the schema registry's
    /// served beside it.
    pub fn access(&self) -> Access {
        Access {
            keys: self.keys.clone(),
            admin_tenants: self.admin_tenants.clone(),
            rate_per_s: self.rate_per_s,
            burst: self.burst,
            auth_failure_delay: std::time::Duration::from_millis(self.auth_failure_delay_ms),
            limits: server::Limits {
                max_connections: self.max_connections,
                idle: std::time::Duration::from_millis(self.idle_timeout_ms),
                header_read: std::time::Duration::from_millis(self.header_read_timeout_ms),
                drain: std::time::Duration::from_millis(self.max_wait_ms) + server::DRAIN_GRACE,
            },
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_wait_ms: server::DEFAULT_MAX_WAIT.as_millis() as u64,
            max_batch: 500,
            keys: Vec::new(),
            rate_per_s: 0,
            burst: 0,
            max_in_flight: 0,
            admin_tenants: Vec::new(),
            max_connections: server::DEFAULT_MAX_CONNECTIONS,
            idle_timeout_ms: server::DEFAULT_IDLE.as_millis() as u64,
            header_read_timeout_ms: server::DEFAULT_HEADER_READ.as_millis() as u64,
            max_streams_per_tenant: 16,
            auth_failure_delay_ms: crate::http::access::DEFAULT_AUTH_FAILURE_DELAY.as_millis() as u64,
            max_labels: 64,
            max_label_key_bytes: 128,
            max_label_value_bytes: 1024,
            max_idempotency_key_bytes: 256,
            max_ordering_key_bytes: 256,
            max_cancel_reason_bytes: 1024,
            max_idempotency_claims: 100_000,
        }
    }
}

impl ApiConfig {
    /// Problems with `[api]`, each naming the full key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_batch == 0 {
            out.push("api.max_batch must be at least 1".to_string());
        }
        if self.max_connections == 0 {
            out.push("api.max_connections must be at least 1".to_string());
        }
        if self.idle_timeout_ms == 0 || self.header_read_timeout_ms == 0 {
            out.push("api.idle_timeout_ms and api.header_read_timeout_ms must be at least 1".to_string());
        }
        // The head deadline is the earlier of the two: a longer header timeout would not apply.
        if self.header_read_timeout_ms > self.idle_timeout_ms {
            out.push(format!(
                "api.header_read_timeout_ms ({}) must not exceed api.idle_timeout_ms ({}): a request head must arrive within both",
                self.header_read_timeout_ms, self.idle_timeout_ms
            ));
        }
        if self.max_streams_per_tenant == 0 {
            out.push("api.max_streams_per_tenant must be at least 1".to_string());
        }
        // Each refused request holds its connection this long: seconds would let a few
        // clients with bad keys hold every connection.
        if self.auth_failure_delay_ms > MAX_AUTH_FAILURE_DELAY_MS {
            out.push(format!("api.auth_failure_delay_ms must be at most {MAX_AUTH_FAILURE_DELAY_MS}"));
        }
        // A zero would refuse every key (a deployment that wants no labels sets api.max_labels = 0).
        for (key, value) in [
            ("api.max_label_key_bytes", self.max_label_key_bytes),
            ("api.max_idempotency_key_bytes", self.max_idempotency_key_bytes),
            ("api.max_ordering_key_bytes", self.max_ordering_key_bytes),
            ("api.max_idempotency_claims", self.max_idempotency_claims),
        ] {
            if value == 0 {
                out.push(format!("{key} must be at least 1"));
            }
        }
        for (i, key) in self.keys.iter().enumerate() {
            if key.sha256.len() != 64 || !key.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                out.push(format!("api.keys[{i}].sha256 must be 64 hex digits (the SHA-256 of the key)"));
            }
            if key.tenant.is_empty() {
                out.push(format!("api.keys[{i}].tenant must not be empty"));
            }
            // Store keys are tenant 0 id: a zero byte would let one tenant's names reach into
            // another's namespace.
            if key.tenant.chars().any(char::is_control) {
                out.push(format!("api.keys[{i}].tenant must not contain control characters"));
            }
        }
        out
    }
}

/// Upper bound of `api.auth_failure_delay_ms`.
pub const MAX_AUTH_FAILURE_DELAY_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("api.listen `{0}` is not a host:port address")]
    BadAddress(String),
    #[error("api.listen `{0}` is not a loopback address and no api.keys are configured: without keys the API only serves this machine")]
    NotLoopback(String),
    #[error("[api]: {0}")]
    Config(String),
    #[error("agents.{agent_type}.input_schema is not a valid JSON Schema: {reason}")]
    Schema { agent_type: String, reason: String },
    #[error("binding {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error("serving the API: {0}")]
    Serve(std::io::Error),
}

/// What handlers share.
pub struct ApiState {
    pub log: Arc<dyn EventLog>,
    pub client: TaskClient,
    pub agents: BTreeMap<String, AgentTypeConfig>,
    pub projection: Arc<Projection>,
    pub config: ApiConfig,
    pub auth: Auth,
    pub schemas: BTreeMap<String, jsonschema::Validator>,
    pub metrics: metrics::Metrics,
    /// Replay and snapshots, when the server manages a projection directory.
    pub admin: Option<admin::AdminContext>,
    /// Cancelled when the server shuts down: ends open event streams.
    pub closing: CancellationToken,
    /// Idempotency keys written by this process that the projection may not show yet.
    pub claims: idempotency::Claims,
    /// Open event streams per tenant.
    pub streams: stream::OpenStreams,
    /// The supervised components of this process (`agentlog dev`), shown on `/readyz`.
    pub components: Option<crate::components::ComponentBoard>,
}

impl ApiState {
    pub fn new(
        log: Arc<dyn EventLog>,
        client: TaskClient,
        agents: BTreeMap<String, AgentTypeConfig>,
        projection: Arc<Projection>,
        config: ApiConfig,
    ) -> Result<ApiState, ApiStartError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ApiStartError::Config(problems.join("; ")));
        }
        let mut schemas = BTreeMap::new();
        for (name, agent) in &agents {
            if let Some(text) = &agent.input_schema {
                let schema: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| ApiStartError::Schema { agent_type: name.clone(), reason: e.to_string() })?;
                let validator = jsonschema::validator_for(&schema).map_err(|e| ApiStartError::Schema { agent_type: name.clone(), reason: e.to_string() })?;
                schemas.insert(name.clone(), validator);
            }
        }
        let auth = Auth::new(&config.access());
        let claims = idempotency::Claims::new(config.max_idempotency_claims);
        Ok(ApiState {
            log,
            client,
            agents,
            projection,
            config,
            auth,
            schemas,
            metrics: metrics::Metrics::new(),
            admin: None,
            closing: CancellationToken::new(),
            claims,
            streams: stream::OpenStreams::default(),
            components: None,
        })
    }
}

impl ApiState {
    /// Whether `tenant` is an admin tenant (`api.admin_tenants`); without keys (loopback only)
    /// every caller is.
    pub fn is_admin(&self, tenant: &str) -> bool {
        !self.auth.keys_configured() || self.config.admin_tenants.iter().any(|t| t == tenant)
    }

    /// Enables `/v1/admin/...` over this projection directory.
    pub fn with_admin(mut self, admin: admin::AdminContext) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Shows these components' states on `/readyz`, which answers 503 while one restarts.
    pub fn with_components(mut self, board: crate::components::ComponentBoard) -> Self {
        self.components = Some(board);
        self
    }
}

/// One route of the API: the method and path it answers, and its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<Arc<ApiState>>,
}

fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, Arc<ApiState>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
    Route { method, path, handler: on(filter, handler) }
}

/// Every route the API serves. `router()` is built from this table alone, and a test in
/// `openapi` compares it with the paths the OpenAPI document describes, so a route cannot be
/// served undocumented nor documented without being served.
pub fn routes() -> Vec<Route> {
    vec![
        route(Method::GET, "/healthz", ops::healthz),
        route(Method::GET, "/readyz", ops::readyz),
        route(Method::GET, "/metrics", ops::metrics),
        route(Method::GET, "/openapi.json", openapi::openapi),
        route(Method::POST, "/v1/tasks", tasks::submit),
        route(Method::GET, "/v1/tasks", tasks::list),
        route(Method::POST, "/v1/tasks/batch", tasks::submit_batch),
        route(Method::GET, "/v1/tasks/{id}", tasks::get),
        route(Method::GET, "/v1/tasks/{id}/outcome", tasks::outcome),
        route(Method::GET, "/v1/tasks/{id}/stream", task_stream::task_stream),
        route(Method::POST, "/v1/tasks/{id}/cancel", tasks::cancel),
        route(Method::POST, "/v1/tasks/{id}/signals/{signal}", signals::signal),
        route(Method::GET, "/v1/agents", reads::agents),
        route(Method::GET, "/v1/agent-types", reads::agent_types),
        route(Method::GET, "/v1/jobs", reads::jobs),
        route(Method::GET, "/v1/jobs/{id}", reads::job),
        route(Method::GET, "/v1/stats", reads::stats),
        route(Method::GET, "/v1/stream/outcomes", stream::outcomes),
        route(Method::GET, "/v1/dlq", tasks::dlq_list),
        route(Method::POST, "/v1/dlq/{id}/resubmit", tasks::dlq_resubmit),
        route(Method::POST, "/v1/admin/replay", admin::replay),
        route(Method::GET, "/v1/admin/replay", admin::replay_status),
        route(Method::POST, "/v1/admin/snapshots", admin::snapshot),
    ]
}

/// The API for a server bound to `bound` (the loopback checks need its port).
pub fn router(state: Arc<ApiState>, max_body_bytes: usize, bound: SocketAddr) -> Router {
    // Routes of one path with different methods are merged by `Router::route`. The
    // dashboard's files are not part of the v1 API (nor of its OpenAPI document).
    let router = routes()
        .into_iter()
        .chain(dashboard::routes())
        .fold(Router::new(), |router, Route { path, handler, .. }| router.route(path, handler))
        // A span per request (or the caller's traceparent passed through): see `traced`.
        .route_layer(axum::middleware::from_fn(traced::trace_request))
        .fallback(ops::not_found);
    let router = match loopback::Guard::for_server(bound, state.auth.keys_configured()) {
        Some(guard) => router.layer(axum::middleware::from_fn_with_state(Arc::new(guard), loopback::refuse_foreign)),
        None => router,
    };
    // Outermost last: refusals (the loopback checks' too) are held, and then counted.
    router
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::slow_refusals))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Binds `config.listen`; a non-loopback address needs API keys.
pub async fn bind(config: &ApiConfig) -> Result<TcpListener, ApiStartError> {
    let address: SocketAddr = config.listen.parse().map_err(|_| ApiStartError::BadAddress(config.listen.clone()))?;
    if !loopback::may_listen(&address, !config.keys.is_empty()) {
        return Err(ApiStartError::NotLoopback(config.listen.clone()));
    }
    server::listen(address).await.map_err(|source| ApiStartError::Bind { address: config.listen.clone(), source })
}

/// Serves until `shutdown`, with the connection limits of `state.config` (see `server`).
/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn serve(listener: TcpListener, state: Arc<ApiState>, max_body_bytes: usize, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ApiStartError>> {
    Box::pin(serving(listener, state, max_body_bytes, shutdown))
}

async fn serving(listener: TcpListener, state: Arc<ApiState>, max_body_bytes: usize, shutdown: CancellationToken) -> Result<(), ApiStartError> {
    let bound = listener.local_addr().map_err(ApiStartError::Serve)?;
    let limits = state.config.access().limits;
    let closing = state.closing.clone();
    let app = router(state.clone(), max_body_bytes, bound);
    // Open event streams end as shutdown starts, or draining would wait for them.
    let end_streams = async {
        shutdown.cancelled().await;
        closing.cancel();
    };
    tokio::join!(server::run(listener, app, limits, shutdown.clone()), end_streams);
    if let Some(admin) = &state.admin {
        admin.finish().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry served without an `[api]` section (tests, benchmarks) gets the same access
    /// rules and connection limits as one served beside a default API.
    #[test]
    fn the_default_access_is_the_default_apis() {
        assert_eq!(ApiConfig::default().access(), Access::default());
    }
}
