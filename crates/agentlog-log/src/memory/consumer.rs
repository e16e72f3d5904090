//! The in-memory consumer: assigned partitions (no group) or group membership through the
//! in-process coordinator.
//!
//! Records are read in place (nothing is buffered), so `next_event` does all its work
//! synchronously and awaits only while waiting for a change: the member's assignment, an
//! append to a topic it reads, or shutdown. Dropping its future therefore loses nothing.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::topic::MemTopic;
use super::{OffsetsCommit, Shared};
use crate::coordinator::Assignment;
use crate::topic_signal;
use crate::{ConsumedRecord, Consumer, ConsumerEvent, ConsumerOptions, GroupMetadata, GroupMetadataInner, LogError, LogResult, SeekTo, TopicPartition};

/// One partition this consumer reads.
struct Cursor {
    tp: TopicPartition,
    topic: Arc<MemTopic>,
    /// The next offset to deliver.
    position: i64,
    paused: bool,
}

impl Cursor {
    /// The record at the position, unless paused, deleted or at the end.
    fn peek(&self) -> Option<ConsumedRecord> {
        if self.paused || self.topic.is_deleted() {
            return None;
        }
        let records = self.topic.records(self.tp.partition).ok()?;
        usize::try_from(self.position).ok().and_then(|i| records.get(i)).cloned()
    }
}

enum Mode {
    Idle,
    Assigned,
    Member { id: u64, assignment: watch::Receiver<Arc<Assignment>>, generation: u64 },
}

pub(crate) struct MemoryConsumer {
    shared: Arc<Shared>,
    group: Option<String>,
    client_id: Option<String>,
    mode: Mode,
    /// Sorted by partition.
    cursors: Vec<Cursor>,
    /// Round-robin start for the next delivery, so one partition cannot starve the others.
    next: usize,
    /// Deliver the earliest record across partitions instead of round-robin.
    time_ordered: bool,
    /// Rebalance events not yet returned (they precede any record of the new assignment).
    pending: VecDeque<ConsumerEvent>,
    /// One change channel per topic read.
    watchers: Vec<(Arc<MemTopic>, watch::Receiver<u64>)>,
}

impl MemoryConsumer {
    pub fn new(shared: &Arc<Shared>, options: ConsumerOptions) -> Self {
        Self {
            shared: Arc::clone(shared),
            group: options.group,
            client_id: options.client_id,
            mode: Mode::Idle,
            cursors: Vec::new(),
            next: 0,
            time_ordered: options.time_ordered,
            pending: VecDeque::new(),
            watchers: Vec::new(),
        }
    }

    fn group(&self, what: &'static str) -> LogResult<&str> {
        self.group.as_deref().ok_or_else(|| LogError::Invalid { what, reason: "the consumer has no group id".into() })
    }

    fn set_cursors(&mut self, mut cursors: Vec<Cursor>) {
        cursors.sort_by(|a, b| a.tp.cmp(&b.tp));
        cursors.dedup_by(|a, b| a.tp == b.tp);
        self.cursors = cursors;
        self.next = 0;
        let mut watchers: Vec<(Arc<MemTopic>, watch::Receiver<u64>)> = Vec::new();
        for c in &self.cursors {
            if !watchers.iter().any(|(t, _)| Arc::ptr_eq(t, &c.topic)) {
                watchers.push((Arc::clone(&c.topic), c.topic.subscribe()));
            }
        }
        self.watchers = watchers;
    }

    /// Turns a new group assignment into cursors and queued Revoked/Assigned events.
    fn apply_assignment(&mut self) {
        let Mode::Member { assignment, generation, .. } = &mut self.mode else { return };
        // Compare generations rather than asking `has_changed`: `wait_for_change` awaits
        // `changed()`, which already marks the new value as seen.
        let new = Arc::clone(&assignment.borrow_and_update());
        if new.generation == *generation {
            return;
        }
        *generation = new.generation;
        let group = self.group.clone().unwrap_or_default();
        // A cursor on a deleted topic is revoked even if a topic of the same name is assigned
        // again: that is a new topic, read through a new cursor.
        let (mut kept, revoked): (Vec<Cursor>, Vec<Cursor>) =
            std::mem::take(&mut self.cursors).into_iter().partition(|c| !c.topic.is_deleted() && new.partitions.binary_search(&c.tp).is_ok());
        let added: Vec<TopicPartition> = new.partitions.iter().filter(|tp| !kept.iter().any(|c| &c.tp == *tp)).cloned().collect();
        let committed = self.shared.committed(&group, &added);
        let mut assigned = Vec::with_capacity(added.len());
        for (tp, committed) in added.into_iter().zip(committed) {
            // A topic deleted since the rebalance: the next rebalance drops it.
            let Some(topic) = self.shared.topic(&tp.topic) else { continue };
            let Ok(marks) = topic.watermarks(tp.partition) else { continue };
            let position = committed.map_or(marks.low, |c| c.clamp(marks.low, marks.high));
            kept.push(Cursor { tp: tp.clone(), topic, position, paused: false });
            assigned.push(tp);
        }
        self.set_cursors(kept);
        if !revoked.is_empty() {
            self.pending.push_back(ConsumerEvent::Revoked(revoked.into_iter().map(|c| c.tp).collect()));
        }
        if !assigned.is_empty() {
            self.pending.push_back(ConsumerEvent::Assigned(assigned));
        }
        tracing::debug!(group = %group, client_id = ?self.client_id, generation = new.generation, partitions = self.cursors.len(), "memory consumer applied assignment");
    }

    /// The next record: the earliest across partitions when time-ordered, else round-robin.
    fn poll_record(&mut self) -> Option<ConsumedRecord> {
        let n = self.cursors.len();
        let chosen = if self.time_ordered {
            // Ties go to the lower partition, as on the embedded log.
            (0..n).filter_map(|i| self.cursors[i].peek().map(|r| (r, i))).min_by_key(|(r, i)| (r.timestamp_ms, *i))
        } else {
            (0..n).map(|step| (self.next + step) % n).find_map(|i| self.cursors[i].peek().map(|r| (r, i)))
        };
        let (record, i) = chosen?;
        self.cursors[i].position = record.offset + 1;
        self.next = (i + 1) % n;
        Some(record)
    }

    fn leave(&mut self) {
        if let (Mode::Member { id, .. }, Some(group)) = (&self.mode, self.group.as_deref()) {
            let shared = Arc::clone(&self.shared);
            shared.coordinator.leave(group, *id, &|t| shared.partitions_of(t));
        }
        self.mode = Mode::Idle;
        self.set_cursors(Vec::new());
    }

    /// Resolves when the assignment, a read topic or the log's state changes.
    async fn wait_for_change(&mut self) {
        let assignment = match &mut self.mode {
            Mode::Member { assignment, .. } => Some(assignment),
            _ => None,
        };
        let closed = self.shared.closed.clone();
        topic_signal::wait_for_change(self.watchers.iter_mut().map(|(_, rx)| rx), assignment, &closed).await;
    }

    fn resolve_seek(&self, topic: &MemTopic, partition: i32, to: SeekTo) -> LogResult<i64> {
        let marks = topic.watermarks(partition)?;
        Ok(match to {
            SeekTo::Earliest => marks.low,
            SeekTo::Latest => marks.high,
            SeekTo::Offset(offset) => offset.clamp(marks.low, marks.high),
            SeekTo::Timestamp(ts) => topic.offset_for_timestamp(partition, ts)?.unwrap_or(marks.high),
        })
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    fn subscribe(&mut self, topics: &[String]) -> LogResult<()> {
        self.shared.ensure_open()?;
        let group = self.group("subscribe")?.to_owned();
        if matches!(self.mode, Mode::Assigned) {
            return Err(LogError::Invalid { what: "subscribe", reason: "the consumer already reads assigned partitions".into() });
        }
        if topics.is_empty() {
            return Err(LogError::Invalid { what: "subscribe", reason: "no topics given".into() });
        }
        if let Some(missing) = topics.iter().find(|t| self.shared.topic(t).is_none()) {
            return Err(LogError::UnknownTopic { topic: missing.clone() });
        }
        let shared = Arc::clone(&self.shared);
        let partitions_of = |t: &str| shared.partitions_of(t);
        match &self.mode {
            Mode::Member { id, .. } => shared.coordinator.resubscribe(&group, *id, topics, &partitions_of),
            _ => {
                let (id, assignment) = shared.coordinator.join(&group, self.client_id.clone(), topics, &partitions_of);
                self.mode = Mode::Member { id, assignment, generation: 0 };
            }
        }
        Ok(())
    }

    async fn assign(&mut self, partitions: &[(TopicPartition, SeekTo)]) -> LogResult<()> {
        self.shared.ensure_open()?;
        if matches!(self.mode, Mode::Member { .. }) {
            return Err(LogError::Invalid { what: "assign", reason: "the consumer is subscribed to a group".into() });
        }
        let mut cursors = Vec::with_capacity(partitions.len());
        for (tp, to) in partitions {
            let topic = self.shared.known_topic(&tp.topic)?;
            let position = self.resolve_seek(&topic, tp.partition, *to)?;
            cursors.push(Cursor { tp: tp.clone(), topic, position, paused: false });
        }
        self.set_cursors(cursors);
        self.mode = Mode::Assigned;
        Ok(())
    }

    async fn next_event(&mut self) -> LogResult<ConsumerEvent> {
        loop {
            self.shared.ensure_open()?;
            self.apply_assignment();
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            // Mark every change seen before looking, so an append after the look wakes the
            // wait below.
            for (_, rx) in &mut self.watchers {
                rx.borrow_and_update();
            }
            if let Some(record) = self.poll_record() {
                return Ok(ConsumerEvent::Record(record));
            }
            self.wait_for_change().await;
        }
    }

    async fn seek(&mut self, partition: &TopicPartition, to: SeekTo) -> LogResult<()> {
        self.shared.ensure_open()?;
        let i = self
            .cursors
            .iter()
            .position(|c| &c.tp == partition)
            .ok_or_else(|| LogError::Invalid { what: "seek", reason: format!("{partition} is not assigned to this consumer") })?;
        let position = self.resolve_seek(&self.cursors[i].topic, partition.partition, to)?;
        self.cursors[i].position = position;
        Ok(())
    }

    /// Partitions not (or no longer) assigned are ignored: a rebalance may have moved them
    /// before the caller saw the Revoked event.
    fn pause(&mut self, partitions: &[TopicPartition]) -> LogResult<()> {
        self.cursors.iter_mut().filter(|c| partitions.contains(&c.tp)).for_each(|c| c.paused = true);
        Ok(())
    }

    fn resume(&mut self, partitions: &[TopicPartition]) -> LogResult<()> {
        self.cursors.iter_mut().filter(|c| partitions.contains(&c.tp)).for_each(|c| c.paused = false);
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.cursors.iter().map(|c| c.tp.clone()).collect()
    }

    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        self.cursors.iter().map(|c| (c.tp.clone(), c.position)).collect()
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> LogResult<()> {
        let group = self.group("commit")?.to_owned();
        if offsets.is_empty() {
            return self.shared.ensure_open();
        }
        let member = match self.mode {
            Mode::Member { id, .. } => Some(id),
            _ => None,
        };
        self.shared.write(Vec::new(), Some(OffsetsCommit { group, member, offsets: offsets.to_vec() })).map(|_| ())
    }

    async fn committed(&self, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>> {
        self.shared.ensure_open()?;
        Ok(self.shared.committed(self.group("committed")?, partitions))
    }

    fn group_metadata(&self) -> Option<GroupMetadata> {
        match (&self.mode, &self.group) {
            (Mode::Member { id, .. }, Some(group)) => Some(GroupMetadata(GroupMetadataInner::InProcess { group: group.clone(), member: *id })),
            _ => None,
        }
    }

    async fn close(mut self: Box<Self>) -> LogResult<()> {
        self.leave();
        Ok(())
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.leave();
    }
}
