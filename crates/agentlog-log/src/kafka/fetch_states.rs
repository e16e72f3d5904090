//! Finds assigned partitions librdkafka never starts fetching.
//!
//! After a group assignment librdkafka asks the coordinator for the committed offsets and only
//! then starts each partition's fetcher. When that OffsetFetch fails at the request level
//! (NOT_COORDINATOR while the coordinator moves after a broker dies) or per partition,
//! librdkafka 2.12 leaves the partition assigned but unstarted until it is unassigned
//! (confluentinc/librdkafka#5586): the member owns the partition, heartbeats, and never reads
//! it, so its tasks wait for ever. The fault suite met this in about one broker kill of
//! three. librdkafka's statistics show each partition's fetch state; a partition of the
//! assignment that stays in `none` or `stopped` for [`STALLED_AFTER`] is stalled, and the
//! member leaves the group (the caller's error path) so that a new assignment starts it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::TopicPartition;

/// How often librdkafka reports statistics to group members (`statistics.interval.ms`).
pub(crate) const STATISTICS_INTERVAL_MS: u64 = 2_000;

/// How long an assigned partition may stay unstarted. A coordinator that is still being
/// elected after a broker dies legitimately delays the start by several seconds, so this
/// leaves room for that before the member gives its assignment up.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(15);

/// The part of librdkafka's statistics JSON this reads.
#[derive(Deserialize)]
struct Statistics {
    #[serde(default)]
    topics: HashMap<String, TopicStatistics>,
    cgrp: Option<GroupStatistics>,
}

/// The member's view of its group: `state` is the coordinator connection (`up` when
/// connected), `join_state` the membership (`steady` when it holds its assignment).
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupStatistics {
    pub state: String,
    pub join_state: String,
    #[serde(default)]
    pub assignment_size: i64,
}

#[derive(Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: HashMap<String, PartitionStatistics>,
}

#[derive(Deserialize)]
struct PartitionStatistics {
    partition: i32,
    fetch_state: String,
}

/// The latest fetch state of every partition librdkafka knows, from its statistics callback.
#[derive(Default)]
pub(crate) struct FetchStates {
    latest: Mutex<HashMap<TopicPartition, String>>,
    group: Mutex<Option<GroupStatistics>>,
}

impl FetchStates {
    /// Takes in one statistics report; one that does not parse is ignored (the previous
    /// report stands), since statistics are only a diagnosis.
    pub(crate) fn record(&self, json: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<Statistics>(json) else { return };
        let latest: HashMap<TopicPartition, String> = stats
            .topics
            .into_iter()
            .flat_map(|(topic, t)| {
                t.partitions
                    .into_values()
                    // librdkafka lists an "unassigned" partition -1 per topic.
                    .filter(|p| p.partition >= 0)
                    .map(move |p| (TopicPartition::new(topic.clone(), p.partition), p.fetch_state))
            })
            .collect();
        if let Ok(mut guard) = self.latest.lock() {
            *guard = latest;
        }
        if let Ok(mut guard) = self.group.lock() {
            *guard = stats.cgrp;
        }
    }

    /// The member's group state from the latest report (`None` before one, or outside a group).
    pub(crate) fn group(&self) -> Option<GroupStatistics> {
        self.group.lock().ok()?.clone()
    }

    pub(crate) fn state(&self, partition: &TopicPartition) -> Option<String> {
        self.latest.lock().ok()?.get(partition).cloned()
    }
}

/// A partition found stalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stall {
    pub partition: TopicPartition,
    pub state: String,
    pub after: Duration,
}

/// Per assigned partition, since when it has been seen unstarted.
#[derive(Default)]
pub(crate) struct StallWatch {
    unstarted_since: HashMap<TopicPartition, Instant>,
}

impl StallWatch {
    /// Checks the assignment against the latest fetch states at `now`; the first partition
    /// unstarted for [`STALLED_AFTER`] or longer is returned.
    pub(crate) fn check<'a>(&mut self, assignment: impl IntoIterator<Item = &'a TopicPartition>, states: &FetchStates, now: Instant) -> Option<Stall> {
        let mut seen: HashMap<TopicPartition, Instant> = HashMap::new();
        let mut stalled = None;
        for partition in assignment {
            // A partition the statistics do not list yet is not known to be unstarted.
            let Some(state) = states.state(partition) else { continue };
            if !is_unstarted(&state) {
                continue;
            }
            let since = self.unstarted_since.get(partition).copied().unwrap_or(now);
            seen.insert(partition.clone(), since);
            let after = now.saturating_duration_since(since);
            if stalled.is_none() && after >= STALLED_AFTER {
                stalled = Some(Stall { partition: partition.clone(), state, after });
            }
        }
        // Started (or no longer assigned) partitions start over.
        self.unstarted_since = seen;
        stalled
    }

    /// Forgets everything, for a new assignment.
    pub(crate) fn reset(&mut self) {
        self.unstarted_since.clear();
    }
}

/// States of a partition whose fetcher is not running: `none` (never started) and `stopped`
/// (stopped by an earlier revocation and not started again).
fn is_unstarted(state: &str) -> bool {
    matches!(state, "none" | "stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(states: &[(&str, i32, &str)]) -> Vec<u8> {
        let mut topics: HashMap<String, serde_json::Map<String, serde_json::Value>> = HashMap::new();
        for (topic, partition, state) in states {
            topics
                .entry((*topic).to_string())
                .or_default()
                .insert(partition.to_string(), serde_json::json!({"partition": partition, "fetch_state": state, "app_offset": -1001}));
        }
        let topics: serde_json::Map<String, serde_json::Value> =
            topics.into_iter().map(|(t, p)| (t.clone(), serde_json::json!({"topic": t, "partitions": p}))).collect();
        serde_json::to_vec(&serde_json::json!({"name": "c", "type": "consumer", "topics": topics})).expect("json")
    }

    #[test]
    fn a_partition_left_unstarted_is_stalled_after_the_bound() {
        let states = FetchStates::default();
        let lane = TopicPartition::new("agents.sleep.normal", 2);
        let other = TopicPartition::new("agents.sleep.normal", 3);
        states.record(&report(&[("agents.sleep.normal", 2, "none"), ("agents.sleep.normal", 3, "active"), ("agents.sleep.normal", -1, "none")]));
        let mut watch = StallWatch::default();
        let start = Instant::now();
        let assigned = [lane.clone(), other.clone()];
        assert_eq!(watch.check(&assigned, &states, start), None, "just assigned");
        assert_eq!(watch.check(&assigned, &states, start + STALLED_AFTER / 2), None);
        let stall = watch.check(&assigned, &states, start + STALLED_AFTER).expect("stalled");
        assert_eq!(stall.partition, lane);
        assert_eq!(stall.state, "none");
    }

    #[test]
    fn a_partition_that_starts_is_never_stalled() {
        let states = FetchStates::default();
        let lane = TopicPartition::new("agents.sleep.normal", 2);
        let mut watch = StallWatch::default();
        let start = Instant::now();
        states.record(&report(&[("agents.sleep.normal", 2, "stopped")]));
        assert_eq!(watch.check([&lane], &states, start), None);
        // It starts before the bound, and later stops again: the clock starts over.
        states.record(&report(&[("agents.sleep.normal", 2, "offset-query")]));
        assert_eq!(watch.check([&lane], &states, start + STALLED_AFTER / 2), None);
        states.record(&report(&[("agents.sleep.normal", 2, "none")]));
        assert_eq!(watch.check([&lane], &states, start + STALLED_AFTER + Duration::from_secs(1)), None);
        assert!(watch.check([&lane], &states, start + 2 * STALLED_AFTER + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn unassigned_and_unlisted_partitions_are_not_watched() {
        let states = FetchStates::default();
        states.record(&report(&[("agents.sleep.normal", 0, "none")]));
        let mut watch = StallWatch::default();
        let start = Instant::now();
        let unlisted = TopicPartition::new("agents.sleep.high", 0);
        assert_eq!(watch.check([&unlisted], &states, start), None);
        assert_eq!(watch.check([&unlisted], &states, start + 2 * STALLED_AFTER), None, "no statistics, no verdict");
        // Partition 0 is unstarted, but it is not ours.
        assert_eq!(watch.check(std::iter::empty(), &states, start + 2 * STALLED_AFTER), None);
    }

    #[test]
    fn the_group_state_is_read_from_the_report() {
        let states = FetchStates::default();
        assert_eq!(states.group(), None);
        let json = serde_json::json!({"topics": {}, "cgrp": {"state": "up", "join_state": "wait-assign-call", "assignment_size": 0, "stateage": 5}});
        states.record(&serde_json::to_vec(&json).expect("json"));
        let group = states.group().expect("group statistics");
        assert_eq!((group.state.as_str(), group.join_state.as_str(), group.assignment_size), ("up", "wait-assign-call", 0));
    }

    #[test]
    fn a_report_that_does_not_parse_keeps_the_last_one() {
        let states = FetchStates::default();
        states.record(&report(&[("t", 0, "active")]));
        states.record(b"{not json");
        assert_eq!(states.state(&TopicPartition::new("t", 0)).as_deref(), Some("active"));
    }
}
