//! Submitting work and asking for cancellation: what the CLI, the API, delegating agents and
//! tests use to put commands on the log. A task whose `not_before` lies in the future goes to
//! the `timers` topic, which the supervisor fires when due; every other task goes straight to
//! its lane topic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::topics::TaskTopics;
use crate::events::wire::{WireCodec, WireError};
use crate::events::{Event, JobSubmitted, Meta, TaskCancelRequested, TaskSignalled, TaskSubmitted, TimestampMicros};
use crate::log::{EventLog, LogError, Position, Producer, Record};
use crate::trace;

/// Header on a timer record: when it is due, in ms since the epoch (readable without decoding).
pub const TIMER_DUE: &str = "agentlog.timer.due";
/// Header on the marker the supervisor appends once a timer fired: the fired timer's offset.
pub const TIMER_FIRED: &str = "agentlog.timer.fired";

/// The longest delay a task may ask for: the retention of the `timers` topic, since a timer
/// must still be on the log when it falls due.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The furthest deadline a task may ask for, in ms from now: 100 years. Far past any lane's
/// retention (a week), so no task is refused a deadline it could use, and well inside what
/// a timestamp holds (i64 microseconds since the epoch).
pub const MAX_DEADLINE_MS: u64 = 100 * 365 * 86_400_000;

/// `ms` milliseconds after `now`, or `None` when that is past what a timestamp holds. A
/// `u64` of milliseconds converted with `as` wrapped negative above `i64::MAX` and put the
/// task in the past (a delay that ran at once, a deadline already gone).
pub fn after_ms(now: TimestampMicros, ms: u64) -> Option<TimestampMicros> {
    let us = i64::try_from(ms).ok()?.checked_mul(1000)?;
    now.0.checked_add(us).map(TimestampMicros)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("encoding failed: {0}")]
    Encode(#[from] WireError),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The command does not leave the outcome envelopes their room under the record limit.
    #[error("the task's command is {size} bytes; a task may be at most {limit} bytes: log.max_record_bytes ({max_record_bytes}) less {headroom} bytes kept for the records that carry it later (outcome, retry timer, dead letter)", headroom = super::limits::OUTCOME_HEADROOM)]
    TooLarge { size: usize, limit: usize, max_record_bytes: usize },
}

impl ClientError {
    /// Whether submitting again later may succeed (the log or the registry away).
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Log(e) => e.retryable(),
            ClientError::Encode(e) => matches!(e, WireError::Registry { .. }),
            ClientError::Invalid { .. } | ClientError::TooLarge { .. } => false,
        }
    }

    /// Whether the log refuses this record for what it is (too large for the log or for the
    /// command limit, an invalid partition): written again it is refused again.
    pub fn rejects_record(&self) -> bool {
        match self {
            ClientError::Log(e) => e.rejects_record(),
            ClientError::TooLarge { .. } => true,
            ClientError::Encode(_) | ClientError::Invalid { .. } => false,
        }
    }
}

/// Where a submitted task went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub task_id: String,
    pub topic: String,
    pub position: Position,
    /// Whether it waits on the `timers` topic for its `not_before`.
    pub delayed: bool,
}

#[derive(Clone)]
pub struct TaskClient {
    codec: Arc<WireCodec>,
    producer: Arc<dyn Producer>,
    topics: TaskTopics,
    producer_id: String,
    /// `log.max_record_bytes`: commands are checked against it less the outcome headroom.
    max_record_bytes: usize,
}

impl TaskClient {
    pub fn new(log: &Arc<dyn EventLog>, codec: Arc<WireCodec>, topics: TaskTopics, producer_id: impl Into<String>) -> Result<Self, ClientError> {
        Ok(Self { producer: log.producer()?, codec, topics, producer_id: producer_id.into(), max_record_bytes: log.max_record_bytes() })
    }

    pub fn topics(&self) -> &TaskTopics {
        &self.topics
    }

    pub fn codec(&self) -> &Arc<WireCodec> {
        &self.codec
    }

    /// A fresh envelope from this client, in the current trace (an API request's span, an
    /// attempt's; or, tracing off, the request's incoming `traceparent`).
    pub fn meta(&self, tenant: &str) -> Meta {
        let mut meta = Meta::new(new_id("ev"), tenant, self.producer_id.clone());
        trace::stamp(&mut meta, None);
        meta
    }

    /// Appends the command and waits until it is durable: once this returns, the task is
    /// accepted and will get an outcome.
    pub async fn submit(&self, task: &TaskSubmitted) -> Result<Submitted, ClientError> {
        let now = TimestampMicros::now();
        if let (Some(deadline), Some(not_before)) = (task.deadline, task.not_before)
            && deadline <= not_before
        {
            return Err(ClientError::Invalid { field: "deadline", reason: "is not after not_before: the task could never start".into() });
        }
        let delayed = task.not_before.is_some_and(|at| at > now);
        if let Some(at) = task.not_before.filter(|_| delayed)
            && at.0 - now.0 > MAX_DELAY.as_micros() as i64
        {
            return Err(ClientError::Invalid {
                field: "not_before",
                reason: format!("is more than {} days ahead (the retention of the timers topic)", MAX_DELAY.as_secs() / 86_400),
            });
        }
        let (topic, position) = if delayed {
            (self.topics.timers(), self.schedule(task).await?)
        } else {
            (self.topics.lane(&task.agent_type, task.lane), self.enqueue(task).await?)
        };
        Ok(Submitted { task_id: task.task_id.clone(), topic, position, delayed })
    }

    /// Appends the command to its lane topic now, whatever its `not_before`.
    pub async fn enqueue(&self, task: &TaskSubmitted) -> Result<Position, ClientError> {
        let topic = self.topics.lane(&task.agent_type, task.lane);
        let payload = self.codec.encode(&topic, task).await?;
        let record = trace::with_headers(Record::new(topic, payload).with_key(Bytes::from(task.key().to_string())), &task.meta);
        self.check_size(&record)?;
        Ok(self.producer.send(record).await?.await?)
    }

    /// Appends the command to `timers`, due at its `not_before`.
    pub async fn schedule(&self, task: &TaskSubmitted) -> Result<Position, ClientError> {
        let record = timer_record(&self.codec, &self.topics, task).await?;
        self.check_size(&record)?;
        Ok(self.producer.send(record).await?.await?)
    }

    /// Refuses a command that fits the log but would leave the records carrying it later
    /// (its outcome, a retry's timer, its dead letter) no room: accepted, it could only end
    /// with a truncated dead letter or a `record_too_large` failure.
    fn check_size(&self, record: &Record) -> Result<(), ClientError> {
        let limit = super::limits::max_command_bytes(self.max_record_bytes);
        let size = record.size();
        if size > limit {
            return Err(ClientError::TooLarge { size, limit, max_record_bytes: self.max_record_bytes });
        }
        Ok(())
    }

    /// Submits a job: its `JobSubmitted` first (so the supervisor knows the tasks before any
    /// finishes), then every task, each carrying the job id.
    pub async fn submit_job(&self, job_id: &str, tenant: &str, mut tasks: Vec<TaskSubmitted>) -> Result<Vec<Submitted>, ClientError> {
        if tasks.is_empty() {
            return Err(ClientError::Invalid { field: "tasks", reason: "a job needs at least one task".into() });
        }
        let job = JobSubmitted {
            meta: self.meta(tenant),
            job_id: job_id.to_string(),
            task_ids: tasks.iter().map(|t| t.task_id.clone()).collect(),
            total: tasks.len() as i32,
        };
        let topic = self.topics.events();
        let payload = self.codec.encode(&topic, &job).await?;
        self.producer.send(Record::new(topic, payload).with_key(Bytes::from(job_id.to_string()))).await?.await?;
        let mut out = Vec::with_capacity(tasks.len());
        for task in &mut tasks {
            task.job_id = Some(job_id.to_string());
            task.meta.correlation_id = job.meta.correlation_id.clone();
            out.push(self.submit(task).await?);
        }
        Ok(out)
    }

    /// Asks for a task to be cancelled. The request is broadcast on `control`, which every
    /// worker and the supervisor read: a task not started yet never runs, a running one gets
    /// its cancel signal. It is also recorded on `task.events` for the task's timeline.
    pub async fn cancel(&self, task_id: &str, tenant: &str, reason: Option<String>) -> Result<(), ClientError> {
        let request = TaskCancelRequested { meta: self.meta(tenant), task_id: task_id.to_string(), reason, requested_by: Some(self.producer_id.clone()) };
        for topic in [self.topics.control(), self.topics.events()] {
            let payload = self.codec.encode(&topic, &request).await?;
            self.producer.send(Record::new(topic, payload).with_key(Bytes::from(task_id.to_string()))).await?.await?;
        }
        Ok(())
    }
}

impl TaskClient {
    /// Sends signal `name` to `tenant`'s task `task_id`: `TaskSignalled` on `timers`, keyed by
    /// the task id like the waiting command it fires, so it follows that command in the log.
    /// Returns where it was written.
    pub async fn signal(&self, tenant: &str, task_id: &str, name: &str, signal_id: &str, payload: Option<String>) -> Result<crate::log::Position, ClientError> {
        let signal =
            TaskSignalled { meta: self.meta(tenant), task_id: task_id.to_string(), signal: name.to_string(), signal_id: signal_id.to_string(), payload };
        let topic = self.topics.timers();
        let payload = self.codec.encode(&topic, &signal).await?;
        Ok(self.producer.send(Record::new(topic, payload).with_key(Bytes::from(task_id.to_string()))).await?.await?)
    }
}

/// The `timers` record of a delayed command: keyed by task id (so its fired marker lands on
/// the same partition), due time in a header.
pub async fn timer_record(codec: &WireCodec, topics: &TaskTopics, task: &TaskSubmitted) -> Result<Record, WireError> {
    let topic = topics.timers();
    let payload = codec.encode(&topic, task).await?;
    let due = due_ms(task.not_before);
    let record = Record::new(topic, payload).with_key(Bytes::from(task.task_id.clone())).with_header(TIMER_DUE, Bytes::from(due.to_string()));
    Ok(trace::with_headers(record, &task.meta))
}

/// A timer's due time in ms, rounded up: timers fire on ms, and one rounded down fired up to
/// 999 µs before the task's `not_before`, which the worker (deferring only what is more
/// than 1 ms early) then started: a delayed task began before its time.
fn due_ms(not_before: Option<TimestampMicros>) -> i64 {
    not_before.map(|t| t.0.saturating_add(999).div_euclid(1000)).unwrap_or(0)
}

/// A unique id with a readable prefix (`task-…`): time-ordered, then random. The same text
/// as `format!("{prefix}-{:x}{:08x}", micros, random)`, written by hand because a task mints
/// three of these and `format!` was a visible share of a no-op task's CPU.
pub fn new_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 1 + 16 + 8);
    id.push_str(prefix);
    id.push('-');
    push_hex(&mut id, TimestampMicros::now().0 as u64, 1);
    push_hex(&mut id, u64::from(rand::random::<u32>()), 8);
    id
}

/// Appends `value` in lowercase hex, zero-padded to at least `width` digits.
fn push_hex(out: &mut String, value: u64, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (16 - value.leading_zeros() as usize / 4).max(width);
    for shift in (0..digits).rev() {
        out.push(DIGITS[((value >> (shift * 4)) & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod id_tests {
    use super::push_hex;

    #[test]
    fn hex_ids_match_the_formatted_text() {
        for (value, width) in [(0u64, 1), (0, 8), (0xabc, 8), (0x1234_5678, 8), (u64::MAX, 1), (1_764_500_000_000_000, 1), (0xf, 1), (0x10, 1)] {
            let mut out = String::new();
            push_hex(&mut out, value, width);
            assert_eq!(out, format!("{value:0width$x}"), "{value} width {width}");
        }
    }
}

#[cfg(test)]
mod due_tests {
    use super::*;

    #[test]
    fn a_timer_is_never_due_before_its_not_before() {
        assert_eq!(due_ms(Some(TimestampMicros(1_500_000_000))), 1_500_000);
        assert_eq!(due_ms(Some(TimestampMicros(1_500_000_001))), 1_500_001, "a µs past a whole ms waits for the next ms");
        assert_eq!(due_ms(Some(TimestampMicros(1_500_000_999))), 1_500_001);
        assert_eq!(due_ms(None), 0, "no not_before: due at once");
    }
}
