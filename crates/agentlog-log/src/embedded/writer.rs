//! The single writer: one thread owns offset assignment and group-commits every queued
//! append (and offset commit) into one RocksDB `WriteBatch`.
//!
//! Acceptance and durability are separate: producers enqueue and get a oneshot back; the
//! writer takes the first queued command, drains whatever else is queued (up to
//! `max_batch_records`), writes it all with one WAL write (fsynced when configured), then
//! publishes the new high watermarks, wakes consumers and completes the oneshots. A record is
//! visible to readers only after the write that made it durable.

use std::collections::HashMap;
use std::sync::Arc;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::store::{self, encode_partition_meta, encode_record, meta_partition_key, record_key, timestamp_key};
use super::topic::TopicShared;
use crate::{LogError, LogResult, Position, Record, TopicPartition, now_ms};

/// A record whose topic and partition the producer already resolved.
pub(crate) struct Append {
    pub topic_id: u32,
    pub partition: u32,
    pub record: Record,
}

/// Committed next offsets for a group; `member` is checked for ownership when present.
pub(crate) struct OffsetsCommit {
    pub group: String,
    pub member: Option<u64>,
    pub offsets: Vec<(TopicPartition, i64)>,
}

pub(crate) enum Command {
    /// The hot path of `Producer::send`: one record, one reply.
    One { append: Append, reply: oneshot::Sender<LogResult<Position>> },
    /// Records and offsets written atomically (batch sends, transactions, offset commits).
    Many { appends: Vec<Append>, commit: Option<OffsetsCommit>, reply: oneshot::Sender<LogResult<Vec<Position>>> },
    /// Wakes an idle writer after the log was closed: it then writes whatever is still
    /// queued and exits.
    Stop,
}

impl Command {
    fn records(&self) -> usize {
        match self {
            Command::One { .. } => 1,
            Command::Many { appends, commit, .. } => appends.len() + commit.as_ref().map_or(0, |c| c.offsets.len()),
            Command::Stop => 0,
        }
    }
}

/// Writer-side state of a partition. Only mutated under `Shared::state`.
pub(crate) struct PartitionWriter {
    pub next: i64,
    pub low: i64,
    pub max_timestamp: i64,
    pub bytes: u64,
    /// The group commit that last touched this partition (to record its undo entry once).
    epoch: u64,
}

impl PartitionWriter {
    pub fn new(low: i64, next: i64, max_timestamp: i64, bytes: u64) -> Self {
        Self { next, low, max_timestamp, bytes, epoch: 0 }
    }
}

pub(crate) struct WriterTopic {
    pub shared: Arc<TopicShared>,
    pub partitions: Vec<PartitionWriter>,
}

struct Undo {
    topic_id: u32,
    partition: u32,
    next: i64,
    max_timestamp: i64,
    bytes: u64,
}

/// Everything that assigns offsets or changes what is stored goes through this state, under
/// one mutex: the writer thread, topic creation/deletion and retention.
pub(crate) struct WriterState {
    pub topics: HashMap<u32, WriterTopic>,
    pub by_name: HashMap<String, u32>,
    pub next_topic_id: u32,
    epoch: u64,
    undo: Vec<Undo>,
}

impl WriterState {
    pub fn new(next_topic_id: u32) -> Self {
        Self { topics: HashMap::new(), by_name: HashMap::new(), next_topic_id, epoch: 0, undo: Vec::new() }
    }

    pub fn topic_by_name(&self, name: &str) -> Option<&WriterTopic> {
        self.by_name.get(name).and_then(|id| self.topics.get(id))
    }

    fn append(&mut self, append: &Append, now_ms: i64, staged: &mut Staged) -> LogResult<Position> {
        let record = &append.record;
        let topic = self.topics.get_mut(&append.topic_id).ok_or_else(|| LogError::UnknownTopic { topic: record.topic.clone() })?;
        let p = topic
            .partitions
            .get_mut(append.partition as usize)
            .ok_or_else(|| LogError::UnknownPartition { topic: record.topic.clone(), partition: append.partition as i32 })?;
        if p.epoch != self.epoch {
            self.undo.push(Undo { topic_id: append.topic_id, partition: append.partition, next: p.next, max_timestamp: p.max_timestamp, bytes: p.bytes });
            p.epoch = self.epoch;
        }
        let offset = p.next;
        p.next += 1;
        let timestamp_ms = record.timestamp_ms.unwrap_or(now_ms);
        let start = staged.data.len();
        encode_record(&mut staged.data, timestamp_ms, record.key.as_deref(), &record.headers, &record.payload);
        staged.records.push((record_key(append.topic_id, append.partition, offset), start, staged.data.len()));
        p.bytes += (16 + staged.data.len() - start) as u64;
        // Index only new maxima: the first entry at or after a timestamp is then the earliest
        // offset whose timestamp is at or after it (Kafka's offsetsForTimes).
        if timestamp_ms > p.max_timestamp {
            p.max_timestamp = timestamp_ms;
            staged.index.push((timestamp_key(append.topic_id, append.partition, timestamp_ms), offset));
        }
        Ok(Position { partition: append.partition as i32, offset })
    }

    /// Every append of a `Many` command must be writable before any is, so it is all or nothing.
    fn check_appends(&self, appends: &[Append]) -> LogResult<()> {
        for a in appends {
            let topic = self.topics.get(&a.topic_id).ok_or_else(|| LogError::UnknownTopic { topic: a.record.topic.clone() })?;
            if a.partition as usize >= topic.partitions.len() {
                return Err(LogError::UnknownPartition { topic: a.record.topic.clone(), partition: a.partition as i32 });
            }
        }
        Ok(())
    }

    fn check_commit(&self, shared: &Shared, commit: &OffsetsCommit) -> LogResult<()> {
        for (tp, _) in &commit.offsets {
            let topic = self.topic_by_name(&tp.topic).ok_or_else(|| LogError::UnknownTopic { topic: tp.topic.clone() })?;
            if tp.partition < 0 || tp.partition as usize >= topic.partitions.len() {
                return Err(LogError::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition });
            }
        }
        if let Some(member) = commit.member {
            // Checked here, under the writer lock, so a rebalance cannot slip between the
            // check and the write of a commit already queued.
            shared.coordinator.check_owned(&commit.group, member, commit.offsets.iter().map(|(tp, _)| tp))?;
        }
        Ok(())
    }

    fn rollback(&mut self) {
        for u in self.undo.drain(..) {
            if let Some(p) = self.topics.get_mut(&u.topic_id).and_then(|t| t.partitions.get_mut(u.partition as usize)) {
                p.next = u.next;
                p.max_timestamp = u.max_timestamp;
                p.bytes = u.bytes;
            }
        }
    }

    /// Makes the committed appends visible and wakes the consumers of the touched topics.
    /// Every high watermark is stored before any topic is notified: a consumer woken by the
    /// first notification marks the change seen and reads all its partitions, so a watermark
    /// stored after that notification would never wake it (a lost wake-up).
    fn publish(&mut self) {
        let mut touched: Vec<u32> = Vec::new();
        for u in self.undo.drain(..) {
            let Some(topic) = self.topics.get(&u.topic_id) else { continue };
            let (Some(p), Some(shared)) = (topic.partitions.get(u.partition as usize), topic.shared.partition(u.partition)) else {
                continue;
            };
            shared.bytes.store(p.bytes, std::sync::atomic::Ordering::Release);
            shared.high.store(p.next, std::sync::atomic::Ordering::Release);
            if !touched.contains(&u.topic_id) {
                touched.push(u.topic_id);
            }
        }
        for topic_id in touched {
            if let Some(topic) = self.topics.get(&topic_id) {
                topic.shared.notify();
            }
        }
    }

    fn put_touched_meta(&self, batch: &mut WriteBatch, cfs: &Cfs<'_>) {
        for u in &self.undo {
            if let Some(p) = self.topics.get(&u.topic_id).and_then(|t| t.partitions.get(u.partition as usize)) {
                batch.put_cf(cfs.meta, meta_partition_key(u.topic_id, u.partition), encode_partition_meta(p.low, p.bytes));
            }
        }
    }
}

/// What one group commit writes, staged so the `WriteBatch` is allocated once at its final
/// size and records are added in key order: RocksDB's memtable inserts then proceed
/// sequentially per partition (its skip list reuses the previous insert's position) instead
/// of jumping between partitions. The buffers are reused across group commits.
#[derive(Default)]
struct Staged {
    data: Vec<u8>,
    records: Vec<([u8; 16], usize, usize)>,
    index: Vec<([u8; 16], i64)>,
    offsets: Vec<(Vec<u8>, i64)>,
}

impl Staged {
    fn build(&mut self, cfs: &Cfs<'_>) -> WriteBatch {
        // Per entry RocksDB adds a tag, a column family id and two varint lengths.
        let capacity = self.data.len() + (self.records.len() + self.index.len()) * 32 + self.offsets.len() * 64 + 64;
        let mut batch = WriteBatch::with_capacity_bytes(capacity);
        self.records.sort_unstable_by_key(|r| r.0);
        for (key, start, end) in self.records.drain(..) {
            batch.put_cf(cfs.records, key, &self.data[start..end]);
        }
        for (key, offset) in self.index.drain(..) {
            batch.put_cf(cfs.timeindex, key, offset.to_be_bytes());
        }
        for (key, offset) in self.offsets.drain(..) {
            batch.put_cf(cfs.offsets, key, offset.to_be_bytes());
        }
        self.data.clear();
        batch
    }
}

pub(crate) struct Cfs<'a> {
    pub records: &'a rocksdb::ColumnFamily,
    pub timeindex: &'a rocksdb::ColumnFamily,
    pub meta: &'a rocksdb::ColumnFamily,
    pub offsets: &'a rocksdb::ColumnFamily,
}

impl<'a> Cfs<'a> {
    pub fn of(db: &'a rocksdb::DB) -> LogResult<Self> {
        Ok(Self {
            records: store::cf(db, store::CF_RECORDS)?,
            timeindex: store::cf(db, store::CF_TIMEINDEX)?,
            meta: store::cf(db, store::CF_META)?,
            offsets: store::cf(db, store::CF_OFFSETS)?,
        })
    }
}

enum Outcome {
    One(LogResult<Position>),
    Many(LogResult<Vec<Position>>),
}

/// The writer thread's body: group commits until the log is closed and the queue drained.
pub(crate) fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Command>) {
    let cfs = match Cfs::of(&shared.db) {
        Ok(cfs) => cfs,
        Err(error) => {
            tracing::error!(%error, "embedded log writer cannot start");
            return;
        }
    };
    let mut write_options = WriteOptions::default();
    write_options.set_sync(shared.config.fsync == crate::config::FsyncPolicy::Always);
    let max_batch = shared.config.max_batch_records.max(1);
    let closed = shared.ingress.closed.clone();
    let mut commands: Vec<Command> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut staged = Staged::default();
    loop {
        // Once closed, no new sends are accepted: write what is queued, then stop.
        let first = if closed.is_cancelled() { rx.try_recv().ok() } else { rx.blocking_recv() };
        let Some(first) = first else { break };
        if matches!(first, Command::Stop) {
            continue;
        }
        let mut records = first.records();
        commands.push(first);
        while records < max_batch {
            match rx.try_recv() {
                Ok(Command::Stop) => {}
                Ok(command) => {
                    records += command.records();
                    commands.push(command);
                }
                Err(_) => break,
            }
        }
        group_commit(&shared, &cfs, &write_options, &mut commands, &mut outcomes, &mut staged);
    }
    tracing::debug!("embedded log writer stopped");
}

fn group_commit(shared: &Shared, cfs: &Cfs<'_>, write_options: &WriteOptions, commands: &mut Vec<Command>, outcomes: &mut Vec<Outcome>, staged: &mut Staged) {
    let now = now_ms();
    let mut state = shared.state.lock().expect("embedded log state lock poisoned: a writer panicked");
    state.epoch += 1;
    state.undo.clear();
    for command in commands.iter() {
        let outcome = match command {
            Command::One { append, .. } => Outcome::One(state.append(append, now, staged)),
            Command::Many { appends, commit, .. } => {
                let checked = state.check_appends(appends).and_then(|()| commit.as_ref().map_or(Ok(()), |c| state.check_commit(shared, c)));
                Outcome::Many(checked.and_then(|()| {
                    let mut positions = Vec::with_capacity(appends.len());
                    for a in appends {
                        positions.push(state.append(a, now, staged)?);
                    }
                    if let Some(c) = commit {
                        for (tp, offset) in &c.offsets {
                            staged.offsets.push((store::offsets_key(&c.group, &tp.topic, tp.partition), *offset));
                        }
                    }
                    Ok(positions)
                }))
            }
            Command::Stop => continue,
        };
        outcomes.push(outcome);
    }
    let mut batch = staged.build(cfs);
    state.put_touched_meta(&mut batch, cfs);
    let written = if batch.is_empty() { Ok(()) } else { shared.db.write_opt(batch, write_options) };
    match written {
        Ok(()) => state.publish(),
        Err(source) => {
            tracing::error!(error = %source, commands = commands.len(), "embedded log group commit failed");
            state.rollback();
            for outcome in outcomes.iter_mut() {
                let failed = || super::store::storage_error("append", source.clone());
                match outcome {
                    Outcome::One(r @ Ok(_)) => *r = Err(failed()),
                    Outcome::Many(r @ Ok(_)) => *r = Err(failed()),
                    _ => {}
                }
            }
        }
    }
    drop(state);
    // Replies go out after the lock is released; a dropped receiver just means the producer
    // stopped caring about the outcome.
    let mut outcomes = outcomes.drain(..);
    for command in commands.drain(..) {
        match (command, outcomes.next()) {
            (Command::One { reply, .. }, Some(Outcome::One(result))) => {
                let _ = reply.send(result);
            }
            (Command::Many { reply, .. }, Some(Outcome::Many(result))) => {
                let _ = reply.send(result);
            }
            _ => {}
        }
    }
}
