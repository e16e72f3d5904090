//! Accepting records: synchronous validation and partitioning, then a hand-off to the writer.
//!
//! [`Ingress`] is what producers and transactions hold. It does not own the database, so a
//! producer that outlives the log only gets `Shutdown` errors and does not keep RocksDB open.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::topic::TopicShared;
use super::writer::{Append, Command, OffsetsCommit};
use crate::murmur2::partition_for_key;
use crate::{Delivery, LogError, LogResult, Position, Producer, Record};

/// Resolves to the positions of a batch once it is durable.
pub type BatchDelivery = std::pin::Pin<Box<dyn std::future::Future<Output = LogResult<Vec<Position>>> + Send>>;

pub(crate) struct Ingress {
    /// Live topics by name. Written only by topic creation/deletion (rare).
    pub topics: RwLock<HashMap<String, Arc<TopicShared>>>,
    /// Bounded: a full queue makes `send` wait (back-pressure) instead of growing memory.
    pub tx: mpsc::Sender<Command>,
    pub closed: CancellationToken,
    pub max_record_bytes: usize,
}

impl Ingress {
    pub fn topic(&self, name: &str) -> Option<Arc<TopicShared>> {
        self.topics.read().expect("topic registry lock poisoned").get(name).cloned()
    }

    pub fn partitions_of(&self, name: &str) -> Option<i32> {
        self.topics.read().expect("topic registry lock poisoned").get(name).map(|t| t.partition_count())
    }

    pub fn ensure_open(&self) -> LogResult<()> {
        if self.closed.is_cancelled() { Err(LogError::Shutdown) } else { Ok(()) }
    }

    /// Validates `record` and picks its partition, without appending anything.
    pub fn resolve(&self, record: Record) -> LogResult<Append> {
        self.ensure_open()?;
        let size = record.size();
        if size > self.max_record_bytes {
            return Err(LogError::RecordTooLarge { topic: record.topic, size, max: self.max_record_bytes });
        }
        let topics = self.topics.read().expect("topic registry lock poisoned");
        let topic = topics.get(&record.topic).ok_or_else(|| LogError::UnknownTopic { topic: record.topic.clone() })?;
        let count = topic.partition_count();
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if (0..count).contains(&p) => p as u32,
            (Some(p), _) => return Err(LogError::UnknownPartition { topic: record.topic.clone(), partition: p }),
            (None, Some(key)) => partition_for_key(key, count) as u32,
            (None, None) => topic.next_round_robin(),
        };
        let topic_id = topic.id;
        drop(topics);
        Ok(Append { topic_id, partition, record })
    }

    async fn submit(&self, command: Command) -> LogResult<()> {
        // Fast path without a select; the writer is gone only after shutdown.
        let command = match self.tx.try_send(command) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(LogError::Shutdown),
            Err(mpsc::error::TrySendError::Full(command)) => command,
        };
        tokio::select! {
            biased;
            _ = self.closed.cancelled() => Err(LogError::Shutdown),
            sent = self.tx.send(command) => sent.map_err(|_| LogError::Shutdown),
        }
    }

    pub async fn send_one(&self, record: Record) -> LogResult<Delivery> {
        let append = self.resolve(record)?;
        let (reply, rx) = oneshot::channel();
        self.submit(Command::One { append, reply }).await?;
        // A dropped reply sender means the writer stopped before writing: not durable.
        Ok(Box::pin(async move { rx.await.unwrap_or(Err(LogError::Shutdown)) }))
    }

    /// Appends already-validated records and commits offsets in one atomic write.
    pub async fn submit_many(&self, appends: Vec<Append>, commit: Option<OffsetsCommit>) -> LogResult<BatchDelivery> {
        self.ensure_open()?;
        let (reply, rx) = oneshot::channel();
        self.submit(Command::Many { appends, commit, reply }).await?;
        Ok(Box::pin(async move { rx.await.unwrap_or(Err(LogError::Shutdown)) }))
    }

    pub async fn send_batch(&self, records: Vec<Record>) -> LogResult<BatchDelivery> {
        let appends = records.into_iter().map(|r| self.resolve(r)).collect::<LogResult<Vec<_>>>()?;
        self.submit_many(appends, None).await
    }
}

/// The embedded log's producer. Cheap to clone and share; all producers feed one writer.
#[derive(Clone)]
pub struct EmbeddedProducer {
    pub(crate) ingress: Arc<Ingress>,
}

impl EmbeddedProducer {
    /// Appends `records` atomically (one write, one reply): the fast path for bulk producers.
    /// Fails at once, appending nothing, if any record is invalid.
    pub async fn send_batch(&self, records: Vec<Record>) -> LogResult<BatchDelivery> {
        self.ingress.send_batch(records).await
    }
}

#[async_trait::async_trait]
impl Producer for EmbeddedProducer {
    async fn send(&self, record: Record) -> LogResult<Delivery> {
        self.ingress.send_one(record).await
    }
}
