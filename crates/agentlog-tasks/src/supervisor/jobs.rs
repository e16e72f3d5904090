//! Job aggregation: a job is `JobSubmitted` (its task ids) on `task.events`; when every task
//! has a terminal outcome on `task.results`, the supervisor appends `JobCompleted` with the
//! counts. State is rebuilt on start from a lookback window of both topics, and a job whose
//! `JobCompleted` is already on the log is not completed again. Jobs and tasks are known by
//! (tenant, id): two tenants may use one job id or task id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::SupervisorError;
use crate::agent::client::new_id;
use crate::agent::topics::TaskTopics;
use crate::events::wire::WireCodec;
use crate::events::{AnyEvent, JobCompleted, Meta, TimestampMicros, decode_any_waiting};
use crate::log::follow::Follower;
use crate::log::{EventLog, Producer, Record, SeekTo};

/// How far back jobs are rebuilt from on start: a job older than this that is still open
/// when the supervisor restarts is not completed.
pub const LOOKBACK: Duration = Duration::from_secs(24 * 3600);

/// Outcomes of tasks no job claimed yet, kept in case their `JobSubmitted` is read later.
const MAX_UNCLAIMED: usize = 100_000;

/// (tenant, id) of a job or a task.
type Scoped = (String, String);

struct Job {
    meta: Meta,
    waiting: HashSet<Scoped>,
    completed: i32,
    failed: i32,
}

#[derive(Default)]
struct Jobs {
    open: HashMap<Scoped, Job>,
    task_job: HashMap<Scoped, Scoped>,
    done: HashSet<Scoped>,
    unclaimed: HashMap<Scoped, bool>,
    unclaimed_order: VecDeque<Scoped>,
}

impl Jobs {
    fn submitted(&mut self, job_id: String, meta: Meta, task_ids: Vec<String>) {
        let tenant = meta.tenant.clone();
        let job_id = (tenant.clone(), job_id);
        if self.done.contains(&job_id) || self.open.contains_key(&job_id) {
            return;
        }
        let mut job = Job { meta, waiting: HashSet::new(), completed: 0, failed: 0 };
        for task_id in task_ids {
            let task_id = (tenant.clone(), task_id);
            match self.unclaimed.remove(&task_id) {
                Some(true) => job.completed += 1,
                Some(false) => job.failed += 1,
                None => {
                    self.task_job.insert(task_id.clone(), job_id.clone());
                    job.waiting.insert(task_id);
                }
            }
        }
        self.open.insert(job_id, job);
    }

    fn outcome(&mut self, task_id: Scoped, ok: bool) {
        let Some(job_id) = self.task_job.remove(&task_id) else {
            if self.unclaimed.insert(task_id.clone(), ok).is_none() {
                self.unclaimed_order.push_back(task_id);
                while self.unclaimed_order.len() > MAX_UNCLAIMED {
                    if let Some(old) = self.unclaimed_order.pop_front() {
                        self.unclaimed.remove(&old);
                    }
                }
            }
            return;
        };
        if let Some(job) = self.open.get_mut(&job_id)
            && job.waiting.remove(&task_id)
        {
            if ok { job.completed += 1 } else { job.failed += 1 }
        }
    }

    /// Jobs with nothing left to wait for.
    fn finished(&mut self) -> Vec<(Scoped, Job)> {
        let ids: Vec<Scoped> = self.open.iter().filter(|(_, j)| j.waiting.is_empty()).map(|(id, _)| id.clone()).collect();
        ids.into_iter().filter_map(|id| self.open.remove(&id).map(|job| (id, job))).collect()
    }
}

pub async fn run_jobs(log: Arc<dyn EventLog>, codec: Arc<WireCodec>, topics: TaskTopics, stop: CancellationToken) -> Result<u64, SupervisorError> {
    let producer = log.producer()?;
    let start = TimestampMicros::now().0 / 1000 - LOOKBACK.as_millis() as i64;
    let mut follower = Follower::open(&log, &[topics.events(), topics.results()], SeekTo::Timestamp(start)).await?;
    let mut jobs = Jobs::default();
    let mut completed = 0u64;
    loop {
        let record = tokio::select! {
            _ = stop.cancelled() => break,
            record = follower.next() => record?,
        };
        if let Some(record) = record {
            let Some(decoded) = decode_any_waiting(&codec, &record.payload, &stop).await else { break };
            match decoded {
                Ok(AnyEvent::JobSubmitted(e)) => jobs.submitted(e.job_id, e.meta, e.task_ids),
                Ok(AnyEvent::JobCompleted(e)) => {
                    let job_id = (e.meta.tenant, e.job_id);
                    jobs.open.remove(&job_id);
                    jobs.done.insert(job_id);
                }
                Ok(event) if event.is_terminal() => {
                    let ok = matches!(event, AnyEvent::TaskCompleted(_));
                    if let Some((tenant, task_id)) = event.task_ref() {
                        jobs.outcome((tenant.to_string(), task_id.to_string()), ok);
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(topic = %record.topic, offset = record.offset, %error, "skipping an undecodable task event"),
            }
        }
        // Until the history is read, a JobCompleted may still be ahead: complete nothing yet.
        if follower.caught_up() {
            for ((tenant, job_id), job) in jobs.finished() {
                let mut meta = Meta::new(new_id("ev"), job.meta.tenant.clone(), "supervisor");
                meta.correlation_id = job.meta.correlation_id.clone();
                meta.causation_id = Some(job.meta.event_id.clone());
                let event = JobCompleted { meta, job_id: job_id.clone(), completed: job.completed, failed: job.failed };
                write(&codec, producer.as_ref(), &topics.events(), &job_id, &event).await?;
                jobs.done.insert((tenant, job_id));
                completed += 1;
            }
        }
    }
    follower.close().await;
    Ok(completed)
}

async fn write(codec: &WireCodec, producer: &dyn Producer, topic: &str, key: &str, event: &JobCompleted) -> Result<(), SupervisorError> {
    let payload = codec.encode(topic, event).await?;
    producer.send(Record::new(topic, payload).with_key(Bytes::from(key.to_string()))).await?.await?;
    Ok(())
}
