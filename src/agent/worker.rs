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

use super::attempt::{AttemptEnv, Ending, Outcome, refused, run_attempt};
use super::cancels::{Cancels, watch_control};
use super::catalog::AgentTypeConfig;
use super::floors::FloorLookups;
use super::offsets::OffsetTracker;
use super::presence::{Identity, Load, Presence, PresenceError};
use super::runtime::Agent;
use super::scheduler::Scheduler;
use super::topics::TaskTopics;
use crate::backoff::Backoff;
use crate::events::reader::{EventReadError, EventReader, ReadOutcome};
use crate::events::wire::{WireCodec, WireError};
use crate::events::{AgentState, Lane, TaskSubmitted};
use crate::log::{
    ConsumedRecord, Consumer, ConsumerEvent, ConsumerOptions, EventLog, LogError, Producer, Record, SeekTo, TopicPartition, TransactionalProducer,
};

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
    /// With exactly-once: how long a transaction may take before the worker abandons it and
    /// leaves the group ([`TRANSACTION_DEADLINE`] unless a test needs it shorter).
    pub transaction_deadline: Duration,
}

/// Tasks a worker buffers per lane beyond those running, for an agent type.
///
/// At-least-once: twice the concurrency (at least 8), enough to keep every slot busy between
/// fetches while leaving the rest of a lane's backlog to other members (a long LLM call
/// should not hold a queue of tasks behind it). Exactly-once: the reader is not polled while a
/// transaction commits (see the loop in `run`), so the buffer is all the slots can start
/// during a commit, and a commit takes hundreds of ms to a second on three busy brokers.
/// With twice the concurrency the fault suite's workers (16 slots, 10 ms tasks) ran at most
/// 48 tasks per commit, ~50 tasks/s each, and 100 tasks/s built a backlog; eight times the
/// concurrency (at least 128) lets a commit's wait cover several hundred tasks.
pub fn prefetch_per_lane(agent: &AgentTypeConfig) -> usize {
    let concurrency = agent.concurrency as usize;
    if agent.exactly_once { (concurrency * 8).max(128) } else { (concurrency * 2).max(8) }
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
    /// A transaction commits in the background (`committing`) while the loop keeps starting
    /// buffered tasks and finishing them (it does not read the log meanwhile, see the loop);
    /// what finishes meanwhile goes into the next one. Committing in the
    /// loop itself held every slot idle for a commit's round trips (tens of ms on three
    /// brokers), which capped an exactly-once worker below 150 tasks/s.
    ExactlyOnce {
        producer: Arc<dyn TransactionalProducer>,
        stash: HashMap<TopicPartition, BTreeMap<i64, Vec<Record>>>,
        committing: Option<Committing>,
        /// How long one transaction may take ([`WorkerSettings::transaction_deadline`]).
        allowed: Duration,
    },
}

/// How long a transaction committing in the background may take before the worker gives up
/// on it. Every call in it is bounded (records time out with the transaction, resumed calls
/// stop after its timeout), so a legitimate commit ends well within this even on a cluster
/// losing a broker. The worker does not read its partitions while it commits, so an unbounded
/// wait held them until librdkafka's max.poll.interval.ms (5 min): in a broker_kill run a
/// worker stopped polling with two lane partitions, and 758 tasks waited past the drain.
/// Below the group's rebalance timeout (25 s, `MAX_POLL_INTERVAL_MS`), which a member not
/// reading for longer would exceed.
pub const TRANSACTION_DEADLINE: Duration = Duration::from_secs(20);

/// A transaction committing in the background.
struct Committing {
    handle: tokio::task::JoinHandle<Result<(), WorkerError>>,
    /// Fixed when it began: the loop's `select!` drops and re-creates the wait on every turn,
    /// so a timeout counted from each wait would never fire.
    deadline: tokio::time::Instant,
    allowed: Duration,
}

impl Committing {
    fn spawn(commit: impl std::future::Future<Output = Result<(), WorkerError>> + Send + 'static, allowed: Duration) -> Self {
        Self { handle: tokio::spawn(commit), deadline: tokio::time::Instant::now() + allowed, allowed }
    }
}

/// Waits for a background transaction, until its deadline. One that overruns is abandoned
/// (its task is aborted, which drops the transaction handle: the producer aborts it, or is
/// re-initialised, before the next one) and ends the membership like any passing failure,
/// so the partitions move and their uncommitted tasks run again.
async fn await_transaction(committing: &mut Committing) -> Result<(), WorkerError> {
    match tokio::time::timeout_at(committing.deadline, &mut committing.handle).await {
        Ok(joined) => joined.map_err(|e| WorkerError::Attempt(format!("transaction task: {e}")))?,
        Err(_) => {
            committing.handle.abort();
            tracing::error!("a transaction did not end by its deadline; abandoning it and leaving the group");
            Err(LogError::Timeout { operation: "transaction commit", after: committing.allowed }.into())
        }
    }
}

impl Delivery {
    /// Waits for the transaction committing in the background, if any, and returns its result.
    async fn settle(&mut self) -> Result<(), WorkerError> {
        if let Delivery::ExactlyOnce { committing, .. } = self
            && let Some(mut running) = committing.take()
        {
            return await_transaction(&mut running).await;
        }
        Ok(())
    }

    /// Resolves when the background transaction ends (never while none runs).
    async fn committed(&mut self) -> Result<(), WorkerError> {
        match self {
            Delivery::ExactlyOnce { committing: Some(running), .. } => {
                let result = await_transaction(running).await;
                if let Delivery::ExactlyOnce { committing, .. } = self {
                    *committing = None;
                }
                result
            }
            _ => std::future::pending().await,
        }
    }

    fn is_committing(&self) -> bool {
        matches!(self, Delivery::ExactlyOnce { committing: Some(_), .. })
    }
}

impl WorkerError {
    /// Whether the worker cannot go on at all: the log itself is gone or corrupt, or a client
    /// cannot be created from the configuration ([`LogError::is_fatal`]). Everything
    /// else (a broker restarting, a member fenced, a transaction aborted, the registry down, a
    /// write that timed out) ends only the current group membership: the worker leaves, waits
    /// and rejoins, and the tasks whose offsets were not committed run again.
    pub fn is_fatal(&self) -> bool {
        let log = match self {
            WorkerError::Log(e) => e,
            WorkerError::Read(EventReadError::Log(e)) => e,
            WorkerError::Presence(PresenceError::Log(e)) => e,
            _ => return false,
        };
        log.is_fatal()
    }
}

/// A membership that lasted this long was healthy: the next failure starts the back-off over.
const HEALTHY_TERM: Duration = Duration::from_secs(30);

/// Runs until `shutdown` is cancelled, then drains: stops taking work, lets running tasks
/// finish within `drain_timeout`, commits, leaves the group and deregisters.
///
/// A passing failure (see [`WorkerError::is_fatal`]) never ends the worker: the current group
/// membership ends (in-flight attempts are dropped, uncommitted work goes back to the group)
/// and after a back-off the worker joins again. Only a fatal error is returned.
pub async fn run_worker(
    log: Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    agent: Arc<dyn Agent>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> Result<WorkerReport, WorkerError> {
    let topics = TaskTopics::new(settings.topic_prefix.clone());
    let lane_of: HashMap<String, Lane> = settings.agent.lanes_by_priority().map(|lane| (topics.lane(&settings.agent_type, lane), lane)).collect();
    let lane_topics = settings.agent.lane_topics(&settings.agent_type, topics.prefix());
    let producer = log.producer()?;

    // Cancel requests first: a task cancelled before this worker started must not run.
    let cancels = Arc::new(Cancels::default());
    let background = CancellationToken::new();
    // However this function returns (an early `?` included), the background readers stop.
    let _stop_background = background.clone().drop_guard();
    let control =
        until_started("the control topic reader", &shutdown, || watch_control(&log, codec.clone(), &topics, cancels.clone(), background.clone())).await?;
    let Some(control) = control else { return Ok(WorkerReport::default()) };

    let load = Arc::new(Load::default());
    let identity = Identity {
        agent_id: settings.worker_id.clone(),
        agent_type: settings.agent_type.clone(),
        capabilities: vec![settings.agent_type.clone()],
        concurrency: settings.agent.concurrency as i32,
        tenant: "system".into(),
    };
    let presence = until_started("registering the agent", &shutdown, || {
        Presence::register(codec.clone(), producer.clone(), topics.clone(), identity.clone(), settings.heartbeat_interval, load.clone())
    })
    .await;
    let mut presence = match presence {
        Ok(Some(presence)) => presence,
        other => {
            background.cancel();
            let _ = control.await;
            return other.map(|_| WorkerReport::default());
        }
    };

    // Delegating agents await sub-task outcomes; an hour back covers children of attempts
    // re-run after a crash.
    let delegation = if settings.agent.delegates {
        let since = crate::events::TimestampMicros::now().0 / 1000 - 3_600_000;
        let watch = until_started("following task.results", &shutdown, || super::outcomes::OutcomeWatch::start(&log, codec.clone(), &topics, since)).await;
        match watch {
            Ok(Some(watch)) => Some((
                super::client::TaskClient::new(&log, codec.clone(), topics.clone(), settings.worker_id.clone())
                    .map_err(|e| WorkerError::Attempt(e.to_string()))?,
                Arc::new(watch),
            )),
            other => {
                background.cancel();
                let _ = control.await;
                return other.map(|_| WorkerReport::default());
            }
        }
    } else {
        None
    };
    // One transactional id for the worker's whole life: a new membership's first transaction
    // fences and aborts whatever the previous one left open.
    let transactions = if settings.agent.exactly_once { Some(log.transactional_producer(&format!("agentlog-worker-{}", settings.worker_id))?) } else { None };
    let env = Arc::new(AttemptEnv {
        agent,
        agent_type: settings.agent_type.clone(),
        worker_id: settings.worker_id.clone(),
        codec: codec.clone(),
        producer: producer.clone(),
        topics,
        policy: settings.agent.retry.clone(),
        timeout: Duration::from_millis(settings.agent.timeout_ms),
        cancels,
        max_record_bytes: log.max_record_bytes(),
        delegation,
    });
    let outcomes = env.delegation.as_ref().map(|(_, watch)| watch.clone());
    let member = Member {
        log: &log,
        codec: &codec,
        env: &env,
        settings: &settings,
        lane_topics: &lane_topics,
        lane_of: &lane_of,
        load: &load,
        transactions: transactions.as_ref(),
    };

    let mut report = WorkerReport::default();
    let mut backoff = Backoff::default();
    let result = loop {
        let began = tokio::time::Instant::now();
        match member.run(&mut presence, &mut report, &shutdown).await {
            Ok(()) => break Ok(()),
            Err(error) if shutdown.is_cancelled() || error.is_fatal() => break Err(error),
            Err(error) => {
                if began.elapsed() >= HEALTHY_TERM {
                    backoff.reset();
                }
                tracing::error!(%error, failures = backoff.failures() + 1, "worker left its group after a passing failure; rejoining after a back-off");
                if !backoff.wait(&shutdown).await {
                    break Ok(());
                }
            }
        }
    };

    // Whatever happened, the owned tasks stop.
    background.cancel();
    if let Some(watch) = outcomes {
        watch.stop().await;
    }
    if let Err(error) = control.await {
        tracing::warn!(%error, "control reader ended abnormally");
    }
    result?;
    if let Err(error) = presence.deregister("drained").await {
        tracing::warn!(%error, "deregistering the agent failed; the supervisor declares it lost");
    }
    Ok(report)
}

/// Calls `start` until it succeeds, backing off between passing failures. `None` when
/// `shutdown` came first; a fatal error is returned.
async fn until_started<T, E, F, Fut>(what: &str, shutdown: &CancellationToken, mut start: F) -> Result<Option<T>, WorkerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<WorkerError>,
{
    let mut backoff = Backoff::default();
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            attempt = start() => attempt,
        };
        match attempt.map_err(Into::into) {
            Ok(started) => return Ok(Some(started)),
            Err(error) if error.is_fatal() => return Err(error),
            Err(error) => {
                tracing::warn!(%error, failures = backoff.failures() + 1, "{what} failed; retrying");
                if !backoff.wait(shutdown).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// What one group membership of the worker needs; [`Member::run`] is one membership.
struct Member<'a> {
    log: &'a Arc<dyn EventLog>,
    codec: &'a Arc<WireCodec>,
    env: &'a Arc<AttemptEnv>,
    settings: &'a WorkerSettings,
    lane_topics: &'a [String],
    lane_of: &'a HashMap<String, Lane>,
    load: &'a Arc<Load>,
    transactions: Option<&'a Arc<dyn TransactionalProducer>>,
}

impl Member<'_> {
    /// Joins the group and works until `shutdown` (then drains: `Ok`) or a failure (`Err`;
    /// in-flight attempts are dropped and the member leaves the group).
    async fn run(&self, presence: &mut Presence, report: &mut WorkerReport, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let settings = self.settings;
        let load = self.load;
        let env = self.env;
        let group = format!("agents.{}", settings.agent_type);
        let mut consumer =
            self.log.consumer(ConsumerOptions { group: Some(group.clone()), client_id: Some(settings.worker_id.clone()), ..Default::default() })?;
        consumer.subscribe(self.lane_topics)?;
        let mut delivery = match self.transactions {
            Some(producer) => {
                Delivery::ExactlyOnce { producer: producer.clone(), stash: HashMap::new(), committing: None, allowed: settings.transaction_deadline }
            }
            None => Delivery::AtLeastOnce,
        };
        let mut reader = EventReader::<TaskSubmitted>::new(consumer, self.codec.clone(), env.producer.clone(), env.topics.dlq());
        let writes_own = matches!(delivery, Delivery::AtLeastOnce);

        let mut scheduler: Scheduler<Taken> = Scheduler::new(settings.agent.concurrency as usize, settings.prefetch_per_lane);
        let mut tracker = OffsetTracker::default();
        let mut floors = FloorLookups::new(self.log.admin(), group.clone());
        let mut running: JoinSet<Done> = JoinSet::new();
        // Per lane: whether its partitions are paused; `None` after a rebalance, to re-apply.
        let mut paused: [Option<bool>; Lane::COUNT] = [None; Lane::COUNT];
        // Commit positions of finished work, flushed on the commit tick.
        let mut pending: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let result: Result<(), WorkerError> = async {
            loop {
                while let Some((_, taken)) = scheduler.take_next() {
                    load.in_flight.fetch_add(1, Ordering::Relaxed);
                    // Boxed: a turn's future is several kilobytes, and spawning it unboxed
                    // copies all of it more than once per task.
                    running.spawn(Box::pin(turn(env.clone(), taken, writes_own, shutdown.clone())));
                }
                update_pauses(reader.consumer(), &scheduler, &floors, self.lane_topics, self.lane_of, &mut paused)?;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    Some(joined) = running.join_next(), if !running.is_empty() => {
                        let mut batch = vec![joined];
                        // Everything else already finished goes in the same commit.
                        while let Some(more) = running.try_join_next() {
                            batch.push(more);
                        }
                        finish(batch, &mut delivery, &mut scheduler, &mut tracker, &mut pending, report, load)?;
                    }
                    committed = delivery.committed(), if delivery.is_committing() => {
                        committed?;
                        // The next transaction waits a full interval, while the reader (not
                        // read during a commit) catches up. The tick fell due during the commit,
                        // so without this the next one began at once: the reader got a turn only
                        // by chance, buffered tasks ran dry while each commit's acks took a
                        // second or two on three busy brokers, and a revocation waited several
                        // commits (a restarted member of the fault suite got partitions 9 s
                        // after it subscribed; exactly-once workers ran ~50 tasks per commit).
                        commit_tick.reset();
                    }
                    known = floors.next(), if floors.is_looking() => {
                        if !known.is_empty() {
                            let (parts, found): (Vec<TopicPartition>, Vec<Option<i64>>) = known.into_iter().unzip();
                            tracing::debug!(?parts, committed = ?found, "committed offsets known; reading the partitions");
                            tracker.assigned(&parts, &found);
                            // Re-applied per lane, which resumes them unless their lane is full.
                            paused = [None; Lane::COUNT];
                        }
                    }
                    _ = commit_tick.tick(), if !pending.is_empty() && !delivery.is_committing() => {
                        flush(&mut pending, &mut delivery, reader.consumer()).await?;
                    }
                    // Not read while a transaction commits: librdkafka hands a revocation to the
                    // application (and acknowledges it to the group) only while it is polled, and
                    // a transactional offset commit is checked against the member's epoch, not
                    // its assignment. Polling on would let a partition move to a new owner, which
                    // re-runs its tasks, while the transaction commits their outcomes here too.
                    // Tasks already buffered keep starting meanwhile.
                    outcome = reader.next(), if !delivery.is_committing() => match outcome? {
                        ReadOutcome::Event { record, event, .. } => {
                            let tp = record.topic_partition();
                            if floors.awaits(&tp) {
                                // Paused since its assignment, so not expected: put it back
                                // until the partition's committed offset is known.
                                tracing::warn!(partition = %tp, offset = record.offset, "a record of a partition whose committed offset is not known yet; reading it later");
                                reader.consumer().seek(&tp, SeekTo::Offset(record.offset)).await?;
                                reader.consumer().pause(std::slice::from_ref(&tp))?;
                                continue;
                            }
                            if let Some(floor) = tracker.below_floor(&tp, record.offset) {
                                // Committed work is never taken again, whatever position the
                                // client resumed the partition at.
                                tracing::warn!(partition = %tp, offset = record.offset, committed = floor, "skipping a record below the group's committed offset");
                                continue;
                            }
                            let lane = self.lane_of.get(&record.topic).copied().unwrap_or(Lane::Low);
                            tracker.started(&tp, record.offset);
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
                            // A transaction already under way commits what was ours when it began.
                            delivery.settle().await?;
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
                            delivery.settle().await?;
                            // Waiting tasks of lost partitions belong to their new owner.
                            scheduler.remove_waiting(|t| parts.contains(&t.record.topic_partition()));
                            tracker.revoke(&parts);
                            floors.revoke(&parts);
                            paused = [None; Lane::COUNT];
                        }
                        ReadOutcome::Rebalance(ConsumerEvent::Assigned(parts)) => {
                            tracing::info!(?parts, "partitions assigned");
                            // Read only once the group's committed offsets are known (see
                            // `floors`): paused here, resumed when the lookup answers.
                            reader.consumer().pause(&parts)?;
                            floors.start(&parts);
                            paused = [None; Lane::COUNT];
                        }
                        ReadOutcome::Rebalance(_) => paused = [None; Lane::COUNT],
                    },
                }
            }

            // Drain: nothing new starts; waiting tasks stay uncommitted for the next owner.
            if let Err(error) = presence.change(AgentState::Draining, Some("shutdown requested".into())).await {
                tracing::warn!(%error, "the Draining state was not written");
            }
            scheduler.drain_waiting();
            let deadline = tokio::time::Instant::now() + settings.drain_timeout;
            while !running.is_empty() {
                match tokio::time::timeout_at(deadline, running.join_next()).await {
                    Ok(Some(joined)) => {
                        finish(vec![joined], &mut delivery, &mut scheduler, &mut tracker, &mut pending, report, load)?;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        report.abandoned = running.len() as u64;
                        running.shutdown().await;
                        break;
                    }
                }
            }
            delivery.settle().await?;
            flush(&mut pending, &mut delivery, reader.consumer()).await?;
            delivery.settle().await?;
            Ok(())
        }
        .await;
        // A transaction still under way is finished or aborted before the member leaves.
        let settled = delivery.settle().await;
        let result = result.and(settled);

        // Whatever happened, the attempts of this membership stop and the member leaves.
        let dropped = running.len() as i64;
        running.shutdown().await;
        load.in_flight.fetch_sub(dropped, Ordering::Relaxed);
        let closed = reader.into_consumer().close().await;
        result?;
        closed?;
        Ok(())
    }
}

/// One task's turn, as a spawned task: the attempt and, with at-least-once, writing its records.
async fn turn(env: Arc<AttemptEnv>, taken: Taken, write: bool, shutdown: CancellationToken) -> Done {
    let Taken { record, task } = taken;
    let tp = record.topic_partition();
    let outcome = async {
        let mut outcome = run_attempt(&env, &record, &task).await?;
        if write {
            // Written records are not needed afterwards (only exactly-once keeps them, to
            // write in its transaction), so they move instead of being cloned.
            match write_durably(env.producer.as_ref(), std::mem::take(&mut outcome.records), &shutdown).await {
                Ok(()) => {}
                // Refused for what they are, the records would be refused on every run of the
                // task (the attempt keeps them within the size limit, so this is the rest:
                // a partition the topic lost, say). The task fails instead; only an error of
                // the log itself ends the membership.
                Err(error) if error.rejects_record() => {
                    tracing::error!(task_id = %task.task_id, %error, "the log refused the task's outcome; the task fails instead");
                    let failure = refused(&env, &task, &error).await?;
                    outcome.ending = failure.ending;
                    match write_durably(env.producer.as_ref(), failure.records, &shutdown).await {
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
        Ok::<_, WorkerError>(outcome)
    }
    .await;
    Done { tp, offset: record.offset, key: task.ordering_key.clone(), outcome }
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
        // An outcome that could not be written for a passing reason (the log or registry away
        // past the worker's shutdown) ends the membership: the offset stays uncommitted and
        // the task runs again on whoever owns the partition next. Records the log refuses for
        // what they are never get here (see `turn`).
        let outcome = done.outcome?;
        report.count(outcome.ending);
        match outcome.ending {
            Ending::Completed => load.completed.fetch_add(1, Ordering::Relaxed),
            Ending::Failed | Ending::DeadLettered => load.failed.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        scheduler.finished(done.key.as_deref());
        if !tracker.is_in_flight(&done.tp, done.offset) {
            // Taken while the partition was ours before a rebalance: it has been revoked since
            // (and maybe given back). Whoever owns it now runs or ran this task and commits its
            // outcome; stashing ours would put a second copy into a later transaction.
            continue;
        }
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
    // One transaction at a time: the one under way ends before the next begins.
    delivery.settle().await?;
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
        Delivery::AtLeastOnce => match commit(consumer, &positions).await {
            // The outcomes are durable; only the offsets wait for the next tick.
            Err(WorkerError::Log(error)) if error.retryable() => {
                tracing::warn!(%error, "committing offsets failed; retrying on the next tick");
                for (tp, position) in positions {
                    let slot = pending.entry(tp).or_insert(position);
                    *slot = (*slot).max(position);
                }
                Ok(())
            }
            other => other,
        },
        Delivery::ExactlyOnce { producer, stash, committing, allowed } => {
            let mut records = Vec::new();
            for (tp, position) in &positions {
                if let Some(waiting) = stash.get_mut(tp) {
                    let later = waiting.split_off(position);
                    records.extend(std::mem::replace(waiting, later).into_values().flatten());
                }
            }
            // The membership proof is taken now, while these partitions are ours.
            let group = consumer.group_metadata();
            let producer = producer.clone();
            *committing = Some(Committing::spawn(async move { commit_transaction(producer.as_ref(), group, records, &positions).await }, *allowed));
            Ok(())
        }
    }
}

/// Writes the records and commits the positions atomically. A transaction refused because
/// the group moved on (a zombie after a rebalance) is aborted: the new owner re-runs those
/// tasks, and their outcomes appear once, from it.
async fn commit_transaction(
    producer: &dyn TransactionalProducer,
    group: Option<crate::log::GroupMetadata>,
    records: Vec<Record>,
    positions: &[(TopicPartition, i64)],
) -> Result<(), WorkerError> {
    let mut transaction = producer.begin().await?;
    for record in records {
        if let Err(error) = transaction.send(record).await {
            transaction.abort().await?;
            return Err(error.into());
        }
    }
    match transaction.commit_with_offsets(positions, group.as_ref()).await {
        // The commit's round trips bound an exactly-once worker's pace (see `prefetch_per_lane`):
        // the log backend says at debug where each commit spent its time.
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
    floors: &FloorLookups,
    topics: &[String],
    lane_of: &HashMap<String, Lane>,
    paused: &mut [Option<bool>; Lane::COUNT],
) -> Result<(), WorkerError> {
    // The assignment is only fetched when a lane's state flips: this runs on every turn of
    // the poll loop, and on Kafka it copies librdkafka's assignment list.
    let mut assignment: Option<Vec<TopicPartition>> = None;
    for topic in topics {
        let lane = lane_of.get(topic).copied().unwrap_or(Lane::Low);
        let full = match paused[lane.index()] {
            Some(true) => !scheduler.lane_low(lane),
            _ => scheduler.lane_full(lane),
        };
        if paused[lane.index()] == Some(full) {
            continue;
        }
        // A partition whose committed offset is not known yet stays paused whatever its lane.
        let parts: Vec<TopicPartition> =
            assignment.get_or_insert_with(|| consumer.assignment()).iter().filter(|tp| &tp.topic == topic && (full || !floors.awaits(tp))).cloned().collect();
        if full {
            consumer.pause(&parts)?
        } else {
            consumer.resume(&parts)?
        }
        tracing::debug!(%topic, paused = full, "lane flow control");
        paused[lane.index()] = Some(full);
    }
    Ok(())
}
