//! Reading whole topics without a consumer group, knowing when the history that existed at
//! the start has been read: supervisor components rebuild their state from the log before
//! they act on it, so nothing fires twice after a restart.

use std::collections::HashMap;
use std::sync::Arc;

use crate::log::{ConsumedRecord, Consumer, ConsumerEvent, ConsumerOptions, EventLog, LogError, SeekTo, TopicPartition};

/// How long a catching-up reader waits for more history before calling it read.
pub const IDLE: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Follower {
    consumer: Box<dyn Consumer>,
    /// Per partition: the high watermark at the start, removed once reached.
    behind: HashMap<TopicPartition, i64>,
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
        Ok(Follower { consumer, behind })
    }

    /// Whether everything that existed at the start has been read.
    pub fn caught_up(&self) -> bool {
        self.behind.is_empty()
    }

    /// The next record (cancel-safe). While catching up, `None` means nothing arrived for
    /// [`IDLE`]: the history counts as read. (A partition whose last offsets are transaction
    /// markers or aborted records never delivers its high watermark − 1, so reaching the
    /// watermark alone cannot be the test.)
    pub async fn next(&mut self) -> Result<Option<ConsumedRecord>, LogError> {
        loop {
            let event = if self.behind.is_empty() {
                self.consumer.next_event().await?
            } else {
                match tokio::time::timeout(IDLE, self.consumer.next_event()).await {
                    Ok(event) => event?,
                    Err(_) => {
                        self.behind.clear();
                        return Ok(None);
                    }
                }
            };
            if let ConsumerEvent::Record(record) = event {
                let tp = record.topic_partition();
                if self.behind.get(&tp).is_some_and(|high| record.offset + 1 >= *high) {
                    self.behind.remove(&tp);
                }
                return Ok(Some(record));
            }
        }
    }

    pub async fn close(self) {
        if let Err(error) = self.consumer.close().await {
            tracing::debug!(%error, "closing a follower");
        }
    }
}
