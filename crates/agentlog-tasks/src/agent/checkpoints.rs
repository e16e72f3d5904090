//! The latest checkpoint of every running task (agent protocol `checkpoint` frames), read from
//! `task.checkpoints`: what a worker hands the next attempt of a task — a retry, or a re-run
//! after the worker that ran it died — so a multi-step agent continues where it stopped.
//!
//! Every worker follows the topic from its retained start: it cannot know which task its
//! group will give it next, and a re-run after a crash finds the dead worker's checkpoint
//! only on the log. The history is read before the worker takes its first task. A
//! checkpoint is cleared (a `TaskCheckpointed` without state, written with the task's
//! outcome) when the task ends, so the index holds running tasks only; it is bounded anyway
//! ([`MAX_KEPT_BYTES`], oldest forgotten first), for tasks that ended without clearing.
//!
//! A checkpoint saved a moment (the follow latency, milliseconds) before another worker takes
//! the task may be missed: that attempt then starts from the checkpoint before it. An agent
//! treats a checkpoint as "at least this far", never as "exactly here".

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::follower_task::FollowerTask;
use super::topics::TaskTopics;
use crate::events::wire::WireCodec;
use crate::events::{AnyEvent, Meta, TaskCheckpointed, decode_any_waiting};
use crate::log::follow::Follower;
use crate::log::{ConsumedRecord, EventLog, LogError, SeekTo};

/// State bytes kept at most over all tasks: past it, the oldest checkpoints are forgotten.
pub const MAX_KEPT_BYTES: usize = 256 << 20;
/// How long reading the history may stall before the start fails (and is retried).
const HISTORY_STALL: Duration = Duration::from_secs(30);

/// A task's latest checkpoint: the attempt that saved it and its state (JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub attempt: i32,
    pub state: String,
}

type TaskRef = (String, String);

#[derive(Default)]
struct Kept {
    latest: HashMap<TaskRef, Checkpoint>,
    /// Insertion order, for forgetting the oldest; may name tasks since cleared.
    order: VecDeque<TaskRef>,
    bytes: usize,
}

impl Kept {
    fn apply(&mut self, event: AnyEvent) {
        let AnyEvent::TaskCheckpointed(e) = event else { return };
        let key = (e.meta.tenant, e.task_id);
        match e.state {
            // A later record of the log wins, unless it is of an earlier attempt (a re-run
            // of an old attempt racing a newer one).
            Some(state) => {
                if self.latest.get(&key).is_some_and(|c| c.attempt > e.attempt) {
                    return;
                }
                self.bytes += state.len();
                if let Some(old) = self.latest.insert(key.clone(), Checkpoint { attempt: e.attempt, state }) {
                    self.bytes -= old.state.len();
                } else {
                    self.order.push_back(key);
                }
                while self.bytes > MAX_KEPT_BYTES {
                    let Some(oldest) = self.order.pop_front() else { break };
                    if let Some(old) = self.latest.remove(&oldest) {
                        self.bytes -= old.state.len();
                    }
                }
            }
            None => {
                if let Some(old) = self.latest.remove(&key) {
                    self.bytes -= old.state.len();
                }
                // Its `order` entry goes when it reaches the front.
                if self.order.len() > 2 * self.latest.len() + 1024 {
                    let latest = &self.latest;
                    self.order.retain(|k| latest.contains_key(k));
                }
            }
        }
    }
}

pub struct CheckpointIndex {
    kept: Arc<Mutex<Kept>>,
    follower: FollowerTask,
}

impl std::fmt::Debug for CheckpointIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointIndex").finish_non_exhaustive()
    }
}

async fn decode(codec: &WireCodec, record: &ConsumedRecord, stop: &CancellationToken) -> Option<Option<AnyEvent>> {
    match decode_any_waiting(codec, &record.payload, stop).await? {
        Ok(event) => Some(Some(event)),
        Err(error) => {
            tracing::warn!(offset = record.offset, %error, "skipping an undecodable checkpoint");
            Some(None)
        }
    }
}

impl CheckpointIndex {
    /// Reads `task.checkpoints` from its retained start to its end, then follows it.
    pub async fn start(log: &Arc<dyn EventLog>, codec: Arc<WireCodec>, topics: &TaskTopics) -> Result<CheckpointIndex, LogError> {
        let mut follower = Follower::open(log, &[topics.checkpoints()], SeekTo::Earliest).await?;
        let mut kept = Kept::default();
        let stop = CancellationToken::new();
        while let Some(record) = follower.next_of_history(HISTORY_STALL).await? {
            match decode(&codec, &record, &stop).await {
                Some(Some(event)) => kept.apply(event),
                Some(None) => {}
                None => break,
            }
        }
        let kept = Arc::new(Mutex::new(kept));
        let (k, s) = (kept.clone(), stop.clone());
        let follow = async move {
            loop {
                let record = tokio::select! {
                    _ = s.cancelled() => break,
                    record = follower.next() => record,
                };
                let record = match record {
                    Ok(Some(record)) => record,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "following task.checkpoints failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                match decode(&codec, &record, &s).await {
                    Some(Some(event)) => k.lock().unwrap_or_else(|e| e.into_inner()).apply(event),
                    Some(None) => {}
                    None => break,
                }
            }
            follower.close().await;
        };
        Ok(CheckpointIndex { kept, follower: FollowerTask::spawn("task.checkpoints", stop, follow) })
    }

    /// The latest checkpoint of `tenant`'s task `task_id`, if one is known.
    pub fn get(&self, tenant: &str, task_id: &str) -> Option<Checkpoint> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        // No running task has one (the common case): no key is built.
        if kept.latest.is_empty() {
            return None;
        }
        kept.latest.get(&(tenant.to_string(), task_id.to_string())).cloned()
    }

    /// Keeps a checkpoint this worker just wrote, without waiting to read it back: the task's
    /// next attempt, when this worker runs it (a retry, a resumed wait, milliseconds later),
    /// gets it whatever the follow latency of the log. The record read back later changes
    /// nothing it has not already said.
    pub fn saved(&self, tenant: &str, task_id: &str, attempt: i32, state: String) {
        let event = TaskCheckpointed { meta: Meta::new(String::new(), tenant, ""), task_id: task_id.to_string(), attempt, state: Some(state) };
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).apply(AnyEvent::TaskCheckpointed(event));
    }

    /// Stops following and waits for the follower task.
    pub async fn stop(&self) {
        self.follower.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Meta, TaskCheckpointed};

    fn saved(tenant: &str, task: &str, attempt: i32, state: Option<&str>) -> AnyEvent {
        AnyEvent::TaskCheckpointed(TaskCheckpointed { meta: Meta::new("ev", tenant, "w"), task_id: task.into(), attempt, state: state.map(str::to_string) })
    }

    #[test]
    fn the_latest_checkpoint_of_a_task_wins_and_a_clear_forgets_it() {
        let mut kept = Kept::default();
        kept.apply(saved("a", "t", 1, Some("{\"step\":1}")));
        kept.apply(saved("a", "t", 1, Some("{\"step\":2}")));
        kept.apply(saved("b", "t", 1, Some("{\"other\":true}")));
        assert_eq!(kept.latest[&("a".into(), "t".into())].state, "{\"step\":2}");
        // An older attempt's record arriving late does not go back.
        kept.apply(saved("a", "t", 2, Some("{\"step\":3}")));
        kept.apply(saved("a", "t", 1, Some("{\"step\":1}")));
        assert_eq!(kept.latest[&("a".into(), "t".into())], Checkpoint { attempt: 2, state: "{\"step\":3}".into() });
        kept.apply(saved("a", "t", 2, None));
        assert!(!kept.latest.contains_key(&("a".into(), "t".into())));
        // Tenants are apart: b's task of the same id keeps its checkpoint.
        assert!(kept.latest.contains_key(&("b".into(), "t".into())));
        assert_eq!(kept.bytes, "{\"other\":true}".len());
    }

    #[test]
    fn past_the_byte_budget_the_oldest_checkpoints_go() {
        let mut kept = Kept::default();
        let big = "x".repeat(MAX_KEPT_BYTES / 4 + 1);
        for i in 0..5 {
            kept.apply(saved("a", &format!("t{i}"), 1, Some(&big)));
        }
        assert!(kept.bytes <= MAX_KEPT_BYTES);
        assert!(!kept.latest.contains_key(&("a".into(), "t0".into())) && kept.latest.contains_key(&("a".into(), "t4".into())));
    }
}
