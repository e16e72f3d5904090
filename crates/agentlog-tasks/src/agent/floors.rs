//! The group's committed offsets ("floors") of partitions a worker was just assigned.
//!
//! A worker reads no record of a newly assigned partition before it knows the group's
//! committed offset there: records below it were done by an earlier owner, and with
//! exactly-once their outcomes are already committed, so taking them again writes a second
//! outcome. The client's own resume position is not enough: librdkafka resumed two partitions
//! from their start in a fault-suite run (193 tasks committed before a worker kill ran
//! again), while the killed owner's transaction was still open and its offset commit pending.
//!
//! The lookup runs beside the poll loop, not in it: a read_committed lookup gets no answer
//! while an open transaction holds the group's offsets (up to the transaction timeout plus
//! the brokers' abort scan, ~11 s), and a member that stops polling that long takes no part
//! in the group's reconciliation. Meanwhile the worker keeps the partitions paused. A lookup
//! that fails or times out is retried until it answers: a partition whose floor is unknown
//! waits, it is never read from wherever the client happened to resume.
//!
//! A partition the group never committed takes the floor of the group's former name, when it
//! had one: worker groups took the topic prefix (`agents.<type>` became
//! `<prefix>agents.<type>`), and without this an upgraded worker would read every retained
//! task of its lanes again. The worker seeks such a partition to that floor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::log::{Admin, TopicPartition};

/// How long one lookup may take before it is asked again. Kafka's own lookup is bounded by
/// the client's request timeout; this bounds a backend that never answers.
const ATTEMPT: Duration = Duration::from_secs(15);

/// Retries after a failed lookup: from 200 ms, doubling up to 2 s.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The lookups of one group membership. Dropping it aborts those still running.
pub struct FloorLookups {
    admin: Arc<dyn Admin>,
    group: String,
    /// The group's former name, asked for partitions the group itself never committed.
    legacy: Option<String>,
    /// Assigned partitions whose floor is not known yet, with the lookup that will tell.
    awaiting: HashMap<TopicPartition, u64>,
    running: JoinSet<Found>,
    next_lookup: u64,
}

/// What one lookup found, in the order of `partitions`.
struct Found {
    lookup: u64,
    partitions: Vec<TopicPartition>,
    floors: Vec<Floor>,
}

/// A partition's committed offset, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// The group never committed this partition (nor did its former name): read it all.
    None,
    /// The group's own committed offset: the member resumes there by itself.
    Group(i64),
    /// The group's former name's committed offset: the member must seek there.
    Legacy(i64),
}

impl Floor {
    pub fn offset(self) -> Option<i64> {
        match self {
            Floor::None => None,
            Floor::Group(o) | Floor::Legacy(o) => Some(o),
        }
    }
}

impl FloorLookups {
    pub fn new(admin: Arc<dyn Admin>, group: String, legacy: Option<String>) -> Self {
        Self { admin, group, legacy, awaiting: HashMap::new(), running: JoinSet::new(), next_lookup: 0 }
    }

    /// Starts looking up the floors of just-assigned partitions; until [`FloorLookups::next`]
    /// returns them they are [`FloorLookups::awaits`].
    pub fn start(&mut self, partitions: &[TopicPartition]) {
        if partitions.is_empty() {
            return;
        }
        self.next_lookup += 1;
        let lookup = self.next_lookup;
        for p in partitions {
            self.awaiting.insert(p.clone(), lookup);
        }
        let (admin, group, legacy, partitions) = (self.admin.clone(), self.group.clone(), self.legacy.clone(), partitions.to_vec());
        self.running.spawn(async move {
            let floors = floors_of(admin.as_ref(), &group, legacy.as_deref(), &partitions).await;
            Found { lookup, partitions, floors }
        });
    }

    /// Revoked partitions wait for nothing any more; a lookup of theirs still running is
    /// ignored when it answers (the offsets may have moved on by a later assignment).
    pub fn revoke(&mut self, partitions: &[TopicPartition]) {
        for p in partitions {
            self.awaiting.remove(p);
        }
    }

    /// Whether `partition`'s floor is still unknown: it must not be read.
    pub fn awaits(&self, partition: &TopicPartition) -> bool {
        self.awaiting.contains_key(partition)
    }

    /// Whether a lookup is under way ([`FloorLookups::next`] would wait).
    pub fn is_looking(&self) -> bool {
        !self.running.is_empty()
    }

    /// The next floors found, for partitions still assigned and awaiting exactly that lookup
    /// (possibly none). Cancel-safe. Waits forever when no lookup runs.
    pub async fn next(&mut self) -> Vec<(TopicPartition, Floor)> {
        let Some(joined) = self.running.join_next().await else {
            return std::future::pending().await;
        };
        let Ok(found) = joined else {
            // Only aborted on drop, and a lookup does not panic: nothing to hand out.
            return Vec::new();
        };
        let mut known = Vec::new();
        for (p, floor) in found.partitions.into_iter().zip(found.floors) {
            if self.awaiting.get(&p) == Some(&found.lookup) {
                self.awaiting.remove(&p);
                known.push((p, floor));
            }
        }
        known
    }
}

/// The group's floors of `partitions`, and for those it never committed, its former name's.
async fn floors_of(admin: &dyn Admin, group: &str, legacy: Option<&str>, partitions: &[TopicPartition]) -> Vec<Floor> {
    let own = look_up(admin, group, partitions).await;
    let mut floors: Vec<Floor> = own.iter().map(|o| o.map_or(Floor::None, Floor::Group)).collect();
    let never: Vec<usize> = own.iter().enumerate().filter(|(_, o)| o.is_none()).map(|(i, _)| i).collect();
    if let (Some(legacy), false) = (legacy, never.is_empty()) {
        let asked: Vec<TopicPartition> = never.iter().map(|&i| partitions[i].clone()).collect();
        for (&i, former) in never.iter().zip(look_up(admin, legacy, &asked).await) {
            if let Some(offset) = former {
                tracing::info!(partition = %partitions[i], %group, former = legacy, offset, "taking the committed offset of the group's former name");
                floors[i] = Floor::Legacy(offset);
            }
        }
    }
    floors
}

/// Asks until the backend answers; failures are passing (a broker restarting, an open
/// transaction holding the offsets), and guessing is what this module exists to prevent.
async fn look_up(admin: &dyn Admin, group: &str, partitions: &[TopicPartition]) -> Vec<Option<i64>> {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        let failure = match tokio::time::timeout(ATTEMPT, admin.committed_offsets(group, partitions)).await {
            Ok(Ok(floors)) => {
                if backoff.failures() > 0 {
                    tracing::info!(?partitions, failures = backoff.failures(), "committed offsets of assigned partitions known; reading them");
                }
                return floors;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {ATTEMPT:?}"),
        };
        // The first failure and then every tenth: an open transaction alone takes ~10 tries.
        if backoff.failures().is_multiple_of(10) {
            tracing::warn!(?partitions, error = %failure, failures = backoff.failures() + 1, "committed offsets of assigned partitions unknown; their records wait");
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
