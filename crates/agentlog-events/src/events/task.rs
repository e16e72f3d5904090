//! Task events: the submit command and everything that happens to a task afterwards.
//!
//! Field order and names mirror `schemas/Task*.avsc`; the contract tests compare the schema
//! derived from these types with the files, so a change to one without the other fails.

use std::borrow::Cow;
use std::collections::HashMap;

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

pub use super::lane::{Lane, UnknownLane, lane_topic};
use super::meta::{Meta, TimestampMicros};

/// Command asking an agent type to run a task (`io.agentlog.v1.TaskSubmitted`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskSubmitted {
    pub meta: Meta,
    pub task_id: String,
    pub agent_type: String,
    pub lane: Lane,
    /// Opaque to agentlog: agents own the meaning of their input.
    #[avro(with)]
    #[serde(with = "apache_avro::serde::bytes")]
    pub input: Vec<u8>,
    #[avro(default = r#""application/json""#)]
    pub content_type: String,
    /// 1-based; a retry re-submits the command with the next number.
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    pub deadline: Option<TimestampMicros>,
    pub not_before: Option<TimestampMicros>,
    pub ordering_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub parent_task_id: Option<String>,
    pub job_id: Option<String>,
    #[avro(default = "{}")]
    pub labels: HashMap<String, String>,
    /// Set on the next command of a suspended task while it waits on `timers`: the signal
    /// that fires it early (its `not_before` is the timeout). Never set on a lane topic.
    pub awaiting_signal: Option<String>,
    /// The signal, or the timeout, that resumed a suspended task: on its resumed command.
    pub signal: Option<SignalDelivery>,
}

/// What resumed a suspended task (agent protocol `suspend`): a signal sent to it, or its
/// timeout passing first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct SignalDelivery {
    pub name: String,
    /// The sender's id of the signal; `None` for a timeout.
    pub signal_id: Option<String>,
    /// JSON text; `None` for a timeout or a signal sent without a payload.
    pub payload: Option<String>,
    pub timed_out: bool,
}

impl TaskSubmitted {
    /// A first attempt with JSON input; attempts and timeout left to the agent type's policy
    /// (0); no deadline, delay, keys, parent, job or labels. Set the public fields to change that.
    pub fn new(meta: Meta, task_id: impl Into<String>, agent_type: impl Into<String>, lane: Lane, input: Vec<u8>) -> Self {
        Self {
            meta,
            task_id: task_id.into(),
            agent_type: agent_type.into(),
            lane,
            input,
            content_type: "application/json".into(),
            attempt: 1,
            max_attempts: 0,
            timeout_ms: 0,
            deadline: None,
            not_before: None,
            ordering_key: None,
            idempotency_key: None,
            parent_task_id: None,
            job_id: None,
            labels: HashMap::new(),
            awaiting_signal: None,
            signal: None,
        }
    }
}

/// An agent began an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskStarted {
    pub meta: Meta,
    pub task_id: String,
    pub agent_id: String,
    pub attempt: i32,
}

/// Progress of a running attempt; informational, changes no state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskProgress {
    pub meta: Meta,
    pub task_id: String,
    pub attempt: i32,
    /// 0..=100 when the agent can estimate it.
    pub percent: Option<f32>,
    pub message: Option<String>,
    #[avro(with, default = "null")]
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub detail: Option<Vec<u8>>,
}

/// A piece of a running attempt's output as the agent produced it (an LLM token, a JSON
/// delta), on `task.stream`; informational, changes no state (the outcome holds the output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskChunk {
    pub meta: Meta,
    pub task_id: String,
    pub attempt: i32,
    /// From 0 within the attempt; a re-run of the attempt starts again at 0.
    pub seq: i64,
    /// The chunk as text; `None` when it is JSON.
    pub text: Option<String>,
    /// The chunk as JSON text; `None` when it is text.
    pub json: Option<String>,
}

/// A running attempt saved its progress (an agent protocol `checkpoint`), on
/// `task.checkpoints`: the task's next attempt receives the latest. `state: None` clears it
/// once the task has its outcome, so readers can forget the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskCheckpointed {
    pub meta: Meta,
    pub task_id: String,
    pub attempt: i32,
    /// JSON text; `None` clears the checkpoint.
    pub state: Option<String>,
}

/// An attempt ended waiting for a named signal (agent protocol `suspend`), on `task.events`.
/// The task's next command waits on `timers` for the signal or the timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskSuspended {
    pub meta: Meta,
    pub task_id: String,
    /// The attempt that suspended.
    pub attempt: i32,
    pub signal: String,
    /// When the wait ends without the signal.
    pub timeout_at: TimestampMicros,
}

/// A signal sent to a task (`POST /v1/tasks/{id}/signals/{name}`), on `timers` beside the
/// waiting command it fires (both keyed by task id, so it follows that command in the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskSignalled {
    pub meta: Meta,
    pub task_id: String,
    pub signal: String,
    /// The sender's id: a second signal with the same id is the same signal.
    pub signal_id: String,
    /// JSON text; `None` when sent without a payload.
    pub payload: Option<String>,
}

/// A retryable failure will be retried after a backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskRetryScheduled {
    pub meta: Meta,
    pub task_id: String,
    /// The attempt that failed.
    pub attempt: i32,
    pub next_attempt_at: TimestampMicros,
    pub backoff_ms: i64,
    pub last_error: String,
}

/// Terminal: an attempt succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskCompleted {
    pub meta: Meta,
    pub task_id: String,
    pub attempt: i32,
    #[avro(with)]
    #[serde(with = "apache_avro::serde::bytes")]
    pub output: Vec<u8>,
    #[avro(default = r#""application/json""#)]
    pub content_type: String,
    pub duration_ms: i64,
    /// What the attempt consumed (tokens, cost) as its agent reported it; `None` when it
    /// reported nothing.
    pub usage: Option<Usage>,
}

/// What one attempt consumed, as its agent reported it (agent protocol `result.usage`): LLM
/// tokens, the model, the cost in millionths of a currency unit, and provider-specific
/// counters. Workers validate it (`agentlog_tasks::agent::runtime::usage`); a producer writing
/// straight to the log may not, so readers clamp negative numbers to 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// The model the tokens were spent on, as the provider names it.
    pub model: Option<String>,
    /// Millionths of `currency`'s unit (1 USD = 1,000,000).
    pub cost_micros: Option<i64>,
    /// ISO 4217 code, set with `cost_micros`.
    pub currency: Option<String>,
    /// Provider-specific counts (`cached_input_tokens`, `reasoning_tokens`, …).
    #[avro(default = "{}")]
    pub counters: HashMap<String, i64>,
}

/// An attempt failed; terminal unless followed by `TaskRetryScheduled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskFailed {
    pub meta: Meta,
    pub task_id: String,
    pub attempt: i32,
    pub error_kind: String,
    pub message: String,
    pub retryable: bool,
}

/// Terminal: given up. Carries the original command's bytes untouched so a redrive re-sends
/// exactly what was submitted, whatever schema version wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskDeadLettered {
    pub meta: Meta,
    pub task_id: String,
    pub attempts: i32,
    pub last_error: String,
    pub reason: String,
    #[avro(with)]
    #[serde(with = "apache_avro::serde::bytes")]
    pub original_command: Vec<u8>,
}

/// Cancellation was asked for; `TaskCancelled` follows once it took effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskCancelRequested {
    pub meta: Meta,
    pub task_id: String,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

/// Terminal: cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskCancelled {
    pub meta: Meta,
    pub task_id: String,
    pub reason: Option<String>,
}

/// Terminal: the deadline passed before the task started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct TaskExpired {
    pub meta: Meta,
    pub task_id: String,
    pub deadline: TimestampMicros,
}

super::impl_event!(TaskStarted, "task.events", task_id);
super::impl_event!(TaskProgress, "task.stream", task_id);
super::impl_event!(TaskChunk, "task.stream", task_id);
super::impl_event!(TaskCheckpointed, "task.checkpoints", task_id);
super::impl_event!(TaskSuspended, "task.events", task_id);
super::impl_event!(TaskSignalled, "timers", task_id);
super::impl_event!(TaskRetryScheduled, "task.events", task_id);
super::impl_event!(TaskCancelRequested, "task.events", task_id);
super::impl_event!(TaskCompleted, "task.results", task_id);
super::impl_event!(TaskFailed, "task.results", task_id);
super::impl_event!(TaskDeadLettered, "task.results", task_id);
super::impl_event!(TaskCancelled, "task.results", task_id);
super::impl_event!(TaskExpired, "task.results", task_id);

impl super::Event for TaskSubmitted {
    const NAME: &'static str = "io.agentlog.v1.TaskSubmitted";
    const TOPIC: &'static str = "tasks.<type>.<lane>";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The ordering key when set, so tasks sharing it land on one partition and run in order.
    fn key(&self) -> &str {
        self.ordering_key.as_deref().unwrap_or(&self.task_id)
    }

    fn topic(&self) -> Cow<'static, str> {
        Cow::Owned(lane_topic(&self.agent_type, self.lane))
    }
}
