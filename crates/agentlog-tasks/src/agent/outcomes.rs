//! Following `task.results` to learn when particular tasks end: what a delegating agent awaits
//! its sub-tasks with, and what `wait` on a submit uses. Outcomes are kept in a bounded map
//! (oldest forgotten first); a waiter registered before or after the outcome arrives gets it.
//! Outcomes are kept by task identity, (tenant, task id): another tenant's task of the same
//! id is another task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::follower_task::FollowerTask;
use super::topics::TaskTopics;
use crate::events::wire::WireCodec;
use crate::events::{AnyEvent, OutcomeKind, decode_any_waiting};
use crate::log::follow::Follower;
use crate::log::{EventLog, LogError, SeekTo};

/// Outcomes remembered at most.
const MAX_KEPT: usize = 200_000;

type TaskRef = (String, String);

#[derive(Default)]
struct Kept {
    outcomes: HashMap<TaskRef, AnyEvent>,
    order: VecDeque<TaskRef>,
}

pub struct OutcomeWatch {
    kept: Arc<Mutex<Kept>>,
    arrived: Arc<Notify>,
    follower: FollowerTask,
}

impl OutcomeWatch {
    /// Follows `task.results` from `since_ms` (ms since the epoch) on.
    pub async fn start(log: &Arc<dyn EventLog>, codec: Arc<WireCodec>, topics: &TaskTopics, since_ms: i64) -> Result<OutcomeWatch, LogError> {
        let mut follower = Follower::open(log, &[topics.results()], SeekTo::Timestamp(since_ms)).await?;
        let kept = Arc::new(Mutex::new(Kept::default()));
        let arrived = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let (k, a, s) = (kept.clone(), arrived.clone(), stop.clone());
        let follow = async move {
            loop {
                let record = tokio::select! {
                    _ = s.cancelled() => break,
                    record = follower.next() => record,
                };
                let record = match record {
                    Ok(Some(record)) => record,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "following task.results failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let Some(decoded) = decode_any_waiting(&codec, &record.payload, &s).await else { break };
                let event = match decoded {
                    Ok(event) if event.is_terminal() => event,
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::warn!(offset = record.offset, %error, "skipping an undecodable outcome");
                        continue;
                    }
                };
                let Some(id) = event.task_ref().map(|(tenant, task_id)| (tenant.to_string(), task_id.to_string())) else { continue };
                {
                    let mut kept = k.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.outcomes.insert(id.clone(), event).is_none() {
                        kept.order.push_back(id);
                        while kept.order.len() > MAX_KEPT {
                            if let Some(old) = kept.order.pop_front() {
                                kept.outcomes.remove(&old);
                            }
                        }
                    }
                }
                a.notify_waiters();
            }
            follower.close().await;
        };
        Ok(OutcomeWatch { kept, arrived, follower: FollowerTask::spawn("task.results", stop, follow) })
    }

    /// The outcome of `tenant`'s task `task_id`, if known.
    pub fn get(&self, tenant: &str, task_id: &str) -> Option<AnyEvent> {
        let key = (tenant.to_string(), task_id.to_string());
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).outcomes.get(&key).cloned()
    }

    /// The outcome of `tenant`'s task `task_id`, waiting up to `timeout` for it.
    pub async fn wait(&self, tenant: &str, task_id: &str, timeout: Duration) -> Option<AnyEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so an outcome landing in between still wakes us.
            let notified = self.arrived.notified();
            if let Some(outcome) = self.get(tenant, task_id) {
                return Some(outcome);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(tenant, task_id);
            }
        }
    }

    /// Stops following and waits for the follower task.
    pub async fn stop(&self) {
        self.follower.stop().await;
    }
}

/// An outcome as JSON, for the CLI and the API.
pub fn outcome_json(event: &AnyEvent) -> serde_json::Value {
    use serde_json::json;
    let text = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
    };
    let Some(status) = OutcomeKind::of(event) else {
        return json!({"task_id": event.task_id(), "event": event.name()});
    };
    match event {
        AnyEvent::TaskCompleted(e) => {
            json!({"task_id": e.task_id, "status": status, "attempt": e.attempt, "output": text(&e.output), "duration_ms": e.duration_ms})
        }
        AnyEvent::TaskFailed(e) => json!({"task_id": e.task_id, "status": status, "attempt": e.attempt, "error_kind": e.error_kind, "message": e.message}),
        AnyEvent::TaskDeadLettered(e) => json!({"task_id": e.task_id, "status": status, "attempts": e.attempts, "last_error": e.last_error}),
        AnyEvent::TaskCancelled(e) => json!({"task_id": e.task_id, "status": status, "reason": e.reason}),
        AnyEvent::TaskExpired(e) => json!({"task_id": e.task_id, "status": status, "deadline_micros": e.deadline.0}),
        other => json!({"task_id": other.task_id(), "status": status, "event": other.name()}),
    }
}
