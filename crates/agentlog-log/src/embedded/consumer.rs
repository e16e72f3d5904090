//! The embedded consumer: assigned partitions (no group) or group membership through the
//! in-process coordinator.
//!
//! `next_event` does all its work synchronously (apply a new assignment, fetch, deliver) and
//! awaits only while waiting for a change: the member's assignment channel, the watch
//! channels of the topics it reads (bumped by the writer after each commit), or shutdown.
//! Dropping its future therefore loses nothing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::topic::TopicShared;
use super::writer::OffsetsCommit;
use super::{Shared, live, reader};
use crate::coordinator::Assignment;
use crate::topic_signal;
use crate::{ConsumedRecord, Consumer, ConsumerEvent, ConsumerOptions, GroupMetadata, GroupMetadataInner, LogError, LogResult, SeekTo, TopicPartition};

/// One partition this consumer reads.
struct Cursor {
    tp: TopicPartition,
    topic: Arc<TopicShared>,
    /// The next offset to deliver; buffered records start here.
    position: i64,
    /// Where the next fetch starts (past the buffered records).
    fetch_from: i64,
    buffer: VecDeque<ConsumedRecord>,
    paused: bool,
}

impl Cursor {
    fn new(tp: TopicPartition, topic: Arc<TopicShared>, position: i64) -> Self {
        Self { tp, topic, position, fetch_from: position, buffer: VecDeque::new(), paused: false }
    }

    fn seek(&mut self, position: i64) {
        self.position = position;
        self.fetch_from = position;
        self.buffer.clear();
    }
}

enum Mode {
    Idle,
    Assigned,
    Member { id: u64, assignment: watch::Receiver<Arc<Assignment>>, generation: u64 },
}

pub(crate) struct EmbeddedConsumer {
    shared: Weak<Shared>,
    closed: CancellationToken,
    group: Option<String>,
    client_id: Option<String>,
    mode: Mode,
    cursors: Vec<Cursor>,
    /// Round-robin start for the next delivery, so one partition cannot starve the others.
    next: usize,
    /// Deliver the earliest buffered record across partitions instead of round-robin.
    time_ordered: bool,
    /// With `time_ordered`: (head timestamp, cursor) of every cursor with buffered records.
    heads: BinaryHeap<Reverse<(i64, usize)>>,
    /// Whether `heads` matches the cursors (cleared by anything that moves or pauses one).
    heads_valid: bool,
    /// Rebalance events not yet returned (they precede any record of the new assignment).
    pending: VecDeque<ConsumerEvent>,
    /// One change channel per topic read.
    watchers: Vec<(u32, watch::Receiver<u64>)>,
}

impl EmbeddedConsumer {
    pub fn new(shared: &Arc<Shared>, options: ConsumerOptions) -> Self {
        Self {
            shared: Arc::downgrade(shared),
            closed: shared.ingress.closed.clone(),
            group: options.group,
            client_id: options.client_id,
            mode: Mode::Idle,
            cursors: Vec::new(),
            next: 0,
            time_ordered: options.time_ordered,
            heads: BinaryHeap::new(),
            heads_valid: false,
            pending: VecDeque::new(),
            watchers: Vec::new(),
        }
    }

    fn group(&self, what: &'static str) -> LogResult<&str> {
        self.group.as_deref().ok_or_else(|| LogError::Invalid { what, reason: "the consumer has no group id".into() })
    }

    fn rebuild_watchers(&mut self) {
        let mut watchers: Vec<(u32, watch::Receiver<u64>)> = Vec::new();
        for c in &self.cursors {
            if !watchers.iter().any(|(id, _)| *id == c.topic.id) {
                watchers.push((c.topic.id, c.topic.subscribe()));
            }
        }
        self.watchers = watchers;
    }

    /// Turns a new group assignment into cursors and queued Revoked/Assigned events.
    fn apply_assignment(&mut self, shared: &Shared) -> LogResult<()> {
        let Mode::Member { assignment, generation, .. } = &mut self.mode else { return Ok(()) };
        // Compare generations rather than asking `has_changed`: `wait_for_change` awaits
        // `changed()`, which already marks the new value as seen.
        let new = Arc::clone(&assignment.borrow_and_update());
        if new.generation == *generation {
            return Ok(());
        }
        *generation = new.generation;
        let group = self.group.clone().unwrap_or_default();

        let (kept, revoked): (Vec<Cursor>, Vec<Cursor>) =
            // A cursor on a deleted topic is revoked even if a topic of the same name is
            // assigned again: that is a new topic, read through a new cursor.
            std::mem::take(&mut self.cursors)
                .into_iter()
                .partition(|c| !c.topic.is_deleted() && new.partitions.binary_search(&c.tp).is_ok());
        self.cursors = kept;
        self.heads_valid = false;
        let added: Vec<TopicPartition> = new.partitions.iter().filter(|tp| !self.cursors.iter().any(|c| &c.tp == *tp)).cloned().collect();
        let committed = reader::committed(shared, &group, &added)?;
        let mut assigned = Vec::with_capacity(added.len());
        for (tp, committed) in added.into_iter().zip(committed) {
            // A topic deleted since the rebalance: the next rebalance drops it.
            let Some(topic) = shared.ingress.topic(&tp.topic) else { continue };
            let Some((low, high)) = topic.watermarks(tp.partition as u32) else { continue };
            let position = committed.map_or(low, |c| c.clamp(low, high));
            self.cursors.push(Cursor::new(tp.clone(), topic, position));
            assigned.push(tp);
        }
        self.cursors.sort_by(|a, b| a.tp.cmp(&b.tp));
        self.rebuild_watchers();
        if !revoked.is_empty() {
            self.pending.push_back(ConsumerEvent::Revoked(revoked.into_iter().map(|c| c.tp).collect()));
        }
        if !assigned.is_empty() {
            self.pending.push_back(ConsumerEvent::Assigned(assigned));
        }
        tracing::debug!(group = %group, client_id = ?self.client_id, generation = new.generation, partitions = self.cursors.len(), "embedded consumer applied assignment");
        Ok(())
    }

    /// The next buffered or fetchable record, round-robin across readable partitions.
    fn poll_record(&mut self, shared: &Shared) -> LogResult<Option<ConsumedRecord>> {
        if self.time_ordered {
            return self.poll_earliest(shared);
        }
        let n = self.cursors.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            if self.refill(shared, i)?.is_none() {
                continue;
            }
            let c = &mut self.cursors[i];
            if let Some(record) = c.buffer.pop_front() {
                c.position = record.offset + 1;
                self.next = (i + 1) % n;
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Readies cursor `i`: skips what retention removed, fetches if its buffer is empty.
    /// Returns the timestamp of its next record; `None` if it is paused, deleted or has
    /// nothing to deliver.
    fn refill(&mut self, shared: &Shared, i: usize) -> LogResult<Option<i64>> {
        let c = &mut self.cursors[i];
        if c.paused || c.topic.is_deleted() {
            return Ok(None);
        }
        let low = c.topic.watermarks(c.tp.partition as u32).map_or(0, |(low, _)| low);
        if c.position < low {
            // Retention removed records below the position: continue from the new start.
            c.seek(low);
        }
        if c.buffer.is_empty() {
            c.fetch_from = c.fetch_from.max(c.position);
            reader::fetch(shared, &c.topic, &c.tp, &mut c.fetch_from, &mut c.buffer)?;
        }
        Ok(c.buffer.front().map(|r| r.timestamp_ms))
    }

    /// The earliest buffered record across readable partitions (ties: the lower cursor).
    /// A projection reads many topics at once, and a task's events sit on several of them
    /// at similar times: read in time order they arrive close together, instead of one
    /// topic running far ahead of another because it holds fewer records per task.
    fn poll_earliest(&mut self, shared: &Shared) -> LogResult<Option<ConsumedRecord>> {
        for attempt in 0..2 {
            if !self.heads_valid || attempt == 1 {
                // Rebuilt when stale, and once more when nothing is buffered: partitions that
                // had nothing at the last look may have received records since.
                self.heads.clear();
                for i in 0..self.cursors.len() {
                    if let Some(at) = self.refill(shared, i)? {
                        self.heads.push(Reverse((at, i)));
                    }
                }
                self.heads_valid = true;
            }
            while let Some(Reverse((_, i))) = self.heads.pop() {
                let c = &mut self.cursors[i];
                // A topic deleted since its records were buffered delivers nothing more.
                if c.topic.is_deleted() {
                    continue;
                }
                let Some(record) = c.buffer.pop_front() else { continue };
                c.position = record.offset + 1;
                if let Some(at) = self.refill(shared, i)? {
                    self.heads.push(Reverse((at, i)));
                }
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    fn leave(&mut self) {
        if let (Mode::Member { id, .. }, Some(shared), Some(group)) = (&self.mode, self.shared.upgrade(), self.group.as_deref()) {
            let ingress = Arc::clone(&shared.ingress);
            shared.coordinator.leave(group, *id, &|t| ingress.partitions_of(t));
        }
        self.mode = Mode::Idle;
        self.cursors.clear();
        self.heads_valid = false;
        self.watchers.clear();
    }

    /// Resolves when the assignment, a read topic or the log's state changes.
    async fn wait_for_change(&mut self) {
        let assignment = match &mut self.mode {
            Mode::Member { assignment, .. } => Some(assignment),
            _ => None,
        };
        let closed = self.closed.clone();
        topic_signal::wait_for_change(self.watchers.iter_mut().map(|(_, rx)| rx), assignment, &closed).await;
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    fn subscribe(&mut self, topics: &[String]) -> LogResult<()> {
        let shared = live(&self.shared)?;
        let group = self.group("subscribe")?.to_owned();
        if matches!(self.mode, Mode::Assigned) {
            return Err(LogError::Invalid { what: "subscribe", reason: "the consumer already reads assigned partitions".into() });
        }
        if topics.is_empty() {
            return Err(LogError::Invalid { what: "subscribe", reason: "no topics given".into() });
        }
        if let Some(missing) = topics.iter().find(|t| shared.ingress.topic(t).is_none()) {
            return Err(LogError::UnknownTopic { topic: missing.clone() });
        }
        let ingress = Arc::clone(&shared.ingress);
        let partitions_of = |t: &str| ingress.partitions_of(t);
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
        let shared = live(&self.shared)?;
        if matches!(self.mode, Mode::Member { .. }) {
            return Err(LogError::Invalid { what: "assign", reason: "the consumer is subscribed to a group".into() });
        }
        let mut cursors = Vec::with_capacity(partitions.len());
        for (tp, to) in partitions {
            let topic = shared.ingress.topic(&tp.topic).ok_or_else(|| LogError::UnknownTopic { topic: tp.topic.clone() })?;
            if tp.partition < 0 || tp.partition >= topic.partition_count() {
                return Err(LogError::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition });
            }
            let position = reader::resolve_seek(&shared, &topic, tp.partition as u32, *to)?;
            cursors.push(Cursor::new(tp.clone(), topic, position));
        }
        cursors.sort_by(|a, b| a.tp.cmp(&b.tp));
        cursors.dedup_by(|a, b| a.tp == b.tp);
        self.cursors = cursors;
        self.heads_valid = false;
        self.next = 0;
        self.mode = Mode::Assigned;
        self.rebuild_watchers();
        Ok(())
    }

    async fn next_event(&mut self) -> LogResult<ConsumerEvent> {
        loop {
            {
                let shared = live(&self.shared)?;
                self.apply_assignment(&shared)?;
                if let Some(event) = self.pending.pop_front() {
                    return Ok(event);
                }
                // Mark every change seen before looking, so a commit published after the look
                // wakes the wait below.
                for (_, rx) in &mut self.watchers {
                    rx.borrow_and_update();
                }
                if let Some(record) = self.poll_record(&shared)? {
                    return Ok(ConsumerEvent::Record(record));
                }
            }
            // The strong reference is released while waiting, so a dropped log can close.
            self.wait_for_change().await;
        }
    }

    async fn seek(&mut self, partition: &TopicPartition, to: SeekTo) -> LogResult<()> {
        let shared = live(&self.shared)?;
        let cursor = self
            .cursors
            .iter_mut()
            .find(|c| &c.tp == partition)
            .ok_or_else(|| LogError::Invalid { what: "seek", reason: format!("{partition} is not assigned to this consumer") })?;
        let position = reader::resolve_seek(&shared, &cursor.topic, partition.partition as u32, to)?;
        cursor.seek(position);
        self.heads_valid = false;
        Ok(())
    }

    /// Partitions not (or no longer) assigned are ignored: a rebalance may have moved them
    /// before the caller saw the Revoked event.
    fn pause(&mut self, partitions: &[TopicPartition]) -> LogResult<()> {
        self.cursors.iter_mut().filter(|c| partitions.contains(&c.tp)).for_each(|c| c.paused = true);
        self.heads_valid = false;
        Ok(())
    }

    fn resume(&mut self, partitions: &[TopicPartition]) -> LogResult<()> {
        self.cursors.iter_mut().filter(|c| partitions.contains(&c.tp)).for_each(|c| c.paused = false);
        self.heads_valid = false;
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.cursors.iter().map(|c| c.tp.clone()).collect()
    }

    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        self.cursors.iter().map(|c| (c.tp.clone(), c.position)).collect()
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> LogResult<()> {
        let shared = live(&self.shared)?;
        let group = self.group("commit")?.to_owned();
        if offsets.is_empty() {
            return Ok(());
        }
        let member = match self.mode {
            Mode::Member { id, .. } => Some(id),
            _ => None,
        };
        let commit = OffsetsCommit { group, member, offsets: offsets.to_vec() };
        let ingress = Arc::clone(&shared.ingress);
        drop(shared);
        let delivery = ingress.submit_many(Vec::new(), Some(commit)).await?;
        delivery.await.map(|_| ())
    }

    async fn committed(&self, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>> {
        let shared = live(&self.shared)?;
        reader::committed(&shared, self.group("committed")?, partitions)
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

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.leave();
    }
}
