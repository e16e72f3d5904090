//! `agentlog worker`: one member of consumer group `agents.<type>`.
//!
//! The poll loop never waits for an agent: tasks run as spawned attempts, and the loop keeps
//! reading (pausing a lane's partitions while its prefetch buffer is full) so a long LLM call
//! never gets the member evicted from its group. An offset is committed only after the
//! task's outcome records are durable, and only as far as every earlier task of the partition
//! is done (at-least-once). With `exactly_once` the outcome records of the contiguous done
//! prefix and the offset commit go in one transaction, so an outcome appears on
//! `task.results` exactly once even if the worker dies between the two. A record that cannot
//! be decoded is dead-lettered by the [`EventReader`](crate::events::reader::EventReader) and
//! counts as done.
//!
//! Here: the worker's life (registration, background readers, memberships after passing
//! failures). [`membership`]: one group membership's poll loop; [`delivery`]: how finished
//! work is committed (at-least-once or in transactions); [`turn`]: one task's attempt.
//!
//! Alongside the loop the worker owns two tasks: the control-topic reader that delivers
//! cancel requests ([`super::cancels`]) and the heartbeat of its [`Presence`]. Both stop when
//! the worker stops.

mod delivery;
mod membership;
mod turn;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use self::membership::Member;
use super::attempt::{AttemptEnv, Ending};
use super::cancels::{Cancels, watch_control};
use super::catalog::AgentTypeConfig;
use super::checkpoints::CheckpointIndex;
use super::client::TaskClient;
use super::outcomes::OutcomeWatch;
use super::presence::{Identity, Load, Presence, PresenceError};
use super::runtime::Agent;
use super::topics::TaskTopics;
use crate::backoff::Backoff;
use crate::events::Lane;
use crate::events::reader::EventReadError;
use crate::events::wire::{WireCodec, WireError};
use crate::log::{EventLog, LogError, TransactionalProducer};

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
    #[error("serving attempt callbacks on {listen}: {source}")]
    Callback { listen: String, source: std::io::Error },
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
    /// Where a delegating `http`/`exec` type serves its attempts' callbacks.
    pub callback: super::callback::CallbackConfig,
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

/// How long a transaction committing in the background may take before the worker gives up
/// on it. Every call in it is bounded (records time out with the transaction, resumed calls
/// stop after its timeout), so a legitimate commit ends well within this even on a cluster
/// losing a broker. The worker does not read its partitions while it commits, so an unbounded
/// wait held them until librdkafka's max.poll.interval.ms (5 min): in a broker_kill run a
/// worker stopped polling with two lane partitions, and 758 tasks waited past the drain.
/// Below the group's rebalance timeout (25 s, `MAX_POLL_INTERVAL_MS`), which a member not
/// reading for longer would exceed.
pub const TRANSACTION_DEADLINE: Duration = Duration::from_secs(20);

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
    /// Attempts that ended waiting for a signal.
    pub suspended: u64,
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
            Ending::Suspended => self.suspended += 1,
        }
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
///
/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn run_worker(
    log: Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    agent: Arc<dyn Agent>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> BoxFuture<'static, Result<WorkerReport, WorkerError>> {
    Box::pin(work(log, codec, agent, settings, shutdown))
}

async fn work(
    log: Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    agent: Arc<dyn Agent>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) -> Result<WorkerReport, WorkerError> {
    let topics = TaskTopics::new(settings.topic_prefix.clone());
    let lane_of: HashMap<String, Lane> = settings.agent.lanes_by_priority().map(|lane| (topics.lane(&settings.agent_type, lane), lane)).collect();
    let lane_topics = settings.agent.lane_topics(&settings.agent_type, topics.prefix());
    let mut background = Background::default();
    let worked = match start(&log, &codec, agent, &settings, topics, &mut background, &shutdown).await {
        Ok(Some(mut started)) => {
            let member = Member {
                log: &log,
                codec: &codec,
                env: &started.env,
                settings: &settings,
                lane_topics: &lane_topics,
                lane_of: &lane_of,
                load: &started.load,
                transactions: started.transactions.as_ref(),
            };
            memberships(&member, &mut started.presence, &shutdown).await.map(|report| Some((report, started.presence)))
        }
        Ok(None) => Ok(None),
        Err(error) => Err(error),
    };
    // Whatever happened, the owned tasks stop.
    background.stop().await;
    let Some((report, presence)) = worked? else { return Ok(WorkerReport::default()) };
    if let Err(error) = presence.deregister("drained").await {
        tracing::warn!(%error, "deregistering the agent failed; the supervisor declares it lost");
    }
    Ok(report)
}

/// What runs beside the worker's memberships: the control-topic reader (cancel requests) and,
/// for delegating types, the `task.results` follower. However the worker returns (an early
/// `?` included), they stop: the token's drop guard cancels them if [`Background::stop`] is
/// never reached.
struct Background {
    token: CancellationToken,
    _guard: tokio_util::sync::DropGuard,
    control: Option<tokio::task::JoinHandle<()>>,
    outcomes: Option<Arc<OutcomeWatch>>,
    checkpoints: Option<Arc<CheckpointIndex>>,
    callbacks: Option<Arc<super::callback::Callbacks>>,
}

impl Default for Background {
    fn default() -> Self {
        let token = CancellationToken::new();
        Background { _guard: token.clone().drop_guard(), token, control: None, outcomes: None, checkpoints: None, callbacks: None }
    }
}

impl Background {
    async fn stop(self) {
        self.token.cancel();
        if let Some(watch) = self.outcomes {
            watch.stop().await;
        }
        if let Some(index) = self.checkpoints {
            index.stop().await;
        }
        if let Some(callbacks) = self.callbacks {
            callbacks.stop().await;
        }
        if let Some(control) = self.control
            && let Err(error) = control.await
        {
            tracing::warn!(%error, "control reader ended abnormally");
        }
    }
}

/// What a started worker works with.
struct Started {
    presence: Presence,
    env: Arc<AttemptEnv>,
    load: Arc<Load>,
    transactions: Option<Arc<dyn TransactionalProducer>>,
}

/// Starts the background readers (into `background`) and registers the agent, each retried
/// until it succeeds. `None` when `shutdown` came first.
async fn start(
    log: &Arc<dyn EventLog>,
    codec: &Arc<WireCodec>,
    agent: Arc<dyn Agent>,
    settings: &WorkerSettings,
    topics: TaskTopics,
    background: &mut Background,
    shutdown: &CancellationToken,
) -> Result<Option<Started>, WorkerError> {
    let producer = log.producer()?;
    // Cancel requests first: a task cancelled before this worker started must not run.
    let cancels = Arc::new(Cancels::default());
    let token = background.token.clone();
    let started = until_started("the control topic reader", shutdown, || watch_control(log, codec.clone(), &topics, cancels.clone(), token.clone())).await?;
    let Some(control) = started else { return Ok(None) };
    background.control = Some(control);

    let load = Arc::new(Load::default());
    let identity = Identity {
        agent_id: settings.worker_id.clone(),
        agent_type: settings.agent_type.clone(),
        capabilities: vec![settings.agent_type.clone()],
        concurrency: settings.agent.concurrency as i32,
        tenant: "system".into(),
    };
    let registered = until_started("registering the agent", shutdown, || {
        Presence::register(codec.clone(), producer.clone(), topics.clone(), identity.clone(), settings.heartbeat_interval, load.clone())
    })
    .await?;
    let Some(presence) = registered else { return Ok(None) };

    // The checkpoints of running tasks, read before the first task is taken: a task this
    // worker re-runs after another died gets the dead worker's last checkpoint.
    let indexed = until_started("reading task.checkpoints", shutdown, || CheckpointIndex::start(log, codec.clone(), &topics)).await?;
    let Some(index) = indexed else { return Ok(None) };
    let checkpoints = Arc::new(index);
    background.checkpoints = Some(checkpoints.clone());

    // Delegating agents await sub-task outcomes; an hour back covers children of attempts
    // re-run after a crash.
    let delegation = if settings.agent.delegates {
        let since = crate::events::TimestampMicros::now().0 / 1000 - 3_600_000;
        let following = until_started("following task.results", shutdown, || OutcomeWatch::start(log, codec.clone(), &topics, since)).await?;
        let Some(watch) = following else { return Ok(None) };
        let watch = Arc::new(watch);
        background.outcomes = Some(watch.clone());
        let client = TaskClient::new(log, codec.clone(), topics.clone(), settings.worker_id.clone()).map_err(|e| WorkerError::Attempt(e.to_string()))?;
        Some((client, watch))
    } else {
        None
    };
    // An agent outside the process delegates through a callback URL (a builtin gets the
    // delegate itself).
    let callbacks = if delegation.is_some() && !matches!(settings.agent.runtime, super::RuntimeConfig::Builtin { .. }) {
        let listen = settings.callback.listen.clone();
        let callbacks = super::callback::Callbacks::start(&settings.callback).await.map_err(|source| WorkerError::Callback { listen, source })?;
        background.callbacks = Some(callbacks.clone());
        Some(callbacks)
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
        producer,
        topics,
        policy: settings.agent.retry.clone(),
        timeout: Duration::from_millis(settings.agent.timeout_ms),
        cancels,
        max_record_bytes: log.max_record_bytes(),
        delegation,
        checkpoints: Some(checkpoints),
        on_signal_timeout: settings.agent.on_signal_timeout,
        callbacks,
    });
    Ok(Some(Started { presence, env, load, transactions }))
}

/// Group memberships one after another: after a passing failure the member has left; it
/// waits out a back-off and joins again, until `shutdown` (drained: `Ok`) or a fatal error.
async fn memberships(member: &Member<'_>, presence: &mut Presence, shutdown: &CancellationToken) -> Result<WorkerReport, WorkerError> {
    let mut report = WorkerReport::default();
    let mut backoff = Backoff::default();
    loop {
        let began = tokio::time::Instant::now();
        match member.run(presence, &mut report, shutdown).await {
            Ok(()) => return Ok(report),
            Err(error) if shutdown.is_cancelled() || error.is_fatal() => return Err(error),
            Err(error) => {
                if began.elapsed() >= HEALTHY_TERM {
                    backoff.reset();
                }
                tracing::error!(%error, failures = backoff.failures() + 1, "worker left its group after a passing failure; rejoining after a back-off");
                if !backoff.wait(shutdown).await {
                    return Ok(report);
                }
            }
        }
    }
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
