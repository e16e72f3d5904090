//! Prometheus metrics: HTTP requests by route and status with latency, plus the projection's
//! view of the platform (tasks by outcome, latency percentiles, agents by state, lag) and the
//! tasks waiting per agent type and lane (what an autoscaler reads), computed when scraped.
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
use crate::projection::measure::Measure;

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

/// How long a scrape waits for the log's watermarks and committed offsets. While a cluster is
/// down each lookup waits out its request timeout, and a scrape must still answer (without
/// the lag and the waiting tasks then), like `/readyz`.
const LOG_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tasks waiting per agent type and lane (see [`super::reads::waiting_per_lane`]).
async fn waiting_per_lane(state: &ApiState) -> Result<Vec<(LaneLabels, i64)>, String> {
    let mut out = Vec::new();
    for (name, agent) in &state.agents {
        for (lane, n) in super::reads::waiting_per_lane(state, name, agent).await.map_err(|e| e.to_string())? {
            out.push((LaneLabels { agent_type: name.clone(), lane }, n));
        }
    }
    Ok(out)
}

/// The text exposition of everything.
pub async fn render(state: &ApiState) -> Result<String, String> {
    let mut out = String::new();
    encode(&mut out, &state.metrics.registry).map_err(|e| e.to_string())?;
    // What the projection knows, as of this scrape.
    let mut registry = Registry::default();
    let store = state.projection.store();
    let tasks = Family::<OutcomeLabels, Gauge>::default();
    let latency = Family::<QuantileLabels, Gauge>::default();
    let retries = Family::<TypeLabels, Gauge>::default();
    for (agent_type, c) in store.type_counters().map_err(|e| e.to_string())? {
        retries.get_or_create(&TypeLabels { agent_type: agent_type.clone() }).set(c.retries as i64);
        for (outcome, n) in [
            ("submitted", c.submitted),
            ("completed", c.completed),
            ("failed", c.failed),
            ("dead_lettered", c.dead_lettered),
            ("cancelled", c.cancelled),
            ("expired", c.expired),
        ] {
            tasks.get_or_create(&OutcomeLabels { agent_type: agent_type.clone(), outcome: outcome.into() }).set(n as i64);
        }
        if let Some(h) = store.histogram(Measure::Latency, &agent_type).map_err(|e| e.to_string())? {
            for q in [0.5, 0.9, 0.99, 0.999] {
                latency.get_or_create(&QuantileLabels { agent_type: agent_type.clone(), quantile: q.to_string() }).set(h.value_at_quantile(q) as i64);
            }
        }
    }
    registry.register("agentlog_tasks", "tasks per agent type and outcome (from the projection)", tasks);
    registry.register("agentlog_task_retries", "retries scheduled per agent type (from the projection)", retries);
    registry.register("agentlog_task_latency_ms", "submit to outcome latency percentiles per agent type", latency);
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
    // Both lookups at once, each bounded: a scrape answers within LOG_LOOKUP_TIMEOUT.
    let (by_topic, by_lane) = tokio::join!(
        tokio::time::timeout(LOG_LOOKUP_TIMEOUT, state.projection.lag(&state.log)),
        tokio::time::timeout(LOG_LOOKUP_TIMEOUT, waiting_per_lane(state)),
    );
    if let Ok(Ok(by_topic)) = by_topic {
        for (topic, n) in by_topic {
            lag.get_or_create(&TopicLabels { topic }).set(n);
        }
    }
    if let Ok(Ok(by_lane)) = by_lane {
        for (labels, n) in by_lane {
            waiting.get_or_create(&labels).set(n);
        }
    }
    registry.register("agentlog_projection_lag_records", "records not yet applied to the projection, per source topic", lag);
    registry.register("agentlog_lane_waiting_tasks", "tasks waiting per agent type and lane: the lag of the type's worker group on the lane topic", waiting);
    encode(&mut out, &registry).map_err(|e| e.to_string())?;
    Ok(out)
}
