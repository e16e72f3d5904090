//! The HTTP API on a real port over the embedded log, with a real worker and supervisor:
//! submit and wait, the 400s that name the field (and write nothing), 413, cancel, DLQ, and
//! the refusal to bind beyond loopback, and `/readyz` showing supervised components.

use crate::fixture;
use crate::harness;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use agentlog::agent::runtime::build;
use agentlog::api::{ApiConfig, ApiStartError, ApiState, bind, serve};
use agentlog::components::{ComponentBoard, Components, RestartPolicy};
use agentlog::events::Lane;
use agentlog::log::TopicPartition;
use agentlog::projection::{Projection, ProjectionStore, sources};

use fixture::Fixture;
use harness::Harness;

const MAX_BODY: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_validate_cancel_and_dlq_over_http() {
    let mut h = Harness::embedded();
    let mut f = Fixture::new(&h).await;
    let (echo, echo_agent) = f.agent_type_named("echo", "runtime = { kind = \"builtin\", name = \"echo\" }\nlanes = [\"high\", \"normal\"]\n").await;
    f.start_worker(&echo, &echo_agent, build(&echo_agent.runtime, Duration::from_secs(5)).expect("echo"), "echo-1");
    f.start_supervisor(3);
    let mut agents = BTreeMap::new();
    agents.insert(echo.clone(), echo_agent.clone());
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("projection dir");
    let projection = Projection::new(ProjectionStore::open(dir.path()).expect("projection store"), sources(&f.topics, &agents)).expect("projection");
    let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
    let state = Arc::new(ApiState::new(f.log.clone(), f.client.clone(), agents, projection, ApiConfig::default()).expect("api state"));
    let config = ApiConfig { listen: "127.0.0.1:0".into(), ..ApiConfig::default() };
    let listener = bind(&config).await.expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(serve(listener, state, MAX_BODY, stop.clone()));
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();

    // Submit and wait: the outcome comes back in the answer.
    let answer = post("/v1/tasks?wait_ms=10000", json!({"agent_type": echo, "input": {"q": 1}, "lane": "high"})).await.expect("submit");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["outcome"]["status"], "completed");
    assert_eq!(body["outcome"]["output"], json!({"q": 1}));
    assert_eq!(body["topic"], f.topics.lane(&echo, Lane::High));

    // Rejected requests name the field and write nothing.
    let lane_topic = f.topics.lane(&echo, Lane::Normal);
    let before = lane_high_watermarks(&f, &lane_topic).await;
    let cases = [
        (json!({"agent_type": "summarize", "input": {}}), "agent_type", "known: echo"),
        (json!({"agent_type": echo, "input": {}, "lane": "fast"}), "lane", "unknown lane `fast` (known: critical, high, normal, low)"),
        (json!({"agent_type": echo, "input": {}, "lane": "low"}), "lane", "does not read lane `low`"),
        (json!({"agent_type": echo, "input": {}, "deadline_ms": 0}), "deadline_ms", "already passed"),
        (json!({"agent_type": echo, "input": {}, "max_attempts": 0}), "max_attempts", "at least 1"),
        (json!({"agent_type": echo, "input": {}, "colour": "red"}), "body", "unknown field `colour`"),
        (json!({"input": {}}), "body", "missing field `agent_type`"),
        // Out of range: above i64::MAX they wrapped negative (a delay that ran at once).
        (json!({"agent_type": echo, "input": {}, "delay_ms": u64::MAX}), "delay_ms", "at most 604800000"),
        (json!({"agent_type": echo, "input": {}, "delay_ms": 604_800_001u64}), "delay_ms", "at most 604800000"),
        (json!({"agent_type": echo, "input": {}, "deadline_ms": 9_223_372_036_854_775_808u64}), "deadline_ms", "at most"),
        // Size caps (defaults): what a task keeps for its whole life.
        (json!({"agent_type": echo, "input": {}, "idempotency_key": "k".repeat(257)}), "idempotency_key", "api.max_idempotency_key_bytes"),
        (json!({"agent_type": echo, "input": {}, "ordering_key": "o".repeat(257)}), "ordering_key", "api.max_ordering_key_bytes"),
        (json!({"agent_type": echo, "input": {}, "labels": many_labels(65)}), "labels", "api.max_labels"),
        (
            json!({"agent_type": echo, "input": {}, "labels": Value::Object([("k".repeat(129), json!("v"))].into_iter().collect())}),
            "labels",
            "api.max_label_key_bytes",
        ),
        (json!({"agent_type": echo, "input": {}, "labels": {"team": "v".repeat(1025)}}), "labels.team", "api.max_label_value_bytes"),
    ];
    for (request, field, says) in cases {
        let answer = post("/v1/tasks", request.clone()).await.expect("answer");
        assert_eq!(answer.status(), 400, "{request}");
        let body: Value = answer.json().await.expect("json error");
        assert_eq!(body["error"]["field"], field, "{request}: {body}");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains(says), "{request}: {body}");
    }
    let malformed = http.post(format!("{base}/v1/tasks")).header("content-type", "application/json").body("{\"agent_type\": ").send().await.expect("answer");
    assert_eq!(malformed.status(), 400);
    let oversized = json!({"agent_type": echo, "input": {"blob": "x".repeat(MAX_BODY)}});
    assert_eq!(post("/v1/tasks", oversized).await.expect("answer").status(), 413);
    assert_eq!(lane_high_watermarks(&f, &lane_topic).await, before, "nothing was written for rejected requests");

    // Cancel a delayed task: its timer is dropped and the outcome says cancelled.
    let answer = post("/v1/tasks", json!({"agent_type": echo, "input": {}, "delay_ms": 20000})).await.expect("submit");
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["delayed"], true);
    let id = body["task_id"].as_str().expect("id").to_string();
    // A reason past the cap is refused, naming the field and the key; the task is not cancelled.
    let answer = post(&format!("/v1/tasks/{id}/cancel"), json!({"reason": "r".repeat(1025)})).await.expect("cancel");
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("json error");
    assert_eq!(body["error"]["field"], "reason", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("api.max_cancel_reason_bytes"), "{body}");
    assert_eq!(post(&format!("/v1/tasks/{id}/cancel"), json!({"reason": "changed my mind"})).await.expect("cancel").status(), 202);
    let outcome: Value = http.get(format!("{base}/v1/tasks/{id}/outcome?wait_ms=10000")).send().await.expect("outcome").json().await.expect("json");
    assert_eq!(outcome["status"], "cancelled");
    assert_eq!(outcome["message"], "changed my mind");
    let unknown = http.get(format!("{base}/v1/tasks/no-such-task/outcome")).send().await.expect("outcome");
    assert_eq!(unknown.status(), 404);

    let dlq: Value = http.get(format!("{base}/v1/dlq")).send().await.expect("dlq").json().await.expect("json");
    assert_eq!(dlq["dead_letters"], json!([]));
    assert_eq!(post("/v1/dlq/no-such-task/resubmit", json!({})).await.expect("resubmit").status(), 404);

    stop.cancel();
    server.await.expect("server task").expect("server");
    projector.await.expect("projector task").expect("projector");
    f.stop().await;
    h.release().await;
}

fn many_labels(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("l{i}"), json!("v"))).collect())
}

async fn lane_high_watermarks(f: &Fixture, topic: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for p in 0..fixture::PARTITIONS {
        out.push(f.log.admin().watermarks(&TopicPartition::new(topic, p)).await.expect("watermarks").high);
    }
    out
}

#[tokio::test]
async fn the_api_refuses_to_bind_beyond_loopback() {
    let config = ApiConfig { listen: "0.0.0.0:0".into(), ..ApiConfig::default() };
    assert!(matches!(bind(&config).await, Err(ApiStartError::NotLoopback(_))));
    let config = ApiConfig { listen: "localhost-ish".into(), ..ApiConfig::default() };
    assert!(matches!(bind(&config).await, Err(ApiStartError::BadAddress(_))));
}

/// `/readyz` shows the supervised components of the process (as `agentlog dev` runs them):
/// a component whose run failed answers 503 naming it and its error while it waits out its
/// back-off, then 200 once it runs again, its restart and last error kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_shows_a_failed_component_restarting_then_running() {
    let mut h = Harness::embedded();
    let f = Fixture::new(&h).await;
    let agents = BTreeMap::new();
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("projection dir");
    let projection = Projection::new(ProjectionStore::open(dir.path()).expect("projection store"), sources(&f.topics, &agents)).expect("projection");
    let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
    let board = ComponentBoard::default();
    let state =
        Arc::new(ApiState::new(f.log.clone(), f.client.clone(), agents, projection, ApiConfig::default()).expect("api state").with_components(board.clone()));
    let listener = bind(&ApiConfig { listen: "127.0.0.1:0".into(), ..ApiConfig::default() }).await.expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(serve(listener, state, MAX_BODY, stop.clone()));
    let http = reqwest::Client::new();
    let readyz = || async {
        let answer = http.get(format!("{base}/readyz")).send().await.expect("readyz");
        (answer.status().as_u16(), answer.json::<Value>().await.expect("json"))
    };

    let policy = RestartPolicy { first: Duration::from_secs(2), max: Duration::from_secs(2), healthy_after: Duration::from_secs(60) };
    let mut group = Components::new(board.clone(), policy);
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    group.spawn("flaky", move |stop: CancellationToken| {
        let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if run == 1 {
                return Err(std::io::Error::other("disk on fire"));
            }
            stop.cancelled().await;
            Ok(())
        }
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    let restarting = loop {
        let (status, body) = readyz().await;
        if body["components"]["flaky"]["state"] == "restarting" {
            assert_eq!(status, 503, "{body}");
            break body;
        }
        assert!(Instant::now() < deadline, "never saw the component restarting: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let flaky = &restarting["components"]["flaky"];
    assert_eq!((flaky["last_error"].as_str(), flaky["failures_in_a_row"].as_u64()), (Some("disk on fire"), Some(1)), "{restarting}");
    assert!(flaky["next_start_ms"].as_i64().is_some(), "{restarting}");
    let waiting = restarting["waiting_for"].to_string();
    assert!(waiting.contains("flaky") && waiting.contains("disk on fire"), "{waiting}");

    let ready = loop {
        let (status, body) = readyz().await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "not ready again after the restart: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let flaky = &ready["components"]["flaky"];
    assert_eq!(
        (flaky["state"].as_str(), flaky["restarts"].as_u64(), flaky["last_error"].as_str()),
        (Some("running"), Some(1), Some("disk on fire")),
        "{ready}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    assert!(group.stop().await.is_empty());
    stop.cancel();
    server.await.expect("server task").expect("server");
    projector.await.expect("projector task").expect("projector");
    f.stop().await;
    h.release().await;
}
