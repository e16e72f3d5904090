//! A topic of the in-memory log: its spec, its partitions' records, and the channel that
//! wakes its readers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::topic_signal::TopicSignal;
use crate::{ConsumedRecord, LogError, LogResult, TopicDescription, TopicSpec, Watermarks};

/// The records of one partition; a record's offset is its index (nothing is ever removed).
pub(crate) type Records = Vec<ConsumedRecord>;

pub(crate) struct MemTopic {
    pub spec: TopicSpec,
    partitions: Box<[Mutex<Records>]>,
    /// Spreads keyless records without an explicit partition.
    round_robin: AtomicU32,
    /// Bumped after every append to this topic (and on deletion). A topic created again
    /// under its name is a new `MemTopic`, so its records never mix with the old one's.
    signal: TopicSignal,
}

impl MemTopic {
    pub fn new(spec: TopicSpec) -> Self {
        let partitions = (0..spec.partitions).map(|_| Mutex::new(Vec::new())).collect();
        Self { spec, partitions, round_robin: AtomicU32::new(0), signal: TopicSignal::default() }
    }

    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    /// The records of `partition`, locked; `UnknownPartition` when it does not exist.
    pub fn records(&self, partition: i32) -> LogResult<MutexGuard<'_, Records>> {
        let slot = usize::try_from(partition).ok().and_then(|p| self.partitions.get(p));
        let slot = slot.ok_or_else(|| LogError::UnknownPartition { topic: self.spec.name.clone(), partition })?;
        // A panic while holding the lock cannot leave a half-written record (a push is one
        // step), so a poisoned lock's data is still whole.
        Ok(slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn watermarks(&self, partition: i32) -> LogResult<Watermarks> {
        Ok(Watermarks { low: 0, high: self.records(partition)?.len() as i64 })
    }

    /// The first offset whose timestamp is at or after `timestamp_ms` (`None` past the end).
    pub fn offset_for_timestamp(&self, partition: i32, timestamp_ms: i64) -> LogResult<Option<i64>> {
        Ok(self.records(partition)?.iter().position(|r| r.timestamp_ms >= timestamp_ms).map(|i| i as i64))
    }

    pub fn timestamp_at(&self, partition: i32, offset: i64) -> LogResult<Option<i64>> {
        Ok(self.records(partition)?.get(usize::try_from(offset.max(0)).unwrap_or(usize::MAX)..).and_then(|rest| rest.first()).map(|r| r.timestamp_ms))
    }

    pub fn next_round_robin(&self) -> i32 {
        (self.round_robin.fetch_add(1, Ordering::Relaxed) % self.partitions.len() as u32) as i32
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    pub fn notify(&self) {
        self.signal.notify();
    }

    pub fn mark_deleted(&self) {
        self.signal.mark_deleted();
    }

    pub fn is_deleted(&self) -> bool {
        self.signal.is_deleted()
    }

    pub fn describe(&self) -> TopicDescription {
        TopicDescription::of(&self.spec)
    }
}
