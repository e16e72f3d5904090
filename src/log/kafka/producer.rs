//! Appends through librdkafka's idempotent producer (acks=all, murmur2 partitioner).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::client::map_error;
use super::metadata::TopicCache;
use crate::log::{Delivery, LogError, LogResult, Position, Producer, Record};

pub(crate) struct KafkaProducer {
    pub(crate) producer: FutureProducer,
    pub(crate) topics: Arc<TopicCache>,
    pub(crate) endpoint: String,
    pub(crate) max_record_bytes: usize,
    pub(crate) request_timeout: Duration,
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

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, record: Record) -> LogResult<Delivery> {
        validate(&self.topics, &record, self.max_record_bytes).await?;
        let deadline = Instant::now() + self.request_timeout;
        let future = loop {
            match self.producer.send_result(to_future_record(&record)) {
                Ok(future) => break future,
                // librdkafka's queue is full: this is the back-pressure point, wait for room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(map_error("produce", &self.endpoint, Some(&record.topic), error)),
            }
        };
        let endpoint = self.endpoint.clone();
        let topic = record.topic;
        Ok(Box::pin(async move {
            match future.await {
                Ok(Ok(delivery)) => Ok(Position { partition: delivery.partition, offset: delivery.offset }),
                Ok(Err((error, _))) => Err(map_error("produce", &endpoint, Some(&topic), error)),
                Err(_canceled) => Err(LogError::Shutdown),
            }
        }))
    }
}
