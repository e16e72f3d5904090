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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::SupervisorError;
use super::follow::Follower;
use crate::agent::cancels::{Cancels, TaskRef};
use crate::agent::client::{TIMER_DUE, TIMER_FIRED, TaskClient, new_id};
use crate::events::{Meta, TaskCancelled, TaskSubmitted, TimestampMicros};
use crate::log::{ConsumedRecord, EventLog, Producer, Record, SeekTo};

/// A timer waiting to fire.
struct Pending {
    key: Option<Bytes>,
    payload: Bytes,
    task: TaskRef,
}

/// Pending timers by due time; `(partition, offset)` identifies a timer.
#[derive(Default)]
struct Wheel {
    by_due: BTreeMap<(i64, i32, i64), Pending>,
    due_of: HashMap<(i32, i64), i64>,
    by_task: HashMap<TaskRef, (i32, i64)>,
}

impl Wheel {
    /// Adds the timer `record` of `tenant`'s task.
    fn add(&mut self, record: &ConsumedRecord, tenant: String) {
        let Some(due) = header_i64(record, TIMER_DUE) else {
            tracing::warn!(partition = record.partition, offset = record.offset, "timer without a due time; firing it now");
            return self.insert(0, record, tenant);
        };
        self.insert(due, record, tenant);
    }

    fn insert(&mut self, due: i64, record: &ConsumedRecord, tenant: String) {
        let task_id = record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        let task = (tenant, task_id);
        let id = (record.partition, record.offset);
        self.by_task.insert(task.clone(), id);
        self.due_of.insert(id, due);
        self.by_due.insert((due, id.0, id.1), Pending { key: record.key.clone(), payload: record.payload.clone(), task });
    }

    fn remove(&mut self, id: (i32, i64)) -> Option<Pending> {
        let due = self.due_of.remove(&id)?;
        let pending = self.by_due.remove(&(due, id.0, id.1))?;
        if self.by_task.get(&pending.task) == Some(&id) {
            self.by_task.remove(&pending.task);
        }
        Some(pending)
    }

    fn next_due(&self) -> Option<i64> {
        self.by_due.keys().next().map(|(due, _, _)| *due)
    }

    fn pop_due(&mut self, now_ms: i64) -> Option<((i32, i64), Pending)> {
        let (&(due, p, o), _) = self.by_due.iter().next()?;
        if due > now_ms {
            return None;
        }
        self.remove((p, o)).map(|pending| ((p, o), pending))
    }
}

fn header_i64(record: &ConsumedRecord, name: &str) -> Option<i64> {
    record.header(name).and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.parse().ok())
}

/// Counts for tests and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TimerStats {
    pub fired: u64,
    pub cancelled: u64,
}

pub async fn run_timers(
    log: Arc<dyn EventLog>,
    client: TaskClient,
    cancels: Arc<Cancels>,
    stop: CancellationToken,
) -> Result<TimerStats, SupervisorError> {
    let topic = client.topics().timers();
    let producer = log.producer()?;
    let mut follower = Follower::open(&log, std::slice::from_ref(&topic), SeekTo::Earliest).await?;
    let mut wheel = Wheel::default();
    let mut stats = TimerStats::default();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let caught_up = follower.caught_up();
        let sleep = match (caught_up, wheel.next_due()) {
            (true, Some(due)) => Duration::from_millis((due - now_ms()).clamp(0, 60_000) as u64),
            _ => Duration::from_secs(60),
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            record = follower.next() => {
                let Some(record) = record? else { continue };
                match header_i64(&record, TIMER_FIRED) {
                    Some(offset) => { wheel.remove((record.partition, offset)); }
                    None => {
                        // An undecodable timer gets no tenant: no cancel matches it, and
                        // firing moves it to the dead-letter topic.
                        let tenant = client.codec().decode::<TaskSubmitted>(&record.payload).await.map(|(_, task)| task.meta.tenant).unwrap_or_default();
                        wheel.add(&record, tenant);
                    }
                }
            }
            _ = tokio::time::sleep(sleep) => {
                let now = now_ms();
                while let Some((id, pending)) = wheel.pop_due(now) {
                    fire(&client, producer.as_ref(), &cancels, &topic, id, pending, &mut stats).await?;
                }
            }
            _ = tick.tick(), if caught_up => {
                // Cancel requests for waiting timers take effect now, not at their due time.
                for task in cancels.take_new() {
                    if let Some(id) = wheel.by_task.get(&task).copied()
                        && let Some(pending) = wheel.remove(id)
                    {
                        fire(&client, producer.as_ref(), &cancels, &topic, id, pending, &mut stats).await?;
                    }
                }
            }
        }
    }
    follower.close().await;
    Ok(stats)
}

async fn fire(
    client: &TaskClient,
    producer: &dyn Producer,
    cancels: &Cancels,
    topic: &str,
    (partition, offset): (i32, i64),
    pending: Pending,
    stats: &mut TimerStats,
) -> Result<(), SupervisorError> {
    match client.codec().decode::<TaskSubmitted>(&pending.payload).await {
        Ok((_, task)) => {
            if let Some(reason) = cancels.requested(&task.meta.tenant, &task.task_id) {
                let mut meta = Meta::new(new_id("ev"), task.meta.tenant.clone(), "supervisor");
                meta.correlation_id = task.meta.correlation_id.clone();
                meta.causation_id = Some(task.meta.event_id.clone());
                let event = TaskCancelled { meta, task_id: task.task_id.clone(), reason };
                let results = client.topics().results();
                let payload = client.codec().encode(&results, &event).await?;
                producer.send(Record::new(results, payload).with_key(Bytes::from(task.task_id.clone()))).await?.await?;
                stats.cancelled += 1;
            } else {
                client.enqueue(&task).await?;
                stats.fired += 1;
            }
        }
        // A timer that does not decode can never fire; it goes to the DLQ rather than block.
        Err(error) => {
            tracing::warn!(partition, offset, %error, task_id = %pending.task.1, "undecodable timer moved to the dead-letter topic");
            let letter = Record::new(client.topics().dlq(), pending.payload.clone())
                .with_header(crate::events::reader::DLQ_REASON, Bytes::from(error.to_string()))
                .with_header(crate::events::reader::DLQ_SOURCE, Bytes::from(format!("{topic}/{partition}/{offset}")));
            let letter = match &pending.key { Some(k) => letter.with_key(k.clone()), None => letter };
            producer.send(letter).await?.await?;
        }
    }
    let mut marker = Record::new(topic, Bytes::new()).with_partition(partition).with_header(TIMER_FIRED, Bytes::from(offset.to_string()));
    if let Some(key) = pending.key {
        marker = marker.with_key(key);
    }
    producer.send(marker).await?.await?;
    Ok(())
}

fn now_ms() -> i64 {
    TimestampMicros::now().0 / 1000
}
