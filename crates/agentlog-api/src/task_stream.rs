//! `GET /v1/tasks/{id}/stream`: Server-Sent Events of one task's progress reports and output
//! chunks (`task.stream`, kept per task by the projection) in log order, then its outcome.
//!
//! Every `progress`/`chunk` event's id is its record's log position, `<partition>:<offset>`;
//! a client that reconnects with `Last-Event-ID` (or `?after=`) continues after it, nothing
//! missed or repeated, on any API replica (the positions are the log's, not this process's).
//! The `outcome` event comes once the task has its outcome *and* every stream record written
//! before that outcome has been applied: the worker makes the stream durable before it writes
//! the outcome, but the projection reads `task.stream` and `task.results` as separate
//! partitions, so seeing the outcome first proves nothing. The stream waits until the
//! projection has applied the task's `task.stream` partition up to the end it had once the
//! outcome was seen, then sends what is left, the outcome, and ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::IntoParams;

use super::ApiState;
use super::answers::Task;
use super::auth::Tenant;
use super::stream::{KEEP_ALIVE, StreamSlot};
use super::tasks::query_error;
use crate::http::error::ApiError;
use crate::log::TopicPartition;
use crate::projection::views::{StreamBody, StreamEntry};

/// Stream records read from the store at once.
const PAGE: usize = 256;
/// How long a stream opened right after a submit waits for the projection to know the task.
const UNKNOWN_TASK_WAIT: Duration = Duration::from_secs(2);
/// How long the stream waits for the projection to apply the records written before the
/// outcome; past it, the outcome is sent anyway (and the wait logged).
const DRAIN_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskStreamQuery {
    /// Continue after this position (`<partition>:<offset>`, an event's id); the
    /// `Last-Event-ID` header does the same and is what `EventSource` sends.
    #[serde(default)]
    pub after: Option<String>,
}

/// The data of a `progress` event.
#[derive(Debug, Serialize)]
struct ProgressData<'a> {
    attempt: i32,
    percent: Option<f32>,
    message: Option<&'a str>,
    at_ms: i64,
}

/// The data of a `chunk` event: `text`, or `json` as JSON (not a string holding it).
#[derive(Debug, Serialize)]
struct ChunkData<'a> {
    attempt: i32,
    seq: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<serde_json::Value>,
    at_ms: i64,
}

/// `<partition>:<offset>`.
fn parse_after(text: &str) -> Option<(i32, i64)> {
    let (partition, offset) = text.trim().split_once(':')?;
    let (partition, offset) = (partition.parse().ok()?, offset.parse().ok()?);
    (partition >= 0 && offset >= 0).then_some((partition, offset))
}

fn event_of(entry: &StreamEntry) -> Event {
    let at_ms = entry.at_us / 1000;
    let event = Event::default().id(format!("{}:{}", entry.partition, entry.offset));
    let data = match &entry.body {
        StreamBody::Progress { percent, message } => {
            event.event("progress").json_data(ProgressData { attempt: entry.attempt, percent: *percent, message: message.as_deref(), at_ms })
        }
        StreamBody::Chunk { seq, text, json } => {
            // JSON text that does not parse (a producer other than agentlog's) goes as text.
            let raw = json.as_deref().and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok());
            let text = if raw.is_none() { text.as_deref().or(json.as_deref()) } else { None };
            event.event("chunk").json_data(ChunkData { attempt: entry.attempt, seq: *seq, text, json: raw, at_ms })
        }
    };
    // The data holds strings and numbers only: serializing cannot fail.
    data.unwrap_or_else(|_| Event::default().event("chunk").data("{}"))
}

#[utoipa::path(get, path = "/v1/tasks/{id}/stream", tag = "tasks", params(("id" = String, Path, description = "task id"), TaskStreamQuery),
    responses(
        (status = 200, description = "text/event-stream: `progress` and `chunk` events (id = log position `<partition>:<offset>`), then one `outcome` event (the task's JSON), then the end", content_type = "text/event-stream"),
        (status = 400, description = "`after` or `Last-Event-ID` is not `<partition>:<offset>`"), (status = 401),
        (status = 404, description = "no such task for this tenant"),
        (status = 429, description = "the tenant has api.max_streams_per_tenant streams open")))]
pub async fn task_stream(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<TaskStreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let last_event_id = headers.get("last-event-id").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let after = match query.after.map(|a| ("after", a)).or(last_event_id.map(|l| ("Last-Event-ID", l))) {
        Some((field, text)) => Some(
            parse_after(&text)
                .ok_or_else(|| ApiError::bad_field(field, format!("`{text}` is not a stream position `<partition>:<offset>` (an event's id)")))?,
        ),
        None => None,
    };
    let mut changes = state.projection.changes();
    if !known(&state, &tenant, &id, &mut changes).await? {
        return Err(ApiError::not_found("no_task", format!("no task `{id}`")));
    }
    let slot = state.streams.open(&tenant, state.config.max_streams_per_tenant)?;
    let follower = Follower { state, tenant, task_id: id, after, changes, pending: VecDeque::new(), drained: false, done: false, _slot: slot };
    let stream = futures::stream::unfold(follower, |mut follower| async move { follower.next().await.map(|event| (Ok(event), follower)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Whether the projection knows the task, waiting briefly for one submitted just before.
async fn known(state: &ApiState, tenant: &str, id: &str, changes: &mut watch::Receiver<u64>) -> Result<bool, ApiError> {
    let deadline = tokio::time::Instant::now() + UNKNOWN_TASK_WAIT;
    loop {
        if state.projection.store().task(tenant, id).map_err(crate::store_failed)?.is_some() {
            return Ok(true);
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(false),
        }
    }
}

/// One open stream: where it is in the task's records, and what it has yet to send.
struct Follower {
    state: Arc<ApiState>,
    tenant: String,
    task_id: String,
    after: Option<(i32, i64)>,
    changes: watch::Receiver<u64>,
    pending: VecDeque<Event>,
    /// Every record written before the outcome has been applied (see the module docs).
    drained: bool,
    done: bool,
    /// Counted against the tenant's open streams until the stream is dropped.
    _slot: StreamSlot,
}

impl Follower {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            // Marked before reading, so a batch applied during the reads wakes the wait below.
            self.changes.borrow_and_update();
            let store = self.state.projection.store();
            let entries = match store.stream(&self.tenant, &self.task_id, self.after, PAGE) {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::warn!(task_id = %self.task_id, %error, "reading a task's stream failed; ending the stream");
                    return None;
                }
            };
            if let Some(last) = entries.last() {
                self.after = Some((last.partition, last.offset));
                self.pending.extend(entries.iter().map(event_of));
                continue;
            }
            match store.task(&self.tenant, &self.task_id) {
                Ok(Some(view)) if view.status.is_terminal() => {
                    if !self.drained {
                        self.drain().await;
                        self.drained = true;
                        continue;
                    }
                    // A task's JSON always serializes (string keys only).
                    if let Ok(event) = Event::default().event("outcome").json_data(Task::from(&view)) {
                        self.pending.push_back(event);
                    }
                    self.done = true;
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(task_id = %self.task_id, %error, "reading a streamed task failed; ending the stream");
                    return None;
                }
            }
            // Streams end when the server shuts down, or graceful shutdown would wait forever.
            tokio::select! {
                _ = self.state.closing.cancelled() => return None,
                changed = self.changes.changed() => if changed.is_err() { return None },
            }
        }
    }

    /// Waits until the projection has applied the task's `task.stream` partition up to its
    /// current end (bounded by [`DRAIN_WAIT`]).
    async fn drain(&self) {
        let topic = self.state.client.topics().stream();
        let admin = self.state.log.admin();
        let end = async {
            let partitions = admin.describe_topic(&topic).await?.partitions;
            let partition = crate::log::murmur2::partition_for_key(self.task_id.as_bytes(), partitions);
            let marks = admin.watermarks(&TopicPartition::new(topic.clone(), partition)).await?;
            Ok::<_, crate::log::LogError>((partition, marks.high))
        };
        match end.await {
            Ok((_, 0)) => {}
            Ok((partition, high)) => {
                if !self.state.projection.wait_applied(&topic, partition, high - 1, DRAIN_WAIT).await {
                    tracing::warn!(task_id = %self.task_id, %topic, partition, high, "the projection did not reach the end of the task's stream in time; sending the outcome");
                }
            }
            Err(error) => tracing::warn!(task_id = %self.task_id, %error, "could not find the end of the task's stream; sending the outcome"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_partition_colon_offset() {
        assert_eq!(parse_after("3:41"), Some((3, 41)));
        assert_eq!(parse_after(" 0:0 "), Some((0, 0)));
        for bad in ["", "3", "3:", ":4", "a:1", "1:b", "-1:4", "1:-4", "t:1:2"] {
            assert_eq!(parse_after(bad), None, "{bad}");
        }
    }
}
