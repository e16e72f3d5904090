//! Prometheus metrics: HTTP requests by route and status with latency, plus the projection's
//! view of the platform (tasks by outcome, latency percentiles, agents by state, lag, the
//! tokens and cost agents reported) and the tasks waiting per agent type and lane (what an
//! autoscaler reads, with how long the oldest has waited) and the process's own CPU, memory
//! and descriptors, computed when scraped.
//! `deploy/grafana/agentlog.json` charts them; a test checks that every metric it queries is
//! here.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::ApiState;
use super::latency_buckets::{Buckets, HistogramFamily};
use crate::projection::measure::Measure;
use crate::projection::views::UsageCounters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    latency: Family<HttpLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        // 0.1 ms to ~3 s.
        let latency = Family::<HttpLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16)));
        registry.register("agentlog_http_requests", "HTTP requests answered", requests.clone());
        registry.register("agentlog_http_request_duration_seconds", "HTTP request latency", latency.clone());
        Metrics { registry, requests, latency }
    }

    fn observe(&self, labels: HttpLabels, seconds: f64) {
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }
}

/// The label of anything a client invents: a method HTTP does not define, a path no route has.
pub const OTHER: &str = "other";

/// Middleware: counts and times every request by its route template (not its raw path, so
/// task ids do not explode the label set). Every label value comes from a fixed set: a
/// client inventing methods or paths must not grow `/metrics` (each new label set is a
/// series kept for the life of the process).
pub async fn track(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_string();
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| OTHER.to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state.metrics.observe(HttpLabels { method, route, status: response.status().as_u16() }, started.elapsed().as_secs_f64());
    response
}

/// The methods HTTP defines by name, or `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => OTHER,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    agent_type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    agent_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabels {
    agent_type: String,
    quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent_type: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    agent_type: String,
    lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    agent_type: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    agent_type: String,
    model: String,
    currency: String,
}

/// The most models `/metrics` exports per agent type: models come from what agents report,
/// and each one is a series Prometheus keeps. The busiest (by tasks, then name) are exported
/// by name, the rest summed under [`OTHER_MODELS`]. When the busiest set changes, a model's
/// series and the `other` sum move, which Prometheus reads as counter resets of those series.
pub const MAX_MODELS_PER_AGENT_TYPE: usize = 20;

/// The `model` label of the usage of models past [`MAX_MODELS_PER_AGENT_TYPE`].
pub const OTHER_MODELS: &str = "other";

/// The `model` label of usage reported without a model.
pub const NO_MODEL: &str = "none";

/// Usage per agent type and model label, at most `cap` named models per agent type (see
/// [`MAX_MODELS_PER_AGENT_TYPE`]); `groups` come from the projection (all tenants).
fn usage_series(groups: Vec<UsageCounters>, cap: usize) -> Vec<(String, String, UsageCounters)> {
    let mut by_type: std::collections::BTreeMap<String, Vec<UsageCounters>> = std::collections::BTreeMap::new();
    for g in groups {
        by_type.entry(g.agent_type.clone()).or_default().push(g);
    }
    let mut out = Vec::new();
    for (agent_type, mut models) in by_type {
        models.sort_by(|a, b| b.tasks.cmp(&a.tasks).then_with(|| a.model.cmp(&b.model)));
        let rest = if models.len() > cap { models.split_off(cap) } else { Vec::new() };
        for m in models {
            let label = m.model.clone().unwrap_or_else(|| NO_MODEL.to_string());
            out.push((agent_type.clone(), label, m));
        }
        if !rest.is_empty() {
            let mut other = UsageCounters::new(&agent_type, Some(OTHER_MODELS));
            for m in rest {
                other.tasks = other.tasks.saturating_add(m.tasks);
                other.input_tokens = other.input_tokens.saturating_add(m.input_tokens);
                other.output_tokens = other.output_tokens.saturating_add(m.output_tokens);
                for (currency, cost) in m.cost_micros {
                    let sum = other.cost_micros.entry(currency).or_default();
                    *sum = sum.saturating_add(cost);
                }
            }
            out.push((agent_type, OTHER_MODELS.to_string(), other));
        }
    }
    out
}

/// How long a scrape waits for the log's watermarks and committed offsets. While a cluster is
/// down each lookup waits out its request timeout, and a scrape must still answer (without
/// the lag and the waiting tasks then), like `/readyz`.
const LOG_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tasks waiting per agent type and lane and how old the oldest is (see
/// [`super::reads::backlog_per_lane`]).
async fn backlog_per_lane(state: &ApiState) -> Result<Vec<(LaneLabels, super::reads::LaneBacklog)>, String> {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let mut out = Vec::new();
    for (name, agent) in &state.agents {
        for (lane, backlog) in super::reads::backlog_per_lane(state, name, agent, now_ms).await.map_err(|e| e.to_string())? {
            out.push((LaneLabels { agent_type: name.clone(), lane }, backlog));
        }
    }
    Ok(out)
}

/// The text exposition of everything.
pub async fn render(state: &ApiState) -> Result<String, String> {
    let mut out = String::new();
    encode(&mut out, &state.metrics.registry).map_err(|e| e.to_string())?;
    // What the projection knows, as of this scrape; and this process's CPU, memory and files.
    let mut registry = Registry::default();
    super::process_metrics::register(&mut registry);
    let store = state.projection.store();
    // Counters (exported with `_total`): they only grow, so rate() and increase() read them.
    // An outcome replaced by an earlier one (the first terminal outcome wins) is uncounted,
    // and a projection rebuilt from the log counts up from zero again: Prometheus reads both
    // as a counter reset, which rate() tolerates.
    let tasks = Family::<OutcomeLabels, Counter>::default();
    let latency = Family::<QuantileLabels, Gauge>::default();
    let retries = Family::<TypeLabels, Counter>::default();
    let mut latency_buckets = HistogramFamily::<TypeLabels>::default();
    let mut duration_buckets = HistogramFamily::<TypeLabels>::default();
    for (agent_type, c) in store.type_counters().map_err(|e| e.to_string())? {
        retries.get_or_create(&TypeLabels { agent_type: agent_type.clone() }).inc_by(c.retries);
        for (outcome, n) in [
            ("submitted", c.submitted),
            ("completed", c.completed),
            ("failed", c.failed),
            ("dead_lettered", c.dead_lettered),
            ("cancelled", c.cancelled),
            ("expired", c.expired),
        ] {
            tasks.get_or_create(&OutcomeLabels { agent_type: agent_type.clone(), outcome: outcome.into() }).inc_by(n);
        }
        if let Some(h) = store.histogram(Measure::Latency, &agent_type).map_err(|e| e.to_string())? {
            for q in [0.5, 0.9, 0.99, 0.999] {
                latency.get_or_create(&QuantileLabels { agent_type: agent_type.clone(), quantile: q.to_string() }).set(h.value_at_quantile(q) as i64);
            }
            latency_buckets.series.push((TypeLabels { agent_type: agent_type.clone() }, Buckets::of(&h)));
        }
        if let Some(h) = store.histogram(Measure::Duration, &agent_type).map_err(|e| e.to_string())? {
            duration_buckets.series.push((TypeLabels { agent_type: agent_type.clone() }, Buckets::of(&h)));
        }
    }
    registry.register(
        "agentlog_task_latency_seconds",
        "submit to outcome latency per agent type, as cumulative buckets (histogram_quantile over a rate gives a window's percentiles)",
        latency_buckets,
    );
    registry.register("agentlog_task_duration_seconds", "how long attempts ran per agent type, as cumulative buckets", duration_buckets);
    registry.register("agentlog_tasks", "tasks per agent type and outcome (from the projection)", tasks);
    registry.register("agentlog_task_retries", "retries scheduled per agent type (from the projection)", retries);
    registry.register("agentlog_task_latency_ms", "submit to outcome latency percentiles per agent type", latency);
    let usage_tasks = Family::<ModelLabels, Counter>::default();
    let input_tokens = Family::<ModelLabels, Counter>::default();
    let output_tokens = Family::<ModelLabels, Counter>::default();
    let cost = Family::<CostLabels, Counter>::default();
    for (agent_type, model, u) in usage_series(store.usage(None).map_err(|e| e.to_string())?, MAX_MODELS_PER_AGENT_TYPE) {
        let labels = ModelLabels { agent_type: agent_type.clone(), model: model.clone() };
        usage_tasks.get_or_create(&labels).inc_by(u.tasks);
        input_tokens.get_or_create(&labels).inc_by(u.input_tokens);
        output_tokens.get_or_create(&labels).inc_by(u.output_tokens);
        for (currency, micros) in u.cost_micros {
            cost.get_or_create(&CostLabels { agent_type: agent_type.clone(), model: model.clone(), currency }).inc_by(micros);
        }
    }
    registry.register("agentlog_usage_tasks", "completed tasks that reported usage, per agent type and model (from the projection)", usage_tasks);
    registry.register("agentlog_usage_input_tokens", "input tokens agents reported, per agent type and model", input_tokens);
    registry.register("agentlog_usage_output_tokens", "output tokens agents reported, per agent type and model", output_tokens);
    registry.register("agentlog_usage_cost_micros", "cost agents reported in millionths of the currency's unit, per agent type, model and currency", cost);
    let agents = Family::<AgentLabels, Gauge>::default();
    for agent in store.agents().map_err(|e| e.to_string())? {
        agents.get_or_create(&AgentLabels { agent_type: agent.agent_type.unwrap_or_default(), state: agent.state.as_str().to_string() }).inc();
    }
    registry.register("agentlog_agents", "agents per type and state", agents);
    let caught_up = Gauge::<i64>::default();
    caught_up.set(i64::from(state.projection.is_caught_up()));
    registry.register("agentlog_projection_caught_up", "1 once the projection has read the history", caught_up);
    let failing = Gauge::<i64>::default();
    failing.set(i64::from(state.projection.trouble().is_some()));
    registry.register("agentlog_projector_failing", "1 while the projector retries after a failure (the cluster unreachable, say)", failing);
    let lag = Family::<TopicLabels, Gauge>::default();
    let waiting = Family::<LaneLabels, Gauge>::default();
    let age = Family::<LaneLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    // Both lookups at once, each bounded: a scrape answers within LOG_LOOKUP_TIMEOUT.
    let (by_topic, by_lane) = tokio::join!(
        tokio::time::timeout(LOG_LOOKUP_TIMEOUT, state.projection.lag(&state.log)),
        tokio::time::timeout(LOG_LOOKUP_TIMEOUT, backlog_per_lane(state)),
    );
    if let Ok(Ok(by_topic)) = by_topic {
        for (topic, n) in by_topic {
            lag.get_or_create(&TopicLabels { topic }).set(n);
        }
    }
    if let Ok(Ok(by_lane)) = by_lane {
        for (labels, backlog) in by_lane {
            waiting.get_or_create(&labels).set(backlog.waiting);
            age.get_or_create(&labels).set(backlog.age_ms as f64 / 1000.0);
        }
    }
    registry.register("agentlog_projection_lag_records", "records not yet applied to the projection, per source topic", lag);
    registry.register("agentlog_lane_waiting_tasks", "tasks waiting per agent type and lane: the lag of the type's worker group on the lane topic", waiting);
    registry.register(
        "agentlog_lane_backlog_age_seconds",
        "age of the oldest task waiting per agent type and lane (0 when none waits): when it was written to the lane",
        age,
    );
    encode(&mut out, &registry).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(agent_type: &str, model: Option<&str>, tasks: u64) -> UsageCounters {
        let mut g = UsageCounters::new(agent_type, model);
        g.tasks = tasks;
        g.input_tokens = tasks * 10;
        g.output_tokens = tasks;
        g.cost_micros.insert("USD".into(), tasks * 100);
        g
    }

    #[test]
    fn usage_series_name_the_busiest_models_and_sum_the_rest() {
        let groups = vec![group("a", Some("m1"), 5), group("a", Some("m2"), 1), group("a", Some("m3"), 7), group("a", None, 2), group("b", Some("m1"), 1)];
        let series = usage_series(groups, 2);
        let labels: Vec<(&str, &str, u64)> = series.iter().map(|(t, m, u)| (t.as_str(), m.as_str(), u.tasks)).collect();
        assert_eq!(labels, [("a", "m3", 7), ("a", "m1", 5), ("a", OTHER_MODELS, 3), ("b", "m1", 1)]);
        let other = &series[2].2;
        assert_eq!((other.input_tokens, other.output_tokens, other.cost_micros.get("USD")), (30, 3, Some(&300)));
        let unnamed = usage_series(vec![group("a", None, 1)], 2);
        assert_eq!(unnamed[0].1, NO_MODEL);
    }
}
