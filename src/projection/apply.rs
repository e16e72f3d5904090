//! Applying events to views. A [`Changes`] collects what one batch of records does to the
//! store (read-modify-write through an in-batch cache, so a task touched by many records of
//! the batch is read and written once) and turns it into one WriteBatch together with the
//! next offsets of the source partitions.

use std::collections::{HashMap, HashSet};

use hdrhistogram::Histogram;
use rocksdb::WriteBatch;

use super::store::{self, CF_AGENTS, CF_INDEX, CF_JOBS, CF_OFFSETS, CF_STATS, CF_TASKS, ProjectionStore, StoreError};
use super::views::{AgentView, JobView, OutcomeView, ProgressView, TaskView, TenantCounters, TimelineEntry, TypeCounters};
use crate::events::{AnyEvent, Meta};

/// What kind of topic a record came from: a TaskSubmitted means "queued" on a lane topic and
/// "scheduled" on `timers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Lane,
    Timers,
    Other,
}

/// A task that reached its outcome in this batch: what the SSE stream publishes.
#[derive(Debug, Clone)]
pub struct OutcomeNotice {
    pub tenant: String,
    pub agent_type: Option<String>,
    pub view: TaskView,
}

struct TaskEntry {
    original_keys: Vec<Vec<u8>>,
    view: TaskView,
}

pub struct Changes<'s> {
    store: &'s ProjectionStore,
    tasks: HashMap<String, TaskEntry>,
    agents: HashMap<String, AgentView>,
    jobs: HashMap<String, JobView>,
    counters: HashMap<String, TypeCounters>,
    histograms: HashMap<(u8, String), Histogram<u64>>,
    tenants: HashMap<String, TenantCounters>,
    idempotency: HashMap<Vec<u8>, String>,
    offsets: HashMap<String, HashMap<i32, i64>>,
    notices: Vec<OutcomeNotice>,
    noticed: HashSet<String>,
    /// Whether outcomes are collected for the live stream (not while catching up).
    notify: bool,
    pub applied: usize,
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn state_name(state: crate::events::AgentState) -> String {
    format!("{state:?}").to_lowercase()
}

impl<'s> Changes<'s> {
    pub fn new(store: &'s ProjectionStore) -> Self {
        Changes {
            store,
            tasks: HashMap::new(),
            agents: HashMap::new(),
            jobs: HashMap::new(),
            counters: HashMap::new(),
            histograms: HashMap::new(),
            tenants: HashMap::new(),
            idempotency: HashMap::new(),
            offsets: HashMap::new(),
            notices: Vec::new(),
            noticed: HashSet::new(),
            notify: true,
            applied: 0,
        }
    }

    /// Changes that collect no outcome notices (history being caught up: nobody streams it).
    pub fn quiet(store: &'s ProjectionStore) -> Self {
        Changes { notify: false, ..Changes::new(store) }
    }

    /// Records that `offset` of a source partition has been applied (also for records that
    /// carried nothing to apply, so they are not read again).
    pub fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        // Looked up by &str first: one allocation per partition per batch, not per record.
        let partitions = match self.offsets.get_mut(topic) {
            Some(partitions) => partitions,
            None => self.offsets.entry(topic.to_string()).or_default(),
        };
        let next = partitions.entry(partition).or_insert(offset + 1);
        *next = (*next).max(offset + 1);
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The next offsets this batch will write, per (topic, partition).
    pub fn next_offsets(&self) -> HashMap<(String, i32), i64> {
        self.offsets.iter().flat_map(|(topic, partitions)| partitions.iter().map(move |(p, next)| ((topic.clone(), *p), *next))).collect()
    }

    fn task(&mut self, task_id: &str) -> Result<&mut TaskView, StoreError> {
        if !self.tasks.contains_key(task_id) {
            let (original_keys, view) = match self.store.task(task_id)? {
                Some(view) => (store::index_keys(&view), view),
                None => (Vec::new(), TaskView::new(task_id)),
            };
            self.tasks.insert(task_id.to_string(), TaskEntry { original_keys, view });
        }
        Ok(&mut self.tasks.get_mut(task_id).expect("inserted above").view)
    }

    fn agent(&mut self, agent_id: &str) -> Result<&mut AgentView, StoreError> {
        if !self.agents.contains_key(agent_id) {
            let view = self.store.agent(agent_id)?.unwrap_or_else(|| AgentView { agent_id: agent_id.to_string(), state: "unknown".into(), ..Default::default() });
            self.agents.insert(agent_id.to_string(), view);
        }
        Ok(self.agents.get_mut(agent_id).expect("inserted above"))
    }

    fn job(&mut self, job_id: &str) -> Result<&mut JobView, StoreError> {
        if !self.jobs.contains_key(job_id) {
            let view = self.store.job(job_id)?.unwrap_or_else(|| JobView { job_id: job_id.to_string(), ..Default::default() });
            self.jobs.insert(job_id.to_string(), view);
        }
        Ok(self.jobs.get_mut(job_id).expect("inserted above"))
    }

    fn counters(&mut self, agent_type: &str) -> Result<&mut TypeCounters, StoreError> {
        if !self.counters.contains_key(agent_type) {
            let key = store::stat_key(b'c', agent_type);
            let found = match self.store.raw(CF_STATS, &key)? {
                Some(bytes) => store::decode(&key, &bytes)?,
                None => TypeCounters::default(),
            };
            self.counters.insert(agent_type.to_string(), found);
        }
        Ok(self.counters.get_mut(agent_type).expect("inserted above"))
    }

    fn tenant(&mut self, tenant: &str) -> Result<&mut TenantCounters, StoreError> {
        if !self.tenants.contains_key(tenant) {
            let found = self.store.tenant_counters(tenant)?;
            self.tenants.insert(tenant.to_string(), found);
        }
        Ok(self.tenants.get_mut(tenant).expect("inserted above"))
    }

    fn record(&mut self, tag: u8, agent_type: &str, value_ms: i64) -> Result<(), StoreError> {
        let key = (tag, agent_type.to_string());
        if !self.histograms.contains_key(&key) {
            let found = self.store.histogram(tag, agent_type)?.unwrap_or_else(store::new_histogram);
            self.histograms.insert(key.clone(), found);
        }
        let histogram = self.histograms.get_mut(&key).expect("inserted above");
        histogram.saturating_record(value_ms.max(1) as u64);
        Ok(())
    }

    /// Removes one value [`Changes::record`] recorded.
    fn unrecord(&mut self, tag: u8, agent_type: &str, value_ms: i64) -> Result<(), StoreError> {
        let key = (tag, agent_type.to_string());
        if !self.histograms.contains_key(&key) {
            let Some(found) = self.store.histogram(tag, agent_type)? else { return Ok(()) };
            self.histograms.insert(key.clone(), found);
        }
        let histogram = self.histograms.get_mut(&key).expect("inserted above");
        let mut one = store::new_histogram();
        one.saturating_record(value_ms.max(1) as u64);
        if let Err(error) = histogram.subtract(&one) {
            tracing::warn!(agent_type = %agent_type, ?error, "could not take a replaced outcome out of a histogram");
        }
        Ok(())
    }

    /// Applies one decoded event. Redelivered events change nothing.
    pub fn apply(&mut self, source: Source, event: &AnyEvent) -> Result<(), StoreError> {
        self.applied += 1;
        match event {
            AnyEvent::AgentRegistered(_)
            | AnyEvent::AgentHeartbeat(_)
            | AnyEvent::AgentStateChanged(_)
            | AnyEvent::AgentLost(_)
            | AnyEvent::AgentDeregistered(_) => return self.apply_agent(event),
            AnyEvent::JobSubmitted(e) => {
                let job = self.job(&e.job_id)?;
                job.tenant = e.meta.tenant.clone();
                job.total = e.total;
                job.task_ids = e.task_ids.clone();
                job.submitted_at_us = Some(job.submitted_at_us.map_or(e.meta.occurred_at.0, |at| at.min(e.meta.occurred_at.0)));
                return Ok(());
            }
            AnyEvent::JobCompleted(e) => {
                let job = self.job(&e.job_id)?;
                if job.tenant.is_empty() {
                    job.tenant = e.meta.tenant.clone();
                }
                job.completed = Some(e.completed);
                job.failed = Some(e.failed);
                job.completed_at_us = Some(e.meta.occurred_at.0);
                return Ok(());
            }
            AnyEvent::Unknown { .. } => return Ok(()),
            _ => {}
        }
        let Some(task_id) = event.task_id() else { return Ok(()) };
        let meta = match event {
            AnyEvent::TaskSubmitted(e) => &e.meta,
            AnyEvent::TaskStarted(e) => &e.meta,
            AnyEvent::TaskProgress(e) => &e.meta,
            AnyEvent::TaskRetryScheduled(e) => &e.meta,
            AnyEvent::TaskCompleted(e) => &e.meta,
            AnyEvent::TaskFailed(e) => &e.meta,
            AnyEvent::TaskDeadLettered(e) => &e.meta,
            AnyEvent::TaskCancelRequested(e) => &e.meta,
            AnyEvent::TaskCancelled(e) => &e.meta,
            AnyEvent::TaskExpired(e) => &e.meta,
            _ => return Ok(()),
        };
        let at = meta.occurred_at.0;
        self.task(task_id)?;
        // Out of the cache while it changes (no clone), always back in below.
        let Some(TaskEntry { original_keys, view: mut owned }) = self.tasks.remove(task_id) else { return Ok(()) };
        let (first_submit, replaced) = apply_to_task(&mut owned, source, event, meta, at);
        let mut result = Ok(());
        if let Some((old, counted, latency_recorded)) = replaced {
            result = self.uncount(&owned, &old, counted, latency_recorded);
        }
        if result.is_ok() {
            result = self.settle(&mut owned, first_submit);
        }
        self.tasks.insert(task_id.to_string(), TaskEntry { original_keys, view: owned });
        result
    }

    /// Takes back what [`Changes::settle`] counted for an outcome that a later one replaced.
    fn uncount(&mut self, view: &TaskView, old: &OutcomeView, counted: bool, latency_recorded: bool) -> Result<(), StoreError> {
        let Some(agent_type) = view.agent_type.clone() else { return Ok(()) };
        if counted {
            self.counters(&agent_type)?.uncount_outcome(&old.status);
            if let Some(duration) = old.duration_ms {
                self.unrecord(b'd', &agent_type, duration)?;
            }
        }
        if latency_recorded && let Some(submitted) = view.submitted_at_us {
            self.unrecord(b'l', &agent_type, (old.at_us - submitted) / 1000)?;
        }
        Ok(())
    }

    /// Counts what became known about a task: its submission, its outcome once its type is
    /// known, its latency once both ends are known. Each at most once per task.
    fn settle(&mut self, view: &mut TaskView, first_submit: bool) -> Result<(), StoreError> {
        if first_submit {
            if let Some(agent_type) = &view.agent_type {
                self.counters(agent_type)?.submitted += 1;
            }
            self.tenant(&view.tenant)?.submitted += 1;
            if let Some(key) = &view.idempotency_key {
                let index_key = store::idempotency_key(&view.tenant, key);
                let holder = match self.idempotency.get(&index_key) {
                    Some(id) => Some(id.clone()),
                    None => self.store.raw(CF_INDEX, &index_key)?.map(|id| String::from_utf8_lossy(&id).into_owned()),
                };
                // Tasks raced with one key (both submitted before the projection saw either):
                // the earliest submitted (then the smaller id) keeps it, in any arrival order.
                let take = match holder {
                    None => true,
                    Some(id) if id == view.task_id => false,
                    Some(id) => {
                        let theirs = match self.tasks.get(&id) {
                            Some(entry) => entry.view.submitted_at_us,
                            None => self.store.task(&id)?.and_then(|v| v.submitted_at_us),
                        };
                        let theirs = theirs.unwrap_or(i64::MAX);
                        (view.submitted_at_us.unwrap_or(i64::MAX), view.task_id.as_str()) < (theirs, id.as_str())
                    }
                };
                if take {
                    self.idempotency.insert(index_key, view.task_id.clone());
                }
            }
        }
        let unsettled = view.outcome.is_some() && view.agent_type.is_some() && (!view.outcome_counted || (!view.latency_recorded && view.submitted_at_us.is_some()));
        if unsettled && let (Some(outcome), Some(agent_type)) = (view.outcome.clone(), view.agent_type.clone()) {
            if !view.outcome_counted {
                view.outcome_counted = true;
                self.counters(&agent_type)?.count_outcome(&outcome.status);
                if let Some(duration) = outcome.duration_ms {
                    self.record(b'd', &agent_type, duration)?;
                }
            }
            if !view.latency_recorded {
                if let Some(submitted) = view.submitted_at_us {
                    view.latency_recorded = true;
                    self.record(b'l', &agent_type, (outcome.at_us - submitted) / 1000)?;
                }
            }
        }
        if view.outcome.is_some() && !view.tenant_counted {
            view.tenant_counted = true;
            self.tenant(&view.tenant)?.terminal += 1;
            if self.notify && self.noticed.insert(view.task_id.clone()) {
                self.notices.push(OutcomeNotice { tenant: view.tenant.clone(), agent_type: view.agent_type.clone(), view: view.clone() });
            }
        }
        Ok(())
    }

    fn apply_agent(&mut self, event: &AnyEvent) -> Result<(), StoreError> {
        let (agent_id, meta) = match event {
            AnyEvent::AgentRegistered(e) => (&e.agent_id, &e.meta),
            AnyEvent::AgentHeartbeat(e) => (&e.agent_id, &e.meta),
            AnyEvent::AgentStateChanged(e) => (&e.agent_id, &e.meta),
            AnyEvent::AgentLost(e) => (&e.agent_id, &e.meta),
            AnyEvent::AgentDeregistered(e) => (&e.agent_id, &e.meta),
            _ => return Ok(()),
        };
        let at = meta.occurred_at.0;
        let event_id = meta.event_id.clone();
        let agent = self.agent(agent_id)?;
        if agent.tenant.is_empty() {
            agent.tenant = meta.tenant.clone();
        }
        let state = match event {
            AnyEvent::AgentRegistered(e) => {
                agent.agent_type = Some(e.agent_type.clone());
                agent.host = Some(e.host.clone());
                agent.version = Some(e.version.clone());
                agent.capabilities = e.capabilities.clone();
                agent.concurrency = Some(e.concurrency);
                agent.registered_at_us = Some(agent.registered_at_us.map_or(at, |r| r.min(at)));
                Some("starting".to_string())
            }
            AnyEvent::AgentHeartbeat(e) => {
                if (e.sequence, at) > (agent.heartbeat_sequence, agent.last_heartbeat_at_us.unwrap_or(i64::MIN)) {
                    agent.heartbeat_sequence = e.sequence;
                    agent.last_heartbeat_at_us = Some(at);
                    agent.in_flight = e.in_flight;
                    agent.capacity = e.capacity;
                    agent.completed_total = e.completed_total;
                    agent.failed_total = e.failed_total;
                    agent.cpu_percent = e.cpu_percent;
                    agent.memory_bytes = e.memory_bytes;
                }
                None
            }
            AnyEvent::AgentStateChanged(e) => Some(state_name(e.to_state)),
            AnyEvent::AgentLost(_) => Some("lost".to_string()),
            AnyEvent::AgentDeregistered(_) => Some("deregistered".to_string()),
            _ => None,
        };
        if let Some(state) = state {
            // The latest lifecycle event by (time, id) sets the state, in any arrival order.
            if (at, &event_id) > (agent.state_at_us, &agent.state_event_id) {
                agent.state = state;
                agent.state_at_us = at;
                agent.state_event_id = event_id;
            }
        }
        Ok(())
    }

    /// The batch to write and the outcomes it completes.
    pub fn finish(self) -> Result<(WriteBatch, Vec<OutcomeNotice>), StoreError> {
        let store = self.store;
        let mut batch = WriteBatch::default();
        let tasks_cf = store.cf(CF_TASKS)?;
        let index_cf = store.cf(CF_INDEX)?;
        // Keys in order: the memtable's skip list inserts a sorted run far faster than
        // random keys (it reuses its search path).
        let mut tasks: Vec<(String, TaskEntry)> = self.tasks.into_iter().collect();
        tasks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut index_deletes = Vec::new();
        let mut index_puts = Vec::new();
        for (task_id, entry) in &tasks {
            let keys = store::index_keys(&entry.view);
            for old in &entry.original_keys {
                if !keys.contains(old) {
                    index_deletes.push(old.clone());
                }
            }
            for key in keys {
                if !entry.original_keys.contains(&key) {
                    index_puts.push(key);
                }
            }
            batch.put_cf(tasks_cf, task_id.as_bytes(), store::encode(&entry.view));
        }
        index_deletes.sort_unstable();
        index_puts.sort_unstable();
        for key in index_deletes {
            batch.delete_cf(index_cf, key);
        }
        for key in index_puts {
            batch.put_cf(index_cf, key, []);
        }
        for (key, task_id) in self.idempotency {
            batch.put_cf(index_cf, key, task_id.as_bytes());
        }
        let agents_cf = store.cf(CF_AGENTS)?;
        for (id, view) in self.agents {
            batch.put_cf(agents_cf, id.as_bytes(), store::encode(&view));
        }
        let jobs_cf = store.cf(CF_JOBS)?;
        for (id, view) in self.jobs {
            batch.put_cf(jobs_cf, id.as_bytes(), store::encode(&view));
        }
        let stats_cf = store.cf(CF_STATS)?;
        for (agent_type, counters) in self.counters {
            batch.put_cf(stats_cf, store::stat_key(b'c', &agent_type), store::encode(&counters));
        }
        for ((tag, agent_type), histogram) in self.histograms {
            batch.put_cf(stats_cf, store::stat_key(tag, &agent_type), store::encode_histogram(&histogram));
        }
        for (tenant, counters) in self.tenants {
            batch.put_cf(stats_cf, store::stat_key(b'n', &tenant), store::encode(&counters));
        }
        let offsets_cf = store.cf(CF_OFFSETS)?;
        for (topic, partitions) in self.offsets {
            for (partition, next) in partitions {
                batch.put_cf(offsets_cf, store::offset_key(&topic, partition), next.to_be_bytes());
            }
        }
        Ok((batch, self.notices))
    }
}

/// What one task event does to its view (nothing here reads or counts anything else).
/// Returns whether it was the task's first submit, and the outcome it replaced with whether
/// that one had been counted and its latency recorded.
fn apply_to_task(view: &mut TaskView, source: Source, event: &AnyEvent, meta: &Meta, at: i64) -> (bool, Option<(OutcomeView, bool, bool)>) {
    if view.tenant.is_empty() {
        view.tenant = meta.tenant.clone();
    }
    view.created_at_us = view.created_at_us.min(at);
    view.updated_at_us = view.updated_at_us.max(at);
    let mut entry = TimelineEntry { at_us: at, event: event.name().to_string(), event_id: meta.event_id.clone(), attempt: None, agent_id: None, detail: None };
    let mut first_submit = false;
    let mut replaced = None;
    match event {
        AnyEvent::TaskSubmitted(e) => {
            // The submitter's tenant is the task's tenant.
            view.tenant = e.meta.tenant.clone();
            view.agent_type = Some(e.agent_type.clone());
            view.lane = Some(e.lane.as_str().to_string());
            if e.max_attempts > 0 {
                view.max_attempts = Some(e.max_attempts);
            }
            view.job_id = e.job_id.clone().or(view.job_id.take());
            view.parent_task_id = e.parent_task_id.clone().or(view.parent_task_id.take());
            view.idempotency_key = e.idempotency_key.clone().or(view.idempotency_key.take());
            view.ordering_key = e.ordering_key.clone().or(view.ordering_key.take());
            view.labels.extend(e.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            if view.input.is_none() {
                view.input = Some(text_of(&e.input));
            }
            view.deadline_us = e.deadline.map(|d| d.0).or(view.deadline_us);
            entry.attempt = Some(e.attempt);
            match source {
                Source::Timers => {
                    view.max_scheduled = view.max_scheduled.max(e.attempt);
                    view.not_before_us = e.not_before.map(|d| d.0).or(view.not_before_us);
                    entry.event = "TaskScheduled".into();
                    entry.detail = e.not_before.map(|d| format!("not_before {}", d.0));
                }
                Source::Lane | Source::Other => view.max_enqueued = view.max_enqueued.max(e.attempt),
            }
            if e.attempt <= 1 {
                first_submit = view.submitted_at_us.is_none();
                view.submitted_at_us = Some(view.submitted_at_us.map_or(at, |s| s.min(at)));
            }
        }
        AnyEvent::TaskStarted(e) => {
            entry.attempt = Some(e.attempt);
            entry.agent_id = Some(e.agent_id.clone());
            // Ties (a re-run of the same attempt elsewhere) resolve to the larger id, so
            // the result does not depend on arrival order.
            if e.attempt > view.attempts || (e.attempt == view.attempts && view.agent_id.as_ref().is_none_or(|a| *a < e.agent_id)) {
                view.agent_id = Some(e.agent_id.clone());
            }
            view.attempts = view.attempts.max(e.attempt);
        }
        AnyEvent::TaskProgress(e) => {
            entry.attempt = Some(e.attempt);
            entry.detail = e.message.clone();
            let newer = view.progress.as_ref().is_none_or(|p| (p.at_us, &p.event_id) < (at, &e.meta.event_id));
            if newer {
                view.progress = Some(ProgressView { at_us: at, event_id: e.meta.event_id.clone(), attempt: e.attempt, percent: e.percent, message: e.message.clone() });
            }
        }
        AnyEvent::TaskRetryScheduled(e) => {
            entry.attempt = Some(e.attempt);
            entry.detail = Some(e.last_error.clone());
            view.max_retry = view.max_retry.max(e.attempt);
        }
        AnyEvent::TaskCancelRequested(e) => {
            entry.detail = e.reason.clone();
            view.cancel_requested = true;
        }
        _ => {
            let outcome = match event {
                AnyEvent::TaskCompleted(e) => OutcomeView {
                    status: "completed".into(),
                    at_us: at,
                    event_id: e.meta.event_id.clone(),
                    attempt: Some(e.attempt),
                    output: Some(text_of(&e.output)),
                    duration_ms: Some(e.duration_ms),
                    error_kind: None,
                    message: None,
                },
                AnyEvent::TaskFailed(e) => OutcomeView {
                    status: "failed".into(),
                    at_us: at,
                    event_id: e.meta.event_id.clone(),
                    attempt: Some(e.attempt),
                    output: None,
                    duration_ms: None,
                    error_kind: Some(e.error_kind.clone()),
                    message: Some(e.message.clone()),
                },
                AnyEvent::TaskDeadLettered(e) => OutcomeView {
                    status: "dead_lettered".into(),
                    at_us: at,
                    event_id: e.meta.event_id.clone(),
                    attempt: Some(e.attempts),
                    output: None,
                    duration_ms: None,
                    error_kind: Some(e.reason.clone()),
                    message: Some(e.last_error.clone()),
                },
                AnyEvent::TaskCancelled(e) => OutcomeView {
                    status: "cancelled".into(),
                    at_us: at,
                    event_id: e.meta.event_id.clone(),
                    attempt: None,
                    output: None,
                    duration_ms: None,
                    error_kind: None,
                    message: e.reason.clone(),
                },
                AnyEvent::TaskExpired(e) => OutcomeView {
                    status: "expired".into(),
                    at_us: at,
                    event_id: e.meta.event_id.clone(),
                    attempt: None,
                    output: None,
                    duration_ms: None,
                    error_kind: None,
                    message: Some(format!("deadline {} passed before the task started", e.deadline.0)),
                },
                _ => return (first_submit, replaced),
            };
            entry.attempt = outcome.attempt;
            entry.detail = outcome.message.clone();
            // All outcomes of a task are on one partition of `task.results`, so "the
            // first" is the same in every replay. A dead-lettered task that was
            // resubmitted may end again: that later outcome replaces it.
            let replace = match &view.outcome {
                None => true,
                Some(old) => old.status == "dead_lettered" && outcome.status != "dead_lettered" && old.event_id != outcome.event_id,
            };
            if replace {
                if let Some(old) = view.outcome.take() {
                    // Whether the dead letter was counted depends on what arrived before
                    // it (its type, its submit): take it back, so only the final outcome
                    // counts, as it does when the dead letter was never counted.
                    replaced = Some((old, view.outcome_counted, view.latency_recorded));
                    view.outcome_counted = false;
                    view.latency_recorded = false;
                }
                view.outcome = Some(outcome);
            }
        }
    }
    view.add_timeline(entry);
    if view.status != view.derive_status() {
        view.status = view.derive_status().to_string();
    }
    (first_submit, replaced)
}
