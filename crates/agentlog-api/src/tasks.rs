//! Tasks over HTTP: submit (single, batch, idempotency key, wait), get (read your writes with
//! `after`), list with filters and cursor pagination, outcome, cancel; dead letters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::answers;
use super::auth::Tenant;
use super::idempotency;
use super::{ApiConfig, ApiState, store_failed};
use crate::agent::client::{ClientError, MAX_DEADLINE_MS, MAX_DELAY, Submitted, after_ms, new_id};
use crate::agent::dlq;
use crate::events::{Lane, TaskSubmitted, TimestampMicros};
use crate::http::error::ApiError;
use crate::log::{LogError, TopicPartition};
use crate::projection::store::{LetterPosition, unhex};
use crate::projection::views::{TaskStatus, TaskView};
use crate::projection::{Projection, TaskFilter};

/// A task to run.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"agent_type": "echo", "input": {"text": "hello"}})))]
pub struct SubmitTask {
    /// A declared agent type (`GET /v1/agent-types`).
    pub agent_type: String,
    /// The agent's input (JSON); checked against the type's input schema when it has one.
    #[schema(value_type = Object)]
    pub input: Value,
    /// critical, high, normal (default) or low; one of the type's lanes.
    #[serde(default)]
    pub lane: Option<String>,
    /// Your id for the task (default: generated): 1 to 200 characters, no control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub task_id: Option<String>,
    /// Tasks with the same key run one at a time, in order; at most
    /// `api.max_ordering_key_bytes` (default 256) bytes.
    #[serde(default)]
    pub ordering_key: Option<String>,
    /// A second submit with the same key returns the original task instead of a new one; at
    /// most `api.max_idempotency_key_bytes` (default 256) bytes.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Start no earlier than this many ms from now: at most 7 days (the retention of the
    /// timers topic).
    #[serde(default)]
    #[schema(maximum = 604800000)]
    pub delay_ms: Option<u64>,
    /// Expire unless started within this many ms from now (at most 100 years).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3153600000000.0)]
    pub deadline_ms: Option<u64>,
    /// Attempts before the task is dead-lettered (default: the type's retry policy).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_attempts: Option<i32>,
    /// At most `api.max_labels` (default 64), keys of at most `api.max_label_key_bytes` (128)
    /// bytes, values of at most `api.max_label_value_bytes` (1024).
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    pub tasks: Vec<SubmitTask>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Wait {
    /// Wait up to this many ms for the outcome (bounded by `api.max_wait_ms`).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetTask {
    /// A position a submit returned (`topic:partition:offset`): answer only once the
    /// projection has applied it (read your writes), waiting up to `wait_ms` (default 5000).
    #[serde(default)]
    #[param(pattern = r"^.+:[0-9]+:[0-9]+$")]
    pub after: Option<String>,
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTasks {
    /// pending, queued, scheduled, running, retrying, completed, failed, dead_lettered,
    /// cancelled or expired.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub agent_type: Option<String>,
    /// Only tasks created at or after this time (ms since the epoch).
    #[serde(default)]
    pub created_after_ms: Option<i64>,
    /// Page size, 1 to 500 (default 50).
    #[serde(default)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// At most `api.max_cancel_reason_bytes` (default 1024) bytes.
    #[serde(default)]
    pub reason: Option<String>,
}

fn wait_of(state: &ApiState, wait_ms: Option<u64>) -> Option<Duration> {
    wait_ms.filter(|ms| *ms > 0).map(|ms| Duration::from_millis(ms.min(state.config.max_wait_ms)))
}

pub(crate) fn client_error(e: ClientError) -> ApiError {
    match e {
        ClientError::Invalid { field, reason } => ApiError::bad_field(field, format!("{field} {reason}")),
        // Too large for the log is the request's fault, not a passing one: 413, not 503.
        e @ (ClientError::TooLarge { .. } | ClientError::Log(LogError::RecordTooLarge { .. })) => {
            ApiError { field: Some("input".into()), ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string()) }
        }
        e if e.retryable() => ApiError::unavailable(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

pub fn body_error(e: JsonRejection) -> ApiError {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError { field: Some("body".into()), ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.body_text()) }
        }
        _ => ApiError::bad_field("body", e.body_text()),
    }
}

pub fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_field("query", e.body_text())
}

/// Checks a submit request and turns it into the command; errors name the field, prefixed
/// with `prefix` in batches (`tasks[3].lane`).
fn validate(state: &ApiState, tenant: &str, request: SubmitTask, prefix: &str) -> Result<TaskSubmitted, ApiError> {
    let field = |name: &str| format!("{prefix}{name}");
    let Some(declared) = state.agents.get(&request.agent_type) else {
        let known: Vec<&str> = state.agents.keys().map(String::as_str).collect();
        return Err(ApiError::bad_field(field("agent_type"), format!("unknown agent type `{}`; known: {}", request.agent_type, known.join(", "))));
    };
    let lane = match request.lane.as_deref() {
        None => Lane::Normal,
        Some(name) => name.parse::<Lane>().map_err(|e| ApiError::bad_field(field("lane"), e.to_string()))?,
    };
    if !declared.reads(lane) {
        return Err(ApiError::bad_field(
            field("lane"),
            format!("agent type `{}` does not read lane `{lane}`; its lanes: {}", request.agent_type, declared.lane_list()),
        ));
    }
    if request.deadline_ms == Some(0) {
        return Err(ApiError::bad_field(field("deadline_ms"), "deadline_ms must be greater than 0 (a deadline now has already passed)"));
    }
    if request.max_attempts.is_some_and(|n| n < 1) {
        return Err(ApiError::bad_field(field("max_attempts"), "max_attempts must be at least 1"));
    }
    let now = TimestampMicros::now();
    let delay_limit = MAX_DELAY.as_millis() as u64;
    let not_before = match request.delay_ms {
        Some(ms) if ms > delay_limit => {
            return Err(ApiError::bad_field(field("delay_ms"), format!("delay_ms must be at most {delay_limit} (7 days, the retention of the timers topic)")));
        }
        Some(ms) => Some(after_ms(now, ms).ok_or_else(|| ApiError::bad_field(field("delay_ms"), "delay_ms is past the largest timestamp"))?),
        None => None,
    };
    let deadline = match request.deadline_ms {
        Some(ms) if ms > MAX_DEADLINE_MS => {
            return Err(ApiError::bad_field(field("deadline_ms"), format!("deadline_ms must be at most {MAX_DEADLINE_MS} (100 years)")));
        }
        Some(ms) => Some(after_ms(now, ms).ok_or_else(|| ApiError::bad_field(field("deadline_ms"), "deadline_ms is past the largest timestamp"))?),
        None => None,
    };
    check_caps(&state.config, &request, &field)?;
    if let Some(id) = &request.task_id
        && (id.is_empty() || id.len() > 200 || id.chars().any(char::is_control))
    {
        return Err(ApiError::bad_field(field("task_id"), "task_id must be 1 to 200 characters without control characters"));
    }
    if let Some(validator) = state.schemas.get(&request.agent_type)
        && let Err(error) = validator.validate(&request.input)
    {
        let at = error.instance_path().to_string();
        let path = if at.is_empty() { field("input") } else { format!("{}{at}", field("input")) };
        return Err(ApiError::bad_field(path, format!("input does not match the input schema of agent type `{}`: {error}", request.agent_type)));
    }
    let task_id = request.task_id.clone().unwrap_or_else(|| new_id("task"));
    let input = serde_json::to_vec(&request.input).map_err(|e| ApiError::bad_field(field("input"), e.to_string()))?;
    let mut task = TaskSubmitted::new(state.client.meta(tenant), &task_id, &request.agent_type, lane, input);
    task.ordering_key = request.ordering_key;
    task.idempotency_key = request.idempotency_key;
    task.not_before = not_before;
    task.deadline = deadline;
    task.max_attempts = request.max_attempts.unwrap_or(0);
    task.labels = request.labels;
    Ok(task)
}

/// The size caps of `[api]` on what a task keeps for its whole life (labels, idempotency
/// key); errors name the field and the config key.
fn check_caps(config: &ApiConfig, request: &SubmitTask, field: &dyn Fn(&str) -> String) -> Result<(), ApiError> {
    if let Some(key) = &request.idempotency_key
        && key.len() > config.max_idempotency_key_bytes
    {
        return Err(ApiError::bad_field(
            field("idempotency_key"),
            format!("idempotency_key is {} bytes; the limit is {} (api.max_idempotency_key_bytes)", key.len(), config.max_idempotency_key_bytes),
        ));
    }
    if let Some(key) = &request.ordering_key
        && key.len() > config.max_ordering_key_bytes
    {
        return Err(ApiError::bad_field(
            field("ordering_key"),
            format!("ordering_key is {} bytes; the limit is {} (api.max_ordering_key_bytes)", key.len(), config.max_ordering_key_bytes),
        ));
    }
    if request.labels.len() > config.max_labels {
        return Err(ApiError::bad_field(field("labels"), format!("{} labels; the limit is {} (api.max_labels)", request.labels.len(), config.max_labels)));
    }
    // Sorted, so the label named is the same whichever order the map iterates in.
    let mut labels: Vec<(&String, &String)> = request.labels.iter().collect();
    labels.sort_unstable();
    for (key, value) in labels {
        if key.len() > config.max_label_key_bytes {
            // The key itself may be huge: the message names its start only.
            let start = crate::agent::runtime::head_text(key.as_bytes(), 32);
            return Err(ApiError::bad_field(
                field("labels"),
                format!("label key `{start}` is {} bytes; the limit is {} (api.max_label_key_bytes)", key.len(), config.max_label_key_bytes),
            ));
        }
        if value.len() > config.max_label_value_bytes {
            return Err(ApiError::bad_field(
                field(&format!("labels.{key}")),
                format!("label `{key}` is {} bytes; the limit is {} (api.max_label_value_bytes)", value.len(), config.max_label_value_bytes),
            ));
        }
    }
    Ok(())
}

/// The task an idempotency key already names, if any.
fn existing(state: &ApiState, tenant: &str, task: &TaskSubmitted) -> Result<Option<TaskView>, ApiError> {
    let Some(key) = &task.idempotency_key else { return Ok(None) };
    let store = state.projection.store();
    let Some(id) = store.task_by_idempotency_key(tenant, key).map_err(store_failed)? else { return Ok(None) };
    store.task(tenant, &id).map_err(store_failed)
}

fn check_quota(state: &ApiState, tenant: &str, adding: u64) -> Result<(), ApiError> {
    if state.config.max_in_flight == 0 {
        return Ok(());
    }
    let open = state.projection.store().tenant_counters(tenant).map_err(store_failed)?.open();
    if open + adding > state.config.max_in_flight {
        return Err(ApiError::too_many(
            "quota_exceeded",
            format!("tenant `{tenant}` has {open} open tasks; the limit is {} (api.max_in_flight)", state.config.max_in_flight),
            1,
        ));
    }
    Ok(())
}

/// Waits for the outcome of `task_id` (of `tenant`) in the projection.
pub async fn wait_outcome(projection: &Projection, tenant: &str, task_id: &str, timeout: Duration) -> Result<Option<TaskView>, ApiError> {
    let mut outcomes = projection.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(view) = projection.store().task(tenant, task_id).map_err(store_failed)?
            && view.is_terminal()
        {
            return Ok(Some(view));
        }
        loop {
            match tokio::time::timeout_at(deadline, outcomes.recv()).await {
                Err(_) => return Ok(None),
                // Its view is in the store by now: read it there.
                Ok(Ok(notice)) if notice.task_id == task_id && notice.tenant == tenant => break,
                Ok(Ok(_)) => continue,
                // Missed notices or a closed stream: look in the store again.
                Ok(Err(_)) => break,
            }
        }
    }
}

#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", params(Wait), request_body = SubmitTask,
    responses((status = 202, description = "accepted; `position` is where it was written", body = super::answers::Submitted), (status = 200, description = "accepted and finished within wait_ms, or an earlier task with the same idempotency key", body = super::answers::Submitted),
        (status = 400, description = "a field is wrong (the error names it)"), (status = 401), (status = 413), (status = 429),
        (status = 503, description = "the log is unavailable, or `idempotency_claims_full`: retry")))]
pub async fn submit(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    wait: Result<Query<Wait>, QueryRejection>,
    body: Result<Json<SubmitTask>, JsonRejection>,
) -> Result<(StatusCode, Json<answers::Submitted>), ApiError> {
    let Query(wait) = wait.map_err(query_error)?;
    let Json(request) = body.map_err(body_error)?;
    let task = validate(&state, &tenant, request, "")?;
    // A keyed submit holds its key's claim until written, so a concurrent one with the same
    // key finds this task instead of writing a second (the projection may not show it yet).
    let mut claim = match &task.idempotency_key {
        Some(key) => Some(state.claims.claim(&tenant, key, || state.projection.applied()).await.map_err(claims_full)?),
        None => None,
    };
    if let Some(id) = claim.as_ref().and_then(|c| c.written.as_ref()).map(|w| &w.task_id) {
        let view = state.projection.store().task(&tenant, id).map_err(store_failed)?;
        return Ok((StatusCode::OK, Json(answers::Submitted::duplicate(id, view.as_ref()))));
    }
    if let Some(view) = existing(&state, &tenant, &task)? {
        return Ok((StatusCode::OK, Json(answers::Submitted::duplicate(&view.task_id, Some(&view)))));
    }
    check_quota(&state, &tenant, 1)?;
    let submitted = state.client.submit(&task).await.map_err(client_error)?;
    // Where an acknowledged submit was written, to compare with the log when a task is missed.
    tracing::debug!(task_id = %task.task_id, topic = %submitted.topic, partition = submitted.position.partition, offset = submitted.position.offset, "submit written");
    if let Some(claim) = claim.as_mut() {
        claim.written = Some(written(&task.task_id, &submitted, Instant::now()));
    }
    drop(claim);
    let mut body = answers::Submitted::written(&submitted);
    if let Some(wait) = wait_of(&state, wait.wait_ms)
        && let Some(view) = wait_outcome(&state.projection, &tenant, &task.task_id, wait).await?
    {
        body.outcome = view.outcome.as_ref().map(answers::Outcome::from);
        body.task = Some(answers::Task::from(&view));
        return Ok((StatusCode::OK, Json(body)));
    }
    Ok((StatusCode::ACCEPTED, Json(body)))
}

#[utoipa::path(post, path = "/v1/tasks/batch", tag = "tasks", request_body = SubmitBatch,
    responses((status = 202, description = "all accepted, in order", body = super::answers::SubmittedBatch), (status = 400, description = "a task is wrong (`tasks[i].field`); none was written"), (status = 401), (status = 413), (status = 429),
        (status = 503, description = "the log is unavailable, or `idempotency_claims_full`: retry")))]
pub async fn submit_batch(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    body: Result<Json<SubmitBatch>, JsonRejection>,
) -> Result<(StatusCode, Json<answers::SubmittedBatch>), ApiError> {
    let Json(batch) = body.map_err(body_error)?;
    if batch.tasks.is_empty() || batch.tasks.len() > state.config.max_batch {
        return Err(ApiError::bad_field(
            "tasks",
            format!("a batch holds 1 to {} tasks (api.max_batch); this one has {}", state.config.max_batch, batch.tasks.len()),
        ));
    }
    // Everything is checked before anything is written.
    let mut tasks = Vec::with_capacity(batch.tasks.len());
    for (i, request) in batch.tasks.into_iter().enumerate() {
        tasks.push(validate(&state, &tenant, request, &format!("tasks[{i}]."))?);
    }
    // The batch's keys are claimed together (see `submit`); a key named twice in the batch
    // is written once, and its later mentions answer with the first one's task.
    let mut claims =
        state.claims.claim_all(&tenant, tasks.iter().filter_map(|t| t.idempotency_key.as_deref()), || state.projection.applied()).await.map_err(claims_full)?;
    let mut replies: Vec<answers::Submitted> = std::iter::repeat_with(Default::default).take(tasks.len()).collect();
    let mut in_batch: HashMap<String, String> = HashMap::new();
    let mut fresh = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let earlier = match &task.idempotency_key {
            Some(key) => match claims.get(key).and_then(|c| c.written.as_ref()) {
                Some(w) => Some(w.task_id.clone()),
                None => in_batch.get(key).cloned(),
            },
            None => None,
        };
        if let Some(id) = earlier {
            replies[i] = answers::Submitted::duplicate(&id, None);
            continue;
        }
        match existing(&state, &tenant, &task)? {
            Some(view) => replies[i] = answers::Submitted::duplicate(&view.task_id, None),
            None => {
                if let Some(key) = &task.idempotency_key {
                    in_batch.insert(key.clone(), task.task_id.clone());
                }
                fresh.push((i, task));
            }
        }
    }
    check_quota(&state, &tenant, fresh.len() as u64)?;
    let sends = fresh.iter().map(|(_, task)| state.client.submit(task));
    let results = futures::future::join_all(sends).await;
    let now = Instant::now();
    let mut failure = None;
    for ((i, task), result) in fresh.iter().zip(results) {
        match result {
            Ok(submitted) => {
                replies[*i] = answers::Submitted::written(&submitted);
                // Every written key is remembered, even when a later task of the batch failed.
                if let Some(claim) = task.idempotency_key.as_ref().and_then(|key| claims.get_mut(key)) {
                    claim.written = Some(written(&task.task_id, &submitted, now));
                }
            }
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    drop(claims);
    if let Some(error) = failure {
        return Err(client_error(error));
    }
    Ok((StatusCode::ACCEPTED, Json(answers::SubmittedBatch { tasks: replies })))
}

/// Where a keyed submit was written, for its claim (see [`idempotency`]).
fn written(task_id: &str, submitted: &Submitted, at: Instant) -> idempotency::Written {
    idempotency::Written {
        task_id: task_id.to_string(),
        at,
        topic: submitted.topic.clone(),
        partition: submitted.position.partition,
        offset: submitted.position.offset,
    }
}

/// Too many keyed submits wait for the projection: retryable, like any passing overload.
fn claims_full(full: idempotency::ClaimsFull) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "idempotency_claims_full", full.to_string())
}

/// Parses `topic:partition:offset`.
fn parse_position(text: &str) -> Option<(String, i32, i64)> {
    let mut parts = text.rsplitn(3, ':');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_string();
    (!topic.is_empty()).then_some((topic, partition, offset))
}

/// A position the projection will never reach (a topic it does not read, a partition or
/// offset never written) is bad input: waiting for it would end in a 503 "retry".
async fn check_written(state: &ApiState, topic: &str, partition: i32, offset: i64) -> Result<(), ApiError> {
    let not_written = |why: String| ApiError::bad_field("after", format!("`{topic}:{partition}:{offset}` is not a position a submit returned: {why}"));
    if !state.projection.sources().iter().any(|(source, _)| source == topic) {
        return Err(not_written(format!("the API does not read topic `{topic}`")));
    }
    match state.log.admin().watermarks(&TopicPartition::new(topic.to_string(), partition)).await {
        Ok(marks) if (0..marks.high).contains(&offset) => Ok(()),
        Ok(marks) => Err(not_written(format!("partition {partition} has offsets below {} only", marks.high))),
        Err(LogError::UnknownTopic { .. } | LogError::UnknownPartition { .. }) => Err(not_written(format!("topic `{topic}` has no partition {partition}"))),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, description = "task id"), GetTask),
    responses((status = 200, description = "the task: status, attempts, agent, timeline, result or error", body = super::answers::Task), (status = 404, description = "no such task for this tenant"), (status = 400), (status = 401)))]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    query: Result<Query<GetTask>, QueryRejection>,
) -> Result<Json<answers::Task>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    if let Some(after) = &query.after {
        let Some((topic, partition, offset)) = parse_position(after) else {
            return Err(ApiError::bad_field("after", format!("`{after}` is not a position (topic:partition:offset, as a submit returns it)")));
        };
        check_written(&state, &topic, partition, offset).await?;
        let wait = wait_of(&state, Some(query.wait_ms.unwrap_or(5_000))).unwrap_or_default();
        if !state.projection.wait_applied(&topic, partition, offset, wait).await {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_caught_up", format!("the projection has not reached {after} yet; retry")));
        }
    }
    match state.projection.store().task(&tenant, &id).map_err(store_failed)? {
        Some(view) => Ok(Json(answers::Task::from(&view))),
        None => Err(ApiError::not_found("no_task", format!("no task `{id}`"))),
    }
}

#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListTasks),
    responses((status = 200, description = "tasks newest first, with `next_cursor` when there are more", body = super::answers::TaskPage), (status = 400), (status = 401)))]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    query: Result<Query<ListTasks>, QueryRejection>,
) -> Result<Json<answers::TaskPage>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let status = query.status.as_deref().map(str::parse::<TaskStatus>).transpose().map_err(|e| ApiError::bad_field("status", e.to_string()))?;
    if let Some(agent_type) = &query.agent_type
        && !state.agents.contains_key(agent_type)
    {
        let known: Vec<&str> = state.agents.keys().map(String::as_str).collect();
        return Err(ApiError::bad_field("agent_type", format!("unknown agent type `{agent_type}`; known: {}", known.join(", "))));
    }
    let limit = page_limit(query.limit)?;
    let cursor = match &query.cursor {
        Some(text) => Some(unhex(text).ok_or_else(|| ApiError::bad_field("cursor", "not a cursor this API returned"))?),
        None => None,
    };
    let filter = TaskFilter { tenant, status, agent_type: query.agent_type, created_after_us: query.created_after_ms.map(|ms| ms.saturating_mul(1000)) };
    let page = state.projection.store().list_tasks(&filter, cursor.as_deref(), limit).map_err(store_failed)?;
    Ok(Json(answers::TaskPage { tasks: page.tasks.iter().map(answers::Task::from).collect(), next_cursor: page.next_cursor }))
}

#[utoipa::path(get, path = "/v1/tasks/{id}/outcome", tag = "tasks", params(("id" = String, Path, description = "task id"), Wait),
    responses((status = 200, description = "the terminal outcome", body = super::answers::TaskOutcome), (status = 404, description = "no outcome (yet)"), (status = 401)))]
pub async fn outcome(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    wait: Result<Query<Wait>, QueryRejection>,
) -> Result<Json<answers::TaskOutcome>, ApiError> {
    let Query(wait) = wait.map_err(query_error)?;
    let found = match wait_of(&state, wait.wait_ms) {
        Some(wait) => wait_outcome(&state.projection, &tenant, &id, wait).await?,
        None => state.projection.store().task(&tenant, &id).map_err(store_failed)?.filter(|v| v.is_terminal()),
    };
    let no_outcome = || ApiError::not_found("no_outcome", format!("no outcome for task `{id}` (yet)"));
    let view = found.ok_or_else(no_outcome)?;
    let outcome = view.outcome.as_ref().map(answers::Outcome::from).ok_or_else(no_outcome)?;
    Ok(Json(answers::TaskOutcome { task_id: view.task_id, outcome }))
}

/// How long a cancel waits for a task it cannot see yet (just submitted, projection behind).
const CANCEL_LOOKUP: Duration = Duration::from_secs(2);

#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, description = "task id")), request_body(content = Cancel, description = "optional reason"),
    responses((status = 202, description = "cancel requested", body = super::answers::CancelRequested), (status = 400, description = "the reason is too long (the error names the field and the limit)"), (status = 404, description = "no such task for this tenant"), (status = 409, description = "already finished"), (status = 401)))]
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    body: Option<Json<Cancel>>,
) -> Result<(StatusCode, Json<answers::CancelRequested>), ApiError> {
    let Cancel { reason } = body.map(|Json(c)| c).unwrap_or_default();
    // Every request lands in the task's timeline: 300 cancels with long reasons made one task
    // view 4.96 MB.
    if let Some(reason) = &reason
        && reason.len() > state.config.max_cancel_reason_bytes
    {
        return Err(ApiError::bad_field(
            "reason",
            format!("reason is {} bytes; the limit is {} (api.max_cancel_reason_bytes)", reason.len(), state.config.max_cancel_reason_bytes),
        ));
    }
    let deadline = tokio::time::Instant::now() + CANCEL_LOOKUP;
    let view = loop {
        match state.projection.store().task(&tenant, &id).map_err(store_failed)? {
            Some(view) => break view,
            None if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            None => return Err(ApiError::not_found("no_task", format!("no task `{id}`"))),
        }
    };
    if let Some(outcome) = &view.outcome {
        return Err(ApiError::new(StatusCode::CONFLICT, "task_finished", format!("task `{id}` already ended {}", outcome.status)));
    }
    state.client.cancel(&id, &tenant, reason).await.map_err(client_error)?;
    Ok((StatusCode::ACCEPTED, Json(answers::CancelRequested { task_id: id, cancel_requested: true })))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListDeadLetters {
    /// Page size, 1 to 500 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[param(pattern = r"^[0-9a-fA-F]{40}$")]
    pub cursor: Option<String>,
}

/// How long a resubmit waits for a dead letter the projection has not indexed yet (the
/// outcome and the letter are on two topics, and the projector may apply either first).
const DEAD_LETTER_LOOKUP: Duration = Duration::from_secs(2);

/// The page size of a listing: 1 to 500, 50 when not given.
pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_field("limit", "limit must be between 1 and 500"));
    }
    Ok(limit)
}

#[utoipa::path(get, path = "/v1/dlq", tag = "dead letters", params(ListDeadLetters),
    responses((status = 200, description = "this tenant's dead letters newest first (by log time), with `next_cursor` when there are more; `task_status` is the task's status now (not `dead_lettered` once it was re-submitted and ran again). Letters whose command does not decode name no tenant and are not listed (`agentlog dlq list` shows them)", body = super::answers::DeadLetterPage), (status = 400, description = "a bad `limit` or `cursor` (the error names the field)"), (status = 401)))]
pub async fn dlq_list(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    query: Result<Query<ListDeadLetters>, QueryRejection>,
) -> Result<Json<answers::DeadLetterPage>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let limit = page_limit(query.limit)?;
    let cursor = match &query.cursor {
        Some(text) => {
            Some(unhex(text).and_then(|tail| LetterPosition::from_tail(&tail)).ok_or_else(|| ApiError::bad_field("cursor", "not a cursor this API returned"))?)
        }
        None => None,
    };
    let store = state.projection.store();
    let page = store.dead_letters(&tenant, cursor.as_ref(), limit).map_err(store_failed)?;
    let ids: Vec<&str> = page.letters.iter().map(|l| l.task_id.as_str()).collect();
    let tasks = store.tasks(&tenant, &ids).map_err(store_failed)?;
    Ok(Json(answers::DeadLetterPage::new(&page, &tasks)))
}

#[utoipa::path(post, path = "/v1/dlq/{id}/resubmit", tag = "dead letters", params(("id" = String, Path, description = "task id")),
    responses((status = 202, description = "the task's latest dead letter submitted again with a fresh attempt budget (the letter stays listed)", body = super::answers::Submitted), (status = 404, description = "no dead letter for this task of this tenant (or retention removed it from the log)"), (status = 409, description = "the dead letter was truncated to fit the log and cannot be re-submitted"), (status = 401)))]
pub async fn dlq_resubmit(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<answers::Submitted>), ApiError> {
    let no_letter = |message: String| ApiError::not_found("no_dead_letter", message);
    let deadline = tokio::time::Instant::now() + DEAD_LETTER_LOOKUP;
    let view = loop {
        let store = state.projection.store();
        if let Some(view) = store.dead_letter(&tenant, &id).map_err(store_failed)? {
            break view;
        }
        // Waits only for a task the projection shows dead-lettered: any other id answers at once.
        let dead_lettered = store.task(&tenant, &id).map_err(store_failed)?.is_some_and(|t| t.status == TaskStatus::DeadLettered);
        if !dead_lettered || tokio::time::Instant::now() >= deadline {
            return Err(no_letter(dlq::DlqError::NotFound(id).to_string()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let letter = dlq::read_at(&state.log, &state.client, view.partition, view.offset).await.map_err(|e| match e {
        dlq::DlqError::Gone { .. } => no_letter(e.to_string()),
        other => ApiError::unavailable(other.to_string()),
    })?;
    // The index named this record for this tenant's task; a log that answers with another
    // record at that offset (it was rewritten) must not re-send someone else's command.
    if !letter.task.as_ref().is_some_and(|t| t.task_id == id && t.meta.tenant == tenant) {
        return Err(no_letter(format!("the dead letter of task `{id}` at {}/{} is no longer in the log", view.partition, view.offset)));
    }
    let submitted = dlq::resubmit(&state.client, &letter).await.map_err(|e| match e {
        dlq::DlqError::Truncated { .. } => ApiError::new(StatusCode::CONFLICT, "dead_letter_truncated", e.to_string()),
        other => ApiError::unavailable(other.to_string()),
    })?;
    Ok((StatusCode::ACCEPTED, Json(answers::Submitted::written(&submitted))))
}
