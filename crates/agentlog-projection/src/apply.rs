//! Applying events to views. A [`Changes`] collects what one batch of records does to the
//! store (read-modify-write through an in-batch cache, so a task touched by many records of
//! the batch is read and written once) and turns it into one WriteBatch together with the
//! next offsets of the source partitions.
//!
//! Events are taken by value: their strings move into the views instead of being copied
//! (a rebuild applies millions of them, and the copies were a large part of its time).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use hdrhistogram::Histogram;
use rocksdb::WriteBatch;
use rustc_hash::FxBuildHasher;

use super::measure::Measure;
use super::store::{self, CF_AGENTS, CF_DLQ, CF_INDEX, CF_JOBS, CF_OFFSETS, CF_STATS, CF_STREAM, CF_TASKS, LetterPosition, ProjectionStore, StoreError};
use super::views::{
    AgentStatus, AgentView, DEAD_LETTER_TEXT_CAP, DeadLetterView, JobView, OutcomeView, ProgressView, SIGNALS_CAP, SignalView, StreamBody, StreamEntry,
    TaskStatus, TaskView, TenantCounters, TimelineEntry, TypeCounters, UsageCounters, UsageView, WaitingView, capped,
};
use crate::agent::dlq::DLQ_ATTEMPTS;
use crate::events::reader::{DLQ_ERROR, DLQ_REASON, DLQ_SOURCE, DLQ_TRUNCATED};
use crate::events::{AnyEvent, Meta, OutcomeKind, TaskSubmitted};
use crate::log::ConsumedRecord;

/// Maps keyed by ids and names the applier hashes several times per event: SipHash's
/// protection against chosen keys buys nothing here (the keys come from our own log) and
/// cost more than the lookups themselves.
type Map<K, V> = HashMap<K, V, FxBuildHasher>;

/// What kind of topic a record came from: a TaskSubmitted means "queued" on a lane topic and
/// "scheduled" on `timers`, and on `dlq` it is a parked command that changes no task (its
/// record is indexed by [`Changes::dead_letter`], headers and all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Lane,
    Timers,
    Dlq,
    /// `task.stream`: progress and chunks, kept per task in log order ([`Changes::streamed`]).
    Stream,
    Other,
}

/// A task that reached its outcome in this batch: what the SSE stream and waiting submits are
/// told. It names the task rather than carrying its view: the broadcast channel keeps every
/// notice its slowest receiver has not read (up to its capacity), and views with large inputs
/// and outputs made one SSE client that never read pin +632 MB. Receivers read the view from
/// the store, where it is durable before the notice is sent.
#[derive(Debug, Clone)]
pub struct OutcomeNotice {
    pub tenant: String,
    pub agent_type: Option<String>,
    pub task_id: String,
}

/// What a task's view knew before an event was applied to it.
#[derive(Clone, Copy)]
struct Known {
    type_known: bool,
    outcome_counted: bool,
}

/// A task's key in the `tasks` column family and in the batch's cache: (tenant, task id).
type TaskKey = Vec<u8>;

struct TaskEntry {
    original_keys: Vec<Vec<u8>>,
    view: TaskView,
}

/// How big the previous round of a catch-up was, to size the next one's map and batch up
/// front: growing them by doubling copied and page-faulted hundreds of MB per round.
#[derive(Debug, Clone, Copy, Default)]
struct RoundSize {
    tasks: usize,
    batch_bytes: usize,
}

/// Tasks (tenant, task id) a catch-up into a store that held no tasks has written so far (as
/// hashes of their keys). Any other task is certainly not in the store, so loading it is skipped: on a fresh rebuild most
/// ids are new, and each lookup of a missing id probed the memtable and every table's bloom
/// filter. A hash shared by two ids only costs a lookup that finds nothing.
#[derive(Debug, Default)]
pub struct WrittenTasks {
    hashes: HashSet<u64, FxBuildHasher>,
}

impl WrittenTasks {
    /// Past this many ids the set stops growing and every id is looked up again (bounded
    /// memory for very long histories: ~16 bytes per id).
    const MAX: usize = 8 << 20;

    fn hash(key: &[u8]) -> u64 {
        FxBuildHasher.hash_one(key)
    }

    /// Whether the task of `key` may be in the store (`false` means it certainly is not).
    fn may_hold(&self, key: &[u8]) -> bool {
        self.hashes.len() >= Self::MAX || self.hashes.contains(&Self::hash(key))
    }

    fn insert(&mut self, key: &[u8]) {
        if self.hashes.len() < Self::MAX {
            self.hashes.insert(Self::hash(key));
        }
    }
}

/// The keys of the counters of `agent_type`: all tenants (for operators), then `tenant`'s
/// (what the tenant is shown).
fn counter_keys(tenant: &str, agent_type: &str) -> [Vec<u8>; 2] {
    [store::stat_key(b'c', agent_type), store::tenant_stat_key(b'C', tenant, agent_type)]
}

/// Everything counted across tasks (per agent type, per tenant) and the outcomes to publish:
/// kept apart from the task views so a view can change while the totals it feeds do.
struct Totals<'s> {
    store: &'s ProjectionStore,
    /// By their key in `stats` (see [`counter_keys`]).
    counters: Map<Vec<u8>, TypeCounters>,
    /// By their key in `stats` (see [`Measure::keys`]).
    histograms: Map<Vec<u8>, Histogram<u64>>,
    tenants: Map<String, TenantCounters>,
    /// By their key in `stats` (see [`store::usage_key`]).
    usage: Map<Vec<u8>, UsageCounters>,
    notices: Vec<OutcomeNotice>,
    noticed: HashSet<TaskKey>,
    /// Whether outcomes are collected for the live stream (not while catching up).
    notify: bool,
}

/// The outcome a later one replaced, with whether it had been counted and its latency
/// recorded.
struct Replaced {
    old: OutcomeView,
    counted: bool,
    latency_recorded: bool,
}

pub struct Changes<'s> {
    store: &'s ProjectionStore,
    /// Boxed: a view is large, and a map of views would move all of them on every growth.
    tasks: Map<TaskKey, Box<TaskEntry>>,
    agents: Map<String, AgentView>,
    /// By tenant 0 job id, as in the `jobs` column family, with the job's index key as
    /// stored (`None` for a job not stored yet).
    jobs: Map<Vec<u8>, (Option<Vec<u8>>, JobView)>,
    /// Dead letters to index, by their key in `dlq`.
    dead_letters: Map<Vec<u8>, DeadLetterView>,
    /// The latest letter per (tenant, task) known to this batch, by its `K` key in `dlq`.
    latest_letters: Map<Vec<u8>, LetterPosition>,
    /// Stream records to keep, by their key in `stream`.
    stream: Vec<(Vec<u8>, StreamEntry)>,
    totals: Totals<'s>,
    idempotency: HashMap<Vec<u8>, String>,
    offsets: Map<String, Map<i32, i64>>,
    /// Set while catching up into a store that held no tasks at the start.
    written: Option<WrittenTasks>,
    round: RoundSize,
    pub applied: usize,
}

/// Agent input and output as text: the bytes themselves when they are UTF-8 (JSON is), else
/// lossily.
fn text_of(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl<'s> Totals<'s> {
    fn new(store: &'s ProjectionStore, notify: bool) -> Self {
        Totals {
            store,
            counters: Map::default(),
            histograms: Map::default(),
            tenants: Map::default(),
            usage: Map::default(),
            notices: Vec::new(),
            noticed: HashSet::new(),
            notify,
        }
    }

    /// Adds (or, `add` false, takes back) a task's usage to its agent type's and model's
    /// counters over all tenants and of `tenant` alike.
    fn usage(&mut self, tenant: &str, agent_type: &str, usage: &UsageView, add: bool) -> Result<(), StoreError> {
        let model = usage.model.as_deref();
        for key in [store::usage_key(None, agent_type, model), store::usage_key(Some(tenant), agent_type, model)] {
            if !self.usage.contains_key(&key) {
                let found = match self.store.raw(CF_STATS, &key)? {
                    Some(bytes) => store::decode(&key, &bytes)?,
                    None => UsageCounters::new(agent_type, model),
                };
                self.usage.insert(key.clone(), found);
            }
            if let Some(counters) = self.usage.get_mut(&key) {
                if add { counters.add(usage) } else { counters.remove(usage) }
            }
        }
        Ok(())
    }

    /// Changes the counters of `agent_type` over all tenants and of `tenant` alike.
    fn count(&mut self, tenant: &str, agent_type: &str, change: impl Fn(&mut TypeCounters)) -> Result<(), StoreError> {
        for key in counter_keys(tenant, agent_type) {
            if !self.counters.contains_key(&key) {
                let found = match self.store.raw(CF_STATS, &key)? {
                    Some(bytes) => store::decode(&key, &bytes)?,
                    None => TypeCounters::default(),
                };
                self.counters.insert(key.clone(), found);
            }
            if let Some(counters) = self.counters.get_mut(&key) {
                change(counters);
            }
        }
        Ok(())
    }

    fn tenant(&mut self, tenant: &str) -> Result<&mut TenantCounters, StoreError> {
        if !self.tenants.contains_key(tenant) {
            let found = self.store.tenant_counters(tenant)?;
            self.tenants.insert(tenant.to_string(), found);
        }
        Ok(self.tenants.get_mut(tenant).expect("inserted above"))
    }

    /// The histogram under `key`, loaded from the store if needed; `None` when there is none
    /// yet and `create` is false.
    fn histogram(&mut self, key: Vec<u8>, create: bool) -> Result<Option<&mut Histogram<u64>>, StoreError> {
        if !self.histograms.contains_key(&key) {
            let found = match self.store.histogram_at(&key)? {
                Some(found) => found,
                None if create => store::new_histogram(),
                None => return Ok(None),
            };
            self.histograms.insert(key.clone(), found);
        }
        Ok(self.histograms.get_mut(&key))
    }

    fn record(&mut self, measure: Measure, tenant: &str, agent_type: &str, value_ms: i64) -> Result<(), StoreError> {
        for key in measure.keys(tenant, agent_type) {
            if let Some(histogram) = self.histogram(key, true)? {
                histogram.saturating_record(value_ms.max(1) as u64);
            }
        }
        Ok(())
    }

    /// Removes one value [`Totals::record`] recorded.
    fn unrecord(&mut self, measure: Measure, tenant: &str, agent_type: &str, value_ms: i64) -> Result<(), StoreError> {
        let mut one = store::new_histogram();
        one.saturating_record(value_ms.max(1) as u64);
        for key in measure.keys(tenant, agent_type) {
            let Some(histogram) = self.histogram(key, false)? else { continue };
            if let Err(error) = histogram.subtract(&one) {
                tracing::warn!(agent_type = %agent_type, ?error, "could not take a replaced outcome out of a histogram");
            }
        }
        Ok(())
    }

    /// Takes back what [`Totals::settle`] counted for an outcome that a later one replaced.
    fn uncount(&mut self, view: &TaskView, replaced: &Replaced) -> Result<(), StoreError> {
        let Some(agent_type) = &view.agent_type else { return Ok(()) };
        let tenant = &view.tenant;
        if replaced.counted {
            self.count(tenant, agent_type, |c| c.uncount_outcome(replaced.old.status))?;
            if let Some(usage) = &replaced.old.usage {
                self.usage(tenant, agent_type, usage, false)?;
            }
            if let Some(duration) = replaced.old.duration_ms {
                self.unrecord(Measure::Duration, tenant, agent_type, duration)?;
            }
        }
        if replaced.latency_recorded
            && let Some(submitted) = view.submitted_at_us
        {
            self.unrecord(Measure::Latency, tenant, agent_type, (replaced.old.at_us - submitted) / 1000)?;
        }
        Ok(())
    }

    /// Counts what became known about a task: its submission, its outcome once its type is
    /// known, its latency once both ends are known. Each at most once per task. (The
    /// idempotency key of a first submit is claimed by [`Changes::claim_idempotency_key`].)
    ///
    /// `before` is what the view knew before this event: whether its type was known and
    /// whether its outcome had been counted.
    fn settle(&mut self, view: &mut TaskView, first_submit: bool, before: Known) -> Result<(), StoreError> {
        if first_submit {
            if let Some(agent_type) = &view.agent_type {
                self.count(&view.tenant, agent_type, |c| c.submitted += 1)?;
            }
            self.tenant(&view.tenant)?.submitted += 1;
        }
        if let (Some(outcome), Some(agent_type)) = (&view.outcome, &view.agent_type) {
            if !view.outcome_counted {
                view.outcome_counted = true;
                self.count(&view.tenant, agent_type, |c| c.count_outcome(outcome.status))?;
                // Usage counts with the outcome: once per task, the first completion's (a
                // re-run of an attempt that completed twice is not billed twice here).
                if let Some(usage) = &outcome.usage {
                    self.usage(&view.tenant, agent_type, usage, true)?;
                }
                if let Some(duration) = outcome.duration_ms {
                    self.record(Measure::Duration, &view.tenant, agent_type, duration)?;
                }
            }
            if !view.latency_recorded
                && let Some(submitted) = view.submitted_at_us
            {
                view.latency_recorded = true;
                self.record(Measure::Latency, &view.tenant, agent_type, (outcome.at_us - submitted) / 1000)?;
            }
        }
        if view.outcome.is_some() && !view.tenant_counted {
            view.tenant_counted = true;
            self.tenant(&view.tenant)?.terminal += 1;
        }
        // Streams select outcomes by the task's type, which only its TaskSubmitted names. An
        // outcome applied before its submit (they are on two topics, either may come first)
        // is noticed once the type is known: sent at once with no type, it never reached a
        // stream of that type (2 of 100 tasks missed every such stream in bench-sse.py).
        let outcome_is_new = !before.outcome_counted || !before.type_known;
        if view.outcome.is_some()
            && view.agent_type.is_some()
            && outcome_is_new
            && self.notify
            && self.noticed.insert(store::task_key(&view.tenant, &view.task_id))
        {
            self.notices.push(OutcomeNotice { tenant: view.tenant.clone(), agent_type: view.agent_type.clone(), task_id: view.task_id.clone() });
        }
        Ok(())
    }
}

impl<'s> Changes<'s> {
    pub fn new(store: &'s ProjectionStore) -> Self {
        Self::with(store, true, None, RoundSize::default())
    }

    /// Changes that collect no outcome notices (history being caught up: nobody streams it).
    pub fn quiet(store: &'s ProjectionStore) -> Self {
        Self::with(store, false, None, RoundSize::default())
    }

    /// Quiet changes of a catch-up into `store`, which held no tasks when the catch-up
    /// started and has since received only the tasks in `written`.
    pub fn quiet_fresh(store: &'s ProjectionStore, written: WrittenTasks) -> Self {
        Self::with(store, false, Some(written), RoundSize::default())
    }

    fn with(store: &'s ProjectionStore, notify: bool, written: Option<WrittenTasks>, round: RoundSize) -> Self {
        Changes {
            store,
            tasks: Map::with_capacity_and_hasher(round.tasks, FxBuildHasher),
            agents: Map::default(),
            jobs: Map::default(),
            dead_letters: Map::default(),
            latest_letters: Map::default(),
            stream: Vec::new(),
            totals: Totals::new(store, notify),
            idempotency: HashMap::new(),
            offsets: Map::default(),
            written,
            round,
            applied: 0,
        }
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

    /// Makes sure `tenant`'s task `task_id` is in the cache (loaded from the store, or new)
    /// and returns its key.
    fn load_task(&mut self, tenant: &str, task_id: &str) -> Result<TaskKey, StoreError> {
        let key = store::task_key(tenant, task_id);
        if self.tasks.contains_key(&key) {
            return Ok(key);
        }
        let stored = match &self.written {
            Some(written) if !written.may_hold(&key) => None,
            _ => self.store.task(tenant, task_id)?,
        };
        let (original_keys, view) = match stored {
            Some(view) => (store::index_keys(&view), view),
            None => (Vec::new(), TaskView::new(tenant, task_id)),
        };
        self.tasks.insert(key.clone(), Box::new(TaskEntry { original_keys, view }));
        Ok(key)
    }

    fn agent(&mut self, agent_id: &str) -> Result<&mut AgentView, StoreError> {
        if !self.agents.contains_key(agent_id) {
            let view =
                self.store.agent(agent_id)?.unwrap_or_else(|| AgentView { agent_id: agent_id.to_string(), state: AgentStatus::Unknown, ..Default::default() });
            self.agents.insert(agent_id.to_string(), view);
        }
        Ok(self.agents.get_mut(agent_id).expect("inserted above"))
    }

    /// `tenant`'s job `job_id` (jobs, like tasks, live in their tenant's namespace).
    fn job(&mut self, tenant: &str, job_id: &str) -> Result<&mut JobView, StoreError> {
        let key = store::task_key(tenant, job_id);
        if !self.jobs.contains_key(&key) {
            let entry = match self.store.job(tenant, job_id)? {
                Some(view) => (Some(store::job_index_key(&view)), view),
                None => (None, JobView { job_id: job_id.to_string(), tenant: tenant.to_string(), ..Default::default() }),
            };
            self.jobs.insert(key.clone(), entry);
        }
        Ok(&mut self.jobs.get_mut(&key).expect("inserted above").1)
    }

    /// Indexes one record of the `dlq` topic under the tenant of the command it parks (and
    /// as its task's latest letter when it is). A record whose command did not decode names
    /// no tenant: it is not indexed (it stays in the log, for `agentlog dlq list`).
    /// Redelivered records write the same keys again.
    pub fn dead_letter(&mut self, record: &ConsumedRecord, event: Option<AnyEvent>) -> Result<(), StoreError> {
        let Some(AnyEvent::TaskSubmitted(task)) = event else { return Ok(()) };
        self.applied += 1;
        let header = |name: &str| record.header(name).map(|v| String::from_utf8_lossy(v).into_owned());
        let position = LetterPosition { timestamp_ms: record.timestamp_ms, partition: record.partition, offset: record.offset };
        let view = DeadLetterView {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            agent_type: task.agent_type,
            attempts: header(DLQ_ATTEMPTS).and_then(|a| a.parse().ok()),
            error_kind: capped(header(DLQ_ERROR).unwrap_or_default(), DEAD_LETTER_TEXT_CAP),
            reason: capped(header(DLQ_REASON).unwrap_or_default(), DEAD_LETTER_TEXT_CAP),
            source: capped(header(DLQ_SOURCE).unwrap_or_default(), DEAD_LETTER_TEXT_CAP),
            truncated: header(DLQ_TRUNCATED).map(|t| capped(t, DEAD_LETTER_TEXT_CAP)),
            task_id: task.task_id,
        };
        let tenant = &task.meta.tenant;
        let latest_key = store::dead_letter_task_key(tenant, &view.task_id);
        let latest = match self.latest_letters.get(&latest_key) {
            Some(latest) => Some(*latest),
            None => self.store.raw(CF_DLQ, &latest_key)?.and_then(|tail| LetterPosition::from_tail(&tail)),
        };
        // The latest by position, whatever order the letters arrive in.
        if latest.is_none_or(|latest| latest < position) {
            self.latest_letters.insert(latest_key, position);
        }
        self.dead_letters.insert(store::dead_letter_key(tenant, &position), view);
        Ok(())
    }

    /// Keeps a record of `task.stream` under its task, by its position: a redelivered record
    /// lands on its own key again. A progress report also updates the task's view.
    pub fn streamed(&mut self, record: &ConsumedRecord, event: Option<AnyEvent>) -> Result<(), StoreError> {
        let Some(event) = event else { return Ok(()) };
        let (meta, task_id, attempt, body) = match &event {
            AnyEvent::TaskProgress(e) => (&e.meta, &e.task_id, e.attempt, StreamBody::Progress { percent: e.percent, message: e.message.clone() }),
            AnyEvent::TaskChunk(e) => (&e.meta, &e.task_id, e.attempt, StreamBody::Chunk { seq: e.seq, text: e.text.clone(), json: e.json.clone() }),
            // Anything else on the topic is applied as it would be anywhere.
            _ => return self.apply(Source::Other, event),
        };
        let entry = StreamEntry { partition: record.partition, offset: record.offset, at_us: meta.occurred_at.0, attempt, body };
        self.stream.push((store::stream_key(&meta.tenant, task_id, Some((record.partition, record.offset))), entry));
        match event {
            progress @ AnyEvent::TaskProgress(_) => self.apply(Source::Other, progress),
            _ => {
                self.applied += 1;
                Ok(())
            }
        }
    }

    /// Applies one decoded event. Redelivered events change nothing.
    pub fn apply(&mut self, source: Source, mut event: AnyEvent) -> Result<(), StoreError> {
        if source == Source::Dlq {
            // A parked command is not a submit; its record goes to `dead_letter`.
            return Ok(());
        }
        self.applied += 1;
        match &event {
            AnyEvent::AgentRegistered(_)
            | AnyEvent::AgentHeartbeat(_)
            | AnyEvent::AgentStateChanged(_)
            | AnyEvent::AgentLost(_)
            | AnyEvent::AgentDeregistered(_) => return self.apply_agent(&event),
            AnyEvent::JobSubmitted(e) => {
                let job = self.job(&e.meta.tenant, &e.job_id)?;
                job.total = e.total;
                job.task_ids = e.task_ids.clone();
                job.submitted_at_us = Some(job.submitted_at_us.map_or(e.meta.occurred_at.0, |at| at.min(e.meta.occurred_at.0)));
                return Ok(());
            }
            AnyEvent::JobCompleted(e) => {
                let job = self.job(&e.meta.tenant, &e.job_id)?;
                job.completed = Some(e.completed);
                job.failed = Some(e.failed);
                job.completed_at_us = Some(e.meta.occurred_at.0);
                return Ok(());
            }
            AnyEvent::Unknown { .. } => return Ok(()),
            _ => {}
        }
        // A task is (tenant, task id): every event of a task carries its tenant, so another
        // tenant's events of the same id go to that tenant's task.
        let Some(tenant) = task_meta(&mut event).map(|meta| std::mem::take(&mut meta.tenant)) else { return Ok(()) };
        let Some(task_id) = event.task_id() else { return Ok(()) };
        let key = self.load_task(&tenant, task_id)?;
        let Some(entry) = self.tasks.get_mut(&key) else { return Ok(()) };
        let view = &mut entry.view;
        let (type_known, retries_before) = (view.agent_type.is_some(), view.max_retry);
        let before = Known { type_known, outcome_counted: view.tenant_counted };
        let (first_submit, replaced) = apply_to_task(view, source, event);
        // Retries count once each, by the highest retried attempt (redelivered or reordered
        // events do not count twice); those seen before the task's type was known count when
        // it becomes known.
        if let Some(agent_type) = &view.agent_type {
            let new = if type_known { view.max_retry - retries_before } else { view.max_retry };
            if new > 0 {
                self.totals.count(&view.tenant, agent_type, |c| c.retries += new as u64)?;
            }
        }
        if let Some(replaced) = &replaced {
            self.totals.uncount(view, replaced)?;
        }
        self.totals.settle(view, first_submit, before)?;
        if first_submit && view.idempotency_key.is_some() {
            self.claim_idempotency_key(&key)?;
        }
        Ok(())
    }

    /// Points the task's idempotency key at it, unless a task that keeps it holds it: tasks
    /// raced with one key (both submitted before the projection saw either), and the earliest
    /// submitted (then the smaller id) keeps it, in any arrival order.
    fn claim_idempotency_key(&mut self, task_key: &[u8]) -> Result<(), StoreError> {
        let Some(view) = self.tasks.get(task_key).map(|entry| &entry.view) else { return Ok(()) };
        let Some(key) = &view.idempotency_key else { return Ok(()) };
        let index_key = store::idempotency_key(&view.tenant, key);
        let ours = (view.submitted_at_us.unwrap_or(i64::MAX), view.task_id.clone());
        let holder = match self.idempotency.get(&index_key) {
            Some(id) => Some(id.clone()),
            None => self.store.raw(CF_INDEX, &index_key)?.map(|id| String::from_utf8_lossy(&id).into_owned()),
        };
        let take = match holder {
            None => true,
            Some(id) if id == ours.1 => false,
            Some(id) => {
                // The key is the tenant's, and so is the task holding it.
                let theirs = match self.tasks.get(&store::task_key(&view.tenant, &id)) {
                    Some(entry) => entry.view.submitted_at_us,
                    None => self.store.task(&view.tenant, &id)?.and_then(|v| v.submitted_at_us),
                };
                (ours.0, ours.1.as_str()) < (theirs.unwrap_or(i64::MAX), id.as_str())
            }
        };
        if take {
            self.idempotency.insert(index_key, ours.1);
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
                Some(AgentStatus::Starting)
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
            AnyEvent::AgentStateChanged(e) => Some(AgentStatus::from(e.to_state)),
            AnyEvent::AgentLost(_) => Some(AgentStatus::Lost),
            AnyEvent::AgentDeregistered(_) => Some(AgentStatus::Deregistered),
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

    /// Ends a round of a catch-up: returns its batch to write and starts the next round in
    /// `self`, knowing what this one wrote. (Outcome notices are not kept: catching up
    /// publishes none.)
    pub fn finish_round(&mut self) -> Result<WriteBatch, StoreError> {
        let mut written = self.written.take();
        if let Some(written) = &mut written {
            for key in self.tasks.keys() {
                written.insert(key);
            }
        }
        let tasks = self.tasks.len();
        let next = Changes::with(self.store, self.totals.notify, written, RoundSize { tasks, batch_bytes: self.round.batch_bytes });
        let round = std::mem::replace(self, next);
        let (batch, _) = round.finish()?;
        // A quarter more than this round's, so a slightly bigger round does not double it.
        self.round.batch_bytes = batch.size_in_bytes() + batch.size_in_bytes() / 4;
        Ok(batch)
    }

    /// The batch to write and the outcomes it completes.
    pub fn finish(self) -> Result<(WriteBatch, Vec<OutcomeNotice>), StoreError> {
        let store = self.store;
        let mut batch = WriteBatch::with_capacity_bytes(self.round.batch_bytes);
        put_tasks(store, &mut batch, &self.tasks)?;
        let index_cf = store.cf(CF_INDEX)?;
        for (key, task_id) in self.idempotency {
            batch.put_cf(index_cf, key, task_id.as_bytes());
        }
        let mut buffer = Vec::new();
        let agents_cf = store.cf(CF_AGENTS)?;
        for (id, view) in &self.agents {
            batch.put_cf(agents_cf, id.as_bytes(), store::encode_into(view, &mut buffer));
        }
        let jobs_cf = store.cf(CF_JOBS)?;
        for (key, (stored_index, view)) in &self.jobs {
            batch.put_cf(jobs_cf, key, store::encode_into(view, &mut buffer));
            let index = store::job_index_key(view);
            if stored_index.as_ref() != Some(&index) {
                if let Some(old) = stored_index {
                    batch.delete_cf(index_cf, old);
                }
                batch.put_cf(index_cf, index, []);
            }
        }
        let dlq_cf = store.cf(CF_DLQ)?;
        for (key, view) in &self.dead_letters {
            batch.put_cf(dlq_cf, key, store::encode_into(view, &mut buffer));
        }
        for (key, position) in &self.latest_letters {
            batch.put_cf(dlq_cf, key, position.tail());
        }
        let stream_cf = store.cf(CF_STREAM)?;
        for (key, entry) in &self.stream {
            batch.put_cf(stream_cf, key, store::encode_into(entry, &mut buffer));
        }
        let totals = self.totals;
        let stats_cf = store.cf(CF_STATS)?;
        for (key, counters) in &totals.counters {
            batch.put_cf(stats_cf, key, store::encode_into(counters, &mut buffer));
        }
        for (key, histogram) in &totals.histograms {
            batch.put_cf(stats_cf, key, store::encode_histogram(histogram));
        }
        for (tenant, counters) in &totals.tenants {
            batch.put_cf(stats_cf, store::stat_key(b'n', tenant), store::encode_into(counters, &mut buffer));
        }
        for (key, counters) in &totals.usage {
            batch.put_cf(stats_cf, key, store::encode_into(counters, &mut buffer));
        }
        let offsets_cf = store.cf(CF_OFFSETS)?;
        for (topic, partitions) in &self.offsets {
            for (partition, next) in partitions {
                batch.put_cf(offsets_cf, store::offset_key(topic, *partition), next.to_be_bytes());
            }
        }
        Ok((batch, totals.notices))
    }
}

/// Puts the task views and their index changes, keys in order within each column family:
/// the memtable's skip list inserts a sorted run far faster than random keys (it reuses its
/// search path).
fn put_tasks(store: &ProjectionStore, batch: &mut WriteBatch, tasks: &Map<TaskKey, Box<TaskEntry>>) -> Result<(), StoreError> {
    let tasks_cf = store.cf(CF_TASKS)?;
    let index_cf = store.cf(CF_INDEX)?;
    let mut sorted: Vec<(&TaskKey, &Box<TaskEntry>)> = tasks.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut index_deletes = Vec::new();
    let mut index_puts = Vec::with_capacity(sorted.len() * 3);
    let mut buffer = Vec::new();
    for (task_key, entry) in sorted {
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
        batch.put_cf(tasks_cf, task_key, store::encode_into(&entry.view, &mut buffer));
    }
    index_deletes.sort_unstable();
    index_puts.sort_unstable();
    for key in index_deletes {
        batch.delete_cf(index_cf, key);
    }
    for key in index_puts {
        batch.put_cf(index_cf, key, []);
    }
    Ok(())
}

/// The envelope of a task event.
fn task_meta(event: &mut AnyEvent) -> Option<&mut Meta> {
    Some(match event {
        AnyEvent::TaskSubmitted(e) => &mut e.meta,
        AnyEvent::TaskStarted(e) => &mut e.meta,
        AnyEvent::TaskProgress(e) => &mut e.meta,
        AnyEvent::TaskRetryScheduled(e) => &mut e.meta,
        AnyEvent::TaskSuspended(e) => &mut e.meta,
        AnyEvent::TaskSignalled(e) => &mut e.meta,
        AnyEvent::TaskCompleted(e) => &mut e.meta,
        AnyEvent::TaskFailed(e) => &mut e.meta,
        AnyEvent::TaskDeadLettered(e) => &mut e.meta,
        AnyEvent::TaskCancelRequested(e) => &mut e.meta,
        AnyEvent::TaskCancelled(e) => &mut e.meta,
        AnyEvent::TaskExpired(e) => &mut e.meta,
        _ => return None,
    })
}

/// What one task event does to its view (nothing here reads or counts anything else).
/// Returns whether it was the task's first submit, and the outcome it replaced.
fn apply_to_task(view: &mut TaskView, source: Source, mut event: AnyEvent) -> (bool, Option<Replaced>) {
    let name = event.known_name().unwrap_or_default();
    let Some(meta) = task_meta(&mut event) else { return (false, None) };
    let at = meta.occurred_at.0;
    // Moved out (the event is ours): the rest of the envelope is not projected.
    // The tenant is not taken from the event: the view is the task of the event's tenant
    // already (see `Changes::apply`), and no event moves a task to another tenant.
    let event_id = std::mem::take(&mut meta.event_id);
    // The trace the task is recorded in (its events' sampled context: ours, or a caller's
    // passed through). A task's sampled events share one trace (an attempt descends from the
    // submit or the attempt before); should two ever differ (tracing turned on between
    // attempts), the smallest id is kept, so the view does not depend on arrival order.
    if let Some(id) = crate::trace::sampled_trace_id(meta)
        && view.trace_id.as_deref().is_none_or(|kept| id < kept)
    {
        view.trace_id = Some(id.to_string());
    }
    view.created_at_us = view.created_at_us.min(at);
    view.updated_at_us = view.updated_at_us.max(at);
    let mut entry = TimelineEntry { at_us: at, event: name.to_string(), event_id, attempt: None, agent_id: None, detail: None };
    let mut first_submit = false;
    let mut replaced = None;
    match event {
        AnyEvent::TaskSubmitted(e) => first_submit = apply_submitted(view, source, e, at, &mut entry),
        AnyEvent::TaskStarted(e) => {
            entry.attempt = Some(e.attempt);
            // Ties (a re-run of the same attempt elsewhere) resolve to the larger id, so
            // the result does not depend on arrival order.
            if e.attempt > view.attempts || (e.attempt == view.attempts && view.agent_id.as_ref().is_none_or(|a| *a < e.agent_id)) {
                view.agent_id = Some(e.agent_id.clone());
            }
            entry.agent_id = Some(e.agent_id);
            view.attempts = view.attempts.max(e.attempt);
        }
        AnyEvent::TaskProgress(e) => {
            entry.attempt = Some(e.attempt);
            entry.detail = e.message.clone();
            let newer = view.progress.as_ref().is_none_or(|p| (p.at_us, &p.event_id) < (at, &entry.event_id));
            if newer {
                view.progress = Some(ProgressView { at_us: at, event_id: entry.event_id.clone(), attempt: e.attempt, percent: e.percent, message: e.message });
            }
        }
        AnyEvent::TaskRetryScheduled(e) => {
            entry.attempt = Some(e.attempt);
            entry.detail = Some(e.last_error);
            view.max_retry = view.max_retry.max(e.attempt);
        }
        AnyEvent::TaskCancelRequested(e) => {
            entry.detail = e.reason;
            view.cancel_requested = true;
        }
        AnyEvent::TaskSuspended(e) => {
            entry.attempt = Some(e.attempt);
            entry.detail = Some(format!("waits for signal `{}` until {}", e.signal, e.timeout_at.0));
        }
        AnyEvent::TaskSignalled(e) => {
            entry.detail = Some(format!("signal `{}` ({})", e.signal, e.signal_id));
            if !view.signals.iter().any(|s| s.signal_id == e.signal_id) {
                if view.signals.len() >= SIGNALS_CAP {
                    view.signals.remove(0);
                }
                view.signals.push(SignalView { name: e.signal, signal_id: e.signal_id, at_us: at });
            }
        }
        other => {
            let Some(outcome) = outcome_of(other, at, entry.event_id.clone()) else { return (first_submit, replaced) };
            entry.attempt = outcome.attempt;
            entry.detail = outcome.message.clone();
            replaced = apply_outcome(view, outcome);
        }
    }
    view.add_timeline(entry);
    if view.status != view.derive_status() {
        view.status = view.derive_status();
    }
    (first_submit, replaced)
}

/// A submit, from a lane (queued) or from `timers` (scheduled); returns whether it is the
/// task's first submit seen.
fn apply_submitted(view: &mut TaskView, source: Source, e: TaskSubmitted, at: i64, entry: &mut TimelineEntry) -> bool {
    view.agent_type = Some(e.agent_type);
    view.lane = Some(e.lane.as_str().to_string());
    if e.max_attempts > 0 {
        view.max_attempts = Some(e.max_attempts);
    }
    view.job_id = e.job_id.or(view.job_id.take());
    view.parent_task_id = e.parent_task_id.or(view.parent_task_id.take());
    view.idempotency_key = e.idempotency_key.or(view.idempotency_key.take());
    view.ordering_key = e.ordering_key.or(view.ordering_key.take());
    view.labels.extend(e.labels);
    if view.input.is_none() {
        view.input = Some(text_of(e.input));
    }
    view.deadline_us = e.deadline.map(|d| d.0).or(view.deadline_us);
    entry.attempt = Some(e.attempt);
    if let Some(signal) = &e.signal {
        entry.detail = Some(match (&signal.signal_id, signal.timed_out) {
            (_, true) => format!("resumed: no signal `{}` came in time", signal.name),
            (Some(id), false) => format!("resumed by signal `{}` ({id})", signal.name),
            (None, false) => format!("resumed by signal `{}`", signal.name),
        });
    }
    match source {
        Source::Timers if e.awaiting_signal.is_some() => {
            let signal = e.awaiting_signal.unwrap_or_default();
            entry.event = "TaskWaiting".into();
            entry.detail = Some(format!("waits for signal `{signal}`"));
            if e.attempt >= view.max_waiting {
                view.max_waiting = e.attempt;
                view.waiting_for = Some(WaitingView { signal, timeout_at_us: e.not_before.map_or(0, |t| t.0), attempt: e.attempt });
            }
        }
        Source::Timers => {
            view.max_scheduled = view.max_scheduled.max(e.attempt);
            view.not_before_us = e.not_before.map(|d| d.0).or(view.not_before_us);
            entry.event = "TaskScheduled".into();
            entry.detail = e.not_before.map(|d| format!("not_before {}", d.0));
        }
        Source::Lane | Source::Dlq | Source::Stream | Source::Other => view.max_enqueued = view.max_enqueued.max(e.attempt),
    }
    let mut first_submit = false;
    if e.attempt <= 1 {
        first_submit = view.submitted_at_us.is_none();
        view.submitted_at_us = Some(view.submitted_at_us.map_or(at, |s| s.min(at)));
    }
    first_submit
}

/// The outcome an event states, if it is one ([`OutcomeKind::of`] decides which are).
fn outcome_of(event: AnyEvent, at_us: i64, event_id: String) -> Option<OutcomeView> {
    let status = TaskStatus::from(OutcomeKind::of(&event)?);
    let blank = OutcomeView { status, at_us, event_id, attempt: None, output: None, duration_ms: None, error_kind: None, message: None, usage: None };
    Some(match event {
        AnyEvent::TaskCompleted(e) => OutcomeView {
            attempt: Some(e.attempt),
            output: Some(text_of(e.output)),
            duration_ms: Some(e.duration_ms),
            usage: e.usage.map(UsageView::from),
            ..blank
        },
        AnyEvent::TaskFailed(e) => OutcomeView { attempt: Some(e.attempt), error_kind: Some(e.error_kind), message: Some(e.message), ..blank },
        AnyEvent::TaskDeadLettered(e) => OutcomeView { attempt: Some(e.attempts), error_kind: Some(e.reason), message: Some(e.last_error), ..blank },
        AnyEvent::TaskCancelled(e) => OutcomeView { message: e.reason, ..blank },
        AnyEvent::TaskExpired(e) => OutcomeView { message: Some(format!("deadline {} passed before the task started", e.deadline.0)), ..blank },
        _ => blank,
    })
}

/// Keeps the task's first outcome, or replaces a dead letter by the outcome of the task's
/// re-run; returns what was replaced.
fn apply_outcome(view: &mut TaskView, outcome: OutcomeView) -> Option<Replaced> {
    // All outcomes of a task are on one partition of `task.results`, so "the first" is the
    // same in every replay. A dead-lettered task that was resubmitted may end again: that
    // later outcome replaces it.
    let replace = match &view.outcome {
        None => true,
        Some(old) => old.status == TaskStatus::DeadLettered && outcome.status != TaskStatus::DeadLettered && old.event_id != outcome.event_id,
    };
    if !replace {
        return None;
    }
    let mut replaced = None;
    if let Some(old) = view.outcome.take() {
        // Whether the dead letter was counted depends on what arrived before it (its type,
        // its submit): take it back, so only the final outcome counts, as it does when the
        // dead letter was never counted.
        replaced = Some(Replaced { old, counted: view.outcome_counted, latency_recorded: view.latency_recorded });
        view.outcome_counted = false;
        view.latency_recorded = false;
    }
    view.outcome = Some(outcome);
    replaced
}
