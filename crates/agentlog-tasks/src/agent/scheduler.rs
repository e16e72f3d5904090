//! Which taken-but-not-started task a worker starts next.
//!
//! Rules, in order:
//! 1. At most `concurrency` tasks run at once.
//! 2. Tasks sharing an ordering key run one at a time, in the order they were taken: a task
//!    never overtakes an earlier task of its key, in its lane or while that one runs.
//! 3. Lanes are strict priorities: no task of a lower lane starts while a higher lane has a
//!    task that could start. A higher-lane task held back only by its ordering key does not
//!    hold back the lower lanes (it could not start anyway; idling would only add latency).
//! 4. Within a lane the oldest task starts first, across partitions: each partition's tasks
//!    wait in their own queue (in offset order) and the lane starts the queue head with the
//!    oldest record timestamp. A member that just took over partitions reads each one's
//!    backlog in a burst, one partition after another; without this, the tasks a dead member
//!    had in flight at the head of the second partition would wait behind the whole backlog
//!    of the first, and failover would last as long as that backlog.
//!
//! Each lane buffers at most `prefetch` tasks; the worker pauses a lane's partitions while
//! [`Scheduler::lane_full`] and resumes them when it is not, so the poll loop keeps running
//! (and the member stays in its group) however long agents take.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::events::Lane;

/// Where a task came from within its lane (the partition of the lane topic).
pub type Source = i32;

struct Waiting<T> {
    key: Option<String>,
    /// Record timestamp (ms), then arrival order: the lane's start order.
    age: (i64, u64),
    task: T,
}

/// One lane: a queue per source, and per ordering key the arrival numbers of its waiting tasks
/// (so a keyed task knows whether an earlier task of its key waits, in any queue).
struct LaneQueue<T> {
    sources: Vec<(Source, VecDeque<Waiting<T>>)>,
    keys: HashMap<String, VecDeque<u64>>,
    len: usize,
}

impl<T> Default for LaneQueue<T> {
    fn default() -> Self {
        Self { sources: Vec::new(), keys: HashMap::new(), len: 0 }
    }
}

impl<T> LaneQueue<T> {
    fn push(&mut self, source: Source, waiting: Waiting<T>) {
        if let Some(key) = &waiting.key {
            self.keys.entry(key.clone()).or_default().push_back(waiting.age.1);
        }
        let queue = match self.sources.iter().position(|(s, _)| *s == source) {
            Some(index) => &mut self.sources[index].1,
            None => {
                self.sources.push((source, VecDeque::new()));
                &mut self.sources.last_mut().expect("just pushed").1
            }
        };
        queue.push_back(waiting);
        self.len += 1;
    }

    /// Removes and returns the oldest startable task, if any.
    fn take_oldest(&mut self, busy_keys: &HashSet<String>) -> Option<Waiting<T>> {
        if self.len == 0 {
            return None;
        }
        let mut best: Option<(usize, usize, (i64, u64))> = None;
        for (q, (_, queue)) in self.sources.iter().enumerate() {
            if let Some(index) = self.first_startable(queue, busy_keys) {
                let age = queue[index].age;
                if best.is_none_or(|(_, _, b)| age < b) {
                    best = Some((q, index, age));
                }
            }
        }
        let (q, index, _) = best?;
        let waiting = self.sources[q].1.remove(index)?;
        self.len -= 1;
        if let Some(key) = &waiting.key {
            self.forget_key(key, waiting.age.1);
        }
        Some(waiting)
    }

    /// The first task of `queue` whose key is free and not claimed by an earlier waiting task.
    fn first_startable(&self, queue: &VecDeque<Waiting<T>>, busy_keys: &HashSet<String>) -> Option<usize> {
        queue.iter().position(|waiting| match waiting.key.as_deref() {
            None => true,
            Some(key) => !busy_keys.contains(key) && self.keys.get(key).and_then(|seqs| seqs.front()) == Some(&waiting.age.1),
        })
    }

    fn forget_key(&mut self, key: &str, seq: u64) {
        if let Some(seqs) = self.keys.get_mut(key) {
            // Tasks of a key start in arrival order, so the one leaving is nearly always first.
            if seqs.front() == Some(&seq) {
                seqs.pop_front();
            } else {
                seqs.retain(|s| *s != seq);
            }
            if seqs.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        for (_, queue) in &mut self.sources {
            let mut kept = VecDeque::with_capacity(queue.len());
            for waiting in queue.drain(..) {
                if keep(&waiting.task) {
                    kept.push_back(waiting);
                } else {
                    removed.push(waiting);
                }
            }
            *queue = kept;
        }
        self.sources.retain(|(_, queue)| !queue.is_empty());
        self.len -= removed.len();
        removed
            .into_iter()
            .map(|waiting| {
                if let Some(key) = &waiting.key {
                    self.forget_key(key, waiting.age.1);
                }
                waiting.task
            })
            .collect()
    }
}

pub struct Scheduler<T> {
    /// Indexed by [`Lane::index`]: highest priority first.
    lanes: [LaneQueue<T>; Lane::COUNT],
    busy_keys: HashSet<String>,
    running: usize,
    concurrency: usize,
    prefetch: usize,
    arrivals: u64,
}

impl<T> Scheduler<T> {
    pub fn new(concurrency: usize, prefetch: usize) -> Self {
        Self { lanes: Default::default(), busy_keys: HashSet::new(), running: 0, concurrency: concurrency.max(1), prefetch: prefetch.max(1), arrivals: 0 }
    }

    /// Buffers a task taken from `source` (a partition) of `lane`'s topic; `timestamp_ms` is
    /// its record's timestamp, which orders it against the other sources' tasks.
    pub fn push(&mut self, lane: Lane, source: Source, timestamp_ms: i64, key: Option<String>, task: T) {
        self.arrivals += 1;
        self.lanes[lane.index()].push(source, Waiting { key, age: (timestamp_ms, self.arrivals), task });
    }

    /// Whether `lane` holds as many waiting tasks as it may prefetch.
    pub fn lane_full(&self, lane: Lane) -> bool {
        self.lanes[lane.index()].len >= self.prefetch
    }

    /// Whether `lane` has drained to half its prefetch: the point to resume a paused lane.
    /// (Pausing when full and resuming only at half keeps a busy lane from flapping between
    /// pause and resume on every task, which costs the Kafka consumer its fetched data.)
    pub fn lane_low(&self, lane: Lane) -> bool {
        self.lanes[lane.index()].len <= self.prefetch / 2
    }

    /// The next task to start, if the rules allow one; it counts as running until
    /// [`Scheduler::finished`] is called with its key.
    pub fn take_next(&mut self) -> Option<(Lane, T)> {
        if self.running >= self.concurrency {
            return None;
        }
        for lane in Lane::ALL {
            if let Some(waiting) = self.lanes[lane.index()].take_oldest(&self.busy_keys) {
                if let Some(key) = waiting.key {
                    self.busy_keys.insert(key);
                }
                self.running += 1;
                return Some((lane, waiting.task));
            }
        }
        None
    }

    /// A started task ended (whatever its outcome): frees its slot and its ordering key.
    pub fn finished(&mut self, key: Option<&str>) {
        self.running = self.running.saturating_sub(1);
        if let Some(key) = key {
            self.busy_keys.remove(key);
        }
    }

    /// Drops every waiting task (the worker lost the partitions, or drains) and returns them.
    pub fn drain_waiting(&mut self) -> Vec<(Lane, T)> {
        let mut out = Vec::new();
        for (lane, queue) in Lane::ALL.into_iter().zip(self.lanes.iter_mut()) {
            out.extend(queue.retain(|_| false).into_iter().map(|task| (lane, task)));
        }
        out
    }

    /// Removes waiting tasks for which `revoked` is true (their partition moved elsewhere).
    pub fn remove_waiting(&mut self, mut revoked: impl FnMut(&T) -> bool) {
        for queue in &mut self.lanes {
            queue.retain(|task| !revoked(task));
        }
    }

    pub fn running(&self) -> usize {
        self.running
    }

    pub fn waiting(&self) -> usize {
        self.lanes.iter().map(|lane| lane.len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRITICAL: Lane = Lane::Critical;
    const HIGH: Lane = Lane::High;
    const LOW: Lane = Lane::Low;

    #[test]
    fn a_high_task_starts_before_a_backlog_of_low_ones() {
        let mut s = Scheduler::new(1, 100);
        for i in 0..50 {
            s.push(LOW, 0, 0, None, format!("low-{i}"));
        }
        assert_eq!(s.take_next(), Some((LOW, "low-0".to_string())));
        s.push(HIGH, 0, 0, None, "high".to_string());
        assert_eq!(s.take_next(), None, "concurrency 1 is in use");
        s.finished(None);
        assert_eq!(s.take_next(), Some((HIGH, "high".to_string())), "the high task goes next");
        s.finished(None);
        assert_eq!(s.take_next(), Some((LOW, "low-1".to_string())));
    }

    #[test]
    fn tasks_of_one_key_run_one_at_a_time_in_order() {
        let mut s = Scheduler::new(4, 100);
        s.push(LOW, 0, 0, Some("k".into()), 1);
        s.push(LOW, 0, 0, Some("k".into()), 2);
        s.push(LOW, 0, 0, Some("other".into()), 3);
        assert_eq!(s.take_next(), Some((LOW, 1)));
        assert_eq!(s.take_next(), Some((LOW, 3)), "another key is not held back");
        assert_eq!(s.take_next(), None, "2 waits for 1");
        s.finished(Some("k"));
        assert_eq!(s.take_next(), Some((LOW, 2)));
    }

    #[test]
    fn a_task_never_overtakes_an_earlier_waiting_task_of_its_key() {
        let mut s = Scheduler::new(4, 100);
        s.push(HIGH, 0, 0, Some("busy".into()), "a");
        assert_eq!(s.take_next(), Some((HIGH, "a")));
        s.push(HIGH, 0, 0, Some("busy".into()), "b");
        s.push(HIGH, 0, 0, Some("busy".into()), "c");
        assert_eq!(s.take_next(), None);
        s.finished(Some("busy"));
        assert_eq!(s.take_next(), Some((HIGH, "b")));
        assert_eq!(s.take_next(), None, "c waits for b");
    }

    #[test]
    fn a_higher_lane_task_blocked_by_its_key_does_not_idle_lower_lanes() {
        let mut s = Scheduler::new(2, 100);
        s.push(CRITICAL, 0, 0, Some("k".into()), "c1");
        assert_eq!(s.take_next(), Some((CRITICAL, "c1")));
        s.push(CRITICAL, 0, 0, Some("k".into()), "c2");
        s.push(LOW, 0, 0, None, "l1");
        assert_eq!(s.take_next(), Some((LOW, "l1")));
    }

    #[test]
    fn prefetch_bounds_each_lane_and_revoked_tasks_are_dropped() {
        let mut s = Scheduler::new(1, 2);
        s.push(LOW, 0, 0, None, (0, 1));
        assert!(!s.lane_full(LOW));
        s.push(LOW, 0, 0, None, (1, 7));
        assert!(s.lane_full(LOW));
        assert!(!s.lane_full(HIGH));
        s.remove_waiting(|(partition, _)| *partition == 0);
        assert_eq!(s.waiting(), 1);
        assert_eq!(s.drain_waiting(), vec![(LOW, (1, 7))]);
        assert_eq!(s.running(), 0);
    }

    #[test]
    fn the_oldest_task_starts_first_across_partitions() {
        // A member took over partitions 2 and 3 and read 2's backlog before 3's: the tasks at
        // the head of 3 (in flight on the dead member) are older than 2's newer backlog.
        let mut s = Scheduler::new(3, 100);
        for (ts, name) in [(10, "p2-old"), (40, "p2-new"), (50, "p2-newer")] {
            s.push(LOW, 2, ts, None, name);
        }
        for (ts, name) in [(11, "p3-old"), (41, "p3-new")] {
            s.push(LOW, 3, ts, None, name);
        }
        assert_eq!(s.take_next(), Some((LOW, "p2-old")));
        assert_eq!(s.take_next(), Some((LOW, "p3-old")), "3's head is older than 2's next task");
        assert_eq!(s.take_next(), Some((LOW, "p2-new")));
        assert_eq!(s.take_next(), None, "concurrency 3 is in use");
        s.finished(None);
        assert_eq!(s.take_next(), Some((LOW, "p3-new")));
    }

    #[test]
    fn a_partition_keeps_its_offset_order_whatever_its_timestamps() {
        // A producer with a clock behind: partition 0's second record is stamped earlier than
        // its first. Offset order within a partition wins; timestamps only choose between heads.
        let mut s = Scheduler::new(4, 100);
        s.push(LOW, 0, 50, None, "p0-first");
        s.push(LOW, 0, 10, None, "p0-second");
        s.push(LOW, 1, 30, None, "p1");
        assert_eq!(s.take_next(), Some((LOW, "p1")));
        assert_eq!(s.take_next(), Some((LOW, "p0-first")));
        assert_eq!(s.take_next(), Some((LOW, "p0-second")));
    }

    #[test]
    fn an_older_task_of_another_partition_never_overtakes_an_earlier_task_of_its_key() {
        let mut s = Scheduler::new(4, 100);
        s.push(LOW, 0, 100, Some("k".into()), "k-taken-first");
        s.push(LOW, 1, 5, Some("k".into()), "k-taken-second");
        s.push(LOW, 1, 200, None, "free");
        assert_eq!(s.take_next(), Some((LOW, "k-taken-first")), "taken order wins for a key");
        assert_eq!(s.take_next(), Some((LOW, "free")), "a keyed task waiting for its key does not block its partition's others");
        assert_eq!(s.take_next(), None);
        s.finished(Some("k"));
        assert_eq!(s.take_next(), Some((LOW, "k-taken-second")));
    }

    #[test]
    fn revoking_a_partition_releases_its_keys() {
        let mut s = Scheduler::new(4, 100);
        s.push(LOW, 0, 1, Some("k".into()), (0, "revoked"));
        s.push(LOW, 1, 2, Some("k".into()), (1, "kept"));
        s.remove_waiting(|(partition, _)| *partition == 0);
        assert_eq!(s.take_next(), Some((LOW, (1, "kept"))), "the revoked task no longer claims the key");
        assert_eq!(s.waiting(), 0);
    }
}
