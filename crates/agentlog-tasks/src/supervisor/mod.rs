//! `agentlog supervisor`: durable timers (delayed tasks, retry backoff), the heartbeat monitor
//! (AgentLost) and job aggregation (JobCompleted).
//!
//! One instance is active at a time, elected through the log: every supervisor joins consumer
//! group `<prefix>supervisor` on the single-partition `control` topic, and whoever owns that
//! partition leads. When the leader dies the group hands the partition to a standby, which
//! rebuilds its state from the log and takes over. Components read their topics without a
//! group, so a new leader always sees the whole picture.

pub mod jobs;
pub mod liveness;
pub mod timer_store;
pub mod timers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::cancels::{Cancels, watch_control};
use crate::agent::client::{ClientError, TaskClient};
use crate::agent::topics::TaskTopics;
use crate::events::wire::{WireCodec, WireError};
use crate::log::{ConsumerEvent, ConsumerOptions, EventLog, LogError, TopicPartition};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("encoding a supervisor event failed: {0}")]
    Encode(#[from] WireError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("a supervisor component panicked: {0}")]
    Component(String),
    #[error(transparent)]
    TimerStore(#[from] timer_store::TimerStoreError),
}

/// The heartbeat interval's allowed range, in ms: from 10 ms to an hour.
const HEARTBEAT_INTERVAL_MS: (u64, u64) = (10, 3_600_000);
/// At most this many missed heartbeats before an instance is declared lost.
const MAX_MISSED_HEARTBEATS: u32 = 1_000;

/// `[supervisor]` in config: heartbeats (workers send them, the supervisor watches them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// How often workers heartbeat.
    pub heartbeat_interval_ms: u64,
    /// Heartbeats missed in a row before an instance is declared lost.
    pub missed_heartbeats: u32,
    /// Where the supervisor keeps disposable state rebuilt from the log at every start (the
    /// index of pending timers). Each process uses its own subdirectory, named after its
    /// member id and removed when it stops, so a leader and a standby may share this.
    pub state_dir: PathBuf,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self { heartbeat_interval_ms: 1_000, missed_heartbeats: 3, state_dir: PathBuf::from("data/supervisor") }
    }
}

impl SupervisorConfig {
    /// Problems with `[supervisor]`, each naming the full key. A zero interval would stop
    /// every worker at start (a timer period must not be zero), and one past `i64` of
    /// milliseconds would make every agent lost at once.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(HEARTBEAT_INTERVAL_MS.0..=HEARTBEAT_INTERVAL_MS.1).contains(&self.heartbeat_interval_ms) {
            out.push(format!(
                "supervisor.heartbeat_interval_ms must be between {} and {} (got {})",
                HEARTBEAT_INTERVAL_MS.0, HEARTBEAT_INTERVAL_MS.1, self.heartbeat_interval_ms
            ));
        }
        if !(1..=MAX_MISSED_HEARTBEATS).contains(&self.missed_heartbeats) {
            out.push(format!("supervisor.missed_heartbeats must be between 1 and {MAX_MISSED_HEARTBEATS} (got {})", self.missed_heartbeats));
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub topic_prefix: String,
    pub supervisor_id: String,
    pub config: SupervisorConfig,
}

impl SupervisorError {
    /// Whether the supervisor cannot go on at all (the log itself is gone or corrupt). Any
    /// other failure ends the current term: the instance leaves the election group (a standby
    /// may lead meanwhile), backs off and joins again.
    pub fn is_fatal(&self) -> bool {
        matches!(self, SupervisorError::Log(error) if error.is_fatal())
    }

    /// Whether doing the same again later may succeed (the log or the registry away).
    pub fn retryable(&self) -> bool {
        match self {
            SupervisorError::Log(error) => error.retryable(),
            SupervisorError::Encode(error) => matches!(error, WireError::Registry { .. }),
            SupervisorError::Client(error) => error.retryable(),
            SupervisorError::Component(_) | SupervisorError::TimerStore(_) => false,
        }
    }
}

/// A term that lasted this long was healthy: the next failure starts the back-off over.
const HEALTHY_TERM: Duration = Duration::from_secs(30);

/// Runs until `shutdown`, leading whenever the group gives this instance the control
/// partition. A passing failure (a broker restarting, the registry down) ends only the
/// current term; the supervisor rejoins the election after a back-off.
///
/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn run_supervisor(
    log: Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    settings: SupervisorSettings,
    shutdown: CancellationToken,
) -> BoxFuture<'static, Result<(), SupervisorError>> {
    Box::pin(supervise(log, codec, settings, shutdown))
}

async fn supervise(log: Arc<dyn EventLog>, codec: Arc<WireCodec>, settings: SupervisorSettings, shutdown: CancellationToken) -> Result<(), SupervisorError> {
    let mut backoff = crate::backoff::Backoff::default();
    loop {
        let began = tokio::time::Instant::now();
        match run_term(&log, &codec, &settings, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(error) if shutdown.is_cancelled() || error.is_fatal() => return Err(error),
            Err(error) => {
                if began.elapsed() >= HEALTHY_TERM {
                    backoff.reset();
                }
                tracing::error!(supervisor = %settings.supervisor_id, %error, failures = backoff.failures() + 1, "supervisor term ended by a passing failure; rejoining the election after a back-off");
                if !backoff.wait(&shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

/// One term: a member of the election group, leading while it owns the control partition.
async fn run_term(log: &Arc<dyn EventLog>, codec: &Arc<WireCodec>, settings: &SupervisorSettings, shutdown: &CancellationToken) -> Result<(), SupervisorError> {
    let topics = TaskTopics::new(settings.topic_prefix.clone());
    let control = TopicPartition::new(topics.control(), 0);
    let mut election =
        log.consumer(ConsumerOptions { group: Some(topics.supervisor_group()), client_id: Some(settings.supervisor_id.clone()), ..Default::default() })?;
    election.subscribe(std::slice::from_ref(&control.topic))?;
    let mut leading: Option<Leadership> = None;
    let result = loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            // A component that fails ends the term (the caller backs off and rejoins; the
            // group elects again meanwhile).
            Some(joined) = async { match &mut leading { Some(l) => l.components.join_next().await, None => None } }, if leading.is_some() => {
                match joined {
                    Ok(Ok(())) => continue,
                    Ok(Err(error)) => break Err(error),
                    Err(error) => break Err(SupervisorError::Component(error.to_string())),
                }
            }
            event = election.next_event() => event,
        };
        match event {
            Ok(ConsumerEvent::Assigned(parts)) if parts.contains(&control) && leading.is_none() => {
                tracing::info!(supervisor = %settings.supervisor_id, "leading: starting timers, heartbeat monitor and jobs");
                match Leadership::start(log, codec, &topics, settings).await {
                    Ok(l) => leading = Some(l),
                    Err(error) => break Err(error),
                }
            }
            Ok(ConsumerEvent::Revoked(parts)) if parts.contains(&control) => {
                if let Some(l) = leading.take() {
                    tracing::info!(supervisor = %settings.supervisor_id, "no longer leading");
                    l.stop().await;
                }
            }
            // The leader does not consume control records: the election is all it wants.
            Ok(_) => {}
            Err(error) => break Err(error.into()),
        }
    };
    if let Some(l) = leading.take() {
        l.stop().await;
    }
    if let Err(error) = election.close().await {
        tracing::debug!(%error, "leaving the supervisor group");
    }
    result
}

/// The components of one term as leader, and how to stop them.
struct Leadership {
    components: JoinSet<Result<(), SupervisorError>>,
    stop: CancellationToken,
}

impl Leadership {
    async fn start(log: &Arc<dyn EventLog>, codec: &Arc<WireCodec>, topics: &TaskTopics, settings: &SupervisorSettings) -> Result<Leadership, SupervisorError> {
        let stop = CancellationToken::new();
        let cancels = Arc::new(Cancels::tracking_new());
        let watcher = watch_control(log, codec.clone(), topics, cancels.clone(), stop.clone()).await?;
        let mut components = JoinSet::new();
        components.spawn(async move { watcher.await.map_err(|e| SupervisorError::Component(e.to_string())) });
        let client = TaskClient::new(log, codec.clone(), topics.clone(), settings.supervisor_id.clone())?;
        let (l, s) = (log.clone(), stop.clone());
        let timer_settings = timers::TimerSettings { state_dir: settings.config.state_dir.clone(), caught_up: None };
        components.spawn(async move { timers::run_timers(l, client, cancels, timer_settings, s).await.map(|_| ()) });
        let (l, c, t, s) = (log.clone(), codec.clone(), topics.clone(), stop.clone());
        let interval = Duration::from_millis(settings.config.heartbeat_interval_ms);
        let missed = settings.config.missed_heartbeats;
        components.spawn(async move { liveness::run_liveness(l, c, t, interval, missed, s).await.map(|_| ()) });
        let (l, c, t, s) = (log.clone(), codec.clone(), topics.clone(), stop.clone());
        components.spawn(async move { jobs::run_jobs(l, c, t, s).await.map(|_| ()) });
        Ok(Leadership { components, stop })
    }

    async fn stop(mut self) {
        self.stop.cancel();
        while let Some(joined) = self.components.join_next().await {
            match joined {
                Ok(Err(error)) => tracing::warn!(%error, "supervisor component failed while stopping"),
                Err(error) => tracing::warn!(%error, "supervisor component panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}
