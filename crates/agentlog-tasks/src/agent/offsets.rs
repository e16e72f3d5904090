//! Which offset a worker may commit when tasks of one partition finish out of order.
//!
//! A worker commits only what is done: the committed position is the lowest offset still in
//! flight, or one past the highest delivered offset when nothing is in flight. Gaps in the
//! offsets (compaction, aborted transactions) are skipped naturally because only delivered
//! offsets are ever tracked.

use std::collections::{BTreeSet, HashMap};

use crate::log::TopicPartition;

/// In-flight offsets of one partition.
#[derive(Debug, Default, Clone)]
pub struct PartitionProgress {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset delivered so far.
    delivered_end: Option<i64>,
    /// The last position handed out for committing (initially where reading resumed).
    committed: Option<i64>,
    /// The group's committed offset when the partition was assigned: records below it were
    /// done by an earlier owner.
    floor: Option<i64>,
}

impl PartitionProgress {
    /// A record at `offset` was taken for processing.
    pub fn started(&mut self, offset: i64) {
        // The first record taken is where reading resumed: the group's position already.
        self.committed.get_or_insert(offset);
        self.in_flight.insert(offset);
        self.delivered_end = Some(self.delivered_end.map_or(offset + 1, |end| end.max(offset + 1)));
    }

    /// The record at `offset` is durably done. Returns the new commit position (the next
    /// offset to read) when it moved forward, `None` when an earlier record is still running.
    pub fn finished(&mut self, offset: i64) -> Option<i64> {
        self.in_flight.remove(&offset);
        let position = self.position()?;
        if self.committed.is_some_and(|c| c >= position) {
            return None;
        }
        self.committed = Some(position);
        Some(position)
    }

    /// Where a commit may stand now: the lowest in-flight offset, or the end of what was
    /// delivered. `None` before anything was delivered.
    pub fn position(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.delivered_end)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_in_flight(&self, offset: i64) -> bool {
        self.in_flight.contains(&offset)
    }
}

/// [`PartitionProgress`] for every partition a worker owns.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionProgress>,
}

impl OffsetTracker {
    pub fn started(&mut self, partition: &TopicPartition, offset: i64) {
        self.partitions.entry(partition.clone()).or_default().started(offset);
    }

    /// See [`PartitionProgress::finished`]; `None` too for a partition no longer owned.
    pub fn finished(&mut self, partition: &TopicPartition, offset: i64) -> Option<i64> {
        self.partitions.get_mut(partition)?.finished(offset)
    }

    /// Partitions were assigned, with the group's committed offsets (`None`: never committed
    /// or unknown) in the same order.
    pub fn assigned(&mut self, partitions: &[TopicPartition], committed: &[Option<i64>]) {
        for (p, floor) in partitions.iter().zip(committed) {
            let progress = self.partitions.entry(p.clone()).or_default();
            progress.floor = *floor;
            if progress.committed.is_none() {
                progress.committed = *floor;
            }
        }
    }

    /// The committed offset `offset` lies below, if it does: that record is done already.
    pub fn below_floor(&self, partition: &TopicPartition, offset: i64) -> Option<i64> {
        self.partitions.get(partition)?.floor.filter(|floor| offset < *floor)
    }

    /// Whether `offset` was taken in the current ownership of `partition` and is not done yet.
    pub fn is_in_flight(&self, partition: &TopicPartition, offset: i64) -> bool {
        self.partitions.get(partition).is_some_and(|p| p.is_in_flight(offset))
    }

    /// Forgets revoked partitions: their in-flight records belong to the new owner now.
    pub fn revoke(&mut self, partitions: &[TopicPartition]) {
        for p in partitions {
            self.partitions.remove(p);
        }
    }

    /// Commit positions of every partition (for a final commit on drain).
    pub fn positions(&self) -> Vec<(TopicPartition, i64)> {
        let mut out: Vec<(TopicPartition, i64)> = self.partitions.iter().filter_map(|(tp, p)| p.position().map(|pos| (tp.clone(), pos))).collect();
        out.sort();
        out
    }

    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(PartitionProgress::in_flight).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_completion_commits_only_the_contiguous_prefix() {
        let mut p = PartitionProgress::default();
        for offset in 10..15 {
            p.started(offset);
        }
        assert_eq!(p.finished(12), None, "10 and 11 still run");
        assert_eq!(p.finished(11), None, "10 still runs");
        assert_eq!(p.finished(10), Some(13), "10..=12 done, 13 runs");
        assert_eq!(p.finished(14), None, "13 still runs");
        assert_eq!(p.finished(13), Some(15));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_block_commits() {
        let mut p = PartitionProgress::default();
        p.started(3);
        p.started(7);
        assert_eq!(p.finished(7), None);
        assert_eq!(p.finished(3), Some(8));
    }

    #[test]
    fn a_position_is_handed_out_once() {
        let mut p = PartitionProgress::default();
        p.started(0);
        assert_eq!(p.finished(0), Some(1));
        assert_eq!(p.finished(0), None, "a duplicate completion does not re-commit");
    }

    #[test]
    fn records_below_the_committed_offset_are_recognised_and_a_reassignment_forgets_old_work() {
        let mut t = OffsetTracker::default();
        let a = TopicPartition::new("t", 0);
        t.assigned(std::slice::from_ref(&a), &[Some(43)]);
        assert_eq!(t.below_floor(&a, 0), Some(43), "offset 0 was committed by an earlier owner");
        assert_eq!(t.below_floor(&a, 43), None);
        t.started(&a, 43);
        assert!(t.is_in_flight(&a, 43));
        // Revoked and assigned again: the task taken before is not this ownership's.
        t.revoke(std::slice::from_ref(&a));
        t.assigned(std::slice::from_ref(&a), &[Some(44)]);
        assert!(!t.is_in_flight(&a, 43), "an outcome of the earlier ownership must not be committed again");
        t.started(&a, 44);
        assert_eq!(t.finished(&a, 44), Some(45));
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let mut t = OffsetTracker::default();
        let a = TopicPartition::new("t", 0);
        let b = TopicPartition::new("t", 1);
        t.started(&a, 0);
        t.started(&b, 5);
        t.started(&b, 6);
        assert_eq!(t.finished(&b, 6), None);
        assert_eq!(t.positions(), vec![(a.clone(), 0), (b.clone(), 5)]);
        t.revoke(std::slice::from_ref(&a));
        assert_eq!(t.finished(&a, 0), None);
        assert_eq!(t.in_flight(), 1);
    }
}
