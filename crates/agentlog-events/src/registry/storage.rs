//! The registry's storage: events on a compacted, single-partition topic of the event log.
//!
//! Each change is one record. Its key names what it updates (`schema/<subject>/<version>`,
//! `config/<subject>`, or `config` for the global level), so compaction keeps exactly the
//! latest state of each while the topic stays a complete description of the registry. Only the
//! [`EventLog`] contract is used, so the registry runs on the embedded log and on Kafka alike.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::RegistryError;
use super::state::State;
use super::stored_event::StoredEvent;
use crate::log::{CleanupPolicy, Consumer, ConsumerEvent, ConsumerOptions, EventLog, LogError, Producer, Record, SeekTo, TopicPartition, TopicSpec};

/// The partition everything lives on: one partition gives one total order of changes.
pub const PARTITION: i32 = 0;

/// Creates the schemas topic (1 partition, compacted) unless it exists. An existing topic is
/// used as is; a wrong shape is reported, not "fixed", since altering topics is `topics apply`'s job.
pub async fn ensure_topic(log: &dyn EventLog, topic: &str) -> Result<(), RegistryError> {
    let admin = log.admin();
    match admin.describe_topic(topic).await {
        Ok(description) => {
            if description.cleanup_policy != CleanupPolicy::Compact || description.partitions != 1 {
                tracing::warn!(
                    topic,
                    partitions = description.partitions,
                    cleanup_policy = description.cleanup_policy.as_str(),
                    "schemas topic should have 1 partition and cleanup policy compact; using partition 0"
                );
            }
            Ok(())
        }
        Err(LogError::UnknownTopic { .. }) => {
            let mut spec = TopicSpec::new(topic, 1);
            spec.cleanup_policy = CleanupPolicy::Compact;
            match admin.create_topic(&spec).await {
                Ok(()) => {
                    tracing::info!(topic, "created schemas topic");
                    Ok(())
                }
                // Another registry instance won the race: fine.
                Err(LogError::TopicExists { .. }) => Ok(()),
                Err(source) => Err(RegistryError::Storage { operation: "create schemas topic", source }),
            }
        }
        Err(source) => Err(RegistryError::Storage { operation: "describe schemas topic", source }),
    }
}

/// Appends one event and waits until it is durable; returns its offset.
pub async fn append(producer: &dyn Producer, topic: &str, event: &StoredEvent) -> Result<i64, RegistryError> {
    let payload = serde_json::to_vec(event).map_err(|e| RegistryError::Encoding { reason: e.to_string() })?;
    let record = Record::new(topic, payload).with_key(Bytes::from(event.key())).with_partition(PARTITION);
    let delivery = producer.send(record).await.map_err(|source| RegistryError::Storage { operation: "append", source })?;
    let position = delivery.await.map_err(|source| RegistryError::Storage { operation: "append (durability)", source })?;
    Ok(position.offset)
}

/// Reads the schemas topic from the beginning and applies every record to `state`, forever
/// (until `cancel`). After applying the record at offset `o` it publishes `o + 1` on `applied`,
/// which is how startup knows the replay is complete and how a writer knows its own write
/// (or another instance's) is visible. While no record comes it publishes the consumer's
/// position instead: offsets that are never delivered (a transaction's marker or an aborted
/// record, written to the topic by another client) would otherwise hold the replay short of
/// the high watermark until it timed out, the rule `log::follow` applies to every history.
pub struct Tail {
    pub consumer: Box<dyn Consumer>,
    pub topic: String,
    pub state: Arc<RwLock<State>>,
    pub applied: watch::Sender<i64>,
    pub cancel: CancellationToken,
}

/// How long the tail waits before reading again after a log error.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How long the tail waits for a record before publishing its position instead.
const POSITION_AFTER: Duration = Duration::from_millis(250);

impl Tail {
    /// Assigns partition 0 from the earliest offset. Done before spawning so a failure is
    /// reported by `Registry::open` rather than lost in a task.
    pub async fn start(log: &dyn EventLog, topic: &str) -> Result<Box<dyn Consumer>, RegistryError> {
        let options = ConsumerOptions { group: None, client_id: Some("agentlog-schema-registry".to_owned()), ..Default::default() };
        let mut consumer = log.consumer(options).map_err(|source| RegistryError::Storage { operation: "open consumer", source })?;
        consumer
            .assign(&[(TopicPartition::new(topic, PARTITION), SeekTo::Earliest)])
            .await
            .map_err(|source| RegistryError::Storage { operation: "assign schemas partition", source })?;
        Ok(consumer)
    }

    pub async fn run(mut self) {
        tracing::debug!(topic = %self.topic, "schema registry tail started");
        loop {
            let event = tokio::select! {
                _ = self.cancel.cancelled() => break,
                event = tokio::time::timeout(POSITION_AFTER, self.consumer.next_event()) => match event {
                    Ok(event) => event,
                    Err(_) => {
                        self.publish_position();
                        continue;
                    }
                },
            };
            match event {
                Ok(ConsumerEvent::Record(record)) => {
                    if record.payload.is_empty() {
                        // A tombstone: nothing to apply (the registry does not write them yet).
                    } else {
                        match serde_json::from_slice::<StoredEvent>(&record.payload) {
                            Ok(stored) => self.state.write().unwrap_or_else(|e| e.into_inner()).apply(stored),
                            Err(e) => tracing::warn!(topic = %self.topic, offset = record.offset, error = %e,
                                "skipping a schemas record that is not a registry event"),
                        }
                    }
                    self.applied.send_replace(record.offset + 1);
                }
                Ok(_) => {}
                Err(LogError::Shutdown) => {
                    tracing::debug!(topic = %self.topic, "event log shut down; schema registry tail stops");
                    break;
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "schema registry tail read failed; retrying");
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
        if let Err(e) = self.consumer.close().await {
            tracing::debug!(error = %e, "closing the schema registry tail consumer");
        }
        tracing::debug!(topic = %self.topic, "schema registry tail stopped");
    }

    /// Everything below the consumer's position has been read (delivered and applied, or never
    /// delivered at all), so it counts as applied.
    fn publish_position(&self) {
        let partition = TopicPartition::new(&self.topic, PARTITION);
        if let Some((_, position)) = self.consumer.positions().into_iter().find(|(tp, _)| *tp == partition) {
            self.applied.send_if_modified(|applied| {
                let moved = position > *applied;
                *applied = (*applied).max(position);
                moved
            });
        }
    }
}
