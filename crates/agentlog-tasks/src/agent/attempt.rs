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
//! | suspended for a signal | `TaskSuspended` on `task.events`, the next attempt on `timers`, waiting for the signal |
//!
//! A resumed attempt whose wait timed out, of an agent type with `on_signal_timeout =
//! "fail"`, is not run: the task fails with kind `signal_timeout`.
//!
//! The records are returned, not written: the worker writes them (at-least-once) or puts them
//! in one transaction with the offset commit (exactly-once). Every record returned fits the
//! log's record limit ([`super::limits`]): an output too large for its TaskCompleted ends the
//! task failed with kind `output_too_large` (never retried: the agent would answer the same),
//! a retry whose command no longer fits `timers` is dead-lettered instead, a dead letter too
//! large is cut with a marker, and if even that cannot fit the task ends failed with kind
//! `record_too_large`. Written as they are, such records were refused on every attempt, and
//! the worker ran the task again and again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::cancels::Cancels;
use super::catalog::SignalTimeout;
use super::checkpoints::Checkpoint;
use super::client::{new_id, timer_record};
use super::dlq::{Parking, dead_letter_records};
use super::limits::{bound_message, fits};
use super::retry::RetryPolicy;
use super::runtime::{Agent, AgentFailure, Suspension, TaskContext, TaskOutput, kind};
use super::topics::TaskTopics;
use crate::backoff::Backoff;
use crate::events::wire::{WireCodec, WireError};
use crate::events::{
    Event, Meta, TaskCancelled, TaskCheckpointed, TaskCompleted, TaskExpired, TaskFailed, TaskRetryScheduled, TaskStarted, TaskSubmitted, TaskSuspended,
    TimestampMicros,
};
use crate::log::{ConsumedRecord, Delivery, Producer, Record};
use crate::trace;

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
    /// It waits for a signal; its next attempt waits on `timers`.
    Suspended,
}

impl Ending {
    /// The name a trace's attempt span records as `agentlog.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::Failed => "failed",
            Ending::RetryScheduled => "retry_scheduled",
            Ending::DeadLettered => "dead_lettered",
            Ending::Cancelled => "cancelled",
            Ending::Expired => "expired",
            Ending::Deferred => "deferred",
            Ending::Suspended => "suspended",
        }
    }
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
    /// The log's record limit (`log.max_record_bytes`): every record returned fits it.
    pub max_record_bytes: usize,
    /// For agent types that delegate: how sub-tasks are submitted and awaited.
    pub delegation: Option<(super::client::TaskClient, Arc<super::outcomes::OutcomeWatch>)>,
    /// The latest checkpoints of running tasks, handed to their next attempts.
    pub checkpoints: Option<Arc<super::checkpoints::CheckpointIndex>>,
    /// What the timeout of a wait for a signal does.
    pub on_signal_timeout: SignalTimeout,
    /// For a delegating `http`/`exec` type: where its attempts' callbacks are served.
    pub callbacks: Option<Arc<super::callback::Callbacks>>,
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

/// Takes the task, runs it if it should run, and returns its outcome records. A task that
/// ends with a checkpoint saved has it cleared by a record written with the outcome.
pub async fn run_attempt(env: &AttemptEnv, source: &ConsumedRecord, task: &TaskSubmitted) -> Result<Outcome, WireError> {
    // Looked up once (a task without one, the common case, pays one map probe).
    let checkpoint = env.checkpoints.as_ref().and_then(|index| index.get(&task.meta.tenant, &task.task_id));
    let had = checkpoint.is_some();
    let (mut outcome, saved) = turn(env, source, task, checkpoint).await?;
    // A waiting task keeps its checkpoint for the attempt its signal resumes.
    let ended = !matches!(outcome.ending, Ending::RetryScheduled | Ending::Deferred | Ending::Suspended);
    if !ended && let (Some(index), Some(state)) = (&env.checkpoints, &saved) {
        index.saved(&task.meta.tenant, &task.task_id, task.attempt, state.clone());
    }
    if ended && (had || saved.is_some()) {
        let cleared = TaskCheckpointed { meta: meta(env, task), task_id: task.task_id.clone(), attempt: task.attempt, state: None };
        let clear = Box::pin(record(env, env.topics.checkpoints(), task, &cleared)).await?;
        if fits(&clear, env.max_record_bytes) {
            outcome.records.push(clear);
        }
    }
    Ok(outcome)
}

/// [`run_attempt`] but the clearing; returns the last checkpoint the attempt saved.
///
/// What comes before and after the agent's run is boxed: a future is as large as its largest
/// await, and a worker may hold 10,000 attempts waiting on slow agents at once, so the
/// outcome's writes (a dead letter's among them) take memory only once the agent has answered.
async fn turn(env: &AttemptEnv, source: &ConsumedRecord, task: &TaskSubmitted, checkpoint: Option<Checkpoint>) -> Result<(Outcome, Option<String>), WireError> {
    if let Some(settled) = Box::pin(settled_unrun(env, task)).await? {
        return Ok((settled, None));
    }
    let cancel = env.cancels.register(&task.meta.tenant, &task.task_id);
    let (result, elapsed, started, saved) = run_agent(env, task, cancel.clone(), checkpoint).await;
    env.cancels.unregister(&task.meta.tenant, &task.task_id);
    let ended = Box::pin(ending(env, source, task, result, &cancel, elapsed)).await?;
    Ok((Outcome { started, ..ended }, saved))
}

/// The outcome of a task that must not run: cancelled, expired, not yet due, or a wait that
/// timed out on a type that fails it; `None` for a task to run.
async fn settled_unrun(env: &AttemptEnv, task: &TaskSubmitted) -> Result<Option<Outcome>, WireError> {
    let now = TimestampMicros::now();
    if let Some(reason) = env.cancels.requested(&task.meta.tenant, &task.task_id) {
        return Ok(Some(cancelled(env, task, reason).await?));
    }
    if let Some(deadline) = task.deadline
        && deadline <= now
    {
        let event = TaskExpired { meta: meta(env, task), task_id: task.task_id.clone(), deadline };
        return Ok(Some(Outcome::new(Ending::Expired, vec![record(env, env.topics.results(), task, &event).await?])));
    }
    if task.not_before.is_some_and(|at| at.0 > now.0 + 1_000) {
        return Ok(Some(Outcome::new(Ending::Deferred, vec![timer_record(&env.codec, &env.topics, task).await?])));
    }
    if let Some(signal) = &task.signal
        && signal.timed_out
        && env.on_signal_timeout == SignalTimeout::Fail
    {
        let message = format!("no signal `{}` came before the wait's timeout (on_signal_timeout = \"fail\")", signal.name);
        return Ok(Some(Outcome::new(Ending::Failed, vec![failed_record(env, task, kind::SIGNAL_TIMEOUT, message).await?])));
    }
    Ok(None)
}

/// The outcome of a run: what the agent answered, or its cancellation, suspension or failure.
async fn ending(
    env: &AttemptEnv,
    source: &ConsumedRecord,
    task: &TaskSubmitted,
    result: Result<TaskOutput, AgentFailure>,
    cancel: &CancellationToken,
    elapsed: Duration,
) -> Result<Outcome, WireError> {
    let ended = match result {
        Ok(output) => completed(env, task, output, elapsed).await,
        Err(_) if cancel.is_cancelled() => {
            let reason = env.cancels.requested(&task.meta.tenant, &task.task_id).flatten();
            cancelled(env, task, reason).await
        }
        Err(AgentFailure { suspend: Some(suspension), .. }) => suspended(env, task, suspension).await,
        Err(failure) => failed(env, source, task, failure).await,
    };
    within_limit(env, task, ended?).await
}

/// The last line of defence: an outcome with a record the log would refuse (a hostile
/// producer's giant task id or labels, say) becomes a bare failure that names the record.
/// When not even that fits, the task ends without an outcome record, loudly: the worker must
/// go on, and no record about this task can be written.
async fn within_limit(env: &AttemptEnv, task: &TaskSubmitted, outcome: Outcome) -> Result<Outcome, WireError> {
    let Some(large) = outcome.records.iter().find(|r| !fits(r, env.max_record_bytes)) else { return Ok(outcome) };
    let message = format!(
        "a {} record of {} bytes about this task does not fit log.max_record_bytes ({} bytes)",
        large.topic.rsplit('.').next().unwrap_or(&large.topic),
        large.size(),
        env.max_record_bytes
    );
    let failure = failed_record(env, task, kind::RECORD_TOO_LARGE, message.clone()).await?;
    if fits(&failure, env.max_record_bytes) {
        return Ok(Outcome::new(Ending::Failed, vec![failure]));
    }
    tracing::error!(task_id = %head_of(&task.task_id), %message, "not even a failure record fits for this task; it ends without an outcome");
    Ok(Outcome::new(Ending::Failed, Vec::new()))
}

/// The outcome that replaces records the log refused for what they are (`error`): a bare
/// failure, or nothing when not even that is accepted (the caller logs it).
pub async fn refused(env: &AttemptEnv, task: &TaskSubmitted, error: &crate::log::LogError) -> Result<Outcome, WireError> {
    let failure = failed_record(env, task, kind::RECORD_TOO_LARGE, format!("the log refused a record about this task: {error}")).await?;
    Ok(Outcome::new(Ending::Failed, if fits(&failure, env.max_record_bytes) { vec![failure] } else { Vec::new() }))
}

/// The start of a hostile id, for logs.
fn head_of(id: &str) -> String {
    super::runtime::head_text(id.as_bytes(), 200)
}

async fn completed(env: &AttemptEnv, task: &TaskSubmitted, output: TaskOutput, elapsed: Duration) -> Result<Outcome, WireError> {
    // The runtimes check what agents send; a Rust agent's report is checked here, the last
    // place before the log (the protocol's rule: a bad report fails the attempt).
    if let Some(usage) = &output.usage
        && let Err(error) = super::runtime::usage::check(usage)
    {
        return Ok(Outcome::new(Ending::Failed, vec![failed_record(env, task, kind::PROTOCOL, error.to_string()).await?]));
    }
    let event = TaskCompleted {
        meta: meta(env, task),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        output: output.output.to_vec(),
        content_type: output.content_type,
        duration_ms: elapsed.as_millis() as i64,
        usage: output.usage,
    };
    let done = record(env, env.topics.results(), task, &event).await?;
    if fits(&done, env.max_record_bytes) {
        return Ok(Outcome::new(Ending::Completed, vec![done]));
    }
    // Not classified by the retry policy: the agent would answer the same again.
    let message = format!(
        "the agent's output of {} bytes does not fit an outcome record: TaskCompleted would be {} bytes, over log.max_record_bytes ({} bytes)",
        event.output.len(),
        done.size(),
        env.max_record_bytes
    );
    Ok(Outcome::new(Ending::Failed, vec![failed_record(env, task, kind::OUTPUT_TOO_LARGE, message).await?]))
}

/// A TaskFailed record that no retry policy retries.
async fn failed_record(env: &AttemptEnv, task: &TaskSubmitted, error_kind: &str, message: String) -> Result<Record, WireError> {
    let event = TaskFailed {
        meta: meta(env, task),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        error_kind: error_kind.into(),
        message: bound_message(message),
        retryable: false,
    };
    record(env, env.topics.results(), task, &event).await
}

/// Announces the attempt and runs the agent under its timeout and cancel signal. Returns the
/// TaskStarted write still in flight, for the caller to await after writing the outcome, and
/// the last checkpoint the attempt saved.
async fn run_agent(
    env: &AttemptEnv,
    task: &TaskSubmitted,
    cancel: CancellationToken,
    checkpoint: Option<Checkpoint>,
) -> (Result<TaskOutput, AgentFailure>, Duration, Option<Delivery>, Option<String>) {
    // One envelope for the start event and the progress reports (each report takes a fresh
    // event id and time), so a task that never reports pays for no second id.
    let envelope = meta(env, task);
    let started = TaskStarted { meta: envelope.clone(), task_id: task.task_id.clone(), agent_id: env.worker_id.clone(), attempt: task.attempt };
    // TaskStarted is informational (the timeline); the outcome is what the task relies on, so
    // a start event that cannot be written is logged and the attempt goes on.
    // Boxed, as the writes in `turn`: not part of the future held while the agent runs.
    let delivery = Box::pin(async {
        match record(env, env.topics.events(), task, &started).await {
            Ok(start) => env.producer.send(start).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    if let Err(error) = &delivery {
        tracing::warn!(task_id = %task.task_id, %error, "could not record TaskStarted");
    }
    let stream = super::stream::AttemptStream::new(env.codec.clone(), env.producer.clone(), &env.topics, task.task_id.clone(), task.attempt, envelope);
    let timeout = match task.timeout_ms {
        ms if ms > 0 => env.timeout.min(Duration::from_millis(ms as u64)),
        _ => env.timeout,
    };
    let delegate = env.delegation.as_ref().map(|(client, outcomes)| super::delegate::Delegate {
        client: client.clone(),
        outcomes: outcomes.clone(),
        parent: Arc::new(task.clone()),
        trace: trace::current(),
    });
    // Valid while the attempt runs: dropped with it, whichever way it ends.
    let callback = match (&env.callbacks, &delegate) {
        (Some(callbacks), Some(delegate)) => Some(callbacks.register(delegate.clone())),
        _ => None,
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
        delegate,
        checkpoint,
        stream: Some(stream.clone()),
        signal: task.signal.clone(),
        callback_url: callback.as_ref().map(|c| c.url.clone()),
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
    drop(callback);
    // What the attempt streamed is on the log before its outcome is (see `stream`).
    let saved = Box::pin(async {
        stream.flush().await;
        stream.saved_checkpoint().await
    })
    .await;
    (result, begun.elapsed(), delivery.ok(), saved)
}

/// Classifies a failure by the retry policy (see the module table).
async fn failed(env: &AttemptEnv, source: &ConsumedRecord, task: &TaskSubmitted, mut failure: AgentFailure) -> Result<Outcome, WireError> {
    failure.message = bound_message(failure.message);
    let attempt = task.attempt.max(1) as u32;
    let policy = RetryPolicy { max_attempts: if task.max_attempts > 0 { task.max_attempts as u32 } else { env.policy.max_attempts }, ..env.policy.clone() };
    let retries_kind = policy.retry_on.contains(&failure.kind);
    let last_error = failure.to_string();
    if retries_kind && policy.retries(&failure.kind, attempt) {
        // The agent may ask for a longer wait (Retry-After), never a shorter one.
        let asked = failure.retry_after.unwrap_or_default().min(super::runtime::MAX_RETRY_AFTER);
        let backoff = policy.backoff(attempt, rand::random::<f64>()).max(asked);
        let due = TimestampMicros(TimestampMicros::now().0 + backoff.as_micros() as i64);
        let mut next = task.clone();
        next.meta = meta(env, task);
        next.attempt = task.attempt + 1;
        next.not_before = Some(due);
        let timer = timer_record(&env.codec, &env.topics, &next).await?;
        if fits(&timer, env.max_record_bytes) {
            let scheduled = TaskRetryScheduled {
                meta: meta(env, task),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                next_attempt_at: due,
                backoff_ms: backoff.as_millis() as i64,
                last_error,
            };
            return Ok(Outcome::new(Ending::RetryScheduled, vec![record(env, env.topics.events(), task, &scheduled).await?, timer]));
        }
        // A command submitted without the headroom (straight to the lane topic) may not fit
        // `timers` with its new envelope: it cannot wait for a retry, so it is parked.
        let last_error = format!("{last_error} (no retry: the command of {} bytes does not fit a timer under log.max_record_bytes)", source.payload.len());
        return dead_lettered(env, source, task, &failure.kind, format!("could not schedule attempt {}; last error: {last_error}", attempt + 1), last_error)
            .await;
    }
    if retries_kind {
        let reason = format!("gave up after {attempt} attempts; last error: {last_error}");
        return dead_lettered(env, source, task, &failure.kind, reason, last_error).await;
    }
    let event = TaskFailed {
        meta: meta(env, task),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        error_kind: failure.kind,
        message: failure.message,
        retryable: false,
    };
    Ok(Outcome::new(Ending::Failed, vec![record(env, env.topics.results(), task, &event).await?]))
}

/// The attempt asked to wait for a signal: `TaskSuspended`, and the next attempt on `timers`
/// waiting for the signal, due at the timeout (the supervisor fires it early when the signal
/// comes). Resuming does not use up a retry: the next command allows one attempt more.
async fn suspended(env: &AttemptEnv, task: &TaskSubmitted, suspension: Suspension) -> Result<Outcome, WireError> {
    let timeout_at = TimestampMicros(TimestampMicros::now().0.saturating_add(suspension.timeout.as_micros() as i64));
    let max_attempts = if task.max_attempts > 0 { task.max_attempts } else { env.policy.max_attempts as i32 };
    let mut next = task.clone();
    next.meta = meta(env, task);
    next.attempt = task.attempt + 1;
    next.max_attempts = max_attempts.saturating_add(1);
    next.not_before = Some(timeout_at);
    next.awaiting_signal = Some(suspension.signal.clone());
    next.signal = None;
    let timer = timer_record(&env.codec, &env.topics, &next).await?;
    if !fits(&timer, env.max_record_bytes) {
        let message = format!(
            "the task cannot wait for signal `{}`: its command of {} bytes does not fit a timer under log.max_record_bytes ({} bytes)",
            suspension.signal,
            timer.size(),
            env.max_record_bytes
        );
        return Ok(Outcome::new(Ending::Failed, vec![failed_record(env, task, kind::RECORD_TOO_LARGE, message).await?]));
    }
    let event = TaskSuspended { meta: meta(env, task), task_id: task.task_id.clone(), attempt: task.attempt, signal: suspension.signal, timeout_at };
    Ok(Outcome::new(Ending::Suspended, vec![record(env, env.topics.events(), task, &event).await?, timer]))
}

/// TaskDeadLettered and the command on `dlq`, fitted to the record limit
/// ([`dead_letter_records`]). A registry that cannot be reached is waited for, as in [`record`].
async fn dead_lettered(
    env: &AttemptEnv,
    source: &ConsumedRecord,
    task: &TaskSubmitted,
    error_kind: &str,
    reason: String,
    last_error: String,
) -> Result<Outcome, WireError> {
    let why = Parking { error_kind, reason: bound_message(reason), last_error: bound_message(last_error), outcome_reason: "max_attempts" };
    let mut backoff = Backoff::default();
    loop {
        match dead_letter_records(&env.codec, &env.topics, source, task, meta(env, task), &why, env.max_record_bytes).await {
            // Only the event when the metadata alone is too large; `within_limit` turns it
            // into a bare failure.
            Ok(records) => return Ok(Outcome::new(Ending::DeadLettered, records)),
            Err(error @ WireError::Registry { .. }) => {
                tracing::warn!(task_id = %task.task_id, %error, failures = backoff.failures() + 1, "encoding a dead letter needs the registry; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn cancelled(env: &AttemptEnv, task: &TaskSubmitted, reason: Option<String>) -> Result<Outcome, WireError> {
    let reason = reason.map(bound_message);
    let event = TaskCancelled { meta: meta(env, task), task_id: task.task_id.clone(), reason };
    Ok(Outcome::new(Ending::Cancelled, vec![record(env, env.topics.results(), task, &event).await?]))
}

/// An envelope caused by the task's command: same tenant and correlation; the trace of the
/// attempt's span when tracing is on (so a retry, a resumed wait and the outcome descend from
/// this attempt), else the command's.
fn meta(env: &AttemptEnv, cause: &TaskSubmitted) -> Meta {
    let mut meta = Meta::new(new_id("ev"), cause.meta.tenant.clone(), env.worker_id.clone());
    meta.correlation_id = cause.meta.correlation_id.clone();
    meta.causation_id = Some(cause.meta.event_id.clone());
    trace::stamp(&mut meta, trace::Context::of(&cause.meta).as_ref());
    meta
}

/// An event record keyed by task id. A registry that cannot be reached is waited for with a
/// back-off (the encoding needs the schema id once per type and topic): the agent's result is
/// kept, not thrown away with the group membership. The attempt is dropped if the worker stops.
async fn record<T: Event>(env: &AttemptEnv, topic: String, task: &TaskSubmitted, event: &T) -> Result<Record, WireError> {
    let mut backoff = Backoff::default();
    let payload = loop {
        match env.codec.encode(&topic, event).await {
            Ok(payload) => break payload,
            Err(error @ WireError::Registry { .. }) => {
                tracing::warn!(task_id = %task.task_id, %topic, %error, failures = backoff.failures() + 1, "encoding an outcome needs the registry; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => return Err(error),
        }
    };
    let record = Record::new(topic, payload).with_key(Bytes::from(task.task_id.clone()));
    // The headers say what the event's envelope says (see `meta`).
    Ok(trace::with_headers(record, event.meta()))
}
