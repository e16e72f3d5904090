//! What the API answers, as types. Each handler returns one of these, so `/openapi.json`
//! documents every answer's shape (`responses(body = ...)`) and Schemathesis checks each
//! answer it provokes against that shape in `make test`. Built from the projection's views;
//! times are ms since the epoch.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::agent::client::Submitted as Written;
use crate::components::ComponentStatus;
use crate::projection::store::DeadLetterPage as LetterPage;
use crate::projection::views::{AgentStatus, AgentView, DeadLetterView, JobView, OutcomeView, TaskStatus, TaskView, UsageCounters, UsageView};

/// Micro- to milliseconds.
fn ms(us: i64) -> i64 {
    us / 1000
}

/// Stored input/output text as JSON (text that is not JSON becomes a string).
fn json_text(text: &Option<String>) -> Value {
    match text {
        Some(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.clone())),
        None => Value::Null,
    }
}

/// A task: where it stands, its input, its progress and outcome, and its timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct Task {
    pub task_id: String,
    pub tenant: String,
    pub agent_type: Option<String>,
    pub lane: Option<String>,
    #[schema(inline)]
    pub status: TaskStatus,
    /// Attempts started.
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    /// The agent that ran the latest attempt.
    pub agent_id: Option<String>,
    pub created_at_ms: Option<i64>,
    pub updated_at_ms: i64,
    pub job_id: Option<String>,
    pub parent_task_id: Option<String>,
    /// The W3C trace id (32 hex digits) of the task's recorded trace: ours when tracing is on
    /// and the task was sampled, or the submitter's sampled `traceparent` passed through.
    pub trace_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub ordering_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The input as submitted.
    pub input: Value,
    pub not_before_ms: Option<i64>,
    pub deadline_ms: Option<i64>,
    pub cancel_requested: bool,
    pub progress: Option<Progress>,
    /// What a `waiting` task waits for; `null` in every other status.
    pub waiting_for: Option<WaitingFor>,
    pub outcome: Option<Outcome>,
    /// The task's events, earliest first (at most 100).
    pub timeline: Vec<TimelineItem>,
}

/// The signal a suspended task waits for (`POST /v1/tasks/{id}/signals/{signal}` sends it).
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitingFor {
    pub signal: String,
    /// When the wait ends without the signal; the agent type's `on_signal_timeout` says what
    /// happens then.
    pub timeout_at_ms: i64,
    /// The attempt the signal will start.
    pub attempt: i32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    pub percent: Option<f32>,
    pub message: Option<String>,
    pub attempt: i32,
    pub at_ms: i64,
}

/// How a task ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct Outcome {
    /// A terminal status: completed, failed, dead_lettered, cancelled or expired.
    #[schema(inline)]
    pub status: TaskStatus,
    pub at_ms: i64,
    pub attempt: Option<i32>,
    /// The agent's output (completed).
    pub output: Value,
    pub duration_ms: Option<i64>,
    /// Why it failed (failed, dead_lettered).
    pub error_kind: Option<String>,
    pub message: Option<String>,
    /// What the completed attempt consumed, as its agent reported it; `null` when it did not.
    pub usage: Option<Usage>,
}

/// Tokens and cost one completed attempt reported.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model: Option<String>,
    /// Millionths of `currency`'s unit (1 USD = 1000000).
    pub cost_micros: Option<u64>,
    /// ISO 4217 code of `cost_micros`.
    pub currency: Option<String>,
    /// Provider-specific counts (cached_input_tokens, …).
    pub counters: BTreeMap<String, u64>,
}

impl From<&UsageView> for Usage {
    fn from(u: &UsageView) -> Usage {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            model: u.model.clone(),
            cost_micros: u.cost_micros,
            currency: u.currency.clone(),
            counters: u.counters.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineItem {
    pub at_ms: i64,
    /// The event's name (TaskSubmitted, TaskStarted, ...).
    pub event: String,
    pub attempt: Option<i32>,
    pub agent_id: Option<String>,
    pub detail: Option<String>,
}

impl From<&OutcomeView> for Outcome {
    fn from(o: &OutcomeView) -> Outcome {
        Outcome {
            status: o.status,
            at_ms: ms(o.at_us),
            attempt: o.attempt,
            output: json_text(&o.output),
            duration_ms: o.duration_ms,
            error_kind: o.error_kind.clone(),
            message: o.message.clone(),
            usage: o.usage.as_ref().map(Usage::from),
        }
    }
}

impl From<&TaskView> for Task {
    fn from(view: &TaskView) -> Task {
        Task {
            task_id: view.task_id.clone(),
            tenant: view.tenant.clone(),
            agent_type: view.agent_type.clone(),
            lane: view.lane.clone(),
            status: view.status,
            attempts: view.attempts,
            max_attempts: view.max_attempts,
            agent_id: view.agent_id.clone(),
            created_at_ms: (view.created_at_us != i64::MAX).then(|| ms(view.created_at_us)),
            updated_at_ms: ms(view.updated_at_us),
            job_id: view.job_id.clone(),
            parent_task_id: view.parent_task_id.clone(),
            trace_id: view.trace_id.clone(),
            idempotency_key: view.idempotency_key.clone(),
            ordering_key: view.ordering_key.clone(),
            labels: view.labels.clone(),
            input: json_text(&view.input),
            not_before_ms: view.not_before_us.map(ms),
            deadline_ms: view.deadline_us.map(ms),
            cancel_requested: view.cancel_requested,
            progress: view.progress.as_ref().map(|p| Progress { percent: p.percent, message: p.message.clone(), attempt: p.attempt, at_ms: ms(p.at_us) }),
            waiting_for: view.waiting_for.as_ref().filter(|_| view.status == TaskStatus::Waiting).map(|w| WaitingFor {
                signal: w.signal.clone(),
                timeout_at_ms: ms(w.timeout_at_us),
                attempt: w.attempt,
            }),
            outcome: view.outcome.as_ref().map(Outcome::from),
            timeline: view
                .timeline
                .iter()
                .map(|e| TimelineItem {
                    at_ms: ms(e.at_us),
                    event: e.event.clone(),
                    attempt: e.attempt,
                    agent_id: e.agent_id.clone(),
                    detail: e.detail.clone(),
                })
                .collect(),
        }
    }
}

/// A submit's answer: where the task was written, or (`duplicate`) the task an idempotency
/// key already named; with `wait_ms`, the task and its outcome when it finished in time.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Submitted {
    pub task_id: String,
    /// Set when the idempotency key named an earlier task; nothing was written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Where it was written: `topic:partition:offset` (for `GET /v1/tasks/{id}?after=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Written to `timers` (a `delay_ms`), not to its lane yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delayed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

impl Submitted {
    pub fn written(written: &Written) -> Submitted {
        Submitted {
            task_id: written.task_id.clone(),
            position: Some(format!("{}:{}:{}", written.topic, written.position.partition, written.position.offset)),
            topic: Some(written.topic.clone()),
            partition: Some(written.position.partition),
            offset: Some(written.position.offset),
            delayed: Some(written.delayed),
            ..Submitted::default()
        }
    }

    pub fn duplicate(task_id: &str, task: Option<&TaskView>) -> Submitted {
        Submitted { task_id: task_id.to_string(), duplicate: true, task: task.map(Task::from), ..Submitted::default() }
    }
}

/// A batch's answers, in the order of its tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmittedBatch {
    pub tasks: Vec<Submitted>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// A finished task's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskOutcome {
    pub task_id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancelRequested {
    pub task_id: String,
    pub cancel_requested: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    /// Where the letter is on the `dlq` topic.
    pub partition: i32,
    pub offset: i64,
    pub dead_lettered_at_ms: i64,
    pub task_id: String,
    pub agent_type: String,
    pub attempts: Option<i32>,
    pub error_kind: String,
    pub reason: String,
    /// topic/partition/offset of the command that failed.
    pub source: String,
    /// What was cut to make the letter fit the log (such a letter cannot be re-submitted).
    pub truncated: Option<String>,
    /// The task's status now (not `dead_lettered` once it was re-submitted and ran again).
    #[schema(inline)]
    pub task_status: Option<TaskStatus>,
}

impl DeadLetter {
    pub fn new(letter: &DeadLetterView, task: Option<&TaskView>) -> DeadLetter {
        DeadLetter {
            partition: letter.partition,
            offset: letter.offset,
            dead_lettered_at_ms: letter.timestamp_ms,
            task_id: letter.task_id.clone(),
            agent_type: letter.agent_type.clone(),
            attempts: letter.attempts,
            error_kind: letter.error_kind.clone(),
            reason: letter.reason.clone(),
            source: letter.source.clone(),
            truncated: letter.truncated.clone(),
            task_status: task.map(|t| t.status),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    pub next_cursor: Option<String>,
}

impl DeadLetterPage {
    pub fn new(page: &LetterPage, tasks: &[Option<TaskView>]) -> DeadLetterPage {
        let dead_letters = page.letters.iter().zip(tasks).map(|(letter, task)| DeadLetter::new(letter, task.as_ref())).collect();
        DeadLetterPage { dead_letters, next_cursor: page.next_cursor.clone() }
    }
}

/// A registered agent and its load.
#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    pub agent_id: String,
    pub agent_type: Option<String>,
    #[schema(inline)]
    pub status: AgentStatus,
    pub host: Option<String>,
    pub version: Option<String>,
    pub capabilities: Vec<String>,
    pub concurrency: Option<i32>,
    pub in_flight: i32,
    pub capacity: i32,
    /// in_flight / capacity: what discovery orders by.
    pub load: f64,
    pub completed_total: i64,
    pub failed_total: i64,
    pub cpu_percent: f64,
    pub memory_bytes: i64,
    pub registered_at_ms: Option<i64>,
    pub last_heartbeat_at_ms: Option<i64>,
}

impl From<&AgentView> for Agent {
    fn from(a: &AgentView) -> Agent {
        Agent {
            agent_id: a.agent_id.clone(),
            agent_type: a.agent_type.clone(),
            status: a.state,
            host: a.host.clone(),
            version: a.version.clone(),
            capabilities: a.capabilities.clone(),
            concurrency: a.concurrency,
            in_flight: a.in_flight,
            capacity: a.capacity,
            load: a.load(),
            completed_total: a.completed_total,
            failed_total: a.failed_total,
            cpu_percent: a.cpu_percent,
            memory_bytes: a.memory_bytes,
            registered_at_ms: a.registered_at_us.map(ms),
            last_heartbeat_at_ms: a.last_heartbeat_at_us.map(ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<Agent>,
}

/// A declared agent type.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentType {
    pub name: String,
    pub description: String,
    /// How it runs: `{"kind": ...}`, with its configuration for admin tenants (credentials
    /// masked).
    pub runtime: Value,
    pub concurrency: u32,
    pub timeout_ms: u64,
    #[schema(value_type = Object)]
    pub retry: Value,
    /// The lanes it reads, highest priority first.
    pub lanes: Vec<String>,
    pub partitions: i32,
    pub input_schema: Option<Value>,
    pub exactly_once: bool,
    /// Tasks waiting per lane (lag of group `agents.<type>`).
    pub lag: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentTypeList {
    pub agent_types: Vec<AgentType>,
}

/// A job (a batch of tasks submitted together) and how far it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobSummary {
    pub job_id: String,
    pub total: i32,
    pub submitted_at_ms: Option<i64>,
    pub completed: Option<i32>,
    pub failed: Option<i32>,
    pub completed_at_ms: Option<i64>,
}

impl From<&JobView> for JobSummary {
    fn from(j: &JobView) -> JobSummary {
        JobSummary {
            job_id: j.job_id.clone(),
            total: j.total,
            submitted_at_ms: j.submitted_at_us.map(ms),
            completed: j.completed,
            failed: j.failed,
            completed_at_ms: j.completed_at_us.map(ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    #[serde(flatten)]
    pub summary: JobSummary,
    pub task_ids: Vec<String>,
    /// Its tasks counted by status.
    pub tasks_by_status: BTreeMap<String, u64>,
    pub done: bool,
}

/// Latency percentiles in ms; only `count` when nothing was measured.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Percentiles {
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

impl From<Option<hdrhistogram::Histogram<u64>>> for Percentiles {
    fn from(h: Option<hdrhistogram::Histogram<u64>>) -> Percentiles {
        match h {
            Some(h) if !h.is_empty() => Percentiles {
                count: h.len(),
                p50: Some(h.value_at_quantile(0.5)),
                p90: Some(h.value_at_quantile(0.9)),
                p99: Some(h.value_at_quantile(0.99)),
                p999: Some(h.value_at_quantile(0.999)),
                max: Some(h.max()),
            },
            _ => Percentiles::default(),
        }
    }
}

/// One agent type's tasks of this tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TypeStats {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Retries scheduled.
    pub retries: u64,
    pub submit_to_outcome_ms: Percentiles,
    pub run_duration_ms: Percentiles,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantStats {
    pub name: String,
    pub submitted: u64,
    pub finished: u64,
    /// Submitted and not finished: what `api.max_in_flight` limits.
    pub open: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionStats {
    pub caught_up: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub agent_types: BTreeMap<String, TypeStats>,
    pub tenant: TenantStats,
    pub usage: UsageStats,
    pub projection: ProjectionStats,
}

/// What this tenant's completed tasks consumed, as their agents reported it: in all, and per
/// agent type and model.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct UsageStats {
    /// Completed tasks that reported usage.
    pub tasks: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Cost in millionths of each currency's unit, by ISO 4217 code.
    pub cost_micros: BTreeMap<String, u64>,
    /// Ordered by agent type, then model.
    pub by_model: Vec<ModelUsage>,
}

/// Usage of one agent type's tasks on one model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelUsage {
    pub agent_type: String,
    /// `null` for tasks whose agent named no model.
    pub model: Option<String>,
    pub tasks: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: BTreeMap<String, u64>,
    /// Provider-specific counts summed (at most 32 names, the first in alphabetical order).
    pub counters: BTreeMap<String, u64>,
}

impl From<Vec<UsageCounters>> for UsageStats {
    fn from(groups: Vec<UsageCounters>) -> UsageStats {
        let mut stats = UsageStats::default();
        for g in groups {
            stats.tasks = stats.tasks.saturating_add(g.tasks);
            stats.input_tokens = stats.input_tokens.saturating_add(g.input_tokens);
            stats.output_tokens = stats.output_tokens.saturating_add(g.output_tokens);
            for (currency, cost) in &g.cost_micros {
                let sum = stats.cost_micros.entry(currency.clone()).or_default();
                *sum = sum.saturating_add(*cost);
            }
            stats.by_model.push(ModelUsage {
                agent_type: g.agent_type,
                model: g.model,
                tasks: g.tasks,
                input_tokens: g.input_tokens,
                output_tokens: g.output_tokens,
                cost_micros: g.cost_micros,
                counters: g.counters,
            });
        }
        stats
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Records the projection has yet to read; absent when the log did not answer.
    pub lag_records: Option<i64>,
    /// What readiness waits for, in words.
    pub waiting_for: Vec<String>,
    /// Under `agentlog dev`: each component's state.
    #[schema(value_type = Object)]
    pub components: BTreeMap<String, ComponentStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotTaken {
    /// Its name in the `snapshots` directory under `projection.dir`.
    pub snapshot: String,
}
