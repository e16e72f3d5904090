//! Rebuilding in-memory state on open: topics from `meta`, and per partition the low
//! watermark and size (from `meta`), the high watermark (one past the last stored offset) and
//! the largest timestamp indexed so far (the last `timeindex` entry).

use std::collections::HashMap;
use std::sync::Arc;

use rocksdb::DB;

use super::store::{
    self, META_NEXT_TOPIC_ID, META_TOPIC_PREFIX, StoredTopic, decode_partition_meta, meta_partition_key, offset_of_key, partition_prefix, record_key,
    timestamp_key, timestamp_of_key,
};
use super::topic::TopicShared;
use super::writer::{Cfs, PartitionWriter, WriterState, WriterTopic};
use crate::{LogError, LogResult};

pub(crate) fn load(db: &DB) -> LogResult<(WriterState, HashMap<String, Arc<TopicShared>>)> {
    let cfs = Cfs::of(db)?;
    let next_topic_id = match db.get_cf(cfs.meta, META_NEXT_TOPIC_ID).map_err(store::storage("recover"))? {
        Some(v) => u32::from_be_bytes(v.as_slice().try_into().map_err(|_| LogError::Corrupt("next topic id".into()))?),
        None => 1,
    };
    let mut state = WriterState::new(next_topic_id);
    let mut registry = HashMap::new();

    let mut stored = Vec::new();
    let mut meta = db.raw_iterator_cf(cfs.meta);
    meta.seek(META_TOPIC_PREFIX);
    while let Some((key, value)) = meta.item() {
        if !key.starts_with(META_TOPIC_PREFIX) {
            break;
        }
        let topic: StoredTopic =
            serde_json::from_slice(value).map_err(|e| LogError::Corrupt(format!("topic metadata {}: {e}", String::from_utf8_lossy(key))))?;
        stored.push(topic);
        meta.next();
    }
    meta.status().map_err(store::storage("recover"))?;
    drop(meta);

    let mut records = db.raw_iterator_cf(cfs.records);
    let mut index = db.raw_iterator_cf(cfs.timeindex);
    for StoredTopic { id, spec } in stored {
        let mut writers = Vec::with_capacity(spec.partitions.max(0) as usize);
        for partition in 0..spec.partitions.max(0) as u32 {
            let prefix = partition_prefix(id, partition);
            let (low, bytes) = match db.get_cf(cfs.meta, meta_partition_key(id, partition)).map_err(store::storage("recover"))? {
                Some(v) => decode_partition_meta(&v)?,
                None => (0, 0),
            };
            // The last key of the partition: offset bytes all 0xff sort after every offset.
            records.seek_for_prev(record_key(id, partition, -1));
            let last = match records.key() {
                Some(key) if key.starts_with(&prefix) => Some(offset_of_key(key)?),
                _ => None,
            };
            records.status().map_err(store::storage("recover"))?;
            // Retention may have emptied the partition; high never goes below low.
            let high = last.map_or(low, |o| (o + 1).max(low));
            index.seek_for_prev(timestamp_key(id, partition, i64::MAX));
            let max_timestamp = match index.key() {
                Some(key) if key.starts_with(&prefix) => timestamp_of_key(key)?,
                _ => i64::MIN,
            };
            index.status().map_err(store::storage("recover"))?;
            writers.push(PartitionWriter::new(low, high, max_timestamp, bytes));
        }
        let shared = Arc::new(TopicShared::new(id, spec.clone(), writers.iter().map(|p| (p.low, p.next, p.bytes))));
        state.by_name.insert(spec.name.clone(), id);
        state.next_topic_id = state.next_topic_id.max(id + 1);
        state.topics.insert(id, WriterTopic { shared: Arc::clone(&shared), partitions: writers });
        registry.insert(spec.name, shared);
    }
    Ok((state, registry))
}
