//! An agent instance's presence on the log: `AgentRegistered` when it starts, an
//! `AgentHeartbeat` every interval with its load, `AgentStateChanged` on every transition and
//! `AgentDeregistered` when it leaves in order. The supervisor declares an instance that stops
//! heartbeating `AgentLost`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::new_id;
use super::topics::TaskTopics;
use crate::events::wire::{WireCodec, WireError};
use crate::events::{AgentDeregistered, AgentHeartbeat, AgentRegistered, AgentState, AgentStateChanged, Meta};
use crate::log::{LogError, Producer, Record};

/// Load counters the worker updates and heartbeats report.
#[derive(Debug, Default)]
pub struct Load {
    pub in_flight: AtomicI64,
    pub completed: AtomicI64,
    pub failed: AtomicI64,
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("encoding an agent event failed: {0}")]
    Encode(#[from] WireError),
}

/// Who this instance is, as its events describe it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent_id: String,
    pub agent_type: String,
    pub capabilities: Vec<String>,
    pub concurrency: i32,
    pub tenant: String,
}

pub struct Presence {
    writer: Writer,
    state: AgentState,
    heartbeats: JoinHandle<()>,
    stop: CancellationToken,
}

#[derive(Clone)]
struct Writer {
    codec: Arc<WireCodec>,
    producer: Arc<dyn Producer>,
    topics: TaskTopics,
    identity: Arc<Identity>,
}

impl Writer {
    fn meta(&self) -> Meta {
        Meta::new(new_id("ag"), self.identity.tenant.clone(), self.identity.agent_id.clone())
    }

    async fn write<T: serde::Serialize + apache_avro::AvroSchema + 'static>(&self, topic: String, event: &T) -> Result<(), PresenceError> {
        let payload = self.codec.encode(&topic, event).await?;
        let record = Record::new(topic, payload).with_key(Bytes::from(self.identity.agent_id.clone()));
        self.producer.send(record).await?.await?;
        Ok(())
    }
}

impl Presence {
    /// Announces the instance (Registered, then Starting → Running) and starts heartbeating.
    pub async fn register(
        codec: Arc<WireCodec>,
        producer: Arc<dyn Producer>,
        topics: TaskTopics,
        identity: Identity,
        interval: Duration,
        load: Arc<Load>,
    ) -> Result<Self, PresenceError> {
        let writer = Writer { codec, producer, topics, identity: Arc::new(identity) };
        let registered = AgentRegistered {
            meta: writer.meta(),
            agent_id: writer.identity.agent_id.clone(),
            agent_type: writer.identity.agent_type.clone(),
            capabilities: writer.identity.capabilities.clone(),
            host: hostname(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            concurrency: writer.identity.concurrency,
        };
        writer.write(writer.topics.agent_events(), &registered).await?;
        let stop = CancellationToken::new();
        let heartbeats = tokio::spawn(heartbeat_loop(writer.clone(), interval, load, stop.clone()));
        let mut presence = Self { writer, state: AgentState::Starting, heartbeats, stop };
        presence.change(AgentState::Running, None).await?;
        Ok(presence)
    }

    pub async fn change(&mut self, to: AgentState, reason: Option<String>) -> Result<(), PresenceError> {
        let event =
            AgentStateChanged { meta: self.writer.meta(), agent_id: self.writer.identity.agent_id.clone(), from_state: self.state, to_state: to, reason };
        self.writer.write(self.writer.topics.agent_events(), &event).await?;
        self.state = to;
        Ok(())
    }

    /// Stops heartbeating and leaves in order (→ Stopped, then Deregistered).
    pub async fn deregister(mut self, reason: &str) -> Result<(), PresenceError> {
        self.stop.cancel();
        if let Err(error) = (&mut self.heartbeats).await {
            tracing::warn!(%error, "heartbeat task ended abnormally");
        }
        self.change(AgentState::Stopped, Some(reason.to_string())).await?;
        let event = AgentDeregistered { meta: self.writer.meta(), agent_id: self.writer.identity.agent_id.clone(), reason: reason.to_string() };
        self.writer.write(self.writer.topics.agent_events(), &event).await
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        // An instance dropped without deregistering (an error path) stops heartbeating, so the
        // supervisor declares it lost.
        self.stop.cancel();
    }
}

async fn heartbeat_loop(writer: Writer, interval: Duration, load: Arc<Load>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0i64;
    let mut cpu = CpuSampler::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        sequence += 1;
        let beat = AgentHeartbeat {
            meta: writer.meta(),
            agent_id: writer.identity.agent_id.clone(),
            sequence,
            in_flight: load.in_flight.load(Ordering::Relaxed) as i32,
            capacity: writer.identity.concurrency,
            completed_total: load.completed.load(Ordering::Relaxed),
            failed_total: load.failed.load(Ordering::Relaxed),
            cpu_percent: cpu.sample(),
            memory_bytes: resident_bytes(),
        };
        // A heartbeat that cannot be written is skipped, not fatal: missing ones are exactly
        // what the supervisor watches for.
        if let Err(error) = writer.write(writer.topics.heartbeats(), &beat).await {
            tracing::warn!(%error, "heartbeat not written");
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Resident memory of this process (Linux `/proc/self/statm`; 0 elsewhere).
fn resident_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<i64>().ok()))
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// CPU use of this process since the previous sample, in percent of one core (Linux
/// `/proc/self/stat`, clock ticks of 1/100 s; 0 elsewhere).
#[derive(Default)]
struct CpuSampler {
    last: Option<(std::time::Instant, u64)>,
}

impl CpuSampler {
    fn sample(&mut self) -> f64 {
        let ticks = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        });
        let now = std::time::Instant::now();
        let Some(ticks) = ticks else { return 0.0 };
        let percent = match self.last {
            Some((at, before)) => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 { (ticks.saturating_sub(before) as f64 / 100.0) / secs * 100.0 } else { 0.0 }
            }
            None => 0.0,
        };
        self.last = Some((now, ticks));
        percent
    }
}
