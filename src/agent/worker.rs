//! `agentlog worker`: one member of consumer group `agents.<type>`.
//!
//! The poll loop never waits for an agent: tasks run as spawned attempts, and the loop keeps
//! reading (pausing a lane's partitions while its prefetch buffer is full) so a long LLM call
//! never gets the member evicted from its group. An offset is committed only after the task's
//! outcome is durably on `task.results`, and only as far as every earlier task of the
//! partition is done (at-least-once). A record that cannot be decoded is dead-lettered by the
//! [`EventReader`] and counts as done.
//!
//! Not yet here (issue 4): retries through durable timers, dead-lettering after max attempts,
//! deadlines, cancellation, heartbeats and agent lifecycle events, delegation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::catalog::{AgentTypeConfig, LANES};
use super::offsets::OffsetTracker;
use super::runtime::{Agent, AgentFailure, TaskContext, TaskOutput};
use super::scheduler::Scheduler;
use crate::events::reader::{EventReadError, EventReader, ReadOutcome};
use crate::events::wire::{WireCodec, WireError};
use crate::events::{Meta, TaskCompleted, TaskFailed, TaskStarted, TaskSubmitted};
use crate::log::{ConsumerEvent, ConsumerOptions, EventLog, LogError, Producer, Record, TopicPartition};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Read(#[from] EventReadError),
    #[error("encoding an outcome event failed: {0}")]
    Encode(#[from] WireError),
}

/// What a worker needs to know about itself.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub agent_type: String,
    pub agent: AgentTypeConfig,
    pub topic_prefix: String,
    /// Stable id of this worker (host and pid, say): the `agent_id` of its events.
    pub worker_id: String,
    /// Tasks buffered per lane beyond those running.
    pub prefetch_per_lane: usize,
    /// How long a drain waits for running tasks before abandoning them (uncommitted, so
    /// another member runs them again).
    pub drain_timeout: Duration,
}

/// Counts of what a worker did, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    pub completed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    /// Attempts still running when the drain timed out; their offsets were not committed.
    pub abandoned: u64,
}

/// A task taken from a lane topic.
struct Taken {
    tp: TopicPartition,
    offset: i64,
    task: TaskSubmitted,
}

/// A finished attempt, back in the poll loop.
struct Done {
    tp: TopicPartition,
    offset: i64,
    key: Option<String>,
    task: TaskSubmitted,
    result: Result<TaskOutput, AgentFailure>,
    elapsed: Duration,
}

/// Runs until `shutdown` is cancelled, then drains: stops taking work, lets running tasks
/// finish within `drain_timeout`, commits, and leaves the group.
pub async fn run_worker(
    log: Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    agent: Arc<dyn Agent>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> Result<WorkerReport, WorkerError> {
    let prefix = &settings.topic_prefix;
    let topics = settings.agent.lane_topics(&settings.agent_type, prefix);
    let lane_of: HashMap<String, usize> = topics
        .iter()
        .map(|t| (t.clone(), LANES.iter().position(|l| t.ends_with(&format!(".{l}"))).unwrap_or(LANES.len() - 1)))
        .collect();
    let mut consumer = log.consumer(ConsumerOptions {
        group: Some(format!("agents.{}", settings.agent_type)),
        client_id: Some(settings.worker_id.clone()),
    })?;
    consumer.subscribe(&topics)?;
    let producer = log.producer()?;
    let mut reader = EventReader::<TaskSubmitted>::new(consumer, codec.clone(), producer.clone(), format!("{prefix}dlq"));
    let outcomes = Outcomes { codec, producer, results: format!("{prefix}task.results"), events: format!("{prefix}task.events"), worker_id: settings.worker_id.clone() };

    let mut scheduler: Scheduler<Taken> = Scheduler::new(settings.agent.concurrency as usize, settings.prefetch_per_lane);
    let mut tracker = OffsetTracker::default();
    let mut running: JoinSet<Done> = JoinSet::new();
    let attempts = CancellationToken::new();
    // Per lane: whether its partitions are paused; `None` after a rebalance, to re-apply.
    let mut paused: [Option<bool>; LANES.len()] = [None; LANES.len()];
    let mut report = WorkerReport::default();
    let timeout = Duration::from_millis(settings.agent.timeout_ms);

    loop {
        while let Some((_, taken)) = scheduler.next() {
            running.spawn(attempt(taken, agent.clone(), outcomes.clone(), settings.agent_type.clone(), timeout, attempts.child_token()));
        }
        update_pauses(reader.consumer(), &scheduler, &topics, &lane_of, &mut paused)?;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(joined) = running.join_next(), if !running.is_empty() => {
                let done = joined.map_err(|_| LogError::Shutdown)?;
                finish(done, &outcomes, &mut scheduler, &mut tracker, reader.consumer(), &mut report).await?;
            }
            outcome = reader.next() => match outcome? {
                ReadOutcome::Event { record, event, .. } => {
                    let tp = record.topic_partition();
                    let lane = lane_of.get(&record.topic).copied().unwrap_or(LANES.len() - 1);
                    tracker.started(&tp, record.offset);
                    let key = event.ordering_key.clone();
                    scheduler.push(lane, key, Taken { tp, offset: record.offset, task: event });
                }
                ReadOutcome::DeadLettered { record, .. } => {
                    report.dead_lettered += 1;
                    let tp = record.topic_partition();
                    tracker.started(&tp, record.offset);
                    if let Some(position) = tracker.finished(&tp, record.offset) {
                        commit(reader.consumer(), &tp, position).await?;
                    }
                }
                ReadOutcome::Rebalance(ConsumerEvent::Revoked(parts)) => {
                    // Waiting tasks of lost partitions belong to their new owner.
                    scheduler.remove_waiting(|t| parts.contains(&t.tp));
                    tracker.revoke(&parts);
                    paused = [None; LANES.len()];
                }
                ReadOutcome::Rebalance(_) => paused = [None; LANES.len()],
            },
        }
    }

    // Drain: nothing new starts; waiting tasks stay uncommitted for the next owner.
    scheduler.drain_waiting();
    let deadline = tokio::time::Instant::now() + settings.drain_timeout;
    while !running.is_empty() {
        match tokio::time::timeout_at(deadline, running.join_next()).await {
            Ok(Some(joined)) => {
                let done = joined.map_err(|_| LogError::Shutdown)?;
                finish(done, &outcomes, &mut scheduler, &mut tracker, reader.consumer(), &mut report).await?;
            }
            Ok(None) => break,
            Err(_) => {
                report.abandoned = running.len() as u64;
                attempts.cancel();
                running.shutdown().await;
                break;
            }
        }
    }
    reader.into_consumer().close().await?;
    Ok(report)
}

/// Where outcome events go, and how they are encoded.
#[derive(Clone)]
struct Outcomes {
    codec: Arc<WireCodec>,
    producer: Arc<dyn Producer>,
    results: String,
    events: String,
    worker_id: String,
}

impl Outcomes {
    fn meta(&self, cause: &TaskSubmitted) -> Meta {
        let mut meta = Meta::new(format!("{}:{}:{}", cause.task_id, cause.attempt, rand::random::<u64>()), cause.meta.tenant.clone(), self.worker_id.clone());
        meta.correlation_id = cause.meta.correlation_id.clone();
        meta.causation_id = Some(cause.meta.event_id.clone());
        meta.trace_parent = cause.meta.trace_parent.clone();
        meta.trace_state = cause.meta.trace_state.clone();
        meta
    }

    /// Appends an event keyed by task id and waits until it is durable.
    async fn write<T: serde::Serialize + apache_avro::AvroSchema + 'static>(&self, topic: &str, task_id: &str, event: &T) -> Result<(), WorkerError> {
        let payload = self.codec.encode(topic, event).await?;
        self.producer.send(Record::new(topic, payload).with_key(Bytes::from(task_id.to_string()))).await?.await?;
        Ok(())
    }
}

/// One attempt: announce it, run the agent under the timeout, hand the result back.
async fn attempt(taken: Taken, agent: Arc<dyn Agent>, outcomes: Outcomes, agent_type: String, timeout: Duration, cancel: CancellationToken) -> Done {
    let Taken { tp, offset, task } = taken;
    let started = TaskStarted { meta: outcomes.meta(&task), task_id: task.task_id.clone(), agent_id: outcomes.worker_id.clone(), attempt: task.attempt };
    if let Err(error) = outcomes.write(&outcomes.events, &task.task_id, &started).await {
        // The start event is informational; the outcome below is what the task relies on.
        tracing::warn!(task_id = %task.task_id, %error, "could not record TaskStarted");
    }
    let context = TaskContext {
        task_id: task.task_id.clone(),
        agent_type,
        attempt: task.attempt.max(1) as u32,
        input: Bytes::from(task.input.clone()),
        content_type: task.content_type.clone(),
        labels: task.labels.clone(),
        idempotency_key: task.idempotency_key.clone().unwrap_or_else(|| task.task_id.clone()),
        cancel: cancel.clone(),
    };
    let begun = Instant::now();
    let result = match tokio::time::timeout(timeout, agent.run(context)).await {
        Ok(result) => result,
        Err(_) => {
            cancel.cancel();
            Err(AgentFailure { kind: "timeout".into(), message: format!("attempt exceeded {timeout:?}"), retryable: true })
        }
    };
    Done { tp, offset, key: task.ordering_key.clone(), task, result, elapsed: begun.elapsed() }
}

/// Records the outcome durably, then frees the slot and commits what is contiguous.
async fn finish(
    done: Done,
    outcomes: &Outcomes,
    scheduler: &mut Scheduler<Taken>,
    tracker: &mut OffsetTracker,
    consumer: &mut dyn crate::log::Consumer,
    report: &mut WorkerReport,
) -> Result<(), WorkerError> {
    let task = &done.task;
    match &done.result {
        Ok(output) => {
            let event = TaskCompleted {
                meta: outcomes.meta(task),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                output: output.output.to_vec(),
                content_type: output.content_type.clone(),
                duration_ms: done.elapsed.as_millis() as i64,
            };
            outcomes.write(&outcomes.results, &task.task_id, &event).await?;
            report.completed += 1;
        }
        Err(failure) => {
            let event = TaskFailed {
                meta: outcomes.meta(task),
                task_id: task.task_id.clone(),
                attempt: task.attempt,
                error_kind: failure.kind.clone(),
                message: failure.message.clone(),
                retryable: failure.retryable,
            };
            outcomes.write(&outcomes.results, &task.task_id, &event).await?;
            report.failed += 1;
        }
    }
    scheduler.finished(done.key.as_deref());
    if let Some(position) = tracker.finished(&done.tp, done.offset) {
        commit(consumer, &done.tp, position).await?;
    }
    Ok(())
}

/// Commits one position; a partition that moved meanwhile is the new owner's to commit.
async fn commit(consumer: &mut dyn crate::log::Consumer, tp: &TopicPartition, position: i64) -> Result<(), WorkerError> {
    match consumer.commit(&[(tp.clone(), position)]).await {
        Ok(()) => Ok(()),
        Err(LogError::NotAssigned { .. }) => {
            tracing::info!(topic = %tp.topic, partition = tp.partition, position, "partition moved before its commit; the new owner re-runs the rest");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Pauses the partitions of lanes whose buffer is full and resumes the others.
fn update_pauses(
    consumer: &mut dyn crate::log::Consumer,
    scheduler: &Scheduler<Taken>,
    topics: &[String],
    lane_of: &HashMap<String, usize>,
    paused: &mut [Option<bool>; LANES.len()],
) -> Result<(), WorkerError> {
    let assignment = consumer.assignment();
    for topic in topics {
        let lane = lane_of.get(topic).copied().unwrap_or(LANES.len() - 1);
        let full = scheduler.lane_full(lane);
        if paused[lane] == Some(full) {
            continue;
        }
        let parts: Vec<TopicPartition> = assignment.iter().filter(|tp| &tp.topic == topic).cloned().collect();
        if full { consumer.pause(&parts)? } else { consumer.resume(&parts)? }
        paused[lane] = Some(full);
    }
    Ok(())
}
