//! Retention and compaction.
//!
//! Delete-policy topics drop records from the front of each partition while they are older
//! than `retention_ms` (by record timestamp) or the partition exceeds `retention_bytes`; the
//! low watermark advances (never past high) and offsets are never renumbered. Compact-policy
//! topics keep only the latest record per key, leaving offset gaps; keyless records stay.
//!
//! Each partition is planned with reads outside the writer lock (records below the high
//! watermark change only through retention, and runs are serialized), then applied under
//! the lock in one batch, so appends are held up only for that write.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rocksdb::{ReadOptions, WriteBatch};

use super::Shared;
use super::store::{self, encode_partition_meta, meta_partition_key, offset_of_key, partition_prefix, record_key, record_key_bytes, record_timestamp};
use super::topic::TopicShared;
use super::writer::Cfs;
use crate::now_ms;
use crate::{CleanupPolicy, LogResult};

/// What retention remembers between runs.
#[derive(Default)]
pub(crate) struct RetentionState {
    /// High watermark at the last compaction of a partition: unchanged partitions are skipped.
    compacted_high: HashMap<(u32, u32), i64>,
}

/// The retention thread: a run every `interval` until told to stop (or the log is gone).
pub(crate) fn run_periodically(shared: Weak<Shared>, interval: Duration, stop: Receiver<()>) {
    // A message or a disconnect both mean stop; only a timeout means run.
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        let Some(shared) = shared.upgrade() else { break };
        if shared.ingress.closed.is_cancelled() {
            break;
        }
        if let Err(error) = run(&shared, now_ms()) {
            tracing::warn!(%error, "embedded log retention run failed; retrying next interval");
        }
    }
    tracing::debug!("embedded log retention stopped");
}

/// One retention pass over every topic, as of `now_ms`.
pub(crate) fn run(shared: &Shared, now_ms: i64) -> LogResult<()> {
    let mut state = shared.retention.lock().expect("retention state lock poisoned");
    let topics: Vec<Arc<TopicShared>> = shared.ingress.topics.read().expect("topic registry lock poisoned").values().cloned().collect();
    for topic in &topics {
        for partition in 0..topic.partition_count() as u32 {
            // Stop between partitions on shutdown, so shutdown does not wait for a full pass.
            if shared.ingress.closed.is_cancelled() {
                return Ok(());
            }
            match topic.spec.cleanup_policy {
                CleanupPolicy::Delete => delete_front(shared, topic, partition, now_ms)?,
                CleanupPolicy::Compact => compact(shared, &mut state, topic, partition)?,
            }
        }
    }
    state.compacted_high.retain(|(id, _), _| topics.iter().any(|t| t.id == *id));
    Ok(())
}

fn delete_front(shared: &Shared, topic: &TopicShared, partition: u32, now_ms: i64) -> LogResult<()> {
    // Negative limits mean unlimited, as Kafka's -1.
    let cutoff = topic.spec.retention_ms.filter(|ms| *ms >= 0).map(|ms| now_ms.saturating_sub(ms));
    let max_bytes = topic.spec.retention_bytes.filter(|b| *b >= 0).map(|b| b as u64);
    if cutoff.is_none() && max_bytes.is_none() {
        return Ok(());
    }
    let Some((low, high)) = topic.watermarks(partition) else { return Ok(()) };
    let Some(p) = topic.partition(partition) else { return Ok(()) };
    let mut remaining = p.bytes.load(Ordering::Acquire);

    let cfs = Cfs::of(&shared.db)?;
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(record_key(topic.id, partition, high));
    let mut iter = shared.db.raw_iterator_cf_opt(cfs.records, options);
    iter.seek(record_key(topic.id, partition, low));
    let (mut new_low, mut removed) = (low, 0u64);
    while let Some((key, value)) = iter.item() {
        let expired = match cutoff {
            Some(cutoff) => record_timestamp(value)? < cutoff,
            None => false,
        };
        let oversize = max_bytes.is_some_and(|max| remaining > max);
        if !expired && !oversize {
            break;
        }
        let size = (key.len() + value.len()) as u64;
        new_low = offset_of_key(key)? + 1;
        removed += size;
        remaining = remaining.saturating_sub(size);
        iter.next();
    }
    iter.status().map_err(store::storage("retention scan"))?;
    drop(iter);
    if new_low == low {
        return Ok(());
    }

    // Time-index entries below the new start go too, except the last one: it carries the
    // running maximum timestamp, which keeps lookups for older timestamps landing at the
    // start of what remains (see reader::offset_for_timestamp).
    let prefix = partition_prefix(topic.id, partition);
    let mut index = shared.db.raw_iterator_cf(cfs.timeindex);
    index.seek(prefix);
    let mut index_keys: Vec<Vec<u8>> = Vec::new();
    while let Some((key, value)) = index.item() {
        if !key.starts_with(&prefix) || store::decode_i64(value, "time index entry")? >= new_low {
            break;
        }
        index_keys.push(key.to_vec());
        index.next();
    }
    index.status().map_err(store::storage("retention scan"))?;
    drop(index);

    let mut state = shared.lock_state();
    let Some(writer) = state.topics.get_mut(&topic.id).and_then(|t| t.partitions.get_mut(partition as usize)) else {
        return Ok(()); // deleted meanwhile
    };
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cfs.records, record_key(topic.id, partition, low), record_key(topic.id, partition, new_low));
    if let Some(last) = index_keys.pop() {
        batch.delete_range_cf(cfs.timeindex, prefix.to_vec(), last);
    }
    let bytes = writer.bytes.saturating_sub(removed);
    batch.put_cf(cfs.meta, meta_partition_key(topic.id, partition), encode_partition_meta(new_low, bytes));
    shared.db.write_opt(batch, &shared.write_options()).map_err(store::storage("retention"))?;
    writer.low = new_low;
    writer.bytes = bytes;
    p.bytes.store(bytes, Ordering::Release);
    p.low.store(new_low, Ordering::Release);
    drop(state);
    tracing::debug!(topic = %topic.spec.name, partition, low = new_low, removed_bytes = removed, "embedded retention advanced the log start");
    Ok(())
}

fn compact(shared: &Shared, retention: &mut RetentionState, topic: &TopicShared, partition: u32) -> LogResult<()> {
    let Some((low, high)) = topic.watermarks(partition) else { return Ok(()) };
    if retention.compacted_high.get(&(topic.id, partition)) == Some(&high) {
        return Ok(());
    }
    let cfs = Cfs::of(&shared.db)?;
    let mut options = ReadOptions::default();
    options.set_iterate_lower_bound(record_key(topic.id, partition, low));
    options.set_iterate_upper_bound(record_key(topic.id, partition, high));
    let mut iter = shared.db.raw_iterator_cf_opt(cfs.records, options);
    // Newest first: the first time a key is seen is its latest record; later sightings are
    // older, superseded records.
    iter.seek_to_last();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut superseded: Vec<[u8; 16]> = Vec::new();
    let mut removed = 0u64;
    while let Some((key, value)) = iter.item() {
        if let Some(record_key) = record_key_bytes(value)? {
            if seen.contains(record_key) {
                superseded.push(key.try_into().map_err(|_| crate::LogError::Corrupt("record key length".into()))?);
                removed += (key.len() + value.len()) as u64;
            } else {
                seen.insert(record_key.to_vec());
            }
        }
        iter.prev();
    }
    iter.status().map_err(store::storage("compaction scan"))?;
    drop(iter);

    if !superseded.is_empty() {
        let mut state = shared.lock_state();
        let Some(writer) = state.topics.get_mut(&topic.id).and_then(|t| t.partitions.get_mut(partition as usize)) else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        for key in &superseded {
            batch.delete_cf(cfs.records, key);
        }
        let bytes = writer.bytes.saturating_sub(removed);
        batch.put_cf(cfs.meta, meta_partition_key(topic.id, partition), encode_partition_meta(writer.low, bytes));
        shared.db.write_opt(batch, &shared.write_options()).map_err(store::storage("compaction"))?;
        writer.bytes = bytes;
        if let Some(p) = topic.partition(partition) {
            p.bytes.store(bytes, Ordering::Release);
        }
        drop(state);
        tracing::debug!(topic = %topic.spec.name, partition, removed_records = superseded.len(), removed_bytes = removed, "embedded compaction");
    }
    retention.compacted_high.insert((topic.id, partition), high);
    Ok(())
}
