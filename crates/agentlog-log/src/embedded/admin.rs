//! Topic administration and offset inspection.
//!
//! Creating and deleting topics change what the writer may append to, so they run under the
//! writer-state lock and write their metadata in one batch; the coordinator then rebalances
//! groups subscribed to the topic. Topic ids are never reused, so records of a deleted topic
//! can never reappear under a new topic of the same name.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use rocksdb::WriteBatch;

use super::store::{self, StoredTopic, encode_partition_meta, meta_partition_key, meta_topic_key, partition_prefix, topic_end};
use super::topic::TopicShared;
use super::writer::{Cfs, PartitionWriter, WriterTopic};
use super::{Shared, live, reader};
use crate::{Admin, LogError, LogResult, TopicDescription, TopicPartition, TopicSpec, Watermarks};

impl Shared {
    pub(crate) fn create_topic(&self, spec: &TopicSpec) -> LogResult<()> {
        spec.validate()?;
        let cfs = Cfs::of(&self.db)?;
        let mut state = self.lock_state();
        if state.by_name.contains_key(&spec.name) {
            return Err(LogError::TopicExists { topic: spec.name.clone() });
        }
        let id = state.next_topic_id;
        let stored = StoredTopic { id, spec: spec.clone() };
        let json = serde_json::to_vec(&stored).map_err(|e| LogError::Invalid { what: "topic spec", reason: e.to_string() })?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cfs.meta, meta_topic_key(&spec.name), json);
        batch.put_cf(cfs.meta, store::META_NEXT_TOPIC_ID, (id + 1).to_be_bytes());
        for partition in 0..spec.partitions as u32 {
            batch.put_cf(cfs.meta, meta_partition_key(id, partition), encode_partition_meta(0, 0));
        }
        self.db.write_opt(batch, &self.write_options()).map_err(store::storage("create topic"))?;

        let writers: Vec<PartitionWriter> = (0..spec.partitions).map(|_| PartitionWriter::new(0, 0, i64::MIN, 0)).collect();
        let shared = Arc::new(TopicShared::new(id, spec.clone(), writers.iter().map(|_| (0, 0, 0))));
        state.next_topic_id = id + 1;
        state.by_name.insert(spec.name.clone(), id);
        state.topics.insert(id, WriterTopic { shared: Arc::clone(&shared), partitions: writers });
        self.ingress.topics.write().expect("topic registry lock poisoned").insert(spec.name.clone(), shared);
        drop(state);
        tracing::info!(topic = %spec.name, partitions = spec.partitions, topic_id = id, "embedded topic created");
        self.coordinator.topic_changed(&spec.name, &|t| self.ingress.partitions_of(t));
        Ok(())
    }

    pub(crate) fn delete_topic(&self, name: &str) -> LogResult<()> {
        let cfs = Cfs::of(&self.db)?;
        let mut state = self.lock_state();
        let id = *state.by_name.get(name).ok_or_else(|| LogError::UnknownTopic { topic: name.to_owned() })?;
        let mut batch = WriteBatch::default();
        let (start, end) = (partition_prefix(id, 0), topic_end(id));
        batch.delete_range_cf(cfs.records, &start[..], &end[..]);
        batch.delete_range_cf(cfs.timeindex, &start[..], &end[..]);
        batch.delete_cf(cfs.meta, meta_topic_key(name));
        let meta_start = [store::META_PARTITION_PREFIX, &start[..]].concat();
        let meta_end = [store::META_PARTITION_PREFIX, &end[..]].concat();
        batch.delete_range_cf(cfs.meta, meta_start, meta_end);
        // Committed offsets of the topic go with it (as in Kafka). Offsets are keyed by group
        // first, so this is a scan of the (small) offsets column family.
        let mut iter = self.db.raw_iterator_cf(cfs.offsets);
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            if store::topic_of_offsets_key(key) == Some(name.as_bytes()) {
                batch.delete_cf(cfs.offsets, key);
            }
            iter.next();
        }
        iter.status().map_err(store::storage("delete topic"))?;
        drop(iter);
        self.db.write_opt(batch, &self.write_options()).map_err(store::storage("delete topic"))?;

        state.by_name.remove(name);
        if let Some(topic) = state.topics.remove(&id) {
            topic.shared.mark_deleted();
        }
        self.ingress.topics.write().expect("topic registry lock poisoned").remove(name);
        drop(state);
        tracing::info!(topic = %name, topic_id = id, "embedded topic deleted");
        self.coordinator.topic_changed(name, &|t| self.ingress.partitions_of(t));
        Ok(())
    }

    pub(crate) fn partition(&self, tp: &TopicPartition) -> LogResult<Arc<TopicShared>> {
        let topic = self.ingress.topic(&tp.topic).ok_or_else(|| LogError::UnknownTopic { topic: tp.topic.clone() })?;
        if tp.partition < 0 || tp.partition >= topic.partition_count() {
            return Err(LogError::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition });
        }
        Ok(topic)
    }
}

pub(crate) struct EmbeddedAdmin {
    pub shared: Weak<Shared>,
}

#[async_trait]
impl Admin for EmbeddedAdmin {
    async fn create_topic(&self, spec: &TopicSpec) -> LogResult<()> {
        live(&self.shared)?.create_topic(spec)
    }

    async fn describe_topic(&self, name: &str) -> LogResult<TopicDescription> {
        let shared = live(&self.shared)?;
        let topic = shared.ingress.topic(name).ok_or_else(|| LogError::UnknownTopic { topic: name.to_owned() })?;
        Ok(topic.describe())
    }

    async fn delete_topic(&self, name: &str) -> LogResult<()> {
        live(&self.shared)?.delete_topic(name)
    }

    async fn list_topics(&self) -> LogResult<Vec<String>> {
        let shared = live(&self.shared)?;
        let mut names: Vec<String> = shared.ingress.topics.read().expect("topic registry lock poisoned").keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    async fn watermarks(&self, partition: &TopicPartition) -> LogResult<Watermarks> {
        let shared = live(&self.shared)?;
        let topic = shared.partition(partition)?;
        let (low, high) = topic.watermarks(partition.partition as u32).unwrap_or((0, 0));
        Ok(Watermarks { low, high })
    }

    async fn offset_for_timestamp(&self, partition: &TopicPartition, timestamp_ms: i64) -> LogResult<Option<i64>> {
        let shared = live(&self.shared)?;
        let topic = shared.partition(partition)?;
        reader::offset_for_timestamp(&shared, &topic, partition.partition as u32, timestamp_ms)
    }

    async fn committed_offsets(&self, group: &str, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>> {
        let shared = live(&self.shared)?;
        reader::committed(&shared, group, partitions)
    }

    async fn timestamp_at(&self, partition: &TopicPartition, offset: i64) -> LogResult<Option<i64>> {
        let shared = live(&self.shared)?;
        let topic = shared.partition(partition)?;
        reader::timestamp_at(&shared, &topic, partition.partition as u32, offset)
    }
}
