//! Durable timers: delayed tasks and retry backoffs wait on the `timers` topic as the command
//! to submit, keyed by task id, due time in a header. The supervisor rebuilds the set of
//! pending timers from the whole topic (its retention bounds the longest delay), where a
//! *fired marker* (an empty record naming the fired timer's offset) removes a timer. Only
//! after the history is read does it fire anything, so a restart never fires a timer twice
//! unless it died between firing and writing the marker (at-least-once, like every delivery).
//!
//! Firing appends the command to its lane topic (or, if cancellation was asked meanwhile,
//! `TaskCancelled` to `task.results`) and then the marker. A cancel request matches a timer by
//! task identity, (tenant, task id): the record's key is the task id alone, so the tenant is
//! read from the command the timer carries.
//!
//! A suspended task's next command waits here too (`awaiting_signal` set, due at the wait's
//! timeout). A `TaskSignalled` record on the same topic, keyed by the same task id and so
//! after the command in the log, makes that command due at once, carrying the signal; one
//! that nothing waits for is ignored. A wait that times out is fired with a timeout marker.
//!
//! Each command is decoded once, when its timer is read, not when it fires:
//! - a registry that cannot be asked (down, timing out) is nobody's fault: reading stops on
//!   that record and retries it with a back-off, skipping nothing, until the registry answers;
//! - a record that can never be decoded (corrupt bytes, a schema that cannot be resolved) has
//!   no tenant and no command: it is dead-lettered, with the reason, as soon as the history
//!   is read, and its marker written, so it never blocks the others.
//!
//! Pending timers wait in a [`TimerStore`] on disk (`supervisor.state_dir`), not in RAM: the
//! memory of a supervisor holding a million delayed tasks is RocksDB's configured buffers,
//! not a million commands. The store is rebuilt from the topic on every start.
//!
//! Firing retries a passing failure (the log or the registry away) with a back-off, keeping
//! the timer pending. A command its lane refuses for what it is (too large for the lane: a
//! worker's retry timer may carry a command up to the record limit, which leaves no room for
//! the submit headroom; a foreign producer's timer; a limit lowered since it was scheduled)
//! would be refused on every retry, and ending the supervisor's term for it made a crash
//! loop that fired nothing else: it is dead-lettered with its TaskDeadLettered outcome, like a
//! task that used up its attempts, and the timers go on. Any other failure that retrying
//! cannot fix ends the supervisor's term.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::SupervisorError;
use super::timer_store::{Action, Timer, TimerId, TimerStore};
use crate::agent::cancels::Cancels;
use crate::agent::client::{ClientError, TIMER_DUE, TIMER_FIRED, TaskClient, new_id};
use crate::agent::dlq::{Parking, dead_letter_records};
use crate::agent::limits::{bound_message, fits};
use crate::agent::runtime::kind;
use crate::backoff::Backoff;
use crate::events::reader::{DLQ_ERROR, DLQ_REASON, DLQ_SOURCE, error_kind};
use crate::events::wire::WireError;
use crate::events::{AnyEvent, Meta, SignalDelivery, TaskCancelled, TaskCheckpointed, TaskSignalled, TaskSubmitted, TimestampMicros, decode_any};
use crate::log::follow::Follower;
use crate::log::{ConsumedRecord, EventLog, Producer, Record, SeekTo};

/// How the timers component keeps its index, and who hears when its history is read.
pub struct TimerSettings {
    /// Where the store claims a slot directory of its own (wiped at start, removed at stop).
    pub state_dir: PathBuf,
    /// Told once the history is read (benchmarks and tests).
    pub caught_up: Option<oneshot::Sender<Rebuilt>>,
}

/// What the rebuild from the topic found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Records read (timers and fired markers).
    pub records: u64,
    /// Timers pending once the history was read.
    pub pending: u64,
    pub elapsed: Duration,
}

/// Counts for tests and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TimerStats {
    pub fired: u64,
    pub cancelled: u64,
    pub dead_lettered: u64,
    /// Waiting commands a signal made due.
    pub signalled: u64,
}

pub async fn run_timers(
    log: Arc<dyn EventLog>,
    client: TaskClient,
    cancels: Arc<Cancels>,
    settings: TimerSettings,
    stop: CancellationToken,
) -> Result<TimerStats, SupervisorError> {
    let topic = client.topics().timers();
    let producer = log.producer()?;
    let store = TimerStore::open_in(&settings.state_dir)?;
    let mut follower = Follower::open(&log, std::slice::from_ref(&topic), SeekTo::Earliest).await?;
    let max_record_bytes = log.max_record_bytes();
    let mut timers = Timers {
        client,
        producer,
        cancels,
        topic,
        store,
        max_record_bytes,
        stats: TimerStats::default(),
        retry: Backoff::default(),
        retry_at: None,
        unmarked: None,
    };
    let result = timers.run(&mut follower, settings.caught_up, &stop).await;
    follower.close().await;
    result.map(|()| timers.stats)
}

/// The timers component while it runs: one method per event.
struct Timers {
    client: TaskClient,
    producer: Arc<dyn Producer>,
    cancels: Arc<Cancels>,
    topic: String,
    store: TimerStore,
    /// `log.max_record_bytes`: a dead letter is fitted to it.
    max_record_bytes: usize,
    stats: TimerStats,
    /// Back-off of firing after a passing failure.
    retry: Backoff,
    /// No firing before this (a passing failure is being waited out).
    retry_at: Option<Instant>,
    /// The timer whose command went out but whose marker did not: firing it again writes
    /// only the marker.
    unmarked: Option<TimerId>,
}

impl Timers {
    async fn run(&mut self, follower: &mut Follower, caught_up: Option<oneshot::Sender<Rebuilt>>, stop: &CancellationToken) -> Result<(), SupervisorError> {
        let began = Instant::now();
        let mut records = 0u64;
        // The history first: nothing fires until every timer and marker in it is read.
        while !follower.caught_up() {
            let record = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                record = follower.next() => record?,
            };
            if let Some(record) = record {
                records += 1;
                if !self.on_record(record, stop).await? {
                    return Ok(());
                }
            }
        }
        let rebuilt = Rebuilt { records, pending: self.store.len(), elapsed: began.elapsed() };
        tracing::info!(topic = %self.topic, records = rebuilt.records, pending = rebuilt.pending, elapsed_ms = rebuilt.elapsed.as_millis() as u64, "timers rebuilt from the log");
        if let Some(tell) = caught_up {
            let _ = tell.send(rebuilt);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep = self.until_next_fire()?;
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                record = follower.next() => {
                    let Some(record) = record? else { continue };
                    if !self.on_record(record, stop).await? {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep(sleep) => self.fire_due().await?,
                // Cancel requests for waiting timers take effect now, not at their due time.
                _ = tick.tick() => self.on_cancels().await?,
            }
        }
    }

    fn until_next_fire(&mut self) -> Result<Duration, SupervisorError> {
        let now = Instant::now();
        let waiting = self.retry_at.map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        let due = match self.store.next_due()? {
            Some(due) => Duration::from_millis(due.saturating_sub(now_ms()).clamp(0, 60_000) as u64),
            None => Duration::from_secs(60),
        };
        Ok(due.max(waiting))
    }

    /// A timer or a fired marker read from the topic. `false` if `stop` fired while a
    /// passing registry failure was being retried.
    async fn on_record(&mut self, record: ConsumedRecord, stop: &CancellationToken) -> Result<bool, SupervisorError> {
        let id = TimerId { partition: record.partition, offset: record.offset };
        if let Some(offset) = header_i64(&record, TIMER_FIRED) {
            self.store.remove(TimerId { partition: record.partition, offset })?;
            return Ok(true);
        }
        let mut backoff = Backoff::default();
        let decoded = loop {
            match decode_any(self.client.codec(), &record.payload).await {
                Ok(AnyEvent::TaskSubmitted(task)) => break Ok(task),
                Ok(AnyEvent::TaskSignalled(signal)) => {
                    self.on_signal(id, signal)?;
                    return Ok(true);
                }
                Ok(other) => break Err((format!("a {} record is not a timer", other.name()), "not_a_timer".to_string())),
                Err(error @ WireError::Registry { .. }) => {
                    tracing::warn!(partition = id.partition, offset = id.offset, %error, failures = backoff.failures() + 1, "cannot decode a timer while the registry is away; retrying it");
                    if !backoff.wait(stop).await {
                        return Ok(false);
                    }
                }
                Err(error) => break Err((error.to_string(), error_kind(&error).to_string())),
            }
        };
        let key = record.key.as_ref().map(|k| k.to_vec());
        let (due, timer) = match decoded {
            Ok(task) => {
                let due = header_i64(&record, TIMER_DUE).unwrap_or_else(|| {
                    tracing::warn!(partition = id.partition, offset = id.offset, task_id = %task.task_id, "timer without a due time; firing it now");
                    0
                });
                if task.awaiting_signal.is_some() {
                    self.supersede_wait(&task)?;
                }
                (due, Timer { key, task: Some((task.meta.tenant.clone(), task.task_id.clone())), action: Action::Submit(task) })
            }
            // Neither tenant nor command can be read: no cancel can match it and it can never
            // fire, so it is dead-lettered as soon as the history is read.
            Err((reason, kind)) => {
                tracing::warn!(partition = id.partition, offset = id.offset, %reason, "undecodable timer; it will be moved to the dead-letter topic");
                let action = Action::DeadLetter { payload: record.payload.to_vec(), reason, kind };
                (i64::MIN, Timer { key, task: None, action })
            }
        };
        self.store.insert(id, due, &timer)?;
        Ok(true)
    }

    /// A signal read from the topic: the waiting command of its task, if it waits for this
    /// signal, is due now and carries the signal. Decided in log order from the topic alone,
    /// so every rebuild decides the same; a signal nothing waits for is only logged.
    fn on_signal(&mut self, id: TimerId, signal: TaskSignalled) -> Result<(), SupervisorError> {
        let tenant = &signal.meta.tenant;
        let waiting = match self.store.find_task(tenant, &signal.task_id)? {
            Some(timer_id) => self.store.get(timer_id)?.map(|(_, timer)| (timer_id, timer)),
            None => None,
        };
        let Some((timer_id, Timer { key, task, action: Action::Submit(mut command) })) = waiting else {
            tracing::info!(partition = id.partition, offset = id.offset, task_id = %signal.task_id, signal = %signal.signal, "a signal for a task that does not wait; ignored");
            return Ok(());
        };
        if command.awaiting_signal.as_deref() != Some(signal.signal.as_str()) {
            tracing::info!(partition = id.partition, offset = id.offset, task_id = %signal.task_id, signal = %signal.signal, awaiting = ?command.awaiting_signal, "a signal the task does not wait for; ignored");
            return Ok(());
        }
        command.awaiting_signal = None;
        command.not_before = None;
        command.signal = Some(SignalDelivery { name: signal.signal, signal_id: Some(signal.signal_id), payload: signal.payload, timed_out: false });
        self.store.remove(timer_id)?;
        // Same timer, due now: its fired marker still names its record.
        self.store.insert(timer_id, 0, &Timer { key, task, action: Action::Submit(command) })?;
        self.stats.signalled += 1;
        Ok(())
    }

    /// A task's new waiting command replaces one it already had pending: the attempt that
    /// wrote the old one was run again (its worker died before committing), and only one
    /// resumption may come of the wait.
    fn supersede_wait(&mut self, task: &TaskSubmitted) -> Result<(), SupervisorError> {
        if let Some(old) = self.store.find_task(&task.meta.tenant, &task.task_id)?
            && let Some((_, Timer { action: Action::Submit(pending), .. })) = self.store.get(old)?
            && pending.awaiting_signal.is_some()
        {
            self.store.remove(old)?;
        }
        Ok(())
    }

    /// Fires every timer that is due, in due order, until one fails for a passing reason.
    async fn fire_due(&mut self) -> Result<(), SupervisorError> {
        if self.retry_at.is_some_and(|at| at > Instant::now()) {
            return Ok(());
        }
        let now = now_ms();
        while let Some((due, id, timer)) = self.store.first()? {
            if due > now {
                break;
            }
            if !self.fire_or_wait(id, timer).await? {
                break;
            }
        }
        Ok(())
    }

    async fn on_cancels(&mut self) -> Result<(), SupervisorError> {
        for (tenant, task_id) in self.cancels.take_new() {
            if let Some(id) = self.store.find_task(&tenant, &task_id)?
                && let Some((_, timer)) = self.store.get(id)?
            {
                // Should this fail for a passing reason, the request stays known to
                // `cancels` and the timer cancels when it falls due.
                self.fire_or_wait(id, timer).await?;
            }
        }
        Ok(())
    }

    /// Fires `timer` and forgets it; on a passing failure keeps it and waits a back-off
    /// before firing again (`false`).
    async fn fire_or_wait(&mut self, id: TimerId, timer: Timer) -> Result<bool, SupervisorError> {
        match self.fire(id, &timer).await {
            Ok(()) => {
                self.store.remove(id)?;
                self.retry.reset();
                self.retry_at = None;
                Ok(true)
            }
            Err(error) if error.retryable() => {
                let delay = self.retry.next_delay();
                tracing::warn!(partition = id.partition, offset = id.offset, %error, failures = self.retry.failures(), retry_in_ms = delay.as_millis() as u64, "firing a timer failed for a passing reason; it stays pending");
                self.retry_at = Some(Instant::now() + delay);
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    async fn fire(&mut self, id: TimerId, timer: &Timer) -> Result<(), SupervisorError> {
        if self.unmarked != Some(id) {
            match &timer.action {
                Action::Submit(task) => self.submit_or_cancel(id, timer.key.as_deref(), task).await?,
                Action::DeadLetter { payload, reason, kind } => {
                    tracing::warn!(partition = id.partition, offset = id.offset, %reason, "undecodable timer moved to the dead-letter topic");
                    let letter = Record::new(self.client.topics().dlq(), payload.clone())
                        .with_header(DLQ_REASON, Bytes::from(reason.clone()))
                        .with_header(DLQ_ERROR, Bytes::from(kind.clone()))
                        .with_header(DLQ_SOURCE, Bytes::from(format!("{}/{}/{}", self.topic, id.partition, id.offset)));
                    let letter = match &timer.key {
                        Some(k) => letter.with_key(Bytes::from(k.clone())),
                        None => letter,
                    };
                    self.producer.send(letter).await?.await?;
                    self.stats.dead_lettered += 1;
                }
            }
            self.unmarked = Some(id);
        }
        let mut marker =
            Record::new(self.topic.clone(), Bytes::new()).with_partition(id.partition).with_header(TIMER_FIRED, Bytes::from(id.offset.to_string()));
        if let Some(key) = &timer.key {
            marker = marker.with_key(Bytes::from(key.clone()));
        }
        self.producer.send(marker).await?.await?;
        self.unmarked = None;
        Ok(())
    }

    async fn submit_or_cancel(&mut self, id: TimerId, key: Option<&[u8]>, task: &TaskSubmitted) -> Result<(), SupervisorError> {
        let client = &self.client;
        if let Some(reason) = self.cancels.requested(&task.meta.tenant, &task.task_id) {
            // Cut as a worker cuts it: a long reason must not make the outcome too large.
            let reason = reason.map(bound_message);
            // The task may have saved a checkpoint (before it suspended, or before the failure
            // its retry waits out); every worker keeps it until a record clears it, as a
            // worker's outcome does. First, so a retry of this firing repeats the harmless one.
            let cleared = TaskCheckpointed { meta: caused_by(task), task_id: task.task_id.clone(), attempt: task.attempt, state: None };
            let checkpoints = client.topics().checkpoints();
            let payload = client.codec().encode(&checkpoints, &cleared).await?;
            self.producer.send(Record::new(checkpoints, payload).with_key(Bytes::from(task.task_id.clone()))).await?.await?;
            let event = TaskCancelled { meta: caused_by(task), task_id: task.task_id.clone(), reason };
            let results = client.topics().results();
            let payload = client.codec().encode(&results, &event).await?;
            self.producer.send(Record::new(results, payload).with_key(Bytes::from(task.task_id.clone()))).await?.await?;
            self.stats.cancelled += 1;
        } else {
            // A wait that ends by its timeout: the next attempt learns it (its agent type
            // decides whether that fails the task).
            let timed_out;
            let task = match &task.awaiting_signal {
                Some(name) => {
                    timed_out = TaskSubmitted {
                        awaiting_signal: None,
                        not_before: None,
                        signal: Some(SignalDelivery { name: name.clone(), signal_id: None, payload: None, timed_out: true }),
                        ..task.clone()
                    };
                    &timed_out
                }
                None => task,
            };
            match client.enqueue(task).await {
                Ok(_) => self.stats.fired += 1,
                Err(error) if error.rejects_record() => self.park(id, key, task, &error).await?,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Dead-letters the command of timer `id`, which its lane refused for what it is
    /// (`refused`), with its TaskDeadLettered outcome, both fitted to the record limit.
    /// Encoding or writing them may still fail for a passing reason: then the timer stays
    /// pending and this runs again.
    async fn park(&mut self, id: TimerId, key: Option<&[u8]>, task: &TaskSubmitted, refused: &ClientError) -> Result<(), SupervisorError> {
        let lane = self.client.topics().lane(&task.agent_type, task.lane);
        let command = self.client.codec().encode(&lane, task).await?;
        // The letter names the timer it came from; its payload is the command as the lane
        // would have held it.
        let source = ConsumedRecord {
            topic: self.topic.clone(),
            partition: id.partition,
            offset: id.offset,
            key: key.map(Bytes::copy_from_slice),
            headers: Vec::new(),
            payload: Bytes::from(command),
            timestamp_ms: now_ms(),
        };
        let reason = bound_message(format!("the command could not be written to its lane `{lane}`: {refused}"));
        let why = Parking { error_kind: kind::RECORD_TOO_LARGE, reason: reason.clone(), last_error: reason, outcome_reason: kind::RECORD_TOO_LARGE };
        let records = dead_letter_records(self.client.codec(), self.client.topics(), &source, task, caused_by(task), &why, self.max_record_bytes).await?;
        for record in records {
            let (topic, size) = (record.topic.clone(), record.size());
            // Only a command whose metadata alone is past the limit gets here: nothing about
            // it can be written, and retrying would stop every other timer.
            if !fits(&record, self.max_record_bytes) {
                tracing::error!(task_id = %task.task_id, %topic, size, max = self.max_record_bytes, "a record parking a timer's command does not fit the log; dropped");
                continue;
            }
            match self.producer.send(record).await {
                Ok(delivery) => match delivery.await {
                    Ok(_) => {}
                    Err(error) if error.rejects_record() => {
                        tracing::error!(task_id = %task.task_id, %topic, size, %error, "the log refused a record parking a timer's command; dropped")
                    }
                    Err(error) => return Err(error.into()),
                },
                Err(error) if error.rejects_record() => {
                    tracing::error!(task_id = %task.task_id, %topic, size, %error, "the log refused a record parking a timer's command; dropped")
                }
                Err(error) => return Err(error.into()),
            }
        }
        tracing::warn!(task_id = %task.task_id, partition = id.partition, offset = id.offset, %lane, error = %refused, "a timer's command does not fit its lane; moved to the dead-letter topic");
        self.stats.dead_lettered += 1;
        Ok(())
    }
}

/// An envelope from the supervisor caused by `task`'s command: same tenant, correlation and trace.
fn caused_by(task: &TaskSubmitted) -> Meta {
    let mut meta = Meta::new(new_id("ev"), task.meta.tenant.clone(), "supervisor");
    meta.correlation_id = task.meta.correlation_id.clone();
    meta.causation_id = Some(task.meta.event_id.clone());
    meta.trace_parent = task.meta.trace_parent.clone();
    meta.trace_state = task.meta.trace_state.clone();
    meta
}

fn header_i64(record: &ConsumedRecord, name: &str) -> Option<i64> {
    record.header(name).and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.parse().ok())
}

fn now_ms() -> i64 {
    TimestampMicros::now().0 / 1000
}
