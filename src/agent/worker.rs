//! `agentlog worker`: one member of consumer group `agents.<type>`.
//!
//! The poll loop never waits for an agent: tasks run as spawned attempts, and the loop keeps
//! reading (pausing a lane's partitions while its prefetch buffer is full) so a long LLM call
//! never gets the member evicted from its group. An offset is committed only after the
//! task's outcome records are durable, and only as far as every earlier task of the partition
//! is done (at-least-once). With `exactly_once` the outcome records of the contiguous done
//! prefix and the offset commit go in one transaction, so an outcome appears on
//! `task.results` exactly once even if the worker dies between the two. A record that cannot
//! be decoded is dead-lettered by the [`EventReader`] and counts as done.
//!
//! Alongside the loop the worker owns two tasks: the control-topic reader that delivers
//! cancel requests ([`super::cancels`]) and the heartbeat of its [`Presence`]. Both stop when
//! the worker stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempt::{AttemptEnv, Ending, Outcome, run_attempt};
use super::cancels::{Cancels, watch_control};
use super::catalog::{AgentTypeConfig, LANES};
use super::offsets::OffsetTracker;
use super::presence::{Identity, Load, Presence, PresenceError};
use super::runtime::Agent;
use super::scheduler::Scheduler;
use super::topics::TaskTopics;
use crate::events::reader::{EventReadError, EventReader, ReadOutcome};
use crate::events::wire::{WireCodec, WireError};
use crate::events::{AgentState, TaskSubmitted};
use crate::log::{ConsumedRecord, Consumer, ConsumerEvent, ConsumerOptions, EventLog, LogError, Producer, Record, TopicPartition, TransactionalProducer};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Read(#[from] EventReadError),
    #[error("encoding an outcome event failed: {0}")]
    Encode(#[from] WireError),
    #[error("agent lifecycle event: {0}")]
    Presence(#[from] PresenceError),
    #[error("an attempt task panicked or was aborted: {0}")]
    Attempt(String),
}

/// What a worker needs to know about itself.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub agent_type: String,
    pub agent: AgentTypeConfig,
    pub topic_prefix: String,
    /// Stable id of this worker (type, host and pid, say): the `agent_id` of its events.
    pub worker_id: String,
    /// Tasks buffered per lane beyond those running.
    pub prefetch_per_lane: usize,
    /// How long a drain waits for running tasks before abandoning them (uncommitted, so
    /// another member runs them again).
    pub drain_timeout: Duration,
    /// How often the worker heartbeats on `agent.heartbeats`.
    pub heartbeat_interval: Duration,
}

/// How often finished work is committed. Outcomes are written as each task finishes; only the
/// offset commit (with exactly-once: the transaction holding outcomes and offsets) waits for
/// the next tick, so one commit round trip serves every task finished meanwhile. A crash
/// redelivers at most this much finished work (at-least-once).
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(20);

/// Counts of what a worker did, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Taken before their `not_before` and handed back to `timers`.
    pub deferred: u64,
    /// Records that could not be decoded, moved to `dlq` by the reader.
    pub undecodable: u64,
    /// Attempts still running when the drain timed out; their offsets were not committed.
    pub abandoned: u64,
}

impl WorkerReport {
    fn count(&mut self, ending: Ending) {
        match ending {
            Ending::Completed => self.completed += 1,
            Ending::Failed => self.failed += 1,
            Ending::RetryScheduled => self.retried += 1,
            Ending::DeadLettered => self.dead_lettered += 1,
            Ending::Cancelled => self.cancelled += 1,
            Ending::Expired => self.expired += 1,
            Ending::Deferred => self.deferred += 1,
        }
    }
}

/// A task taken from a lane topic.
struct Taken {
    record: ConsumedRecord,
    task: TaskSubmitted,
}

/// A finished turn, back in the poll loop. With at-least-once its records are already
/// durable; with exactly-once they wait for the transaction.
struct Done {
    tp: TopicPartition,
    offset: i64,
    key: Option<String>,
    outcome: Result<Outcome, WorkerError>,
}

/// How outcomes reach the log.
enum Delivery {
    /// Each attempt writes its own records and waits for them before reporting done.
    AtLeastOnce,
    /// Records of the contiguous done prefix go in one transaction with the offset commit.
    ExactlyOnce { producer: Arc<dyn TransactionalProducer>, stash: HashMap<TopicPartition, BTreeMap<i64, Vec<Record>>> },
}

/// Runs until `shutdown` is cancelled, then drains: stops taking work, lets running tasks
/// finish within `drain_timeout`, commits, leaves the group and deregisters.
pub async fn run_worker(
    log: Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    agent: Arc<dyn Agent>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> Result<WorkerReport, WorkerError> {
    let topics = TaskTopics::new(settings.topic_prefix.clone());
    let lane_topics = settings.agent.lane_topics(&settings.agent_type, topics.prefix());
    let lane_of: HashMap<String, usize> = lane_topics
        .iter()
        .map(|t| (t.clone(), LANES.iter().position(|l| t.ends_with(&format!(".{l}"))).unwrap_or(LANES.len() - 1)))
        .collect();
    let producer = log.producer()?;

    // Cancel requests first: a task cancelled before this worker started must not run.
    let cancels = Arc::new(Cancels::default());
    let background = CancellationToken::new();
    let control = watch_control(&log, codec.clone(), &topics, cancels.clone(), background.clone()).await?;

    let load = Arc::new(Load::default());
    let identity = Identity {
        agent_id: settings.worker_id.clone(),
        agent_type: settings.agent_type.clone(),
        capabilities: vec![settings.agent_type.clone()],
        concurrency: settings.agent.concurrency as i32,
        tenant: "system".into(),
    };
    let mut presence = Presence::register(codec.clone(), producer.clone(), topics.clone(), identity, settings.heartbeat_interval, load.clone()).await?;

    let mut consumer = log.consumer(ConsumerOptions { group: Some(format!("agents.{}", settings.agent_type)), client_id: Some(settings.worker_id.clone()), ..Default::default() })?;
    consumer.subscribe(&lane_topics)?;
    let mut delivery = if settings.agent.exactly_once {
        let id = format!("agentlog-worker-{}", settings.worker_id);
        Delivery::ExactlyOnce { producer: log.transactional_producer(&id)?, stash: HashMap::new() }
    } else {
        Delivery::AtLeastOnce
    };
    let mut reader = EventReader::<TaskSubmitted>::new(consumer, codec.clone(), producer.clone(), topics.dlq());
    // Delegating agents await sub-task outcomes; an hour back covers children of attempts
    // re-run after a crash.
    let delegation = if settings.agent.delegates {
        let since = crate::events::TimestampMicros::now().0 / 1000 - 3_600_000;
        let watch = Arc::new(super::outcomes::OutcomeWatch::start(&log, codec.clone(), &topics, since).await?);
        Some((super::client::TaskClient::new(&log, codec.clone(), topics.clone(), settings.worker_id.clone()).map_err(|e| WorkerError::Attempt(e.to_string()))?, watch))
    } else {
        None
    };
    let env = Arc::new(AttemptEnv {
        agent,
        agent_type: settings.agent_type.clone(),
        worker_id: settings.worker_id.clone(),
        codec,
        producer: producer.clone(),
        topics,
        policy: settings.agent.retry.clone(),
        timeout: Duration::from_millis(settings.agent.timeout_ms),
        cancels,
        delegation,
    });
    let writes_own = matches!(delivery, Delivery::AtLeastOnce);
    let outcomes = env.delegation.as_ref().map(|(_, watch)| watch.clone());

    let mut scheduler: Scheduler<Taken> = Scheduler::new(settings.agent.concurrency as usize, settings.prefetch_per_lane);
    let mut tracker = OffsetTracker::default();
    let mut running: JoinSet<Done> = JoinSet::new();
    // Per lane: whether its partitions are paused; `None` after a rebalance, to re-apply.
    let mut paused: [Option<bool>; LANES.len()] = [None; LANES.len()];
    let mut report = WorkerReport::default();
    // Commit positions of finished work, flushed on the commit tick.
    let mut pending: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let result: Result<(), WorkerError> = async {
        loop {
            while let Some((_, taken)) = scheduler.next() {
                load.in_flight.fetch_add(1, Ordering::Relaxed);
                // Boxed: a turn's future is several kilobytes, and spawning it unboxed
                // copies all of it more than once per task.
                running.spawn(Box::pin(turn(env.clone(), taken, writes_own)));
            }
            update_pauses(reader.consumer(), &scheduler, &lane_topics, &lane_of, &mut paused)?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    let mut batch = vec![joined];
                    // Everything else already finished goes in the same commit.
                    while let Some(more) = running.try_join_next() {
                        batch.push(more);
                    }
                    finish(batch, &mut delivery, &mut scheduler, &mut tracker, &mut pending, &mut report, &load)?;
                }
                _ = commit_tick.tick(), if !pending.is_empty() => {
                    flush(&mut pending, &mut delivery, reader.consumer()).await?;
                }
                outcome = reader.next() => match outcome? {
                    ReadOutcome::Event { record, event, .. } => {
                        let lane = lane_of.get(&record.topic).copied().unwrap_or(LANES.len() - 1);
                        tracker.started(&record.topic_partition(), record.offset);
                        let key = event.ordering_key.clone();
                        scheduler.push(lane, record.partition, record.timestamp_ms, key, Taken { record, task: event });
                    }
                    ReadOutcome::DeadLettered { record, .. } => {
                        report.undecodable += 1;
                        let tp = record.topic_partition();
                        tracker.started(&tp, record.offset);
                        if let Some(position) = tracker.finished(&tp, record.offset) {
                            pending.insert(tp, position);
                        }
                    }
                    ReadOutcome::Rebalance(ConsumerEvent::Revoked(parts)) => {
                        tracing::info!(?parts, "partitions revoked");
                        if let Delivery::ExactlyOnce { stash, .. } = &mut delivery {
                            // The revoked partitions may already be their new owner's, who
                            // re-runs everything not committed: outcomes of ours that are not
                            // committed yet must never be, or they would appear twice.
                            pending.retain(|tp, _| !parts.contains(tp));
                            stash.retain(|tp, _| !parts.contains(tp));
                        }
                        // Commit what finished while the partitions were still ours (a moved
                        // partition's commit is refused and its new owner re-runs the rest).
                        flush(&mut pending, &mut delivery, reader.consumer()).await?;
                        // Waiting tasks of lost partitions belong to their new owner.
                        scheduler.remove_waiting(|t| parts.contains(&t.record.topic_partition()));
                        tracker.revoke(&parts);
                        paused = [None; LANES.len()];
                    }
                    ReadOutcome::Rebalance(ConsumerEvent::Assigned(parts)) => {
                        tracing::info!(?parts, "partitions assigned");
                        paused = [None; LANES.len()];
                    }
                    ReadOutcome::Rebalance(_) => paused = [None; LANES.len()],
                },
            }
        }

        // Drain: nothing new starts; waiting tasks stay uncommitted for the next owner.
        presence.change(AgentState::Draining, Some("shutdown requested".into())).await?;
        scheduler.drain_waiting();
        let deadline = tokio::time::Instant::now() + settings.drain_timeout;
        while !running.is_empty() {
            match tokio::time::timeout_at(deadline, running.join_next()).await {
                Ok(Some(joined)) => {
                    finish(vec![joined], &mut delivery, &mut scheduler, &mut tracker, &mut pending, &mut report, &load)?;
                }
                Ok(None) => break,
                Err(_) => {
                    report.abandoned = running.len() as u64;
                    running.shutdown().await;
                    break;
                }
            }
        }
        flush(&mut pending, &mut delivery, reader.consumer()).await?;
        Ok(())
    }
    .await;

    // Whatever happened, the owned tasks stop and the member leaves the group.
    running.shutdown().await;
    background.cancel();
    if let Some(watch) = outcomes {
        watch.stop().await;
    }
    if let Err(error) = control.await {
        tracing::warn!(%error, "control reader ended abnormally");
    }
    let closed = reader.into_consumer().close().await;
    result?;
    closed?;
    presence.deregister("drained").await?;
    Ok(report)
}

/// One task's turn, as a spawned task: the attempt and, with at-least-once, writing its records.
async fn turn(env: Arc<AttemptEnv>, taken: Taken, write: bool) -> Done {
    let Taken { record, task } = taken;
    let tp = record.topic_partition();
    let outcome = async {
        let mut outcome = run_attempt(&env, &record, &task).await?;
        if write {
            // Written records are not needed afterwards (only exactly-once keeps them, to
            // write in its transaction), so they move instead of being cloned.
            write_all(env.producer.as_ref(), std::mem::take(&mut outcome.records)).await?;
        }
        // TaskStarted is informational (the timeline): one that could not be stored is
        // logged and the turn goes on, but it is settled before the offset can be committed.
        if let Some(started) = outcome.started.take()
            && let Err(error) = started.await
        {
            tracing::warn!(task_id = %task.task_id, %error, "TaskStarted was not stored");
        }
        Ok::<_, WorkerError>(outcome)
    }
    .await;
    Done { tp, offset: record.offset, key: task.ordering_key.clone(), outcome }
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

/// Frees the slots of finished turns and notes the commit positions that became contiguous.
fn finish(
    batch: Vec<Result<Done, tokio::task::JoinError>>,
    delivery: &mut Delivery,
    scheduler: &mut Scheduler<Taken>,
    tracker: &mut OffsetTracker,
    pending: &mut BTreeMap<TopicPartition, i64>,
    report: &mut WorkerReport,
    load: &Load,
) -> Result<(), WorkerError> {
    for joined in batch {
        let done = joined.map_err(|e| WorkerError::Attempt(e.to_string()))?;
        load.in_flight.fetch_sub(1, Ordering::Relaxed);
        // An outcome that could not be written is fatal: the offset stays uncommitted and the
        // task runs again on whoever owns the partition next.
        let outcome = done.outcome?;
        report.count(outcome.ending);
        match outcome.ending {
            Ending::Completed => load.completed.fetch_add(1, Ordering::Relaxed),
            Ending::Failed | Ending::DeadLettered => load.failed.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        scheduler.finished(done.key.as_deref());
        if let Delivery::ExactlyOnce { stash, .. } = delivery {
            stash.entry(done.tp.clone()).or_default().insert(done.offset, outcome.records);
        }
        if let Some(position) = tracker.finished(&done.tp, done.offset) {
            pending.insert(done.tp, position);
        }
    }
    Ok(())
}

/// Commits the pending positions: with at-least-once an offset commit (the outcomes are
/// durable already), with exactly-once one transaction holding the outcomes of the committed
/// prefix and the offsets.
async fn flush(pending: &mut BTreeMap<TopicPartition, i64>, delivery: &mut Delivery, consumer: &mut dyn Consumer) -> Result<(), WorkerError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut positions: Vec<(TopicPartition, i64)> = std::mem::take(pending).into_iter().collect();
    if let Delivery::ExactlyOnce { stash, .. } = delivery {
        // Only partitions still ours: a transactional offset commit is checked against the
        // member's epoch, not against its assignment, so the broker would take a commit for a
        // partition that moved, and its outcomes would appear a second time from the new owner.
        let owned: std::collections::HashSet<TopicPartition> = consumer.assignment().into_iter().collect();
        positions.retain(|(tp, _)| owned.contains(tp));
        stash.retain(|tp, _| owned.contains(tp));
        if positions.is_empty() {
            return Ok(());
        }
    }
    match delivery {
        Delivery::AtLeastOnce => commit(consumer, &positions).await,
        Delivery::ExactlyOnce { producer, stash } => {
            let mut records = Vec::new();
            for (tp, position) in &positions {
                if let Some(waiting) = stash.get_mut(tp) {
                    let later = waiting.split_off(position);
                    records.extend(std::mem::replace(waiting, later).into_values().flatten());
                }
            }
            commit_transaction(producer.as_ref(), consumer, records, &positions).await
        }
    }
}

/// Writes the records and commits the positions atomically. A transaction refused because
/// the group moved on (a zombie after a rebalance) is aborted: the new owner re-runs those
/// tasks, and their outcomes appear once, from it.
async fn commit_transaction(
    producer: &dyn TransactionalProducer,
    consumer: &mut dyn Consumer,
    records: Vec<Record>,
    positions: &[(TopicPartition, i64)],
) -> Result<(), WorkerError> {
    let group = consumer.group_metadata();
    let mut transaction = producer.begin().await?;
    for record in records {
        if let Err(error) = transaction.send(record).await {
            transaction.abort().await?;
            return Err(error.into());
        }
    }
    match transaction.commit_with_offsets(positions, group.as_ref()).await {
        Ok(_) => Ok(()),
        Err(LogError::NotAssigned { .. }) => {
            tracing::info!(?positions, "partitions moved before the transaction committed; the new owner re-runs those tasks");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Commits positions; a partition that moved meanwhile is the new owner's to commit.
async fn commit(consumer: &mut dyn Consumer, positions: &[(TopicPartition, i64)]) -> Result<(), WorkerError> {
    match consumer.commit(positions).await {
        Ok(()) => Ok(()),
        Err(LogError::NotAssigned { .. }) if positions.len() > 1 => {
            for one in positions {
                Box::pin(commit(consumer, std::slice::from_ref(one))).await?;
            }
            Ok(())
        }
        Err(LogError::NotAssigned { topic, partition, .. }) => {
            tracing::info!(%topic, partition, "partition moved before its commit; the new owner re-runs the rest");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Pauses the partitions of lanes whose buffer is full, and resumes them once half drained.
fn update_pauses(
    consumer: &mut dyn Consumer,
    scheduler: &Scheduler<Taken>,
    topics: &[String],
    lane_of: &HashMap<String, usize>,
    paused: &mut [Option<bool>; LANES.len()],
) -> Result<(), WorkerError> {
    // The assignment is only fetched when a lane's state flips: this runs on every turn of
    // the poll loop, and on Kafka it copies librdkafka's assignment list.
    let mut assignment: Option<Vec<TopicPartition>> = None;
    for topic in topics {
        let lane = lane_of.get(topic).copied().unwrap_or(LANES.len() - 1);
        let full = match paused[lane] {
            Some(true) => !scheduler.lane_low(lane),
            _ => scheduler.lane_full(lane),
        };
        if paused[lane] == Some(full) {
            continue;
        }
        let parts: Vec<TopicPartition> = assignment.get_or_insert_with(|| consumer.assignment()).iter().filter(|tp| &tp.topic == topic).cloned().collect();
        if full { consumer.pause(&parts)? } else { consumer.resume(&parts)? }
        paused[lane] = Some(full);
    }
    Ok(())
}
