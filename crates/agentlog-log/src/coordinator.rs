//! The in-process group coordinator of the embedded and in-memory logs: members of a group split the partitions of the topics
//! they subscribe to. Every join, leave, re-subscribe or topic change recomputes a
//! deterministic assignment and pushes it to each member's watch channel; the member turns
//! the difference into Revoked/Assigned events when it next reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::{GroupMetadata, GroupMetadataInner, LogError, LogResult, TopicPartition};

/// What a member owns in one generation of its group.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub generation: u64,
    /// Sorted.
    pub partitions: Vec<TopicPartition>,
}

struct Member {
    client_id: Option<String>,
    topics: BTreeSet<String>,
    assignment: watch::Sender<Arc<Assignment>>,
}

#[derive(Default)]
struct Group {
    generation: u64,
    /// Sorted by member id, i.e. by join order.
    members: BTreeMap<u64, Member>,
}

#[derive(Default)]
pub(crate) struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    next_member: AtomicU64,
}

impl Coordinator {
    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().expect("coordinator lock poisoned: a rebalance panicked")
    }

    /// Adds a member and rebalances. `partitions_of` gives a topic's partition count (`None`
    /// when it does not exist).
    pub fn join(
        &self,
        group: &str,
        client_id: Option<String>,
        topics: &[String],
        partitions_of: &dyn Fn(&str) -> Option<i32>,
    ) -> (u64, watch::Receiver<Arc<Assignment>>) {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = watch::channel(Arc::new(Assignment::default()));
        let mut groups = self.groups();
        let g = groups.entry(group.to_owned()).or_default();
        g.members.insert(id, Member { client_id, topics: topics.iter().cloned().collect(), assignment: tx });
        rebalance(group, g, partitions_of);
        (id, rx)
    }

    /// Changes a member's subscription and rebalances.
    pub fn resubscribe(&self, group: &str, member: u64, topics: &[String], partitions_of: &dyn Fn(&str) -> Option<i32>) {
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group) else { return };
        let Some(m) = g.members.get_mut(&member) else { return };
        m.topics = topics.iter().cloned().collect();
        rebalance(group, g, partitions_of);
    }

    /// Removes a member at once; its partitions move to the remaining members.
    pub fn leave(&self, group: &str, member: u64, partitions_of: &dyn Fn(&str) -> Option<i32>) {
        let mut groups = self.groups();
        let Some(g) = groups.get_mut(group) else { return };
        if g.members.remove(&member).is_none() {
            return;
        }
        if g.members.is_empty() {
            groups.remove(group);
        } else {
            rebalance(group, g, partitions_of);
        }
    }

    /// Topics were created or deleted: rebalance every group subscribed to `topic`.
    pub fn topic_changed(&self, topic: &str, partitions_of: &dyn Fn(&str) -> Option<i32>) {
        let mut groups = self.groups();
        for (name, g) in groups.iter_mut() {
            if g.members.values().any(|m| m.topics.contains(topic)) {
                rebalance(name, g, partitions_of);
            }
        }
    }

    /// Fails with `NotAssigned` unless `member` of `group` currently owns every partition.
    pub fn check_owned<'a>(&self, group: &str, member: u64, partitions: impl Iterator<Item = &'a TopicPartition>) -> LogResult<()> {
        let groups = self.groups();
        let owned = groups.get(group).and_then(|g| g.members.get(&member)).map(|m| m.assignment.borrow().clone());
        for tp in partitions {
            if owned.as_ref().is_none_or(|a| a.partitions.binary_search(tp).is_err()) {
                return Err(LogError::NotAssigned { group: group.to_owned(), topic: tp.topic.clone(), partition: tp.partition });
            }
        }
        Ok(())
    }
}

/// The in-process member a transaction commits `offsets` for: `None` when there are none to
/// commit; an error when there are but the metadata is missing or another backend's.
pub(crate) fn committing_member(offsets: &[(TopicPartition, i64)], group: Option<&GroupMetadata>) -> LogResult<Option<(String, u64)>> {
    match (offsets.is_empty(), group) {
        (true, _) => Ok(None),
        (false, Some(GroupMetadata(GroupMetadataInner::InProcess { group, member }))) => Ok(Some((group.clone(), *member))),
        (false, Some(_)) => Err(LogError::Invalid { what: "group metadata", reason: "it comes from another backend".into() }),
        (false, None) => Err(LogError::Invalid { what: "transaction offsets", reason: "committing offsets needs the group's metadata".into() }),
    }
}

/// Kafka's round-robin assignor: all partitions of all subscribed topics in sorted order,
/// dealt to the members in id order, skipping members not subscribed to the partition's topic.
fn rebalance(group: &str, g: &mut Group, partitions_of: &dyn Fn(&str) -> Option<i32>) {
    g.generation += 1;
    let topics: BTreeSet<&String> = g.members.values().flat_map(|m| m.topics.iter()).collect();
    let ids: Vec<u64> = g.members.keys().copied().collect();
    let mut assigned: BTreeMap<u64, Vec<TopicPartition>> = ids.iter().map(|id| (*id, Vec::new())).collect();
    let mut next = 0usize;
    for topic in topics {
        for partition in 0..partitions_of(topic).unwrap_or(0) {
            for step in 0..ids.len() {
                let id = ids[(next + step) % ids.len()];
                if g.members.get(&id).is_some_and(|m| m.topics.contains(topic)) {
                    assigned.entry(id).or_default().push(TopicPartition::new(topic.clone(), partition));
                    next = (next + step + 1) % ids.len();
                    break;
                }
            }
        }
    }
    for (id, partitions) in assigned {
        if let Some(m) = g.members.get(&id) {
            tracing::debug!(group, member = id, client_id = ?m.client_id, generation = g.generation, partitions = partitions.len(), "in-process group rebalanced");
            // A member that already dropped its receiver is leaving; nothing to tell it.
            let _ = m.assignment.send(Arc::new(Assignment { generation: g.generation, partitions }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_split_and_move_when_a_member_leaves() {
        let c = Coordinator::default();
        let counts = |t: &str| (t == "a").then_some(4);
        let topics = vec!["a".to_string()];
        let (m1, r1) = c.join("g", None, &topics, &counts);
        let (m2, r2) = c.join("g", None, &topics, &counts);
        let p = |n: i32| TopicPartition::new("a", n);
        assert_eq!(r1.borrow().partitions, vec![p(0), p(2)]);
        assert_eq!(r2.borrow().partitions, vec![p(1), p(3)]);
        assert!(c.check_owned("g", m1, [p(0)].iter()).is_ok());
        assert!(matches!(c.check_owned("g", m1, [p(1)].iter()), Err(LogError::NotAssigned { .. })));
        c.leave("g", m1, &counts);
        assert_eq!(r2.borrow().partitions, vec![p(0), p(1), p(2), p(3)]);
        assert!(c.check_owned("g", m2, [p(0)].iter()).is_ok());
    }
}
