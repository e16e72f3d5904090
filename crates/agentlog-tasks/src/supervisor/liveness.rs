//! Heartbeat monitor: an agent instance that misses `missed_heartbeats` intervals is declared
//! `AgentLost`. That is faster than a consumer group notices a dead member with long session
//! timeouts, and it is what the projection shows; the member's partitions return to the group
//! through the group protocol itself. An instance heard from again after being declared lost
//! gets `AgentStateChanged` Lost → Running.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::SupervisorError;
use crate::agent::client::new_id;
use crate::agent::topics::TaskTopics;
use crate::events::wire::WireCodec;
use crate::events::{AgentLost, AgentState, AgentStateChanged, AnyEvent, Meta, TimestampMicros, decode_any_waiting};
use crate::log::follow::Follower;
use crate::log::{EventLog, Producer, Record, SeekTo};

/// How far back the monitor looks on start: instances silent for longer are not tracked.
const LOOKBACK: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Seen {
    last_heard_ms: i64,
    lost: bool,
    gone: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LivenessStats {
    pub lost: u64,
    pub recovered: u64,
}

pub async fn run_liveness(
    log: Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    topics: TaskTopics,
    interval: Duration,
    missed: u32,
    stop: CancellationToken,
) -> Result<LivenessStats, SupervisorError> {
    let producer = log.producer()?;
    let start = TimestampMicros::now().0 / 1000 - LOOKBACK.as_millis() as i64;
    let mut follower = Follower::open(&log, &[topics.heartbeats(), topics.agent_events()], SeekTo::Timestamp(start)).await?;
    let mut agents: HashMap<String, Seen> = HashMap::new();
    let mut stats = LivenessStats::default();
    let limit_ms = interval.as_millis() as i64 * missed.max(1) as i64;
    let mut check = tokio::time::interval((interval / 2).max(Duration::from_millis(50)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            record = follower.next() => {
                let Some(record) = record? else { continue };
                let Some(decoded) = decode_any_waiting(&codec, &record.payload, &stop).await else { break };
                let event = match decoded {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(topic = %record.topic, offset = record.offset, %error, "skipping an undecodable agent event");
                        continue;
                    }
                };
                let caught_up = follower.caught_up();
                let at = record.timestamp_ms;
                match event {
                    AnyEvent::AgentRegistered(e) => { agents.insert(e.agent_id, Seen { last_heard_ms: at, lost: false, gone: false }); }
                    AnyEvent::AgentHeartbeat(e) => {
                        let seen = agents.entry(e.agent_id.clone()).or_insert(Seen { last_heard_ms: at, lost: false, gone: false });
                        seen.last_heard_ms = seen.last_heard_ms.max(at);
                        if seen.lost && caught_up {
                            seen.lost = false;
                            let changed = AgentStateChanged { meta: meta(), agent_id: e.agent_id.clone(), from_state: AgentState::Lost, to_state: AgentState::Running, reason: Some("heartbeats resumed".into()) };
                            write(&codec, producer.as_ref(), &topics.agent_events(), &e.agent_id, &changed).await?;
                            stats.recovered += 1;
                        }
                    }
                    AnyEvent::AgentLost(e) => { if let Some(seen) = agents.get_mut(&e.agent_id) { seen.lost = true; } }
                    AnyEvent::AgentStateChanged(e) if e.to_state == AgentState::Running => {
                        if let Some(seen) = agents.get_mut(&e.agent_id) { seen.lost = false; seen.last_heard_ms = seen.last_heard_ms.max(at); }
                    }
                    AnyEvent::AgentDeregistered(e) => { if let Some(seen) = agents.get_mut(&e.agent_id) { seen.gone = true; } }
                    _ => {}
                }
            }
            _ = check.tick(), if follower.caught_up() => {
                let now = TimestampMicros::now().0 / 1000;
                for (agent_id, seen) in agents.iter_mut().filter(|(_, s)| !s.gone && !s.lost) {
                    let silent = now - seen.last_heard_ms;
                    if silent > limit_ms {
                        let lost = AgentLost {
                            meta: meta(),
                            agent_id: agent_id.clone(),
                            last_heartbeat_at: TimestampMicros(seen.last_heard_ms * 1000),
                            missed_heartbeats: (silent / interval.as_millis().max(1) as i64) as i32,
                        };
                        write(&codec, producer.as_ref(), &topics.agent_events(), agent_id, &lost).await?;
                        tracing::warn!(%agent_id, silent_ms = silent, "agent lost: no heartbeat");
                        seen.lost = true;
                        stats.lost += 1;
                    }
                }
                // Forget instances that left long ago.
                agents.retain(|_, s| !(s.gone || s.lost) || now - s.last_heard_ms < LOOKBACK.as_millis() as i64);
            }
        }
    }
    follower.close().await;
    Ok(stats)
}

fn meta() -> Meta {
    Meta::new(new_id("ev"), "system", "supervisor")
}

async fn write<T: serde::Serialize + apache_avro::AvroSchema + 'static>(
    codec: &WireCodec,
    producer: &dyn Producer,
    topic: &str,
    key: &str,
    event: &T,
) -> Result<(), SupervisorError> {
    let payload = codec.encode(topic, event).await?;
    producer.send(Record::new(topic, payload).with_key(Bytes::from(key.to_string()))).await?.await?;
    Ok(())
}
