//! Appends through librdkafka's idempotent producer (acks=all, murmur2 partitioner). A
//! delivery acknowledged without an offset is confirmed in the log before it counts
//! ([`super::confirm`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::channel::oneshot::Canceled;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::client::map_error;
use super::confirm::Confirmer;
use super::metadata::TopicCache;
use crate::now_ms;
use crate::{Delivery, LogError, LogResult, Position, Producer, Record};

pub(crate) struct KafkaProducer {
    pub(crate) topics: Arc<TopicCache>,
    pub(crate) max_record_bytes: usize,
    /// What a delivery future needs after `send` returns: one handle, cloned per send.
    pub(crate) sender: Arc<Sender>,
}

/// Builds the librdkafka message for `record`; borrowed, so it is rebuilt on a retry.
pub(crate) fn to_future_record(record: &Record) -> FutureRecord<'_, [u8], [u8]> {
    let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&record.topic).payload(&record.payload[..]);
    if let Some(key) = &record.key {
        out = out.key(&key[..]);
    }
    if let Some(partition) = record.partition {
        out = out.partition(partition);
    }
    if let Some(ts) = record.timestamp_ms {
        out = out.timestamp(ts);
    }
    if !record.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for h in &record.headers {
            headers = headers.insert(KafkaHeader { key: &h.name, value: Some(&h.value[..]) });
        }
        out = out.headers(headers);
    }
    out
}

/// Checks what both backends check before anything is sent: size, topic, partition.
pub(crate) async fn validate(topics: &TopicCache, record: &Record, max_record_bytes: usize) -> LogResult<()> {
    let size = record.size();
    if size > max_record_bytes {
        return Err(LogError::RecordTooLarge { topic: record.topic.clone(), size, max: max_record_bytes });
    }
    let partitions = topics.partitions(&record.topic).await?;
    if let Some(p) = record.partition
        && (p < 0 || p >= partitions)
    {
        return Err(LogError::UnknownPartition { topic: record.topic.clone(), partition: p });
    }
    Ok(())
}

/// How many times a record acknowledged without an offset and then not found in its
/// partition is sent again before the send fails as unconfirmed (see [`super::confirm`]).
const MAX_RESENDS: u32 = 3;

/// Hands `record` to librdkafka, waiting for room while its queue is full (the
/// back-pressure point) until `deadline`.
async fn enqueue(producer: &FutureProducer, endpoint: &str, record: &Record, deadline: Instant) -> LogResult<DeliveryFuture> {
    loop {
        match producer.send_result(to_future_record(record)) {
            Ok(future) => return Ok(future),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, _)) => return Err(map_error("produce", endpoint, Some(&record.topic), error)),
        }
    }
}

/// librdkafka's producer with what a delivery needs to be confirmed or sent again.
pub(crate) struct Sender {
    pub(crate) producer: FutureProducer,
    pub(crate) endpoint: String,
    /// Looks up a record whose delivery came without an offset.
    pub(crate) confirmer: Confirmer,
    pub(crate) request_timeout: Duration,
}

impl Sender {
    /// The position of `record`, whose delivery to `partition` came without an offset: found
    /// in the partition, or (surely not there) sent again to it, up to [`MAX_RESENDS`] times.
    async fn confirm(&self, mut record: Record, mut partition: i32, mut sent_ms: i64) -> LogResult<Position> {
        let mut resends = 0;
        loop {
            let found = self.confirmer.find(&record, partition, sent_ms).await?;
            tracing::warn!(topic = %record.topic, partition, found_at = ?found, resends, "a delivery was reported without an offset; looked the record up in its partition");
            if let Some(offset) = found {
                return Ok(Position { partition, offset });
            }
            if resends == MAX_RESENDS {
                return Err(LogError::Unavailable {
                    endpoint: self.endpoint.clone(),
                    reason: format!(
                        "produce to {}/{partition}: delivered without an offset {} times and not found in the partition",
                        record.topic,
                        resends + 1
                    ),
                });
            }
            resends += 1;
            // The key's partition, whatever the partitioner would pick now.
            record.partition = Some(partition);
            sent_ms = now_ms();
            let future = enqueue(&self.producer, &self.endpoint, &record, Instant::now() + self.request_timeout).await?;
            match delivered(future.await, &self.endpoint, &record.topic)? {
                (p, Some(offset)) => return Ok(Position { partition: p, offset }),
                (p, None) => partition = p,
            }
        }
    }
}

/// A delivery report as (partition, offset if the report has one).
fn delivered(report: Result<OwnedDeliveryResult, Canceled>, endpoint: &str, topic: &str) -> LogResult<(i32, Option<i64>)> {
    match report {
        Ok(Ok(delivery)) => Ok((delivery.partition, (delivery.offset >= 0).then_some(delivery.offset))),
        Ok(Err((error, _))) => Err(map_error("produce", endpoint, Some(topic), error)),
        Err(_canceled) => Err(LogError::Shutdown),
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, record: Record) -> LogResult<Delivery> {
        validate(&self.topics, &record, self.max_record_bytes).await?;
        let sent_ms = now_ms();
        let sender = self.sender.clone();
        let future = enqueue(&sender.producer, &sender.endpoint, &record, Instant::now() + sender.request_timeout).await?;
        Ok(Box::pin(async move {
            match delivered(future.await, &sender.endpoint, &record.topic)? {
                (partition, Some(offset)) => Ok(Position { partition, offset }),
                // Acknowledged without an offset: maybe written, maybe not (see `confirm`).
                (partition, None) => sender.confirm(record, partition, sent_ms).await,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;
    use crate::{EventLog, TopicPartition, TopicSpec};

    fn kafka_config() -> crate::config::KafkaConfig {
        let bootstrap = match std::env::var("AGENTLOG_TEST_KAFKA") {
            Ok(servers) if !servers.trim().is_empty() => servers,
            _ => panic!("this Kafka test needs AGENTLOG_TEST_KAFKA to name a broker (scripts/kafka-local.sh start; make test does both)"),
        };
        let mut config = LogConfig::shipped_defaults().kafka;
        config.bootstrap_servers = bootstrap;
        config.request_timeout_ms = 15_000;
        // The open transaction below must outlive the test (librdkafka's transaction timeout
        // here is 10 s, and a cold broker takes seconds to add a partition to one).
        config.producer_properties.insert("transaction.timeout.ms".into(), "120000".into());
        config
    }

    /// Every record of partition 0 of `topic` with `payload`, by offset.
    async fn copies(log: &Arc<super::super::KafkaLog>, topic: &str, payload: &[u8]) -> Vec<i64> {
        let log: Arc<dyn EventLog> = log.clone();
        let follower = crate::follow::Follower::open(&log, &[topic.to_string()], crate::SeekTo::Earliest).await.expect("reader");
        let records = follower.read_history(Duration::from_secs(20)).await.expect("read the partition");
        records.iter().filter(|r| r.payload[..] == *payload).map(|r| r.offset).collect()
    }

    /// librdkafka reports some deliveries without an offset, one of which was never written
    /// (module `confirm`). Such a record must end up in its partition exactly once: found
    /// where it is when it was written, written again when it was not, and the lookup must
    /// not wait for another writer's open transaction on the partition.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Kafka: AGENTLOG_TEST_KAFKA names a broker (make test starts one and runs these)"]
    async fn a_delivery_without_an_offset_is_found_or_written_again() {
        let config = kafka_config();
        let log = super::super::KafkaLog::connect(&config, 100_000).expect("connect");
        let topic = format!("confirm-{}-{:08x}", std::process::id(), rand::random::<u32>());
        log.admin().create_topic(&TopicSpec::new(&topic, 1)).await.expect("create topic");
        let producer = log.shared_producer().expect("producer");
        let resend = producer.sender.clone();
        let record = |payload: &str| Record::new(&topic, payload.as_bytes().to_vec()).with_key(b"task-1".to_vec());

        // Another writer's transaction stays open on the partition throughout.
        let transactional = log.transactional_producer(&format!("{topic}-open")).expect("transactional producer");
        let mut open = transactional.begin().await.expect("begin");
        let pending = record("in an open transaction");
        let pending_ms = now_ms();
        open.send(pending.clone()).await.expect("send in the transaction");
        // Until the transaction ends, read_committed readers stop before this record.
        let deadline = Instant::now() + Duration::from_secs(60);
        while producer.sender.confirmer.find(&pending, 0, pending_ms).await.expect("look the pending record up") != Some(0) {
            assert!(Instant::now() < deadline, "the open transaction's record reached the broker within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tp = TopicPartition::new(&topic, 0);
        assert_eq!(log.admin().watermarks(&tp).await.expect("watermarks").high, 0, "the transaction is open: nothing is stable yet");

        let sent_ms = now_ms();
        let written = producer.send(record("written")).await.expect("send").await.expect("delivered");
        let found =
            tokio::time::timeout(Duration::from_secs(30), resend.confirm(record("written"), 0, sent_ms)).await.expect("no wait for the open transaction");
        assert_eq!(found.expect("confirmed").offset, written.offset, "a written record is found where it is");

        let sent_ms = now_ms();
        let again =
            tokio::time::timeout(Duration::from_secs(30), resend.confirm(record("never written"), 0, sent_ms)).await.expect("no wait for the open transaction");
        let again = again.expect("written again");

        open.abort().await.expect("abort the open transaction");
        // The abort's marker is written after `abort` returns: until then read_committed
        // readers (as `copies`) see nothing stable.
        let deadline = Instant::now() + Duration::from_secs(30);
        while log.admin().watermarks(&tp).await.expect("watermarks").high <= again.offset {
            assert!(Instant::now() < deadline, "the aborted transaction's marker was written within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(copies(&log, &topic, b"written").await, vec![written.offset], "a record found is not written a second time");
        assert_eq!(copies(&log, &topic, b"never written").await, vec![again.offset], "a record not found is written once, where confirm says");
        log.admin().delete_topic(&topic).await.expect("delete topic");
    }
}
