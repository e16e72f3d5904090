//! `POST /v1/tasks/{id}/signals/{signal}`: a signal for a task that waits for one (agent
//! protocol §5, `docs/agent-protocol.md`). The answer is decided from the projection, the
//! write is `TaskSignalled` on `timers`; the supervisor resumes the task when it reads it.
//! The projection may lag the log by milliseconds: a task that resumed a moment ago still
//! shows `waiting`, its signal is accepted, and the supervisor ignores it (the first signal or
//! timeout in log order wins), which is what the 202's wording promises.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::auth::Tenant;
use super::tasks::client_error;
use super::{ApiState, store_failed};
use crate::agent::client::new_id;
use crate::agent::runtime::valid_name;
use crate::http::error::ApiError;
use crate::projection::views::TaskStatus;

/// The largest payload a signal carries, as JSON text: as large as a checkpoint, which is
/// what a resumed attempt receives beside it.
pub const MAX_SIGNAL_PAYLOAD_BYTES: usize = 256 * 1024;

/// The longest `signal_id`.
pub const MAX_SIGNAL_ID_BYTES: usize = 256;

/// How long a signal waits for a task it cannot see yet (projection behind).
const LOOKUP: Duration = Duration::from_secs(2);

/// How long an accepted signal waits for the projection to show it before answering.
const READ_YOUR_WRITE: Duration = Duration::from_secs(2);

/// A signal's body; both fields optional, as is the body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendSignal {
    /// The sender's id (1 to 256 bytes): a second signal with the same id is the same signal
    /// and answers 200 `duplicate`. Without it every call is a new signal.
    #[serde(default)]
    pub signal_id: Option<String>,
    /// Any JSON, at most 256 KiB as text: the resumed attempt receives it.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignalAnswer {
    pub task_id: String,
    pub signal: String,
    pub signal_id: String,
    /// `accepted` (202): on the log, it resumes the task unless a timeout or another signal
    /// did first; `duplicate` (200): this task already received a signal with this id.
    pub status: &'static str,
}

#[utoipa::path(post, path = "/v1/tasks/{id}/signals/{signal}", tag = "tasks",
    params(("id" = String, Path, description = "task id"), ("signal" = String, Path, description = "the signal's name, [a-z0-9_.-]{1,64}")),
    request_body(content = SendSignal, description = "optional id and payload"),
    responses(
        (status = 202, description = "accepted: the task resumes with it unless something resumed it first", body = SignalAnswer),
        (status = 200, description = "a signal with this id was received before", body = SignalAnswer),
        (status = 400, description = "a bad name, signal id or body (the error names the field)"),
        (status = 404, description = "no such task for this tenant"),
        (status = 409, description = "the task does not wait (`not_waiting`, detail.status) or waits for another signal (`unexpected_signal`, detail.waiting_for)"),
        (status = 413, description = "the payload is over 256 KiB"),
        (status = 401)))]
pub async fn signal(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path((id, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<SignalAnswer>), ApiError> {
    // The body is optional, so it is read as bytes: empty is no id and no payload.
    let SendSignal { signal_id, payload } = if body.iter().all(u8::is_ascii_whitespace) {
        SendSignal::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_field("body", format!("the body is not a signal ({{\"signal_id\", \"payload\"}}): {e}")))?
    };
    if !valid_name(&name) {
        return Err(ApiError::bad_field("signal", format!("signal name `{}` is not 1 to 64 of a-z, 0-9, `_`, `.`, `-`", shown(&name))));
    }
    if let Some(given) = &signal_id
        && (given.is_empty() || given.len() > MAX_SIGNAL_ID_BYTES)
    {
        return Err(ApiError::bad_field("signal_id", format!("signal_id is {} bytes; it must be 1 to {MAX_SIGNAL_ID_BYTES}", given.len())));
    }
    let payload = payload.filter(|p| !p.is_null()).map(|p| p.to_string());
    if let Some(text) = &payload
        && text.len() > MAX_SIGNAL_PAYLOAD_BYTES
    {
        let message = format!("the payload is {} bytes as JSON; the limit is {MAX_SIGNAL_PAYLOAD_BYTES}", text.len());
        return Err(ApiError { field: Some("payload".into()), ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message) });
    }
    let deadline = tokio::time::Instant::now() + LOOKUP;
    let view = loop {
        match state.projection.store().task(&tenant, &id).map_err(store_failed)? {
            Some(view) => break view,
            None if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            None => return Err(ApiError::not_found("no_task", format!("no task `{}`", shown(&id)))),
        }
    };
    if let Some(given) = &signal_id
        && view.signals.iter().any(|s| &s.signal_id == given)
    {
        return Ok((StatusCode::OK, Json(SignalAnswer { task_id: id, signal: name, signal_id: given.clone(), status: "duplicate" })));
    }
    let waiting = view.waiting_for.as_ref().filter(|_| view.status == TaskStatus::Waiting);
    let Some(waiting) = waiting else {
        let message = format!("task `{}` is {}, not waiting for a signal", shown(&id), view.status);
        return Err(ApiError::new(StatusCode::CONFLICT, "not_waiting", message).with_detail(json!({ "status": view.status })));
    };
    if waiting.signal != name {
        let message = format!("task `{}` waits for signal `{}`, not `{}`", shown(&id), waiting.signal, shown(&name));
        return Err(
            ApiError::new(StatusCode::CONFLICT, "unexpected_signal", message).with_detail(json!({ "status": view.status, "waiting_for": waiting.signal }))
        );
    }
    let signal_id = signal_id.unwrap_or_else(|| new_id("sig"));
    let written = state.client.signal(&tenant, &id, &name, &signal_id, payload).await.map_err(client_error)?;
    // Read your writes: a retry of this signal right after the answer finds it in the view
    // (200 `duplicate`), and so does a read of the task. Not waited for past the bound: the
    // signal is on the log either way.
    let timers = state.client.topics().timers();
    state.projection.wait_applied(&timers, written.partition, written.offset, READ_YOUR_WRITE).await;
    Ok((StatusCode::ACCEPTED, Json(SignalAnswer { task_id: id, signal: name, signal_id, status: "accepted" })))
}

/// The start of a caller's text, for a message.
fn shown(text: &str) -> String {
    crate::agent::runtime::head_text(text.as_bytes(), 200)
}
