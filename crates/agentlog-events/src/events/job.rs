//! Job events: a group of tasks submitted together (fan-out) and tracked as one.
//!
//! Field order and names mirror `schemas/Job*.avsc` (checked by the contract tests).
//! Jobs go to `task.events` keyed by job id: they are part of the task history, and a
//! dedicated topic would buy nothing but another partition set to watch.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::meta::Meta;

/// A job and the tasks it consists of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct JobSubmitted {
    pub meta: Meta,
    pub job_id: String,
    pub task_ids: Vec<String>,
    pub total: i32,
}

/// Every task of the job reached a terminal outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.agentlog.v1")]
pub struct JobCompleted {
    pub meta: Meta,
    pub job_id: String,
    pub completed: i32,
    /// Failed, dead-lettered, cancelled or expired.
    pub failed: i32,
}

super::impl_event!(JobSubmitted, "task.events", job_id);
super::impl_event!(JobCompleted, "task.events", job_id);
