//! Dead-lettered tasks: a task whose retryable failures used up its attempts is parked on the
//! `dlq` topic as the original command (untouched bytes, so a redrive re-sends what was
//! submitted) with headers saying why. Undecodable records the [`EventReader`] parks there
//! share the format. Operators list them and re-submit them with a fresh attempt budget.
//!
//! The HTTP API lists them from the projection's index (a page at a time, per tenant) and
//! reads back only the one record it re-sends ([`read_at`]); [`list`] reads the whole topic
//! and is for the CLI, which an operator runs against the log itself.
//!
//! A dead letter must fit one log record like anything else. One that would not (a command
//! near `log.max_record_bytes` plus the dead-letter headers, or a record written by a foreign
//! producer past the limit) keeps its metadata and loses the end of its payload, and says so
//! in [`DLQ_TRUNCATED`]: such a copy is for inspection and is never re-submitted.
//!
//! [`EventReader`]: crate::events::reader::EventReader

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::client::{ClientError, Submitted, TaskClient};
use super::limits::fits;
use super::topics::TaskTopics;
use crate::events::reader::{DLQ_ERROR, DLQ_REASON, DLQ_SOURCE};
use crate::events::wire::{WireCodec, WireError};
use crate::events::{Meta, TaskDeadLettered, TaskSubmitted};
use crate::log::follow::Follower;
use crate::log::{ConsumedRecord, ConsumerEvent, ConsumerOptions, EventLog, Header, LogError, Record, SeekTo, TopicPartition};

/// Header: how many attempts the task had.
pub const DLQ_ATTEMPTS: &str = "agentlog.dlq.attempts";

pub use crate::events::reader::DLQ_TRUNCATED;

/// The dead-letter record of a task that used up its attempts, carrying `payload` (the
/// original command, or a cut copy of it: then `truncated` says what was cut).
pub fn task_dead_letter(
    dlq_topic: &str,
    source: &ConsumedRecord,
    payload: Bytes,
    attempts: i32,
    error_kind: &str,
    reason: &str,
    truncated: Option<&str>,
) -> Record {
    let mut headers: Vec<Header> = source.headers.iter().filter(|h| !h.name.starts_with("agentlog.dlq.")).cloned().collect();
    headers.push(Header { name: DLQ_REASON.into(), value: Bytes::from(reason.to_string()) });
    headers.push(Header { name: DLQ_ERROR.into(), value: Bytes::from(error_kind.to_string()) });
    headers.push(Header { name: DLQ_SOURCE.into(), value: Bytes::from(format!("{}/{}/{}", source.topic, source.partition, source.offset)) });
    headers.push(Header { name: DLQ_ATTEMPTS.into(), value: Bytes::from(attempts.to_string()) });
    if let Some(note) = truncated {
        headers.push(Header { name: DLQ_TRUNCATED.into(), value: Bytes::from(note.to_string()) });
    }
    Record { topic: dlq_topic.to_string(), partition: None, key: source.key.clone(), headers, payload, timestamp_ms: None }
}

/// Why a task is parked, as its letter's headers and its TaskDeadLettered say it.
#[derive(Debug, Clone)]
pub struct Parking<'a> {
    /// The failure's kind (header `agentlog.dlq.error`).
    pub error_kind: &'a str,
    /// Header `agentlog.dlq.reason`.
    pub reason: String,
    /// TaskDeadLettered's `last_error`.
    pub last_error: String,
    /// TaskDeadLettered's `reason`: `max_attempts`, `record_too_large`.
    pub outcome_reason: &'a str,
}

/// The records that park `task`, read from `source` (whose payload is its command): its letter
/// on `dlq`, then its TaskDeadLettered on `task.results` (records are appended in order, so
/// whoever sees the outcome finds the letter already; `GET /v1/dlq` right after the outcome
/// missed it on the embedded log when the order was the other way).
///
/// Both embed the whole command, so one near the record limit `max` would make them too
/// large: then both carry a copy whose input is cut to fit (metadata, ids and labels kept,
/// decodable), marked in the letter's [`DLQ_TRUNCATED`] header and in the event's last error.
/// When the metadata alone is too large, only the event is returned, still too large: the
/// caller turns it into whatever it can write.
pub async fn dead_letter_records(
    codec: &WireCodec,
    topics: &TaskTopics,
    source: &ConsumedRecord,
    task: &TaskSubmitted,
    meta: Meta,
    why: &Parking<'_>,
    max: usize,
) -> Result<Vec<Record>, WireError> {
    let results = topics.results();
    let dlq = topics.dlq();
    let mut payload = source.payload.clone();
    let mut note: Option<String> = None;
    let mut cut_input = task.input.len();
    let outcome = |command: &Bytes, note: Option<&str>| TaskDeadLettered {
        meta: meta.clone(),
        task_id: task.task_id.clone(),
        attempts: task.attempt,
        last_error: match note {
            Some(note) => format!("{} [dead letter truncated: {note}]", why.last_error),
            None => why.last_error.clone(),
        },
        reason: why.outcome_reason.to_string(),
        original_command: command.to_vec(),
    };
    let keyed = |payload: Vec<u8>| Record::new(results.clone(), payload).with_key(Bytes::from(task.task_id.clone()));
    // Each round cuts what the previous one was over by, plus slack for the marker and the
    // Avro length prefixes; a few rounds settle it, and an empty input ends the search.
    for _ in 0..4 {
        let event = keyed(codec.encode(&results, &outcome(&payload, note.as_deref())).await?);
        let letter = task_dead_letter(&dlq, source, payload.clone(), task.attempt, why.error_kind, &why.reason, note.as_deref());
        if fits(&event, max) && fits(&letter, max) {
            return Ok(vec![letter, event]);
        }
        if cut_input == 0 {
            break;
        }
        let over = event.size().max(letter.size()).saturating_sub(max);
        cut_input = cut_input.saturating_sub(over + 512);
        let mut cut = task.clone();
        cut.input.truncate(cut_input);
        payload = Bytes::from(codec.encode(&source.topic, &cut).await?);
        note = Some(format!("input cut from {} to {cut_input} bytes to fit log.max_record_bytes ({max})", task.input.len()));
    }
    Ok(vec![keyed(codec.encode(&results, &outcome(&payload, note.as_deref())).await?)])
}

/// One entry of the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub error_kind: String,
    pub source: String,
    pub attempts: Option<i32>,
    /// What was cut to make the letter fit the record limit ([`DLQ_TRUNCATED`]); such a
    /// letter cannot be re-submitted.
    pub truncated: Option<String>,
    /// The parked command, when it decodes as one.
    pub task: Option<TaskSubmitted>,
    pub record: ConsumedRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no dead letter for task `{0}`")]
    NotFound(String),
    #[error("dead letter at {partition}/{offset} is no longer in the log (retention removed it)")]
    Gone { partition: i32, offset: i64 },
    #[error("dead letter at {partition}/{offset} is not a task command ({reason}); it cannot be re-submitted")]
    NotATask { partition: i32, offset: i64, reason: String },
    #[error("dead letter of task `{task_id}` was truncated to fit the log ({note}); it cannot be re-submitted")]
    Truncated { task_id: String, note: String },
}

/// How long [`list`] waits while nothing moves (no record, no partition reaching its end).
const LIST_STALL: Duration = Duration::from_secs(30);

/// How long [`read_at`] waits for the one record it reads.
const READ_ONE: Duration = Duration::from_secs(30);

/// The dead letter at `partition`/`offset` of the dead-letter topic: reads that one record,
/// nothing else.
pub async fn read_at(log: &Arc<dyn EventLog>, client: &TaskClient, partition: i32, offset: i64) -> Result<DeadLetter, DlqError> {
    let tp = TopicPartition::new(client.topics().dlq(), partition);
    let marks = log.admin().watermarks(&tp).await?;
    if offset < marks.low || offset >= marks.high {
        return Err(DlqError::Gone { partition, offset });
    }
    let mut consumer = log.consumer(ConsumerOptions::default())?;
    consumer.assign(&[(tp, SeekTo::Offset(offset))]).await?;
    let read = async {
        loop {
            if let ConsumerEvent::Record(record) = consumer.next_event().await? {
                return Ok::<_, LogError>(record);
            }
        }
    };
    let record = tokio::time::timeout(READ_ONE, read).await.map_err(|_| LogError::Timeout { operation: "reading a dead letter", after: READ_ONE });
    let closed = consumer.close().await;
    let record = record??;
    closed?;
    // A compacted or aborted offset is skipped by the log: the next record is another letter.
    if record.offset != offset {
        return Err(DlqError::Gone { partition, offset });
    }
    Ok(letter_of(client, record).await)
}

async fn letter_of(client: &TaskClient, record: ConsumedRecord) -> DeadLetter {
    let header = |name: &str| record.header(name).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let task = client.codec().decode::<TaskSubmitted>(&record.payload).await.ok().map(|(_, t)| t);
    DeadLetter {
        partition: record.partition,
        offset: record.offset,
        reason: header(DLQ_REASON),
        error_kind: header(DLQ_ERROR),
        source: header(DLQ_SOURCE),
        attempts: header(DLQ_ATTEMPTS).parse().ok(),
        truncated: record.header(DLQ_TRUNCATED).map(|v| String::from_utf8_lossy(v).into_owned()),
        task,
        record,
    }
}

/// Every entry on the dead-letter topic, oldest first per partition (reads up to the
/// high watermarks taken at the start, so it ends, also where a partition ends in a
/// transaction's commit marker: exactly-once workers dead-letter inside their transactions).
pub async fn list(log: &Arc<dyn EventLog>, client: &TaskClient) -> Result<Vec<DeadLetter>, DlqError> {
    let follower = Follower::open(log, &[client.topics().dlq()], SeekTo::Earliest).await?;
    let records = follower.read_history(LIST_STALL).await?;
    let mut letters = Vec::with_capacity(records.len());
    for record in records {
        letters.push(letter_of(client, record).await);
    }
    Ok(letters)
}

/// Re-submits a parked task with a fresh attempt budget (attempt 1, no delay), keeping its
/// id, input and keys; the new command's causation id is the parked one's event id.
pub async fn resubmit(client: &TaskClient, letter: &DeadLetter) -> Result<Submitted, DlqError> {
    let Some(parked) = &letter.task else {
        return Err(DlqError::NotATask { partition: letter.partition, offset: letter.offset, reason: letter.reason.clone() });
    };
    // A cut copy would run the task on part of its input.
    if let Some(note) = &letter.truncated {
        return Err(DlqError::Truncated { task_id: parked.task_id.clone(), note: note.clone() });
    }
    let mut task = parked.clone();
    task.meta = client.meta(&parked.meta.tenant);
    task.meta.correlation_id = parked.meta.correlation_id.clone();
    task.meta.causation_id = Some(parked.meta.event_id.clone());
    task.attempt = 1;
    task.not_before = None;
    Ok(client.submit(&task).await?)
}

/// The latest dead letter of `tenant`'s task `task_id` (another tenant's task of that id is
/// another task, and its dead letters are not this one's).
pub fn find<'a>(letters: &'a [DeadLetter], tenant: &str, task_id: &str) -> Result<&'a DeadLetter, DlqError> {
    letters
        .iter()
        .filter(|l| l.task.as_ref().is_some_and(|t| t.task_id == task_id && t.meta.tenant == tenant))
        .max_by_key(|l| l.record.timestamp_ms)
        .ok_or_else(|| DlqError::NotFound(task_id.to_string()))
}
