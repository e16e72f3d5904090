//! Deliveries librdkafka acknowledges without an offset, confirmed by reading the partition.
//!
//! An idempotent producer's delivery report carries the record's offset, except on two
//! paths that report success without one (the offset stays invalid, -1001): a message whose
//! request failed with an uncertain result is acknowledged *implicitly* when a later batch
//! of the same partition succeeds, and a `DUPLICATE_SEQUENCE_NUMBER` answer counts as
//! delivered. The implicit ack reasons that the broker would have refused the later batch's
//! sequence number had the earlier batch been missing. Kafka does not refuse it when the
//! partition's leader knows nothing of the producer id: it accepts any first sequence from
//! an unknown producer. So when a new producer's first batch to a partition fails while the
//! partition's leader moves and its next batch reaches the new leader, the next is accepted
//! and the first is reported delivered although it was never written
//! (confluentinc/confluent-kafka-go#921; here, an api restarted during a broker outage
//! acknowledged a submit that no reader ever saw: FAULTS.md, api_kill_during_broker_outage).
//!
//! A delivery without an offset is therefore no proof of a write. The record is looked up
//! in its partition (key and payload, which carries a unique event id) from the first
//! offset stamped at or after its send time, up to the high watermark, and the producer
//! sends it again only when it is surely not there. The lookup reads uncommitted, so an open
//! transaction of another writer on the partition cannot hold it up.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::client::map_error;
use crate::{LogError, LogResult, Record};

/// Records stamped by a clock a little behind this process's still count: the lookup
/// starts this much before the send.
const CLOCK_SLACK_MS: i64 = 1_000;

/// How long one poll of the lookup waits before it checks whether it has read far enough.
const POLL: Duration = Duration::from_millis(100);

pub(crate) struct Confirmer {
    /// An assign-only consumer's settings, read_uncommitted.
    config: ClientConfig,
    endpoint: String,
    timeout: Duration,
}

impl Confirmer {
    pub(crate) fn new(mut config: ClientConfig, endpoint: String, timeout: Duration) -> Self {
        config.set("isolation.level", "read_uncommitted").set("client.id", "agentlog-delivery-check");
        Self { config, endpoint, timeout }
    }

    /// The offset of `record` in `partition` of its topic, if it is there; `sent_ms` is when
    /// it was handed to the producer (ms since the epoch).
    pub(crate) async fn find(&self, record: &Record, partition: i32, sent_ms: i64) -> LogResult<Option<i64>> {
        let since = record.timestamp_ms.unwrap_or(sent_ms).min(sent_ms).saturating_sub(CLOCK_SLACK_MS);
        let (config, timeout) = (self.config.clone(), self.timeout);
        let (topic, key, payload) = (record.topic.clone(), record.key.clone(), record.payload.clone());
        let found = tokio::task::spawn_blocking(move || {
            find_blocking(&config, &topic, partition, since, timeout, |k, p| k == key.as_deref() && p == Some(&payload[..]))
        })
        .await
        .map_err(|_| LogError::Shutdown)?;
        match found {
            Ok(Lookup::Found(offset)) => Ok(Some(offset)),
            Ok(Lookup::Absent) => Ok(None),
            Ok(Lookup::TimedOut) => Err(LogError::Timeout { operation: "confirming a delivery reported without an offset", after: self.timeout }),
            Err(e) => Err(map_error("confirm delivery", &self.endpoint, Some(&record.topic), e)),
        }
    }
}

enum Lookup {
    Found(i64),
    Absent,
    TimedOut,
}

/// Reads `topic`/`partition` from the first offset stamped at or after `since_ms` to the
/// high watermark, looking for the record `matches` accepts (by key and payload).
fn find_blocking(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    since_ms: i64,
    timeout: Duration,
    matches: impl Fn(Option<&[u8]>, Option<&[u8]>) -> bool,
) -> Result<Lookup, KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    let consumer: BaseConsumer = config.create()?;
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition_offset(topic, partition, Offset::Offset(since_ms))?;
    let start = match consumer.offsets_for_times(wanted, timeout)?.find_partition(topic, partition).map(|p| p.offset()) {
        Some(Offset::Offset(offset)) => offset,
        // Nothing stamped at or after the send: the record is not there.
        _ => return Ok(Lookup::Absent),
    };
    let (_, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    if start >= high {
        return Ok(Lookup::Absent);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    while std::time::Instant::now() < deadline {
        match consumer.poll(POLL) {
            Some(Ok(message)) => {
                if matches(message.key(), message.payload()) {
                    return Ok(Lookup::Found(message.offset()));
                }
                if message.offset() + 1 >= high {
                    return Ok(Lookup::Absent);
                }
            }
            Some(Err(e)) => return Err(e),
            // The last offsets may be transaction markers, which are never delivered: the
            // position says whether the read has passed them.
            None => {
                let position = consumer.position()?.find_partition(topic, partition).map(|p| p.offset());
                if matches!(position, Some(Offset::Offset(p)) if p >= high) {
                    return Ok(Lookup::Absent);
                }
            }
        }
    }
    Ok(Lookup::TimedOut)
}
