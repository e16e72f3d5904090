//! One attempt of one task, from taking it to the records that describe its outcome.
//!
//! Before running, an attempt checks what would make running wrong: a cancel request (→
//! `TaskCancelled`), a passed deadline (→ `TaskExpired`), a `not_before` still ahead (→ back
//! to `timers`). Then it runs the agent under the attempt timeout and the cancel signal, and
//! classifies the result by the agent type's retry policy:
//!
//! | result | records |
//! | --- | --- |
//! | output | `TaskCompleted` on `task.results` |
//! | cancelled | `TaskCancelled` on `task.results` |
//! | failure whose kind retries, attempts left | `TaskRetryScheduled` on `task.events`, next attempt on `timers` |
//! | failure whose kind retries, no attempts left | `TaskDeadLettered` on `task.results`, the command on `dlq` |
//! | failure whose kind does not retry | `TaskFailed` on `task.results` |
//!
//! The records are returned, not written: the worker writes them (at-least-once) or puts them
//! in one transaction with the offset commit (exactly-once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::cancels::Cancels;
use super::client::{new_id, timer_record};
use super::dlq::task_dead_letter;
use super::retry::RetryPolicy;
use super::runtime::{Agent, AgentFailure, TaskContext, TaskOutput, kind};
use super::topics::TaskTopics;
use crate::events::wire::{WireCodec, WireError};
use crate::events::{
    Meta, TaskCancelled, TaskCompleted, TaskDeadLettered, TaskExpired, TaskFailed, TaskRetryScheduled, TaskStarted, TaskSubmitted, TimestampMicros,
};
use crate::log::{ConsumedRecord, Delivery, Producer, Record};

/// How long an agent gets to honour a cancel signal before its attempt is dropped.
pub const CANCEL_GRACE: Duration = Duration::from_millis(500);

/// How a task's turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Failed,
    RetryScheduled,
    DeadLettered,
    Cancelled,
    Expired,
    /// Its `not_before` was still ahead: handed back to `timers`.
    Deferred,
}

/// What every attempt of a worker shares.
pub struct AttemptEnv {
    pub agent: Arc<dyn Agent>,
    pub agent_type: String,
    pub worker_id: String,
    pub codec: Arc<WireCodec>,
    pub producer: Arc<dyn Producer>,
    pub topics: TaskTopics,
    pub policy: RetryPolicy,
    pub timeout: Duration,
    pub cancels: Arc<Cancels>,
    /// For agent types that delegate: how sub-tasks are submitted and awaited.
    pub delegation: Option<(super::client::TaskClient, Arc<super::outcomes::OutcomeWatch>)>,
}

/// The outcome records of a task's turn, ready to write.
pub struct Outcome {
    pub ending: Ending,
    pub records: Vec<Record>,
    /// The TaskStarted write, still on its way: the outcome does not wait for it (a no-op
    /// task would otherwise pay two sequential broker round trips), the turn does, before its
    /// offset may be committed.
    pub started: Option<Delivery>,
}

impl Outcome {
    fn new(ending: Ending, records: Vec<Record>) -> Self {
        Outcome { ending, records, started: None }
    }
}

/// Takes the task, runs it if it should run, and returns its outcome records.
pub async fn run_attempt(env: &AttemptEnv, source: &ConsumedRecord, task: &TaskSubmitted) -> Result<Outcome, WireError> {
    let now = TimestampMicros::now();
    if let Some(reason) = env.cancels.requested(&task.meta.tenant, &task.task_id) {
        return cancelled(env, task, reason).await;
    }
    if let Some(deadline) = task.deadline
        && deadline <= now
    {
        let event = TaskExpired { meta: meta(env, task), task_id: task.task_id.clone(), deadline };
        return Ok(Outcome::new(Ending::Expired, vec![record(env, env.topics.results(), task, &event).await?]));
    }
    if task.not_before.is_some_and(|at| at.0 > now.0 + 1_000) {
        return Ok(Outcome::new(Ending::Deferred, vec![timer_record(&env.codec, &env.topics, task).await?]));
    }

    let cancel = env.cancels.register(&task.meta.tenant, &task.task_id);
    let (result, elapsed, started) = run_agent(env, task, cancel.clone()).await;
    env.cancels.unregister(&task.meta.tenant, &task.task_id);
    let ended = match result {
        Ok(output) => completed(env, task, output, elapsed).await,
        Err(_) if cancel.is_cancelled() => {
            let reason = env.cancels.requested(&task.meta.tenant, &task.task_id).flatten();
            cancelled(env, task, reason).await
        }
        Err(failure) => failed(env, source, task, failure).await,
    };
    Ok(Outcome { started, ..ended? })
}

async fn completed(env: &AttemptEnv, task: &TaskSubmitted, output: TaskOutput, elapsed: Duration) -> Result<Outcome, WireError> {
    let event = TaskCompleted {
        meta: meta(env, task),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        output: output.output.to_vec(),
        content_type: output.content_type,
        duration_ms: elapsed.as_millis() as i64,
    };
    Ok(Outcome::new(Ending::Completed, vec![record(env, env.topics.results(), task, &event).await?]))
}

/// Announces the attempt and runs the agent under its timeout and cancel signal. Returns the
/// TaskStarted write still in flight, for the caller to await after writing the outcome.
async fn run_agent(env: &AttemptEnv, task: &TaskSubmitted, cancel: CancellationToken) -> (Result<TaskOutput, AgentFailure>, Duration, Option<Delivery>) {
    // One envelope for the start event and the progress reports (each report takes a fresh
    // event id and time), so a task that never reports pays for no second id.
    let envelope = meta(env, task);
    let started = TaskStarted { meta: envelope.clone(), task_id: task.task_id.clone(), agent_id: env.worker_id.clone(), attempt: task.attempt };
    // TaskStarted is informational (the timeline); the outcome is what the task relies on, so
    // a start event that cannot be written is logged and the attempt goes on.
    let delivery = match record(env, env.topics.events(), task, &started).await {
        Ok(start) => env.producer.send(start).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = &delivery {
        tracing::warn!(task_id = %task.task_id, %error, "could not record TaskStarted");
    }
    let timeout = match task.timeout_ms {
        ms if ms > 0 => env.timeout.min(Duration::from_millis(ms as u64)),
        _ => env.timeout,
    };
    let context = TaskContext {
        task_id: task.task_id.clone(),
        agent_type: env.agent_type.clone(),
        attempt: task.attempt.max(1) as u32,
        input: Bytes::from(task.input.clone()),
        content_type: task.content_type.clone(),
        labels: task.labels.clone(),
        idempotency_key: task.idempotency_key.clone().unwrap_or_else(|| task.task_id.clone()),
        cancel: cancel.clone(),
        delegate: env.delegation.as_ref().map(|(client, outcomes)| super::delegate::Delegate {
            client: client.clone(),
            outcomes: outcomes.clone(),
            parent: Arc::new(task.clone()),
        }),
        progress: Some(super::progress::Progress {
            codec: env.codec.clone(),
            producer: env.producer.clone(),
            topic: env.topics.events(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            meta: envelope,
        }),
    };
    let begun = Instant::now();
    let run = env.agent.run(context);
    // An agent that ignores its cancel signal is dropped after a short grace.
    let cancelled = async {
        cancel.cancelled().await;
        tokio::time::sleep(CANCEL_GRACE).await;
    };
    let result = tokio::select! {
        result = tokio::time::timeout(timeout, run) => result.unwrap_or_else(|_| {
            Err(AgentFailure::new(kind::TIMEOUT, format!("attempt {} exceeded its timeout of {timeout:?}", task.attempt), true))
        }),
        _ = cancelled => Err(AgentFailure::cancelled()),
    };
    (result, begun.elapsed(), delivery.ok())
}

/// Classifies a failure by the retry policy (see the module table).
async fn failed(env: &AttemptEnv, source: &ConsumedRecord, task: &TaskSubmitted, failure: AgentFailure) -> Result<Outcome, WireError> {
    let attempt = task.attempt.max(1) as u32;
    let policy = RetryPolicy { max_attempts: if task.max_attempts > 0 { task.max_attempts as u32 } else { env.policy.max_attempts }, ..env.policy.clone() };
    let retries_kind = policy.retry_on.iter().any(|k| *k == failure.kind);
    let last_error = failure.to_string();
    if retries_kind && policy.retries(&failure.kind, attempt) {
        let backoff = policy.backoff(attempt, rand::random::<f64>());
        let due = TimestampMicros(TimestampMicros::now().0 + backoff.as_micros() as i64);
        let scheduled = TaskRetryScheduled {
            meta: meta(env, task),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            next_attempt_at: due,
            backoff_ms: backoff.as_millis() as i64,
            last_error,
        };
        let mut next = task.clone();
        next.meta = meta(env, task);
        next.attempt = task.attempt + 1;
        next.not_before = Some(due);
        return Ok(Outcome::new(
            Ending::RetryScheduled,
            vec![record(env, env.topics.events(), task, &scheduled).await?, timer_record(&env.codec, &env.topics, &next).await?],
        ));
    }
    if retries_kind {
        let reason = format!("gave up after {attempt} attempts; last error: {last_error}");
        let event = TaskDeadLettered {
            meta: meta(env, task),
            task_id: task.task_id.clone(),
            attempts: task.attempt,
            last_error: last_error.clone(),
            reason: "max_attempts".into(),
            original_command: source.payload.to_vec(),
        };
        return Ok(Outcome::new(
            Ending::DeadLettered,
            vec![record(env, env.topics.results(), task, &event).await?, task_dead_letter(&env.topics.dlq(), source, task.attempt, &failure.kind, &reason)],
        ));
    }
    let event = TaskFailed { meta: meta(env, task), task_id: task.task_id.clone(), attempt: task.attempt, error_kind: failure.kind, message: failure.message, retryable: false };
    Ok(Outcome::new(Ending::Failed, vec![record(env, env.topics.results(), task, &event).await?]))
}

async fn cancelled(env: &AttemptEnv, task: &TaskSubmitted, reason: Option<String>) -> Result<Outcome, WireError> {
    let event = TaskCancelled { meta: meta(env, task), task_id: task.task_id.clone(), reason };
    Ok(Outcome::new(Ending::Cancelled, vec![record(env, env.topics.results(), task, &event).await?]))
}

/// An envelope caused by the task's command: same tenant, correlation and trace.
fn meta(env: &AttemptEnv, cause: &TaskSubmitted) -> Meta {
    let mut meta = Meta::new(new_id("ev"), cause.meta.tenant.clone(), env.worker_id.clone());
    meta.correlation_id = cause.meta.correlation_id.clone();
    meta.causation_id = Some(cause.meta.event_id.clone());
    meta.trace_parent = cause.meta.trace_parent.clone();
    meta.trace_state = cause.meta.trace_state.clone();
    meta
}

/// An event record keyed by task id.
async fn record<T: serde::Serialize + apache_avro::AvroSchema + 'static>(env: &AttemptEnv, topic: String, task: &TaskSubmitted, event: &T) -> Result<Record, WireError> {
    let payload = env.codec.encode(&topic, event).await?;
    Ok(Record::new(topic, payload).with_key(Bytes::from(task.task_id.clone())))
}
