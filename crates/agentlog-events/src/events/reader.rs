//! Reading events off the log without letting one bad record stop a consumer.
//!
//! A record that cannot be decoded (wrong magic byte, truncated, unknown schema id, corrupt
//! Avro, a writer schema the reader cannot resolve) is appended to the `dlq` topic with the
//! reason in its headers, and reading moves on. A registry that is down is not the record's
//! fault: that error goes to the caller, who retries, and nothing is dead-lettered.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;

use super::wire::{WireCodec, WireError};
use crate::log::{ConsumedRecord, Consumer, ConsumerEvent, Header, LogError, Position, Producer, Record};

/// Headers a dead letter carries next to the original key, payload and headers.
pub const DLQ_REASON: &str = "agentlog.dlq.reason";
pub const DLQ_ERROR: &str = "agentlog.dlq.error";
pub const DLQ_SOURCE: &str = "agentlog.dlq.source";
/// Header on a dead letter whose payload was cut to fit the log's record limit: what was cut.
pub const DLQ_TRUNCATED: &str = "agentlog.dlq.truncated";

/// Room kept for the [`DLQ_TRUNCATED`] header when a dead letter is cut to fit.
const TRUNCATION_NOTE_BYTES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum EventReadError {
    #[error(transparent)]
    Log(#[from] LogError),
    /// The registry could not be asked; retry later, the record was not consumed.
    #[error("cannot decode {source_position}: {error}")]
    Registry { source_position: String, error: WireError },
}

impl EventReadError {
    pub fn retryable(&self) -> bool {
        match self {
            EventReadError::Log(e) => e.retryable(),
            EventReadError::Registry { .. } => true,
        }
    }
}

/// What one read produced.
#[derive(Debug)]
pub enum ReadOutcome<T> {
    Event {
        record: ConsumedRecord,
        schema_id: u32,
        event: T,
    },
    /// The record could not be decoded; it now sits in the DLQ at `dead_letter`.
    DeadLettered {
        record: ConsumedRecord,
        error: WireError,
        dead_letter: Position,
    },
    /// A rebalance of the underlying consumer (group members must see these).
    Rebalance(ConsumerEvent),
}

/// A machine-readable name for each decoding failure, stored in the DLQ header.
pub fn error_kind(error: &WireError) -> &'static str {
    match error {
        WireError::WrongMagicByte { .. } => "wrong_magic_byte",
        WireError::Truncated { .. } => "truncated",
        WireError::UnknownSchemaId { .. } => "unknown_schema_id",
        WireError::Corrupt { .. } => "corrupt",
        WireError::Unresolvable { .. } => "unresolvable",
        WireError::SchemaOverLimits { .. } => "schema_over_limits",
        WireError::Registry { .. } => "registry",
        WireError::Rejected { .. } => "rejected",
        WireError::Encode { .. } => "encode",
    }
}

/// Reads events of type `T`, dead-lettering what cannot be decoded.
pub struct EventReader<T> {
    consumer: Box<dyn Consumer>,
    codec: Arc<WireCodec>,
    producer: Arc<dyn Producer>,
    dlq_topic: String,
    /// The record a call took from the consumer and has not answered for yet. A caller that
    /// drops `next` (a `select!` branch losing) while it decodes or dead-letters would
    /// otherwise lose the record: it was never handed out, and a later offset's commit passed
    /// it. The next call picks it up again.
    taken: Option<ConsumedRecord>,
    _event: PhantomData<fn() -> T>,
}

impl<T: serde::de::DeserializeOwned + apache_avro::AvroSchema + 'static> EventReader<T> {
    pub fn new(consumer: Box<dyn Consumer>, codec: Arc<WireCodec>, producer: Arc<dyn Producer>, dlq_topic: impl Into<String>) -> Self {
        Self { consumer, codec, producer, dlq_topic: dlq_topic.into(), taken: None, _event: PhantomData }
    }

    pub fn consumer(&mut self) -> &mut dyn Consumer {
        self.consumer.as_mut()
    }

    pub fn into_consumer(self) -> Box<dyn Consumer> {
        self.consumer
    }

    /// The next event, dead letter or rebalance. Cancel-safe: a record taken by a call that
    /// was dropped is decoded (and dead-lettered, at least once) by the next call; a dead
    /// letter is written before the outcome is returned.
    pub async fn next(&mut self) -> Result<ReadOutcome<T>, EventReadError> {
        if self.taken.is_none() {
            match self.consumer.next_event().await? {
                ConsumerEvent::Record(record) => self.taken = Some(record),
                other => return Ok(ReadOutcome::Rebalance(other)),
            }
        }
        let Some(record) = &self.taken else { unreachable!("a record was just taken") };
        match self.codec.decode::<T>(&record.payload).await {
            Ok((schema_id, event)) => {
                let Some(record) = self.taken.take() else { unreachable!("still taken") };
                Ok(ReadOutcome::Event { record, schema_id, event })
            }
            Err(error) if error.is_passing() => {
                // Not the record's fault: step back so the record is read again on retry.
                let tp = record.topic_partition();
                let offset = record.offset;
                self.taken = None;
                self.consumer.seek(&tp, crate::log::SeekTo::Offset(offset)).await?;
                Err(EventReadError::Registry { source_position: format!("{tp}@{offset}"), error })
            }
            Err(error) => {
                let dead_letter = dead_letter(self.producer.as_ref(), &self.dlq_topic, record, &error).await?;
                let Some(record) = self.taken.take() else { unreachable!("still taken") };
                tracing::warn!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    error_kind = error_kind(&error), reason = %error, dlq = %self.dlq_topic,
                    "undecodable record moved to the dead-letter topic"
                );
                Ok(ReadOutcome::DeadLettered { record, error, dead_letter })
            }
        }
    }
}

/// Appends `record` to `dlq_topic` with why it could not be decoded. A free function rather
/// than a method so the reader's future stays `Send` (the consumer inside is not `Sync`).
///
/// The copy is the record plus three headers, so a record near the log's limit (or past it:
/// a foreign Kafka producer is bound only by the broker's limit) makes a copy that cannot be
/// written. Refused for its size, the copy is written again with the end of its payload cut
/// (and, if they alone are too large, without the record's own headers), saying so in
/// [`DLQ_TRUNCATED`]: an error that came back on every read would stop the consumer at this
/// record for good.
async fn dead_letter(producer: &dyn Producer, dlq_topic: &str, record: &ConsumedRecord, error: &WireError) -> Result<Position, LogError> {
    let mut headers = record.headers.clone();
    headers.push(Header { name: DLQ_REASON.into(), value: Bytes::from(error.to_string()) });
    headers.push(Header { name: DLQ_ERROR.into(), value: Bytes::from_static(error_kind(error).as_bytes()) });
    headers.push(Header { name: DLQ_SOURCE.into(), value: Bytes::from(format!("{}/{}/{}", record.topic, record.partition, record.offset)) });
    let letter = Record {
        topic: dlq_topic.to_string(),
        partition: None,
        key: record.key.clone(),
        headers,
        payload: record.payload.clone(),
        timestamp_ms: Some(record.timestamp_ms),
    };
    match producer.send(letter.clone()).await {
        Err(LogError::RecordTooLarge { max, .. }) => producer.send(cut_to_fit(letter, max)).await?.await,
        sent => sent?.await,
    }
}

/// `letter` with as much of its payload as fits in `max` bytes, and a [`DLQ_TRUNCATED`] note.
fn cut_to_fit(mut letter: Record, max: usize) -> Record {
    let overhead = |l: &Record| l.size() - l.payload.len() + DLQ_TRUNCATED.len() + TRUNCATION_NOTE_BYTES;
    if overhead(&letter) > max {
        letter.headers.retain(|h| h.name.starts_with("agentlog.dlq."));
    }
    if overhead(&letter) > max {
        letter.key = None;
    }
    let original = letter.payload.len();
    let keep = max.saturating_sub(overhead(&letter)).min(original);
    letter.payload = letter.payload.slice(..keep);
    let note = format!("payload cut from {original} to {keep} bytes to fit log.max_record_bytes ({max})");
    letter.headers.push(Header { name: DLQ_TRUNCATED.into(), value: Bytes::from(note) });
    letter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_letter_fits_and_says_what_was_cut() {
        let letter = Record::new("dlq", vec![7u8; 5_000]).with_header(DLQ_REASON, Bytes::from_static(b"corrupt"));
        let cut = cut_to_fit(letter, 1_000);
        assert!(cut.size() <= 1_000, "{}", cut.size());
        let note = cut.headers.iter().find(|h| h.name == DLQ_TRUNCATED).expect("marker");
        assert!(String::from_utf8_lossy(&note.value).starts_with("payload cut from 5000 to "), "{:?}", note.value);
        // Foreign headers too large on their own are dropped; the dead-letter ones stay.
        let letter = Record::new("dlq", vec![7u8; 10]).with_header("big", Bytes::from(vec![1u8; 2_000])).with_header(DLQ_REASON, Bytes::from_static(b"x"));
        let cut = cut_to_fit(letter, 1_000);
        assert!(cut.size() <= 1_000 && cut.headers.iter().all(|h| h.name != "big"));
    }
}
