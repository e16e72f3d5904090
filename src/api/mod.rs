//! The HTTP API (`/v1`, JSON). This first part submits and cancels tasks, waits for
//! outcomes and handles dead letters; reads of task state come with the projections.
//!
//! Until API keys exist the API binds only to loopback addresses: anything else is refused
//! at start-up, since it would let anyone on the network submit work.

pub mod error;
pub mod tasks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent::outcomes::OutcomeWatch;
use crate::agent::{AgentTypeConfig, TaskClient};
use crate::log::EventLog;

/// `[api]` in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the HTTP API listens on (loopback only until API keys exist).
    pub listen: String,
    /// Longest `wait_ms` a request may ask for.
    pub max_wait_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8080".into(), max_wait_ms: 30_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("api.listen `{0}` is not a host:port address")]
    BadAddress(String),
    #[error("api.listen `{0}` is not a loopback address; without API keys (not built yet) the API only serves this machine")]
    NotLoopback(String),
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
    pub outcomes: Arc<OutcomeWatch>,
    pub config: ApiConfig,
}

pub fn router(state: Arc<ApiState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/tasks", post(tasks::submit))
        .route("/v1/tasks/{id}/outcome", get(tasks::outcome))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/dlq", get(tasks::dlq_list))
        .route("/v1/dlq/{id}/resubmit", post(tasks::dlq_resubmit))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Binds `config.listen` (loopback only).
pub async fn bind(config: &ApiConfig) -> Result<TcpListener, ApiStartError> {
    let address: SocketAddr = config.listen.parse().map_err(|_| ApiStartError::BadAddress(config.listen.clone()))?;
    if !address.ip().is_loopback() {
        return Err(ApiStartError::NotLoopback(config.listen.clone()));
    }
    TcpListener::bind(address).await.map_err(|source| ApiStartError::Bind { address: config.listen.clone(), source })
}

pub async fn serve(listener: TcpListener, state: Arc<ApiState>, max_body_bytes: usize, shutdown: CancellationToken) -> Result<(), ApiStartError> {
    axum::serve(listener, router(state, max_body_bytes)).with_graceful_shutdown(shutdown.cancelled_owned()).await.map_err(ApiStartError::Serve)
}
