//! Which taken-but-not-started task a worker starts next.
//!
//! Rules, in order:
//! 1. At most `concurrency` tasks run at once.
//! 2. Tasks sharing an ordering key run one at a time, in the order they were taken: a task
//!    never overtakes an earlier task of its key, in its lane or while that one runs.
//! 3. Lanes are strict priorities: no task of a lower lane starts while a higher lane has a
//!    task that could start. A higher-lane task held back only by its ordering key does not
//!    hold back the lower lanes (it could not start anyway; idling would only add latency).
//!
//! Each lane buffers at most `prefetch` tasks; the worker pauses a lane's partitions while
//! [`Scheduler::lane_full`] and resumes them when it is not, so the poll loop keeps running
//! (and the member stays in its group) however long agents take.

use std::collections::{HashSet, VecDeque};

/// Lane index: 0 is the highest priority (critical), 3 the lowest (low).
pub type Lane = usize;
pub const LANE_COUNT: usize = 4;

struct Waiting<T> {
    key: Option<String>,
    task: T,
}

pub struct Scheduler<T> {
    lanes: [VecDeque<Waiting<T>>; LANE_COUNT],
    busy_keys: HashSet<String>,
    running: usize,
    concurrency: usize,
    prefetch: usize,
}

impl<T> Scheduler<T> {
    pub fn new(concurrency: usize, prefetch: usize) -> Self {
        Self {
            lanes: Default::default(),
            busy_keys: HashSet::new(),
            running: 0,
            concurrency: concurrency.max(1),
            prefetch: prefetch.max(1),
        }
    }

    /// Buffers a task taken from `lane`'s topic.
    pub fn push(&mut self, lane: Lane, key: Option<String>, task: T) {
        self.lanes[lane.min(LANE_COUNT - 1)].push_back(Waiting { key, task });
    }

    /// Whether `lane` holds as many waiting tasks as it may prefetch.
    pub fn lane_full(&self, lane: Lane) -> bool {
        self.lanes[lane.min(LANE_COUNT - 1)].len() >= self.prefetch
    }

    /// Whether `lane` has drained to half its prefetch: the point to resume a paused lane.
    /// (Pausing when full and resuming only at half keeps a busy lane from flapping between
    /// pause and resume on every task, which costs the Kafka consumer its fetched data.)
    pub fn lane_low(&self, lane: Lane) -> bool {
        self.lanes[lane.min(LANE_COUNT - 1)].len() <= self.prefetch / 2
    }

    /// The next task to start, if the rules allow one; it counts as running until
    /// [`Scheduler::finished`] is called with its key.
    pub fn next(&mut self) -> Option<(Lane, T)> {
        if self.running >= self.concurrency {
            return None;
        }
        for lane in 0..LANE_COUNT {
            if let Some(index) = self.first_startable(lane) {
                let waiting = self.lanes[lane].remove(index)?;
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
        for (lane, queue) in self.lanes.iter_mut().enumerate() {
            out.extend(queue.drain(..).map(|w| (lane, w.task)));
        }
        out
    }

    /// Removes waiting tasks for which `revoked` is true (their partition moved elsewhere).
    pub fn remove_waiting(&mut self, mut revoked: impl FnMut(&T) -> bool) {
        for queue in &mut self.lanes {
            queue.retain(|w| !revoked(&w.task));
        }
    }

    pub fn running(&self) -> usize {
        self.running
    }

    pub fn waiting(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// The first task of `lane` whose key is free and not claimed by an earlier waiting task.
    fn first_startable(&self, lane: Lane) -> Option<usize> {
        let mut claimed: HashSet<&str> = HashSet::new();
        for (index, waiting) in self.lanes[lane].iter().enumerate() {
            match waiting.key.as_deref() {
                None => return Some(index),
                Some(key) if !self.busy_keys.contains(key) && !claimed.contains(key) => return Some(index),
                Some(key) => {
                    claimed.insert(key);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRITICAL: Lane = 0;
    const HIGH: Lane = 1;
    const LOW: Lane = 3;

    #[test]
    fn a_high_task_starts_before_a_backlog_of_low_ones() {
        let mut s = Scheduler::new(1, 100);
        for i in 0..50 {
            s.push(LOW, None, format!("low-{i}"));
        }
        assert_eq!(s.next(), Some((LOW, "low-0".to_string())));
        s.push(HIGH, None, "high".to_string());
        assert_eq!(s.next(), None, "concurrency 1 is in use");
        s.finished(None);
        assert_eq!(s.next(), Some((HIGH, "high".to_string())), "the high task goes next");
        s.finished(None);
        assert_eq!(s.next(), Some((LOW, "low-1".to_string())));
    }

    #[test]
    fn tasks_of_one_key_run_one_at_a_time_in_order() {
        let mut s = Scheduler::new(4, 100);
        s.push(LOW, Some("k".into()), 1);
        s.push(LOW, Some("k".into()), 2);
        s.push(LOW, Some("other".into()), 3);
        assert_eq!(s.next(), Some((LOW, 1)));
        assert_eq!(s.next(), Some((LOW, 3)), "another key is not held back");
        assert_eq!(s.next(), None, "2 waits for 1");
        s.finished(Some("k"));
        assert_eq!(s.next(), Some((LOW, 2)));
    }

    #[test]
    fn a_task_never_overtakes_an_earlier_waiting_task_of_its_key() {
        let mut s = Scheduler::new(4, 100);
        s.push(HIGH, Some("busy".into()), "a");
        assert_eq!(s.next(), Some((HIGH, "a")));
        s.push(HIGH, Some("busy".into()), "b");
        s.push(HIGH, Some("busy".into()), "c");
        assert_eq!(s.next(), None);
        s.finished(Some("busy"));
        assert_eq!(s.next(), Some((HIGH, "b")));
        assert_eq!(s.next(), None, "c waits for b");
    }

    #[test]
    fn a_higher_lane_task_blocked_by_its_key_does_not_idle_lower_lanes() {
        let mut s = Scheduler::new(2, 100);
        s.push(CRITICAL, Some("k".into()), "c1");
        assert_eq!(s.next(), Some((CRITICAL, "c1")));
        s.push(CRITICAL, Some("k".into()), "c2");
        s.push(LOW, None, "l1");
        assert_eq!(s.next(), Some((LOW, "l1")));
    }

    #[test]
    fn prefetch_bounds_each_lane_and_revoked_tasks_are_dropped() {
        let mut s = Scheduler::new(1, 2);
        s.push(LOW, None, (0, 1));
        assert!(!s.lane_full(LOW));
        s.push(LOW, None, (1, 7));
        assert!(s.lane_full(LOW));
        assert!(!s.lane_full(HIGH));
        s.remove_waiting(|(partition, _)| *partition == 0);
        assert_eq!(s.waiting(), 1);
        assert_eq!(s.drain_waiting(), vec![(LOW, (1, 7))]);
        assert_eq!(s.running(), 0);
    }
}
