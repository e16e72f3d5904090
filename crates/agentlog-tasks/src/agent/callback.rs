//! The callback of delegating `http` and `exec` attempts (agent protocol §6,
//! `docs/agent-protocol.md`): a small HTTP server in the worker through which an agent in any
//! language submits sub-tasks and awaits their outcomes, as a builtin agent does through its
//! [`Delegate`].
//!
//! Each attempt of a delegating type gets a URL holding a random 128-bit token of its own
//! (`<base>/v1/attempts/<token>`), valid while the attempt runs: the token is the attempt's
//! [`Delegate`], so an agent reaches only its own task's tenant, lane and children, and a
//! token that leaked is worthless once its attempt ended. No task data is in the URL.
//!
//! - `POST <url>/children` `{"n", "agent_type", "input", "content_type"?, "labels"?}` → 202
//!   `{"task_id"}`: child `n` of the task (`<parent id>.<n>`), submitted once however often
//!   the parent's attempts ask (see [`Delegate::submit_child`]).
//! - `GET <url>/children/<n>/outcome?wait_ms=` → 200 with the child's outcome once it has one,
//!   202 `{"status": "pending"}` when `wait_ms` (at most [`MAX_WAIT`]) passed first.
//!
//! Errors are the API's JSON shape (`{"error": {"code", "message", "field"}}`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::delegate::{Child, Delegate, DelegateError};
use super::runtime::http::is_json;
use super::runtime::valid_name;
use crate::events::AnyEvent;
use agentlog_events::http::error::ApiError;
use agentlog_events::http::server::{self, Limits};

/// The longest an outcome request is held.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The most children one task may have (`n` below this).
pub const MAX_CHILDREN: u32 = 100_000;

/// `[worker.callback]`: where a worker of a delegating `http`/`exec` type serves its
/// attempts' callbacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackConfig {
    /// The address to listen on; port 0 takes a free one. Loopback by default: agents on
    /// other hosts need it reachable (the tokens are the access control).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The base URL agents are given, when they reach the worker by another name than the
    /// bound address (a container's service name, say); default `http://<bound address>`.
    #[serde(default)]
    pub url: Option<String>,
    /// The agent types a child may be of (the configured catalog), when the worker knows
    /// them: another name is refused at once (404 `unknown_agent_type`) instead of being
    /// written to a lane topic that does not exist. Not configuration: the worker sets it.
    #[serde(skip)]
    pub agent_types: Option<Arc<BTreeSet<String>>>,
}

fn default_listen() -> String {
    "127.0.0.1:0".to_string()
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig { listen: default_listen(), url: None, agent_types: None }
    }
}

/// The running callback server and the attempts it serves.
pub struct Callbacks {
    base: String,
    agent_types: Option<Arc<BTreeSet<String>>>,
    attempts: Mutex<HashMap<String, Delegate>>,
    stop: CancellationToken,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks").field("base", &self.base).finish()
    }
}

/// An attempt's registration: its URL, forgotten when this is dropped (the attempt ended).
pub struct Registration {
    pub url: String,
    token: String,
    callbacks: Arc<Callbacks>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.callbacks.attempts.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.token);
    }
}

impl Callbacks {
    /// Binds `config.listen` and serves until [`Callbacks::stop`].
    pub async fn start(config: &CallbackConfig) -> std::io::Result<Arc<Callbacks>> {
        let listener = server::listen(config.listen.as_str()).await?;
        let bound = listener.local_addr()?;
        let base = config.url.clone().unwrap_or_else(|| format!("http://{bound}")).trim_end_matches('/').to_string();
        let callbacks = Arc::new(Callbacks {
            base,
            agent_types: config.agent_types.clone(),
            attempts: Mutex::default(),
            stop: CancellationToken::new(),
            server: Mutex::default(),
        });
        let app = Router::new()
            .route("/v1/attempts/{token}/children", post(submit))
            .route("/v1/attempts/{token}/children/{n}/outcome", get(outcome))
            .with_state(callbacks.clone());
        let limits = Limits { drain: Duration::from_secs(1), ..Limits::default() };
        let task = tokio::spawn(server::run(listener, app, limits, callbacks.stop.clone()));
        *callbacks.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        tracing::info!(%bound, base = %callbacks.base, "serving attempt callbacks");
        Ok(callbacks)
    }

    /// Gives an attempt its callback URL.
    pub fn register(self: &Arc<Self>, delegate: Delegate) -> Registration {
        let token = format!("{:032x}", rand::random::<u128>());
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).insert(token.clone(), delegate);
        Registration { url: format!("{}/v1/attempts/{token}", self.base), token, callbacks: self.clone() }
    }

    /// Stops serving (requests in progress get a second) and waits for the server.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "the callback server ended abnormally");
        }
    }

    fn attempt(&self, token: &str) -> Result<Delegate, ApiError> {
        self.attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no_attempt", "no running attempt has this callback (it ended, or never was)"))
    }
}

/// A child to submit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChildRequest {
    n: u32,
    agent_type: String,
    input: Value,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    labels: HashMap<String, String>,
}

async fn submit(State(callbacks): State<Arc<Callbacks>>, Path(token): Path<String>, body: Bytes) -> Response {
    answer(submitted(&callbacks, &token, &body).await.map(|task_id| (StatusCode::ACCEPTED, Json(json!({ "task_id": task_id })))))
}

async fn submitted(callbacks: &Callbacks, token: &str, body: &[u8]) -> Result<String, ApiError> {
    let delegate = callbacks.attempt(token)?;
    let request: ChildRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_field("body", format!("the body is not a child ({{\"n\", \"agent_type\", \"input\", \"content_type\", \"labels\"}}): {e}"))
    })?;
    if request.n >= MAX_CHILDREN {
        return Err(ApiError::bad_field("n", format!("n is {}; a task has at most {MAX_CHILDREN} children", request.n)));
    }
    // Agent type names are what lane topic names are made of.
    if !valid_name(&request.agent_type) {
        return Err(ApiError::bad_field(
            "agent_type",
            format!("`{}` is not an agent type name", crate::agent::runtime::head_text(request.agent_type.as_bytes(), 100)),
        ));
    }
    if let Some(known) = &callbacks.agent_types
        && !known.contains(&request.agent_type)
    {
        let names: Vec<&str> = known.iter().take(20).map(String::as_str).collect();
        let message = format!("no agent type `{}` (known: {}{})", request.agent_type, names.join(", "), if known.len() > 20 { ", …" } else { "" });
        return Err(ApiError { field: Some("agent_type".into()), ..ApiError::not_found("unknown_agent_type", message) });
    }
    let content_type = request.content_type.unwrap_or_else(|| "application/json".to_string());
    let input = match (is_json(&content_type), request.input) {
        (true, input) => input.to_string().into_bytes(),
        (false, Value::String(text)) => text.into_bytes(),
        (false, _) => return Err(ApiError::bad_field("input", format!("input must be a string for content type `{content_type}`"))),
    };
    let child = Child { n: request.n as usize, agent_type: request.agent_type, input, content_type, labels: request.labels };
    delegate.submit_child(child).await.map_err(|error| match error {
        DelegateError::Submit(e) if e.rejects_record() => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string()),
        DelegateError::Submit(e) if e.retryable() => ApiError::unavailable(e.to_string()),
        other => ApiError::internal(other.to_string()),
    })
}

#[derive(Debug, Deserialize)]
struct Wait {
    #[serde(default)]
    wait_ms: Option<u64>,
}

async fn outcome(State(callbacks): State<Arc<Callbacks>>, Path((token, n)): Path<(String, String)>, wait: Result<Query<Wait>, QueryRejection>) -> Response {
    let found = async {
        let delegate = callbacks.attempt(&token)?;
        let n: u32 = n.parse().ok().filter(|n| *n < MAX_CHILDREN).ok_or_else(|| ApiError::bad_field("n", format!("`{n}` is not a child number")))?;
        let Query(wait) = wait.map_err(|e| ApiError::bad_field("wait_ms", e.body_text()))?;
        let wait = wait.wait_ms.map_or(Duration::ZERO, |ms| Duration::from_millis(ms).min(MAX_WAIT));
        let child_id = delegate.child_id(n as usize);
        Ok::<_, ApiError>(match delegate.outcome(&child_id, wait).await {
            Ok(event) => (StatusCode::OK, Json(outcome_json(&child_id, &event))),
            Err(_) => (StatusCode::ACCEPTED, Json(json!({ "task_id": child_id, "status": "pending" }))),
        })
    }
    .await;
    answer(found)
}

/// A child's outcome as the protocol shows it.
fn outcome_json(task_id: &str, event: &AnyEvent) -> Value {
    match event {
        AnyEvent::TaskCompleted(e) => {
            let output = if is_json(&e.content_type) {
                serde_json::from_slice(&e.output).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&e.output).into_owned()))
            } else {
                Value::String(String::from_utf8_lossy(&e.output).into_owned())
            };
            json!({ "task_id": task_id, "status": "completed", "output": output, "content_type": e.content_type, "attempt": e.attempt })
        }
        AnyEvent::TaskFailed(e) => json!({ "task_id": task_id, "status": "failed", "error_kind": e.error_kind, "message": e.message }),
        AnyEvent::TaskDeadLettered(e) => json!({ "task_id": task_id, "status": "dead_lettered", "error_kind": e.reason, "message": e.last_error }),
        AnyEvent::TaskCancelled(e) => json!({ "task_id": task_id, "status": "cancelled", "error_kind": "cancelled", "message": e.reason }),
        AnyEvent::TaskExpired(_) => {
            json!({ "task_id": task_id, "status": "expired", "error_kind": "expired", "message": "its deadline passed before it started" })
        }
        other => json!({ "task_id": task_id, "status": other.name() }),
    }
}

fn answer(result: Result<(StatusCode, Json<Value>), ApiError>) -> Response {
    match result {
        Ok(ok) => ok.into_response(),
        Err(error) => error.into_response(),
    }
}
