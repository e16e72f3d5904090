//! Consumer lag, computed the same way on both backends from committed offsets and
//! high watermarks.

use super::{Admin, LogResult, PartitionLag, TopicPartition};

/// Lag of `group` on every partition of `topic`: high watermark minus the committed next
/// offset (a group that never committed lags by everything still stored).
pub async fn group_lag(admin: &dyn Admin, group: &str, topic: &str) -> LogResult<Vec<PartitionLag>> {
    let description = admin.describe_topic(topic).await?;
    let partitions: Vec<TopicPartition> = (0..description.partitions).map(|p| TopicPartition::new(topic, p)).collect();
    let committed = admin.committed_offsets(group, &partitions).await?;
    let mut lags = Vec::with_capacity(partitions.len());
    for (tp, committed) in partitions.iter().zip(committed) {
        let marks = admin.watermarks(tp).await?;
        let from = committed.unwrap_or(marks.low).max(marks.low);
        lags.push(PartitionLag { partition: tp.partition, committed, high: marks.high, lag: (marks.high - from).max(0) });
    }
    Ok(lags)
}
