//! What a running attempt streams: progress reports (`TaskProgress`) and output chunks
//! (`TaskChunk`) on `task.stream`, keyed by task id, which the projection serves as SSE; and
//! its checkpoints (`TaskCheckpointed`) on `task.checkpoints`, for the task's next attempt.
//!
//! Writes are pipelined: a report is handed to the producer and the attempt goes on while it
//! becomes durable (an LLM emits tokens faster than a round trip to three brokers). The worker
//! awaits every pending write ([`AttemptStream::flush`]) before it writes the attempt's outcome,
//! so a reader that sees the outcome finds every chunk before it on the log. The stream is
//! informational — it changes no task state — so a write that fails is logged and counted,
//! not fatal to the attempt.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::client::new_id;
use super::topics::TaskTopics;
use crate::events::wire::WireCodec;
use crate::events::{Meta, TaskCheckpointed, TaskChunk, TaskProgress};
use crate::log::{Delivery, Producer, Record};

/// Writes in flight per attempt before the next one waits for the oldest: bounds the memory a
/// fast agent can pin while the log is slow.
const MAX_IN_FLIGHT: usize = 256;

/// A chunk's body: text (a token) or JSON text (a delta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Text(String),
    Json(String),
}

/// Handed to an attempt in its [`TaskContext`](super::runtime::TaskContext).
#[derive(Clone)]
pub struct AttemptStream {
    pub(crate) codec: Arc<WireCodec>,
    pub(crate) producer: Arc<dyn Producer>,
    pub(crate) topic: String,
    pub(crate) checkpoints_topic: String,
    pub(crate) task_id: String,
    pub(crate) attempt: i32,
    /// The envelope every event copies (tenant, correlation, causation, trace).
    pub(crate) meta: Meta,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    next_seq: i64,
    /// The last checkpoint handed to the log (the task's outcome then clears it).
    saved_checkpoint: Option<String>,
    in_flight: VecDeque<Delivery>,
    failed: u64,
}

impl std::fmt::Debug for AttemptStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptStream").field("task_id", &self.task_id).field("attempt", &self.attempt).finish()
    }
}

impl AttemptStream {
    pub(crate) fn new(codec: Arc<WireCodec>, producer: Arc<dyn Producer>, topics: &TaskTopics, task_id: String, attempt: i32, meta: Meta) -> Self {
        Self { codec, producer, topic: topics.stream(), checkpoints_topic: topics.checkpoints(), task_id, attempt, meta, state: Arc::default() }
    }

    fn meta(&self) -> Meta {
        let mut meta = self.meta.clone();
        meta.event_id = new_id("ev");
        meta.occurred_at = crate::events::TimestampMicros::now();
        meta
    }

    /// Reports `percent` (0..=100, clamped) and/or a message.
    pub async fn progress(&self, percent: Option<f32>, message: Option<String>) {
        let event = TaskProgress {
            meta: self.meta(),
            task_id: self.task_id.clone(),
            attempt: self.attempt,
            percent: percent.map(|p| if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) }),
            message,
            detail: None,
        };
        let mut state = self.state.lock().await;
        let payload = self.codec.encode(&self.topic, &event).await.map_err(|e| e.to_string());
        self.send(&mut state, &self.topic, payload).await;
    }

    /// Appends a chunk of output; chunks are numbered from 0 in the order of the calls.
    pub async fn chunk(&self, chunk: Chunk) {
        // The lock is held from numbering to handing the record over, so the log holds the
        // chunks in `seq` order.
        let mut state = self.state.lock().await;
        let (text, json) = match chunk {
            Chunk::Text(text) => (Some(text), None),
            Chunk::Json(json) => (None, Some(json)),
        };
        let event = TaskChunk { meta: self.meta(), task_id: self.task_id.clone(), attempt: self.attempt, seq: state.next_seq, text, json };
        state.next_seq += 1;
        let payload = self.codec.encode(&self.topic, &event).await.map_err(|e| e.to_string());
        self.send(&mut state, &self.topic, payload).await;
    }

    /// Saves `state` (JSON text) as the task's checkpoint: its next attempt receives it.
    pub async fn checkpoint(&self, state: String) {
        let mut state_lock = self.state.lock().await;
        let event = TaskCheckpointed { meta: self.meta(), task_id: self.task_id.clone(), attempt: self.attempt, state: Some(state) };
        let payload = self.codec.encode(&self.checkpoints_topic, &event).await.map_err(|e| e.to_string());
        state_lock.saved_checkpoint = event.state;
        self.send(&mut state_lock, &self.checkpoints_topic, payload).await;
    }

    /// The last checkpoint the attempt saved, if it saved one.
    pub async fn saved_checkpoint(&self) -> Option<String> {
        self.state.lock().await.saved_checkpoint.clone()
    }

    async fn send(&self, state: &mut State, topic: &str, payload: Result<Vec<u8>, String>) {
        while state.in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(oldest) = state.in_flight.pop_front() {
                self.settle(state, oldest.await.map(|_| ()).map_err(|e| e.to_string()));
            }
        }
        let sent = match payload {
            Ok(payload) => {
                let record = Record::new(topic, payload).with_key(Bytes::from(self.task_id.clone()));
                self.producer.send(record).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(delivery) => state.in_flight.push_back(delivery),
            Err(error) => self.settle(state, Err(error)),
        }
    }

    fn settle(&self, state: &mut State, written: Result<(), String>) {
        if let Err(error) = written {
            state.failed += 1;
            tracing::warn!(task_id = %self.task_id, attempt = self.attempt, %error, "stream event not written");
        }
    }

    /// Waits until every event handed over so far is durable (or failed); returns how many
    /// events of this attempt could not be written.
    pub async fn flush(&self) -> u64 {
        let mut state = self.state.lock().await;
        while let Some(delivery) = state.in_flight.pop_front() {
            let written = delivery.await.map(|_| ()).map_err(|e| e.to_string());
            self.settle(&mut state, written);
        }
        state.failed
    }
}
