//! What every component shares about a topic: its spec, and per partition the watermarks the
//! writer and retention publish for readers (atomics, so readers never take a lock).

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use tokio::sync::watch;

use crate::topic_signal::TopicSignal;
use crate::{TopicDescription, TopicSpec};

pub(crate) struct PartitionShared {
    /// First offset still stored (advanced by retention only).
    pub low: AtomicI64,
    /// Offset the next append gets; every record below it is durable (published after the
    /// write that made it so).
    pub high: AtomicI64,
    /// Stored bytes (keys + encoded values), for retention by size.
    pub bytes: AtomicU64,
}

pub(crate) struct TopicShared {
    pub id: u32,
    pub spec: TopicSpec,
    pub partitions: Box<[PartitionShared]>,
    /// Spreads keyless records without an explicit partition.
    round_robin: AtomicU32,
    /// Bumped after every commit that appended to (or deleted) this topic.
    signal: TopicSignal,
}

impl TopicShared {
    pub fn new(id: u32, spec: TopicSpec, marks: impl IntoIterator<Item = (i64, i64, u64)>) -> Self {
        let partitions = marks
            .into_iter()
            .map(|(low, high, bytes)| PartitionShared { low: AtomicI64::new(low), high: AtomicI64::new(high), bytes: AtomicU64::new(bytes) })
            .collect();
        Self { id, spec, partitions, round_robin: AtomicU32::new(0), signal: TopicSignal::default() }
    }

    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }

    pub fn partition(&self, partition: u32) -> Option<&PartitionShared> {
        self.partitions.get(partition as usize)
    }

    pub fn next_round_robin(&self) -> u32 {
        self.round_robin.fetch_add(1, Ordering::Relaxed) % self.partitions.len() as u32
    }

    pub fn watermarks(&self, partition: u32) -> Option<(i64, i64)> {
        let p = self.partition(partition)?;
        // Read high first: low only grows and never passes high, so low <= high holds.
        let high = p.high.load(Ordering::Acquire);
        let low = p.low.load(Ordering::Acquire).min(high);
        Some((low, high))
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
