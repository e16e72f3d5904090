//! `GET /v1/tasks/{id}?after=topic:partition:offset` (read your writes): a position a submit
//! returned answers once the projection has applied it; a position that was never written is
//! a 400 naming `after`, never a wait ending in a 5xx.

use crate::fixture;
use crate::harness;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use agentlog::api::{ApiConfig, ApiState, bind, serve};
use agentlog::events::Lane;
use agentlog::projection::{Projection, ProjectionStore, sources};

use fixture::Fixture;
use harness::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_waits_for_real_positions_and_rejects_unwritten_ones() {
    let mut h = Harness::embedded();
    let f = Fixture::new(&h).await;
    // Positions hold only `.`, `-`, `:` and alphanumerics: no query escaping needed.
    // No worker: the task stays queued, which is all read-your-writes needs.
    let (echo, echo_agent) = f.agent_type_named("echo", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    let mut agents = BTreeMap::new();
    agents.insert(echo.clone(), echo_agent);
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("projection dir");
    let projection = Projection::new(ProjectionStore::open(dir.path()).expect("projection store"), sources(&f.topics, &agents)).expect("projection");
    let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
    let state = Arc::new(ApiState::new(f.log.clone(), f.client.clone(), agents, projection, ApiConfig::default()).expect("api state"));
    let listener = bind(&ApiConfig { listen: "127.0.0.1:0".into(), ..ApiConfig::default() }).await.expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(serve(listener, state, 64 * 1024, stop.clone()));
    let http = reqwest::Client::new();

    let answer = http.post(format!("{base}/v1/tasks")).json(&json!({"agent_type": echo, "input": {}})).send().await.expect("submit");
    assert_eq!(answer.status(), 202);
    let submitted: Value = answer.json().await.expect("json");
    let task_id = submitted["task_id"].as_str().expect("task_id");
    let position = submitted["position"].as_str().expect("position");
    let read = http.get(format!("{base}/v1/tasks/{task_id}?after={position}")).send().await.expect("read");
    assert_eq!(read.status(), 200, "read after {position}");

    let lane = f.topics.lane(&echo, Lane::Normal);
    let unwritten = [
        ("nope:0:0".to_string(), "does not read topic"),
        (format!("{lane}:9999:0"), "no partition 9999"),
        (format!("{lane}:0:1000000"), "offsets below"),
        (format!("{lane}:0:-1"), "offsets below"),
    ];
    for (after, says) in unwritten {
        let answer = http.get(format!("{base}/v1/tasks/{task_id}?after={after}&wait_ms=30000")).send().await.expect("answer");
        assert_eq!(answer.status(), 400, "after={after}");
        let body: Value = answer.json().await.expect("json error");
        assert_eq!(body["error"]["field"], "after", "after={after}: {body}");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains(says), "after={after}: {body}");
    }

    stop.cancel();
    server.await.expect("server task").expect("server");
    projector.await.expect("projector task").expect("projector");
    f.stop().await;
    h.release().await;
}
