//! `POST /v1/tasks`, `GET /v1/tasks/{id}/outcome`, `POST /v1/tasks/{id}/cancel`,
//! `GET /v1/dlq`, `POST /v1/dlq/{id}/resubmit`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use crate::agent::client::{ClientError, new_id};
use crate::agent::dlq;
use crate::agent::outcomes::outcome_json;
use crate::events::{Lane, TaskSubmitted, TimestampMicros};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    pub agent_type: String,
    pub input: Value,
    #[serde(default)]
    pub lane: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub ordering_key: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Start no earlier than this many ms from now.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Expire unless started within this many ms from now.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub max_attempts: Option<i32>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub struct Wait {
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

fn wait_of(state: &ApiState, wait: &Wait) -> Option<Duration> {
    wait.wait_ms.filter(|ms| *ms > 0).map(|ms| Duration::from_millis(ms.min(state.config.max_wait_ms)))
}

fn client_error(e: ClientError) -> ApiError {
    match e {
        ClientError::Invalid { field, reason } => ApiError::bad_field(field, format!("{field} {reason}")),
        other => ApiError::unavailable(other.to_string()),
    }
}

pub async fn submit(State(state): State<Arc<ApiState>>, Query(wait): Query<Wait>, body: Result<Json<SubmitTask>, JsonRejection>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(request) = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError { status: StatusCode::PAYLOAD_TOO_LARGE, code: "payload_too_large", message: e.body_text(), field: Some("body".into()) },
        _ => ApiError::bad_field("body", e.body_text()),
    })?;
    let Some(declared) = state.agents.get(&request.agent_type) else {
        let known: Vec<&str> = state.agents.keys().map(String::as_str).collect();
        return Err(ApiError::bad_field("agent_type", format!("unknown agent type `{}`; known: {}", request.agent_type, known.join(", "))));
    };
    let lane_name = request.lane.as_deref().unwrap_or("normal");
    let Some(lane) = Lane::ALL.into_iter().find(|l| l.as_str() == lane_name) else {
        return Err(ApiError::bad_field("lane", format!("`{lane_name}` is not a lane; lanes: critical, high, normal, low")));
    };
    if !declared.lanes.iter().any(|l| l == lane.as_str()) {
        return Err(ApiError::bad_field("lane", format!("agent type `{}` does not read lane `{lane}`; its lanes: {}", request.agent_type, declared.lanes.join(", "))));
    }
    if request.deadline_ms == Some(0) {
        return Err(ApiError::bad_field("deadline_ms", "deadline_ms must be greater than 0 (a deadline now has already passed)"));
    }
    if request.max_attempts.is_some_and(|n| n < 1) {
        return Err(ApiError::bad_field("max_attempts", "max_attempts must be at least 1"));
    }
    let task_id = request.task_id.clone().unwrap_or_else(|| new_id("task"));
    let tenant = request.tenant.clone().unwrap_or_else(|| "default".into());
    let input = serde_json::to_vec(&request.input).map_err(|e| ApiError::bad_field("input", e.to_string()))?;
    let mut task = TaskSubmitted::new(state.client.meta(&tenant), &task_id, &request.agent_type, lane, input);
    let now = TimestampMicros::now().0;
    task.ordering_key = request.ordering_key;
    task.idempotency_key = request.idempotency_key;
    task.not_before = request.delay_ms.map(|ms| TimestampMicros(now + ms as i64 * 1000));
    task.deadline = request.deadline_ms.map(|ms| TimestampMicros(now + ms as i64 * 1000));
    task.max_attempts = request.max_attempts.unwrap_or(0);
    task.labels = request.labels;
    let submitted = state.client.submit(&task).await.map_err(client_error)?;
    let mut body = json!({
        "task_id": submitted.task_id, "topic": submitted.topic,
        "partition": submitted.position.partition, "offset": submitted.position.offset, "delayed": submitted.delayed,
    });
    if let Some(wait) = wait_of(&state, &wait)
        && let Some(outcome) = state.outcomes.wait(&task_id, wait).await
    {
        body["outcome"] = outcome_json(&outcome);
        return Ok((StatusCode::OK, Json(body)));
    }
    Ok((StatusCode::ACCEPTED, Json(body)))
}

pub async fn outcome(State(state): State<Arc<ApiState>>, Path(id): Path<String>, Query(wait): Query<Wait>) -> Result<Json<Value>, ApiError> {
    let found = match wait_of(&state, &wait) {
        Some(wait) => state.outcomes.wait(&id, wait).await,
        None => state.outcomes.get(&id),
    };
    found.map(|o| Json(outcome_json(&o))).ok_or_else(|| ApiError::not_found("no_outcome", format!("no outcome for task `{id}` (yet)")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
}

pub async fn cancel(State(state): State<Arc<ApiState>>, Path(id): Path<String>, body: Option<Json<Cancel>>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Cancel { reason, tenant } = body.map(|Json(c)| c).unwrap_or_default();
    state.client.cancel(&id, tenant.as_deref().unwrap_or("default"), reason).await.map_err(client_error)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "task_id": id, "cancel_requested": true }))))
}

pub async fn dlq_list(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let letters = dlq::list(&state.log, &state.client).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    let items: Vec<Value> = letters
        .iter()
        .map(|l| {
            json!({
                "partition": l.partition, "offset": l.offset,
                "task_id": l.task.as_ref().map(|t| t.task_id.clone()),
                "agent_type": l.task.as_ref().map(|t| t.agent_type.clone()),
                "attempts": l.attempts, "error_kind": l.error_kind, "reason": l.reason, "source": l.source,
            })
        })
        .collect();
    Ok(Json(json!({ "dead_letters": items })))
}

pub async fn dlq_resubmit(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let letters = dlq::list(&state.log, &state.client).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    let letter = dlq::find(&letters, &id).map_err(|e| ApiError::not_found("no_dead_letter", e.to_string()))?;
    let submitted = dlq::resubmit(&state.client, letter).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "task_id": submitted.task_id, "topic": submitted.topic, "offset": submitted.position.offset }))))
}
