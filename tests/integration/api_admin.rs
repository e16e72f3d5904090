//! Replay while serving: `POST /v1/admin/replay` rebuilds the projection from the log into a
//! new generation and swaps it in; reads keep answering during and after, the projector
//! continues on the new generation, and a restart opens the generation that was swapped in.
//! `POST /v1/admin/snapshots` makes a checkpoint that restores.

use crate::fixture;
use crate::harness;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use agentlog::agent::runtime::build;
use agentlog::api::admin::{AdminContext, ReplayState};
use agentlog::api::{ApiConfig, ApiState, bind, serve};
use agentlog::projection::{Generations, Projection, sources};

use fixture::Fixture;
use harness::Harness;

async fn submit_and_wait(http: &reqwest::Client, base: &str, agent_type: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let answer =
            http.post(format!("{base}/v1/tasks?wait_ms=10000")).json(&json!({"agent_type": agent_type, "input": {"i": i}})).send().await.expect("submit");
        let status = answer.status();
        let text = answer.text().await.expect("answer");
        assert_eq!(status, 200, "task {i} finished within the wait: {text}");
        let body: Value = serde_json::from_str(&text).expect("json");
        ids.push(body["task_id"].as_str().expect("id").to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_swaps_in_a_rebuilt_generation_while_serving() {
    let mut h = Harness::embedded();
    let mut f = Fixture::new(&h).await;
    let (echo, echo_agent) = f.agent_type_named("echo", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    f.start_worker(&echo, &echo_agent, build(&echo_agent.runtime, Duration::from_secs(5)).expect("echo"), "echo-1");
    let mut agents = BTreeMap::new();
    agents.insert(echo.clone(), echo_agent);
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("projection dir");
    let generations = Arc::new(Generations::new(dir.path()).expect("generations"));
    let projection = Projection::new(generations.open_current().expect("open"), sources(&f.topics, &agents)).expect("projection");
    let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
    let state = ApiState::new(f.log.clone(), f.client.clone(), agents, projection.clone(), ApiConfig::default())
        .expect("api state")
        .with_admin(AdminContext::new(generations.clone(), f.codec.clone()));
    let listener = bind(&ApiConfig { listen: "127.0.0.1:0".into(), ..ApiConfig::default() }).await.expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(serve(listener, Arc::new(state), 64 * 1024, stop.clone()));
    let http = reqwest::Client::new();

    let before = submit_and_wait(&http, &base, &echo, 20).await;
    assert_eq!(generations.current().expect("current"), 0);
    let answer = http.post(format!("{base}/v1/admin/replay")).send().await.expect("replay");
    assert_eq!(answer.status(), 202);
    // While it runs, reads keep answering.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let read = http.get(format!("{base}/v1/tasks/{}", before[0])).send().await.expect("read during replay");
        assert_eq!(read.status(), 200);
        let status: Value = http.get(format!("{base}/v1/admin/replay")).send().await.expect("status").json().await.expect("json");
        if status["state"] != "running" {
            break status;
        }
        assert!(Instant::now() < deadline, "replay did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["state"], "done", "{status}");
    assert!(status["events"].as_u64().unwrap_or(0) >= 60, "the replay applied the history: {status}");
    assert_eq!(generations.current().expect("current"), 1, "the rebuilt generation is current");
    // The swapped-in generation has everything, and the projector follows it.
    for id in &before {
        let task: Value = http.get(format!("{base}/v1/tasks/{id}")).send().await.expect("read").json().await.expect("json");
        assert_eq!(task["status"], "completed", "{task}");
    }
    let after = submit_and_wait(&http, &base, &echo, 5).await;
    let stats: Value = http.get(format!("{base}/v1/stats")).send().await.expect("stats").json().await.expect("json");
    assert_eq!(stats["agent_types"][&echo]["completed"], json!(25), "counted once each across the swap: {stats}");

    // A snapshot restores as a new generation.
    let answer = http.post(format!("{base}/v1/admin/snapshots")).send().await.expect("snapshot");
    assert_eq!(answer.status(), 201);
    let snapshot: Value = answer.json().await.expect("json");
    // A name in the snapshots directory, never the server's absolute path.
    let root = dir.path().to_str().expect("utf-8 temp dir");
    assert!(!snapshot.to_string().contains(root) && !snapshot.to_string().contains("\"/"), "an absolute server path in {snapshot}");
    let name = snapshot["snapshot"].as_str().expect("snapshot name");
    assert!(name.starts_with("snap-") && !name.contains('/'), "{snapshot}");
    stop.cancel();
    server.await.expect("server task").expect("server");
    projector.await.expect("projector task").expect("projector");
    drop(projection);
    let restored = generations.restore(&generations.snapshots_dir().join(name)).expect("restore");
    assert_eq!(restored, 2);
    let store = generations.open_current().expect("open restored");
    for id in before.iter().chain(&after) {
        assert_eq!(store.task(agentlog::http::access::DEFAULT_TENANT, id).expect("read").map(|t| t.status.as_str()), Some("completed"), "{id} in the snapshot");
    }
    assert!(!dir.path().join("gen-0").exists() && !dir.path().join("gen-1").exists(), "older generations are removed at open");
    drop(store);
    f.stop().await;
    h.release().await;
}

/// Shutting the API down while a replay runs waits for the replay to let go: when `serve`
/// returns, the replay is over (abandoned, or done if it won the race), never still running
/// beside a process that is about to close the projection under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_running_replay() {
    let mut h = Harness::embedded();
    let mut f = Fixture::new(&h).await;
    let (echo, echo_agent) = f.agent_type_named("echo", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    f.start_worker(&echo, &echo_agent, build(&echo_agent.runtime, Duration::from_secs(5)).expect("echo"), "echo-1");
    let agents = BTreeMap::from([(echo.clone(), echo_agent)]);
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().expect("projection dir");
    let generations = Arc::new(Generations::new(dir.path()).expect("generations"));
    let projection = Projection::new(generations.open_current().expect("open"), sources(&f.topics, &agents)).expect("projection");
    let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
    let state = Arc::new(
        ApiState::new(f.log.clone(), f.client.clone(), agents, projection.clone(), ApiConfig::default())
            .expect("api state")
            .with_admin(AdminContext::new(generations.clone(), f.codec.clone())),
    );
    let listener = bind(&ApiConfig { listen: "127.0.0.1:0".into(), ..ApiConfig::default() }).await.expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(serve(listener, state.clone(), 64 * 1024, stop.clone()));
    let http = reqwest::Client::new();
    submit_and_wait(&http, &base, &echo, 50).await;

    let answer = http.post(format!("{base}/v1/admin/replay")).send().await.expect("replay");
    assert_eq!(answer.status(), 202);
    stop.cancel();
    server.await.expect("server task").expect("server");
    let replay = state.admin.as_ref().expect("admin context").replay_state();
    assert!(!matches!(replay, ReplayState::Running { .. } | ReplayState::Never), "serve returned with the replay {replay:?}");
    projector.await.expect("projector task").expect("projector");
    drop(projection);
    f.stop().await;
    h.release().await;
}
