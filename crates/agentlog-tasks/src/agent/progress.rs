//! Progress reports of a running attempt: `TaskProgress` on `task.events`. Informational —
//! it changes no state — so a report that cannot be written is logged, not fatal.

use std::sync::Arc;

use bytes::Bytes;

use super::client::new_id;
use crate::events::wire::WireCodec;
use crate::events::{Meta, TaskProgress};
use crate::log::{Producer, Record};

/// Handed to an attempt in its [`TaskContext`](super::runtime::TaskContext).
#[derive(Clone)]
pub struct Progress {
    pub(crate) codec: Arc<WireCodec>,
    pub(crate) producer: Arc<dyn Producer>,
    pub(crate) topic: String,
    pub(crate) task_id: String,
    pub(crate) attempt: i32,
    /// The envelope every report copies (tenant, correlation, causation, trace).
    pub(crate) meta: Meta,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("task_id", &self.task_id).field("attempt", &self.attempt).finish()
    }
}

impl Progress {
    /// Reports `percent` (0..=100, clamped) and/or a message, and waits until it is durable.
    pub async fn report(&self, percent: Option<f32>, message: Option<String>) {
        let mut meta = self.meta.clone();
        meta.event_id = new_id("ev");
        meta.occurred_at = crate::events::TimestampMicros::now();
        let event =
            TaskProgress { meta, task_id: self.task_id.clone(), attempt: self.attempt, percent: percent.map(|p| p.clamp(0.0, 100.0)), message, detail: None };
        let written = async {
            let payload = self.codec.encode(&self.topic, &event).await.map_err(|e| e.to_string())?;
            let record = Record::new(&self.topic, payload).with_key(Bytes::from(self.task_id.clone()));
            self.producer.send(record).await.map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(error) = written {
            tracing::warn!(task_id = %self.task_id, %error, "progress report not written");
        }
    }
}
