//! The in-memory backend: the log's contract held in this process's memory, for tests and
//! demos that need no disk and no broker. Nothing survives the process; records are never
//! removed (no retention or compaction). Every component that shares one `MemoryLog` (as
//! `agentlog dev` and the test harness do) sees one log; two processes never do.
//!
//! - `topic`: a topic's partitions (one `Vec` of records each) and its readers' wake-up
//!   channel.
//! - `consumer`: assigned partitions or group membership through the in-process
//!   [`crate::coordinator`], the same coordinator as the embedded log's.
//! - `transaction`: records buffered until commit, then appended with the offsets in one
//!   step.
//!
//! An append is durable when it returns (there is nothing more durable to wait for), so a
//! [`crate::Delivery`] is ready at once. Appends and offset commits take one lock
//! ([`Shared::write`]), which makes a transaction's records and offsets one atomic step for
//! the group, and a member's ownership check and its commit one step against rebalances.

mod consumer;
mod topic;
mod transaction;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use self::topic::MemTopic;
use crate::coordinator::Coordinator;
use crate::murmur2::partition_for_key;
use crate::{
    Admin, ConsumedRecord, Consumer, ConsumerOptions, Delivery, EventLog, LogError, LogResult, Position, Producer, Record, TopicDescription, TopicPartition,
    TopicSpec, TransactionalProducer, Watermarks, now_ms,
};

/// Committed next offsets, by group and partition.
type Offsets = HashMap<(String, TopicPartition), i64>;

/// A record whose topic and partition are resolved: it can be appended as is.
pub(crate) struct Append {
    topic: Arc<MemTopic>,
    partition: i32,
    record: Record,
}

/// Offsets to commit for a group; `member`'s ownership is checked when present.
pub(crate) struct OffsetsCommit {
    pub group: String,
    pub member: Option<u64>,
    pub offsets: Vec<(TopicPartition, i64)>,
}

/// What producers, consumers, transactions and the admin share.
pub(crate) struct Shared {
    topics: RwLock<HashMap<String, Arc<MemTopic>>>,
    /// Held for every append and offset commit (see the module docs).
    write: Mutex<Offsets>,
    coordinator: Coordinator,
    closed: CancellationToken,
    max_record_bytes: usize,
}

impl Shared {
    fn ensure_open(&self) -> LogResult<()> {
        if self.closed.is_cancelled() { Err(LogError::Shutdown) } else { Ok(()) }
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<MemTopic>> {
        self.topics.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(name).cloned()
    }

    fn known_topic(&self, name: &str) -> LogResult<Arc<MemTopic>> {
        self.topic(name).ok_or_else(|| LogError::UnknownTopic { topic: name.to_owned() })
    }

    pub(crate) fn partitions_of(&self, name: &str) -> Option<i32> {
        self.topic(name).map(|t| t.partition_count())
    }

    fn lock_write(&self) -> MutexGuard<'_, Offsets> {
        // Every step under this lock either completes or changes nothing it guards.
        self.write.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Validates `record` and picks its partition, without appending anything.
    pub(crate) fn resolve(&self, record: Record) -> LogResult<Append> {
        self.ensure_open()?;
        let size = record.size();
        if size > self.max_record_bytes {
            return Err(LogError::RecordTooLarge { topic: record.topic, size, max: self.max_record_bytes });
        }
        let topic = self.known_topic(&record.topic)?;
        let count = topic.partition_count();
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if (0..count).contains(&p) => p,
            (Some(p), _) => return Err(LogError::UnknownPartition { topic: record.topic.clone(), partition: p }),
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => topic.next_round_robin(),
        };
        Ok(Append { topic, partition, record })
    }

    /// Appends `appends` and commits `commit` as one step: all of it or, on a failed
    /// ownership check or a deleted topic, none of it.
    pub(crate) fn write(&self, appends: Vec<Append>, commit: Option<OffsetsCommit>) -> LogResult<Vec<Position>> {
        self.ensure_open()?;
        let mut offsets = self.lock_write();
        if let Some(OffsetsCommit { group, member: Some(member), offsets: committed }) = &commit {
            self.coordinator.check_owned(group, *member, committed.iter().map(|(tp, _)| tp))?;
        }
        if let Some(gone) = appends.iter().find(|a| a.topic.is_deleted()) {
            return Err(LogError::UnknownTopic { topic: gone.topic.spec.name.clone() });
        }
        let now = now_ms();
        let mut positions = Vec::with_capacity(appends.len());
        let mut touched: Vec<Arc<MemTopic>> = Vec::new();
        for Append { topic, partition, record } in appends {
            let mut records = topic.records(partition)?;
            let offset = records.len() as i64;
            records.push(ConsumedRecord {
                topic: record.topic,
                partition,
                offset,
                key: record.key,
                headers: record.headers,
                payload: record.payload,
                timestamp_ms: record.timestamp_ms.unwrap_or(now),
            });
            drop(records);
            positions.push(Position { partition, offset });
            if !touched.iter().any(|t| Arc::ptr_eq(t, &topic)) {
                touched.push(topic);
            }
        }
        if let Some(commit) = commit {
            for (tp, next) in commit.offsets {
                offsets.insert((commit.group.clone(), tp), next);
            }
        }
        drop(offsets);
        for topic in touched {
            topic.notify();
        }
        Ok(positions)
    }

    pub(crate) fn committed(&self, group: &str, partitions: &[TopicPartition]) -> Vec<Option<i64>> {
        let offsets = self.lock_write();
        partitions.iter().map(|tp| offsets.get(&(group.to_owned(), tp.clone())).copied()).collect()
    }

    fn create_topic(&self, spec: &TopicSpec) -> LogResult<()> {
        spec.validate()?;
        {
            let mut topics = self.topics.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if topics.contains_key(&spec.name) {
                return Err(LogError::TopicExists { topic: spec.name.clone() });
            }
            topics.insert(spec.name.clone(), Arc::new(MemTopic::new(spec.clone())));
        }
        self.coordinator.topic_changed(&spec.name, &|t| self.partitions_of(t));
        Ok(())
    }

    fn delete_topic(&self, name: &str) -> LogResult<()> {
        // Under the write lock, so no append lands in the topic after it is gone.
        let mut offsets = self.lock_write();
        let topic = self.topics.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(name);
        let topic = topic.ok_or_else(|| LogError::UnknownTopic { topic: name.to_owned() })?;
        // Committed offsets of the topic go with it, as in Kafka.
        offsets.retain(|(_, tp), _| tp.topic != name);
        drop(offsets);
        topic.mark_deleted();
        self.coordinator.topic_changed(name, &|t| self.partitions_of(t));
        Ok(())
    }
}

/// The in-memory event log. See the module docs.
pub struct MemoryLog {
    shared: Arc<Shared>,
}

impl MemoryLog {
    /// An empty log; records larger than `max_record_bytes` are refused like on the others.
    pub fn new(max_record_bytes: usize) -> Arc<MemoryLog> {
        let shared = Shared {
            topics: RwLock::new(HashMap::new()),
            write: Mutex::new(HashMap::new()),
            coordinator: Coordinator::default(),
            closed: CancellationToken::new(),
            max_record_bytes,
        };
        Arc::new(MemoryLog { shared: Arc::new(shared) })
    }
}

struct MemoryProducer {
    shared: Arc<Shared>,
}

#[async_trait]
impl Producer for MemoryProducer {
    async fn send(&self, record: Record) -> LogResult<Delivery> {
        let append = self.shared.resolve(record)?;
        let mut positions = self.shared.write(vec![append], None)?;
        let position = positions.pop().ok_or(LogError::Shutdown)?;
        Ok(Box::pin(std::future::ready(Ok(position))))
    }
}

struct MemoryAdmin {
    shared: Arc<Shared>,
}

#[async_trait]
impl Admin for MemoryAdmin {
    async fn create_topic(&self, spec: &TopicSpec) -> LogResult<()> {
        self.shared.ensure_open()?;
        self.shared.create_topic(spec)
    }

    async fn describe_topic(&self, name: &str) -> LogResult<TopicDescription> {
        self.shared.ensure_open()?;
        Ok(self.shared.known_topic(name)?.describe())
    }

    async fn delete_topic(&self, name: &str) -> LogResult<()> {
        self.shared.ensure_open()?;
        self.shared.delete_topic(name)
    }

    async fn list_topics(&self) -> LogResult<Vec<String>> {
        self.shared.ensure_open()?;
        let mut names: Vec<String> = self.shared.topics.read().unwrap_or_else(|poisoned| poisoned.into_inner()).keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    async fn watermarks(&self, partition: &TopicPartition) -> LogResult<Watermarks> {
        self.shared.ensure_open()?;
        self.shared.known_topic(&partition.topic)?.watermarks(partition.partition)
    }

    async fn offset_for_timestamp(&self, partition: &TopicPartition, timestamp_ms: i64) -> LogResult<Option<i64>> {
        self.shared.ensure_open()?;
        self.shared.known_topic(&partition.topic)?.offset_for_timestamp(partition.partition, timestamp_ms)
    }

    async fn committed_offsets(&self, group: &str, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>> {
        self.shared.ensure_open()?;
        Ok(self.shared.committed(group, partitions))
    }

    async fn timestamp_at(&self, partition: &TopicPartition, offset: i64) -> LogResult<Option<i64>> {
        self.shared.ensure_open()?;
        self.shared.known_topic(&partition.topic)?.timestamp_at(partition.partition, offset)
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn location(&self) -> String {
        "this process's memory".into()
    }

    fn orders_by_time(&self) -> bool {
        true
    }

    fn in_process(&self) -> bool {
        true
    }

    fn max_record_bytes(&self) -> usize {
        self.shared.max_record_bytes
    }

    fn producer(&self) -> LogResult<Arc<dyn Producer>> {
        self.shared.ensure_open()?;
        Ok(Arc::new(MemoryProducer { shared: Arc::clone(&self.shared) }))
    }

    fn consumer(&self, options: ConsumerOptions) -> LogResult<Box<dyn Consumer>> {
        self.shared.ensure_open()?;
        Ok(Box::new(consumer::MemoryConsumer::new(&self.shared, options)))
    }

    fn transactional_producer(&self, transactional_id: &str) -> LogResult<Arc<dyn TransactionalProducer>> {
        self.shared.ensure_open()?;
        if transactional_id.is_empty() {
            return Err(LogError::Invalid { what: "transactional id", reason: "must not be empty".into() });
        }
        Ok(Arc::new(transaction::MemoryTransactionalProducer::new(transactional_id, Arc::clone(&self.shared))))
    }

    fn admin(&self) -> Arc<dyn Admin> {
        Arc::new(MemoryAdmin { shared: Arc::clone(&self.shared) })
    }

    /// Refuses new work and wakes every waiting consumer; there is nothing to flush.
    async fn shutdown(&self, _timeout: Duration) -> LogResult<()> {
        self.shared.closed.cancel();
        Ok(())
    }
}
