//! One task's turn, run as a spawned task beside the poll loop: the attempt and, with
//! at-least-once, writing its records until they are durable.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::WorkerError;
use crate::agent::attempt::{AttemptEnv, Outcome, refused, run_attempt};
use crate::backoff::Backoff;
use crate::events::TaskSubmitted;
use crate::log::{ConsumedRecord, LogError, Producer, Record, TopicPartition};
use crate::trace;

/// A task taken from a lane topic.
pub(super) struct Taken {
    pub record: ConsumedRecord,
    pub task: TaskSubmitted,
}

/// A finished turn, back in the poll loop. With at-least-once its records are already
/// durable; with exactly-once they wait for the transaction.
pub(super) struct Done {
    pub tp: TopicPartition,
    pub offset: i64,
    pub key: Option<String>,
    pub outcome: Result<Outcome, WorkerError>,
}

/// Runs the attempt; with `write` (at-least-once) also writes its records.
pub(super) async fn turn(env: Arc<AttemptEnv>, taken: Taken, write: bool, shutdown: CancellationToken) -> Done {
    let Taken { record, task } = taken;
    let tp = record.topic_partition();
    let (span, carried) = attempt_trace(&env, &task);
    let work = async {
        let outcome = run_attempt(&env, &record, &task).await?;
        // Boxed: the writes are not part of the future held while the agent runs (a worker
        // may hold thousands of attempts on slow agents; see `attempt::turn`).
        Box::pin(settle(&env, &task, outcome, write, &shutdown)).await
    }
    .instrument(span.clone());
    let outcome = match carried {
        Some(context) => trace::with_incoming(context, work).await,
        None => work.await,
    };
    match &outcome {
        Ok(outcome) => span.record("agentlog.outcome", outcome.ending.as_str()),
        Err(_) => span.record("otel.status_code", "ERROR"),
    };
    Done { tp, offset: record.offset, key: task.ordering_key.clone(), outcome }
}

/// The attempt's span, a child of its command's trace context (the submit's span, or the
/// previous attempt's for a retry or a resumed wait); none while tracing is off, and none for
/// an unsampled trace, whose context the attempt carries on instead (the second value; none
/// for a command without context, whose attempts decide by its id: [`trace::decide_task`]).
fn attempt_trace(env: &AttemptEnv, task: &TaskSubmitted) -> (tracing::Span, Option<trace::Context>) {
    if !trace::enabled() {
        return (tracing::Span::none(), None);
    }
    let parent = trace::Context::of(&task.meta);
    if let trace::Decision::Unsampled(context) = trace::decide_task(parent.as_ref(), &task.task_id) {
        return (tracing::Span::none(), context);
    }
    let span = tracing::info_span!(
        target: trace::TARGET,
        "attempt",
        otel.name = %format_args!("attempt {}", env.agent_type),
        otel.kind = "consumer",
        agentlog.task_id = %task.task_id,
        agentlog.tenant = %task.meta.tenant,
        agentlog.agent_type = %env.agent_type,
        agentlog.lane = task.lane.as_str(),
        agentlog.attempt = task.attempt,
        agentlog.parent_task_id = task.parent_task_id.as_deref().unwrap_or(""),
        agentlog.outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    trace::set_parent(&span, parent.as_ref());
    // The attempt's log lines carry its trace and span ids (the span's fields are on each line).
    trace::record_ids(&span);
    (span, None)
}

/// With `write` (at-least-once), writes the outcome's records until they are durable; then
/// settles the TaskStarted write.
async fn settle(env: &AttemptEnv, task: &TaskSubmitted, mut outcome: Outcome, write: bool, shutdown: &CancellationToken) -> Result<Outcome, WorkerError> {
    if write {
        // Written records are not needed afterwards (only exactly-once keeps them, to
        // write in its transaction), so they move instead of being cloned.
        match write_durably(env.producer.as_ref(), std::mem::take(&mut outcome.records), shutdown).await {
            Ok(()) => {}
            // Refused for what they are, the records would be refused on every run of the
            // task (the attempt keeps them within the size limit, so this is the rest:
            // a partition the topic lost, say). The task fails instead; only an error of
            // the log itself ends the membership.
            Err(error) if error.rejects_record() => {
                tracing::error!(task_id = %task.task_id, %error, "the log refused the task's outcome; the task fails instead");
                let failure = refused(env, task, &error).await?;
                outcome.ending = failure.ending;
                match write_durably(env.producer.as_ref(), failure.records, shutdown).await {
                    Err(again) if again.rejects_record() => {
                        tracing::error!(task_id = %task.task_id, error = %again, "the failure was refused too; the task ends without an outcome");
                    }
                    written => written?,
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    // TaskStarted is informational (the timeline): one that could not be stored is
    // logged and the turn goes on, but it is settled before the offset can be committed.
    if let Some(started) = outcome.started.take()
        && let Err(error) = started.await
    {
        tracing::warn!(task_id = %task.task_id, %error, "TaskStarted was not stored");
    }
    Ok(outcome)
}

/// Appends records until every one is durable, retrying while the log is passingly
/// unavailable (a broker restarting, a leader moving): an outcome the agent produced is kept
/// and written once the log is back, not thrown away with its attempt. At-least-once: a
/// retry after a timed-out delivery may write a record twice.
async fn write_durably(producer: &dyn Producer, records: Vec<Record>, shutdown: &CancellationToken) -> Result<(), LogError> {
    let mut backoff = Backoff::default();
    loop {
        match write_all(producer, records.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) if error.retryable() => {
                tracing::warn!(%error, failures = backoff.failures() + 1, "writing an outcome failed; retrying");
                if !backoff.wait(shutdown).await {
                    return Err(error);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// Appends records and waits until every one is durable.
async fn write_all(producer: &dyn Producer, records: Vec<Record>) -> Result<(), LogError> {
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        deliveries.push(producer.send(record).await?);
    }
    for delivery in deliveries {
        delivery.await?;
    }
    Ok(())
}
