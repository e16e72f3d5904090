//! Reading whole topics without a consumer group, knowing when the history that existed at
//! the start has been read: supervisor components rebuild their state from the log before
//! they act on it, so nothing fires twice after a restart, and listings (the dead letters)
//! read a topic to its end.
//!
//! "Its end" is the high watermark taken at the start, and a record at the high watermark − 1
//! is not the test: on Kafka a transaction's commit marker takes an offset and is never
//! handed to a reader, so a partition whose last write was transactional (an exactly-once
//! worker's outcomes and dead letters) never delivers that offset. The consumer's position,
//! which moves past markers, is.

use std::collections::HashMap;
use std::sync::Arc;

use super::{ConsumedRecord, Consumer, ConsumerEvent, ConsumerOptions, EventLog, LogError, SeekTo, TopicPartition};

/// How long a catching-up reader waits for more history before calling it read.
pub const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a catching-up reader compares its positions with the start's high marks.
const POSITIONS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub struct Follower {
    consumer: Box<dyn Consumer>,
    /// Per partition: the high watermark at the start, removed once reached.
    behind: HashMap<TopicPartition, i64>,
    last_settled: std::time::Instant,
}

impl Follower {
    /// Reads every partition of `topics`, each from `start` (timestamps fall back to the end).
    pub async fn open(log: &Arc<dyn EventLog>, topics: &[String], start: SeekTo) -> Result<Follower, LogError> {
        let admin = log.admin();
        let mut assignment = Vec::new();
        let mut behind = HashMap::new();
        for topic in topics {
            let partitions = admin.describe_topic(topic).await?.partitions;
            for p in 0..partitions {
                let tp = TopicPartition::new(topic, p);
                let marks = admin.watermarks(&tp).await?;
                let from = match start {
                    SeekTo::Timestamp(ms) => admin.offset_for_timestamp(&tp, ms).await?.unwrap_or(marks.high),
                    SeekTo::Latest => marks.high,
                    SeekTo::Offset(o) => o,
                    SeekTo::Earliest => marks.low,
                };
                if from < marks.high {
                    behind.insert(tp.clone(), marks.high);
                }
                assignment.push((tp, SeekTo::Offset(from.max(marks.low))));
            }
        }
        let mut consumer = log.consumer(ConsumerOptions::default())?;
        consumer.assign(&assignment).await?;
        Ok(Follower { consumer, behind, last_settled: std::time::Instant::now() })
    }

    /// Whether everything that existed at the start has been read.
    pub fn caught_up(&self) -> bool {
        self.behind.is_empty()
    }

    /// Drops the partitions whose consumer position passed the high mark of the start: they
    /// are read even if their last offsets are transaction markers that are never delivered.
    /// A record was read: its partition is read once it reaches the start's high mark.
    fn passed(&mut self, record: &ConsumedRecord) {
        let tp = record.topic_partition();
        if self.behind.get(&tp).is_some_and(|high| record.offset + 1 >= *high) {
            self.behind.remove(&tp);
        }
        self.settle_if_due();
    }

    /// Events keep coming from other partitions: the marker-ended ones are checked too.
    fn settle_if_due(&mut self) {
        if !self.behind.is_empty() && self.last_settled.elapsed() >= POSITIONS_EVERY {
            self.last_settled = std::time::Instant::now();
            self.settle_by_positions();
        }
    }

    fn settle_by_positions(&mut self) {
        if self.behind.is_empty() {
            return;
        }
        for (tp, position) in self.consumer.positions() {
            if self.behind.get(&tp).is_some_and(|high| position >= *high) {
                self.behind.remove(&tp);
            }
        }
    }

    /// The next record (cancel-safe). While catching up, `None` means the history has been
    /// read: every partition's position passed its high mark of the start (a partition
    /// whose last offsets are transaction markers or aborted records never delivers its high
    /// watermark − 1, so a delivered record alone cannot be the test), or, on a backend
    /// without positions, nothing arrived for [`IDLE`].
    pub async fn next(&mut self) -> Result<Option<ConsumedRecord>, LogError> {
        let mut waited = std::time::Duration::ZERO;
        loop {
            let event = if self.behind.is_empty() {
                self.consumer.next_event().await?
            } else {
                match tokio::time::timeout(POSITIONS_EVERY, self.consumer.next_event()).await {
                    Ok(event) => event?,
                    Err(_) => {
                        waited += POSITIONS_EVERY;
                        self.settle_by_positions();
                        if self.behind.is_empty() || waited >= IDLE {
                            self.behind.clear();
                            return Ok(None);
                        }
                        continue;
                    }
                }
            };
            if let ConsumerEvent::Record(record) = event {
                self.passed(&record);
                return Ok(Some(record));
            }
        }
    }

    /// The next record of the history (what existed when [`Follower::open`] ran), `None` once
    /// all of it has been read; records written since may come along. Fails when nothing
    /// moved, no record and no partition reaching its end, for `stall`: unlike
    /// [`Follower::next`], which calls quiet history read after [`IDLE`], a listing, or a
    /// start that must see every record before it acts, must not end early.
    pub async fn next_of_history(&mut self, stall: std::time::Duration) -> Result<Option<ConsumedRecord>, LogError> {
        let mut quiet = std::time::Duration::ZERO;
        while !self.behind.is_empty() {
            match tokio::time::timeout(POSITIONS_EVERY, self.consumer.next_event()).await {
                Ok(event) => {
                    let record = match event? {
                        ConsumerEvent::Record(record) => Some(record),
                        _ => None,
                    };
                    match record {
                        Some(record) => {
                            self.passed(&record);
                            return Ok(Some(record));
                        }
                        None => self.settle_if_due(),
                    }
                }
                Err(_) => {
                    let before = self.behind.len();
                    self.settle_by_positions();
                    if self.behind.len() < before {
                        quiet = std::time::Duration::ZERO;
                        continue;
                    }
                    quiet += POSITIONS_EVERY;
                    if quiet >= stall {
                        return Err(LogError::Timeout { operation: "reading a topic to its end", after: stall });
                    }
                }
            }
        }
        Ok(None)
    }

    /// Every record of the history ([`Follower::next_of_history`]), oldest first per
    /// partition; the follower is closed after.
    pub async fn read_history(mut self, stall: std::time::Duration) -> Result<Vec<ConsumedRecord>, LogError> {
        let mut records = Vec::new();
        let read = loop {
            match self.next_of_history(stall).await {
                Ok(Some(record)) => records.push(record),
                Ok(None) => break Ok(records),
                Err(error) => break Err(error),
            }
        };
        self.close().await;
        read
    }

    pub async fn close(self) {
        if let Err(error) = self.consumer.close().await {
            tracing::debug!(%error, "closing a follower");
        }
    }
}
