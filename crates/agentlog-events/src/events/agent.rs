//! Agent events: membership, state and load of the worker instances running agents.
//!
//! Field order and names mirror `schemas/Agent*.avsc` (checked by the contract tests).

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::meta::{Meta, TimestampMicros};

/// Lifecycle state of an agent. `Unknown` is the enum default: a reader that meets a state
/// added later maps it there instead of failing, so states can be added compatibly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentState {
    #[default]
    Unknown,
    Starting,
    Running,
    Paused,
    Draining,
    Stopped,
    Lost,
}

/// An agent joined and can take tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct AgentRegistered {
    pub meta: Meta,
    pub agent_id: String,
    pub agent_type: String,
    pub capabilities: Vec<String>,
    pub host: String,
    pub version: String,
    pub concurrency: i32,
}

/// Periodic load and health; the supervisor declares an agent lost from missed ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct AgentHeartbeat {
    pub meta: Meta,
    pub agent_id: String,
    /// +1 per heartbeat, so gaps and reordering are visible.
    pub sequence: i64,
    pub in_flight: i32,
    pub capacity: i32,
    pub completed_total: i64,
    pub failed_total: i64,
    pub cpu_percent: f64,
    pub memory_bytes: i64,
}

/// An agent moved between lifecycle states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct AgentStateChanged {
    pub meta: Meta,
    pub agent_id: String,
    pub from_state: AgentState,
    pub to_state: AgentState,
    pub reason: Option<String>,
}

/// The supervisor declared an agent lost; its in-flight tasks get retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct AgentLost {
    pub meta: Meta,
    pub agent_id: String,
    pub last_heartbeat_at: TimestampMicros,
    pub missed_heartbeats: i32,
}

/// An agent left in an orderly way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct AgentDeregistered {
    pub meta: Meta,
    pub agent_id: String,
    pub reason: String,
}

super::impl_event!(AgentRegistered, "agent.events", agent_id);
super::impl_event!(AgentStateChanged, "agent.events", agent_id);
super::impl_event!(AgentLost, "agent.events", agent_id);
super::impl_event!(AgentDeregistered, "agent.events", agent_id);
super::impl_event!(AgentHeartbeat, "agent.heartbeats", agent_id);
