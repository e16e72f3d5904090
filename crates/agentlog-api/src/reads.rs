//! Agents (discovery ordered by load), agent types with lag per lane, jobs and stats.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use super::answers;
use super::auth::Tenant;
use super::tasks::{page_limit, query_error};
use super::{ApiState, store_failed};
use crate::agent::AgentTypeConfig;
use crate::http::error::ApiError;
use crate::log::LogResult;
use crate::log::lag::group_lag;
use crate::projection::measure::Measure;
use crate::projection::store::{JOB_CURSOR_MIN, unhex};
use crate::projection::views::{AgentStatus, AgentView, TaskStatus};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentQuery {
    #[serde(default)]
    pub agent_type: Option<String>,
    /// Agents that declared this capability.
    #[serde(default)]
    pub capability: Option<String>,
    /// unknown, starting, running, paused, draining, stopped, lost or deregistered.
    #[serde(default)]
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(AgentQuery),
    responses((status = 200, description = "agents, least loaded first", body = super::answers::AgentList), (status = 400), (status = 401)))]
pub async fn agents(
    State(state): State<Arc<ApiState>>,
    Tenant(_): Tenant,
    query: Result<Query<AgentQuery>, QueryRejection>,
) -> Result<Json<answers::AgentList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let status = query.status.as_deref().map(str::parse::<AgentStatus>).transpose().map_err(|e| ApiError::bad_field("status", e.to_string()))?;
    let mut agents: Vec<AgentView> = state
        .projection
        .store()
        .agents()
        .map_err(store_failed)?
        .into_iter()
        .filter(|a| query.agent_type.as_ref().is_none_or(|t| a.agent_type.as_ref() == Some(t)))
        .filter(|a| query.capability.as_ref().is_none_or(|c| a.capabilities.contains(c)))
        .filter(|a| status.is_none_or(|s| a.state == s))
        .collect();
    agents.sort_by(|a, b| a.load().total_cmp(&b.load()).then_with(|| a.agent_id.cmp(&b.agent_id)));
    Ok(Json(answers::AgentList { agents: agents.iter().map(answers::Agent::from).collect() }))
}

#[utoipa::path(get, path = "/v1/agent-types", tag = "agents",
    responses((status = 200, description = "the catalog, with waiting tasks (lag of group <prefix>agents.<type>) per lane; the runtime's configuration (URL, program, arguments) only for admin tenants, others see its kind", body = super::answers::AgentTypeList), (status = 401), (status = 503)))]
pub async fn agent_types(State(state): State<Arc<ApiState>>, Tenant(tenant): Tenant) -> Result<Json<answers::AgentTypeList>, ApiError> {
    // Where agents run (internal URLs, programs and their arguments) is operators' business.
    let admin_view = state.is_admin(&tenant);
    let mut types = Vec::new();
    for (name, agent) in &state.agents {
        let lag = waiting_per_lane(&state, name, agent).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        // Even admins see credentials in URLs and exec environment values masked.
        let runtime = agent.runtime.shown();
        let runtime = if admin_view { runtime } else { json!({"kind": runtime["kind"]}) };
        types.push(answers::AgentType {
            name: name.clone(),
            description: agent.description.clone(),
            runtime,
            concurrency: agent.concurrency,
            timeout_ms: agent.timeout_ms,
            retry: serde_json::to_value(&agent.retry).map_err(|e| ApiError::internal(e.to_string()))?,
            lanes: agent.lanes_by_priority().map(|lane| lane.as_str().to_string()).collect(),
            partitions: agent.partitions,
            input_schema: agent.input_schema.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok()),
            exactly_once: agent.exactly_once,
            lag,
        });
    }
    Ok(Json(answers::AgentTypeList { agent_types: types }))
}

/// Tasks waiting on each lane of agent type `name`, by lane name: the lag of the type's worker
/// group on the lane topic. `GET /v1/agent-types` shows it, `/metrics` exports it.
pub(crate) async fn waiting_per_lane(state: &ApiState, name: &str, agent: &AgentTypeConfig) -> LogResult<BTreeMap<String, i64>> {
    let admin = state.log.admin();
    let group = state.client.topics().worker_group(name);
    let mut lag = BTreeMap::new();
    for lane in agent.lanes_by_priority() {
        let topic = state.client.topics().lane(name, lane);
        let partitions = group_lag(admin.as_ref(), &group, &topic).await?;
        lag.insert(lane.as_str().to_string(), partitions.iter().map(|p| p.lag).sum::<i64>());
    }
    Ok(lag)
}

/// What waits on one lane of an agent type: how many tasks, and how old the oldest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LaneBacklog {
    pub waiting: i64,
    /// Milliseconds since the oldest waiting task was written (0 when none waits): what an
    /// autoscaler reads beside the count (ten tasks waiting an hour are not ten waiting 1 s).
    pub age_ms: i64,
}

/// [`waiting_per_lane`] with each lane's backlog age: the timestamp of the record at the
/// group's position on each partition that lags, the oldest of them.
pub(crate) async fn backlog_per_lane(state: &ApiState, name: &str, agent: &AgentTypeConfig, now_ms: i64) -> LogResult<BTreeMap<String, LaneBacklog>> {
    let admin = state.log.admin();
    let group = state.client.topics().worker_group(name);
    let mut out = BTreeMap::new();
    for lane in agent.lanes_by_priority() {
        let topic = state.client.topics().lane(name, lane);
        let mut backlog = LaneBacklog { waiting: 0, age_ms: 0 };
        for p in group_lag(admin.as_ref(), &group, &topic).await? {
            backlog.waiting += p.lag;
            if p.lag > 0
                && let Some(at) = admin.timestamp_at(&crate::log::TopicPartition::new(&topic, p.partition), p.high - p.lag).await?
            {
                backlog.age_ms = backlog.age_ms.max(now_ms.saturating_sub(at).max(0));
            }
        }
        out.insert(lane.as_str().to_string(), backlog);
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Page size, newest first (1 to 500, default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[param(pattern = r"^([0-9a-fA-F]{2}){8,}$")]
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobQuery),
    responses((status = 200, description = "this tenant's jobs newest first (by submit time; jobs whose submit is not projected yet last), with `next_cursor` when there are more", body = super::answers::JobPage), (status = 400, description = "a bad `limit` or `cursor` (the error names the field)"), (status = 401)))]
pub async fn jobs(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<answers::JobPage>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let limit = page_limit(query.limit)?;
    let cursor = match &query.cursor {
        Some(text) => {
            Some(unhex(text).filter(|tail| tail.len() >= JOB_CURSOR_MIN).ok_or_else(|| ApiError::bad_field("cursor", "not a cursor this API returned"))?)
        }
        None => None,
    };
    let page = state.projection.store().jobs(&tenant, cursor.as_deref(), limit).map_err(store_failed)?;
    Ok(Json(answers::JobPage { jobs: page.jobs.iter().map(answers::JobSummary::from).collect(), next_cursor: page.next_cursor }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "the job with its tasks' statuses counted", body = super::answers::Job), (status = 404), (status = 401)))]
pub async fn job(State(state): State<Arc<ApiState>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<Json<answers::Job>, ApiError> {
    let store = state.projection.store();
    let job = store.job(&tenant, &id).map_err(store_failed)?.ok_or_else(|| ApiError::not_found("no_job", format!("no job `{id}`")))?;
    let ids: Vec<&str> = job.task_ids.iter().map(String::as_str).collect();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for view in store.tasks(&tenant, &ids).map_err(store_failed)? {
        *by_status.entry(view.map_or(TaskStatus::Pending, |v| v.status).as_str().to_string()).or_default() += 1;
    }
    Ok(Json(answers::Job { summary: answers::JobSummary::from(&job), done: job.completed_at_us.is_some(), task_ids: job.task_ids, tasks_by_status: by_status }))
}

#[utoipa::path(get, path = "/v1/stats", tag = "stats",
    responses((status = 200, description = "this tenant's tasks per agent type: outcomes counted, retries scheduled and latency percentiles (ms); its open tasks; the tokens and cost its completed tasks reported, in all and per agent type and model", body = super::answers::Stats), (status = 401)))]
pub async fn stats(State(state): State<Arc<ApiState>>, Tenant(tenant): Tenant) -> Result<Json<answers::Stats>, ApiError> {
    let store = state.projection.store();
    let mut types = BTreeMap::new();
    // Only this tenant's tasks: other tenants' volumes and latencies are theirs.
    for (agent_type, counters) in store.tenant_type_counters(&tenant).map_err(store_failed)? {
        types.insert(
            agent_type.clone(),
            answers::TypeStats {
                submitted: counters.submitted,
                completed: counters.completed,
                failed: counters.failed,
                dead_lettered: counters.dead_lettered,
                cancelled: counters.cancelled,
                expired: counters.expired,
                retries: counters.retries,
                submit_to_outcome_ms: store.tenant_histogram(Measure::Latency, &tenant, &agent_type).map_err(store_failed)?.into(),
                run_duration_ms: store.tenant_histogram(Measure::Duration, &tenant, &agent_type).map_err(store_failed)?.into(),
            },
        );
    }
    let tenant_counters = store.tenant_counters(&tenant).map_err(store_failed)?;
    // Like the counters above, only this tenant's usage (admin tenants too: /metrics has all).
    let usage = store.usage(Some(&tenant)).map_err(store_failed)?.into();
    Ok(Json(answers::Stats {
        agent_types: types,
        usage,
        tenant: answers::TenantStats { submitted: tenant_counters.submitted, finished: tenant_counters.terminal, open: tenant_counters.open(), name: tenant },
        projection: answers::ProjectionStats { caught_up: state.projection.is_caught_up() },
    }))
}
