//! What the projection stores per task, agent, job and agent type. Every field is either
//! set once from a single partition's first event or is a max/min/set over events, so the
//! final state does not depend on how records of different partitions interleave: a
//! projection rebuilt from scratch equals one that was killed and resumed any number of times.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::status::{AgentStatus, TaskStatus};

/// Most timeline entries kept per task: the earliest ones by (time, event, id). Keeping the
/// N smallest of a set gives the same result in any arrival order.
pub const TIMELINE_CAP: usize = 100;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub task_id: String,
    pub tenant: String,
    pub agent_type: Option<String>,
    pub lane: Option<String>,
    pub status: TaskStatus,
    /// Earliest `occurred_at` of any event of the task (µs since the epoch).
    pub created_at_us: i64,
    /// `occurred_at` of the first attempt's TaskSubmitted.
    pub submitted_at_us: Option<i64>,
    pub updated_at_us: i64,
    /// Highest attempt that started.
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    /// The agent that ran the highest started attempt.
    pub agent_id: Option<String>,
    pub job_id: Option<String>,
    pub parent_task_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub ordering_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The input as submitted (JSON text, or the bytes lossily as text).
    pub input: Option<String>,
    pub not_before_us: Option<i64>,
    pub deadline_us: Option<i64>,
    pub cancel_requested: bool,
    pub progress: Option<ProgressView>,
    pub outcome: Option<OutcomeView>,
    pub timeline: Vec<TimelineEntry>,
    /// Highest attempt seen on a lane topic, on `timers`, started, and retry-scheduled.
    pub max_enqueued: i32,
    pub max_scheduled: i32,
    pub max_retry: i32,
    /// Highest attempt waiting on `timers` for a signal, and what its wait is.
    pub max_waiting: i32,
    pub waiting_for: Option<WaitingView>,
    /// Signals sent to the task (`TaskSignalled`), earliest first, at most [`SIGNALS_CAP`]:
    /// a signal id seen here is a duplicate.
    pub signals: Vec<SignalView>,
    /// Whether this task's submit→outcome latency went into the stats.
    pub latency_recorded: bool,
    /// Whether the outcome went into its agent type's counters (needs the type, which only
    /// TaskSubmitted carries) and into its tenant's counters.
    pub outcome_counted: bool,
    pub tenant_counted: bool,
    /// The trace id of the task's sampled trace context, if any (see `apply_to_task`).
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressView {
    pub at_us: i64,
    pub event_id: String,
    pub attempt: i32,
    pub percent: Option<f32>,
    pub message: Option<String>,
}

/// One record of a task's stream (`task.stream`): what `GET /v1/tasks/{id}/stream` sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// The record's log position: the SSE event's id.
    pub partition: i32,
    pub offset: i64,
    pub at_us: i64,
    pub attempt: i32,
    pub body: StreamBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamBody {
    Progress {
        percent: Option<f32>,
        message: Option<String>,
    },
    /// `json` is JSON text.
    Chunk {
        seq: i64,
        text: Option<String>,
        json: Option<String>,
    },
}

/// What a waiting task waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingView {
    pub signal: String,
    pub timeout_at_us: i64,
    /// The attempt the signal or the timeout will start.
    pub attempt: i32,
}

/// A signal sent to a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalView {
    pub name: String,
    pub signal_id: String,
    pub at_us: i64,
}

/// The most signals a task's view remembers: a client sending signals without end (each
/// with a new id) must not grow the view without end. Ids past the cap are not recognised
/// as duplicates; the supervisor still resumes the task once.
pub const SIGNALS_CAP: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeView {
    /// Always a terminal status.
    pub status: TaskStatus,
    pub at_us: i64,
    pub event_id: String,
    pub attempt: Option<i32>,
    /// The output as the agent wrote it (JSON text, or the bytes lossily as text).
    pub output: Option<String>,
    pub duration_ms: Option<i64>,
    pub error_kind: Option<String>,
    pub message: Option<String>,
    /// What the completed attempt consumed, as its agent reported it.
    pub usage: Option<UsageView>,
}

/// What one completed attempt consumed (`TaskCompleted.usage`), as the projection keeps it.
/// Workers check reports; a producer writing straight to the log may not, so negative counts
/// read as 0 and the counters and texts are capped here too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model: Option<String>,
    /// Millionths of `currency`'s unit.
    pub cost_micros: Option<u64>,
    pub currency: Option<String>,
    pub counters: BTreeMap<String, u64>,
}

/// Most provider counters kept per report and per aggregate: the smallest names, so the
/// result does not depend on the order reports arrive in (see [`add_capped`]).
pub const USAGE_COUNTERS_CAP: usize = 32;

/// Most currencies kept per aggregate (workers accept any three upper-case letters).
pub const USAGE_CURRENCIES_CAP: usize = 16;

/// Longest model name kept, in bytes (workers accept 128 characters).
pub const USAGE_MODEL_CAP: usize = 512;

impl From<crate::events::Usage> for UsageView {
    fn from(u: crate::events::Usage) -> UsageView {
        let count = |n: i64| n.max(0) as u64;
        let mut counters = BTreeMap::new();
        for (name, n) in u.counters {
            add_capped(&mut counters, &name, count(n), USAGE_COUNTERS_CAP);
        }
        UsageView {
            input_tokens: count(u.input_tokens),
            output_tokens: count(u.output_tokens),
            model: u.model.filter(|m| !m.is_empty()).map(|m| capped(m, USAGE_MODEL_CAP)),
            cost_micros: u.cost_micros.map(count),
            currency: u.currency.map(|c| capped(c, 16)),
            counters,
        }
    }
}

/// Adds `n` under `name`, keeping the `cap` smallest names: a name past them is dropped, and
/// once there are `cap` smaller ones it never comes back. The names kept and their sums are
/// therefore exact for the `cap` smallest names of all reports, in any order of arrival.
pub fn add_capped(map: &mut BTreeMap<String, u64>, name: &str, n: u64, cap: usize) {
    match map.get_mut(name) {
        Some(sum) => *sum = sum.saturating_add(n),
        None => {
            if map.len() >= cap && map.last_key_value().is_some_and(|(last, _)| last.as_str() < name) {
                return;
            }
            map.insert(name.to_string(), n);
            if map.len() > cap {
                map.pop_last();
            }
        }
    }
}

/// Usage summed over the completed tasks of one agent type and model (of one tenant, or of
/// all tenants for `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounters {
    pub agent_type: String,
    /// `None`: tasks whose agent named no model.
    pub model: Option<String>,
    /// Completed tasks that reported usage.
    pub tasks: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Cost in millionths, per currency.
    pub cost_micros: BTreeMap<String, u64>,
    /// Provider counters summed, at most [`USAGE_COUNTERS_CAP`] (the smallest names).
    pub counters: BTreeMap<String, u64>,
}

impl UsageCounters {
    pub fn new(agent_type: &str, model: Option<&str>) -> Self {
        UsageCounters { agent_type: agent_type.to_string(), model: model.map(str::to_string), ..Default::default() }
    }

    pub fn add(&mut self, usage: &UsageView) {
        self.tasks += 1;
        self.input_tokens = self.input_tokens.saturating_add(usage.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(usage.output_tokens);
        if let (Some(cost), Some(currency)) = (usage.cost_micros, &usage.currency) {
            add_capped(&mut self.cost_micros, currency, cost, USAGE_CURRENCIES_CAP);
        }
        for (name, n) in &usage.counters {
            add_capped(&mut self.counters, name, *n, USAGE_COUNTERS_CAP);
        }
    }

    /// Takes back [`UsageCounters::add`] (an outcome replaced by a later one).
    pub fn remove(&mut self, usage: &UsageView) {
        self.tasks = self.tasks.saturating_sub(1);
        self.input_tokens = self.input_tokens.saturating_sub(usage.input_tokens);
        self.output_tokens = self.output_tokens.saturating_sub(usage.output_tokens);
        if let (Some(cost), Some(currency)) = (usage.cost_micros, &usage.currency)
            && let Some(sum) = self.cost_micros.get_mut(currency)
        {
            *sum = sum.saturating_sub(cost);
        }
        for (name, n) in &usage.counters {
            if let Some(sum) = self.counters.get_mut(name) {
                *sum = sum.saturating_sub(*n);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at_us: i64,
    pub event: String,
    pub event_id: String,
    pub attempt: Option<i32>,
    pub agent_id: Option<String>,
    pub detail: Option<String>,
}

impl TaskView {
    /// A task not seen before: `tenant`'s task `task_id`.
    pub fn new(tenant: &str, task_id: &str) -> Self {
        TaskView { tenant: tenant.to_string(), task_id: task_id.to_string(), status: TaskStatus::Pending, created_at_us: i64::MAX, ..Default::default() }
    }

    pub fn is_terminal(&self) -> bool {
        self.outcome.is_some()
    }

    /// The status as a function of the aggregates alone (so it is order-independent).
    pub fn derive_status(&self) -> TaskStatus {
        if let Some(outcome) = &self.outcome {
            return outcome.status;
        }
        let started = self.attempts;
        if self.max_waiting > self.max_enqueued.max(started).max(self.max_scheduled) {
            TaskStatus::Waiting
        } else if self.max_scheduled > self.max_enqueued.max(started) {
            TaskStatus::Scheduled
        } else if started > 0 && started >= self.max_enqueued && self.max_retry < started {
            TaskStatus::Running
        } else if self.max_retry > 0 && self.max_retry >= started && self.max_enqueued <= self.max_retry {
            TaskStatus::Retrying
        } else if self.max_enqueued > 0 {
            TaskStatus::Queued
        } else {
            TaskStatus::Pending
        }
    }

    /// Adds an entry unless an entry with the same event and id is there; keeps the earliest
    /// [`TIMELINE_CAP`]. Returns whether the entry is new.
    pub fn add_timeline(&mut self, entry: TimelineEntry) -> bool {
        if self.timeline.iter().any(|e| e.event_id == entry.event_id && e.event == entry.event) {
            return false;
        }
        let at = self.timeline.partition_point(|e| e < &entry);
        if at >= TIMELINE_CAP {
            // Older than everything kept (in sort order it is past the cap): nothing changes,
            // but it may still carry a first-time aggregate, so report it as new.
            return true;
        }
        self.timeline.insert(at, entry);
        self.timeline.truncate(TIMELINE_CAP);
        true
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub agent_id: String,
    pub agent_type: Option<String>,
    pub tenant: String,
    pub host: Option<String>,
    pub version: Option<String>,
    pub capabilities: Vec<String>,
    pub concurrency: Option<i32>,
    /// From the latest lifecycle event by (time, id).
    pub state: AgentStatus,
    pub state_at_us: i64,
    pub state_event_id: String,
    pub registered_at_us: Option<i64>,
    pub last_heartbeat_at_us: Option<i64>,
    pub heartbeat_sequence: i64,
    pub in_flight: i32,
    pub capacity: i32,
    pub completed_total: i64,
    pub failed_total: i64,
    pub cpu_percent: f64,
    pub memory_bytes: i64,
}

impl AgentView {
    /// In-flight tasks over capacity: what discovery orders by.
    pub fn load(&self) -> f64 {
        if self.capacity > 0 { f64::from(self.in_flight) / f64::from(self.capacity) } else { 0.0 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: String,
    pub tenant: String,
    pub total: i32,
    pub task_ids: Vec<String>,
    pub submitted_at_us: Option<i64>,
    pub completed_at_us: Option<i64>,
    pub completed: Option<i32>,
    pub failed: Option<i32>,
}

/// What the projection keeps of one record of the `dlq` topic, enough to list it and to
/// find it again in the log: never its payload (the parked command stays in the log, and
/// a resubmit reads that one record back by its partition and offset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub partition: i32,
    pub offset: i64,
    /// The record's log timestamp (ms): what listings order by.
    pub timestamp_ms: i64,
    pub task_id: String,
    pub agent_type: String,
    pub attempts: Option<i32>,
    pub error_kind: String,
    /// At most [`DEAD_LETTER_TEXT_CAP`] bytes.
    pub reason: String,
    /// topic/partition/offset of the command that failed.
    pub source: String,
    /// What was cut to make the letter fit the log (such a letter cannot be re-submitted);
    /// at most [`DEAD_LETTER_TEXT_CAP`] bytes.
    pub truncated: Option<String>,
}

/// Most bytes of a dead letter's reason (or truncation note) the projection keeps: a page
/// of 500 letters stays small whatever a failing agent wrote.
pub const DEAD_LETTER_TEXT_CAP: usize = 1024;

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
pub fn capped(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

/// Counters per agent type; the latency histograms are stored next to them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TypeCounters {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    pub expired: u64,
    pub retries: u64,
}

impl TypeCounters {
    pub fn count_outcome(&mut self, status: TaskStatus) {
        if let Some(counter) = self.counter(status) {
            *counter += 1;
        }
    }

    /// Takes back [`TypeCounters::count_outcome`] (an outcome replaced by a later one).
    pub fn uncount_outcome(&mut self, status: TaskStatus) {
        if let Some(counter) = self.counter(status) {
            *counter = counter.saturating_sub(1);
        }
    }

    /// The counter of an outcome status (none for a status that is not one).
    fn counter(&mut self, status: TaskStatus) -> Option<&mut u64> {
        match status {
            TaskStatus::Completed => Some(&mut self.completed),
            TaskStatus::Failed => Some(&mut self.failed),
            TaskStatus::DeadLettered => Some(&mut self.dead_lettered),
            TaskStatus::Cancelled => Some(&mut self.cancelled),
            TaskStatus::Expired => Some(&mut self.expired),
            TaskStatus::Pending | TaskStatus::Queued | TaskStatus::Scheduled | TaskStatus::Running | TaskStatus::Retrying | TaskStatus::Waiting => None,
        }
    }

    pub fn terminal(&self) -> u64 {
        self.completed + self.failed + self.dead_lettered + self.cancelled + self.expired
    }
}

/// Open (submitted, not yet terminal) tasks per tenant: the in-flight quota reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantCounters {
    pub submitted: u64,
    pub terminal: u64,
}

impl TenantCounters {
    pub fn open(&self) -> u64 {
        self.submitted.saturating_sub(self.terminal)
    }
}
