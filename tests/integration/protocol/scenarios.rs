use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use agentlog::agent::AgentTypeConfig;
use agentlog::agent::runtime::build;
use agentlog::api::{ApiConfig, ApiStartError, ApiState, bind, serve};
use agentlog::projection::{Projection, ProjectionStore, ProjectorError, sources};

use crate::fixture::Fixture;
use crate::harness::Harness;

const WITHIN: Duration = Duration::from_secs(30);
const CHUNKS: usize = 20;

/// When the agent was called and the checkpoint it was handed, per task id (one entry per call).
type Calls = Arc<Mutex<BTreeMap<String, Vec<(Instant, Value)>>>>;

/// A local agent speaking the protocol. Its input says what to answer: `stream` (progress,
/// `CHUNKS` text chunks 30 ms apart, a JSON chunk, a result), `limited` (first attempt: an
/// `error` frame asking for 1.5 s, then a result), `typed` (a non-retryable error frame),
/// `broken` (a chunk, then a line that is not JSON), `plain` (a plain JSON answer), `steps`
/// (a multi-step agent: with no checkpoint it saves step 1 and fails, retryably; from step 1
/// it saves step 2 and hangs, for the test to crash its worker; from step 2 it finishes),
/// `approval` (without a signal: saves a draft and suspends for `approval`, `timeout_ms` from
/// the input; resumed: answers what it received), `billed` (a result frame reporting usage),
/// `billed_plain` (a plain answer reporting usage in its `Agentlog-Usage` header),
/// `billed_badly` (a result frame whose usage has a fractional token count).
async fn protocol_agent() -> (String, Calls, JoinHandle<()>) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let app = Router::new().route(
        "/",
        post(move |body: axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                let task_id = body["task_id"].as_str().unwrap_or_default().to_string();
                let attempt = body["attempt"].as_u64().unwrap_or_default();
                seen.lock().unwrap().entry(task_id).or_default().push((Instant::now(), body["checkpoint"].clone()));
                let step = body["checkpoint"]["step"].as_u64();
                let mode = body["input"]["mode"].as_str().unwrap_or_default().to_string();
                let lines: Vec<(u64, String)> = match mode.as_str() {
                    "stream" => {
                        let mut lines = vec![(0, json!({"type": "progress", "percent": 0, "message": "calling the model"}).to_string())];
                        lines.extend((0..CHUNKS).map(|i| (30, json!({"type": "chunk", "text": format!("t{i} ")}).to_string())));
                        lines.push((0, json!({"type": "chunk", "json": {"done": true}}).to_string()));
                        lines.push((0, json!({"type": "result", "output": {"tokens": CHUNKS}}).to_string()));
                        lines
                    }
                    "limited" if attempt == 1 => vec![(
                        0,
                        json!({"type": "error", "kind": "transient", "message": "rate limited", "retryable": true, "retry_after_ms": 1500}).to_string(),
                    )],
                    "limited" => vec![(0, json!({"type": "result", "output": "fine", "output_encoding": "utf8"}).to_string())],
                    "typed" => vec![(0, json!({"type": "error", "kind": "bad_input", "message": "no text to summarize"}).to_string())],
                    "billed" => vec![(
                        0,
                        json!({"type": "result", "output": {"billed": true}, "usage": {"input_tokens": 120, "output_tokens": 30, "model": "gpt-x",
                            "cost_micros": 210, "currency": "USD", "counters": {"cached_input_tokens": 100}}})
                        .to_string(),
                    )],
                    "billed_badly" => vec![(0, json!({"type": "result", "output": 1, "usage": {"input_tokens": 1.5}}).to_string())],
                    "billed_plain" => {
                        return axum::response::Response::builder()
                            .header("content-type", "application/json")
                            .header("agentlog-usage", r#"{"input_tokens":8,"output_tokens":2,"model":"gpt-x","cost_micros":9,"currency":"USD"}"#)
                            .body(Body::from("{\"plain\":true}"))
                            .unwrap();
                    }
                    "broken" => vec![(0, json!({"type": "chunk", "text": "a"}).to_string()), (0, "this is not a frame".to_string())],
                    "approval" if body["signal"].is_null() => vec![
                        (0, json!({"type": "checkpoint", "state": {"draft": "d1"}}).to_string()),
                        (0, json!({"type": "suspend", "signal": "approval", "timeout_ms": body["input"]["timeout_ms"].as_u64().unwrap_or(60_000)}).to_string()),
                    ],
                    "approval" => vec![(
                        0,
                        json!({"type": "result", "output": {"signal": body["signal"], "checkpoint": body["checkpoint"], "attempt": attempt}}).to_string(),
                    )],
                    "delegate" => {
                        let answer = delegate_through(&body).await;
                        vec![(0, json!({"type": "result", "output": answer}).to_string())]
                    }
                    "steps" => match step {
                        None => vec![
                            (0, json!({"type": "checkpoint", "state": {"step": 1}}).to_string()),
                            (0, json!({"type": "error", "kind": "transient", "message": "the model timed out", "retryable": true}).to_string()),
                        ],
                        Some(1) => vec![(0, json!({"type": "checkpoint", "state": {"step": 2}}).to_string()), (60_000, String::new())],
                        Some(step) => vec![(0, json!({"type": "result", "output": {"resumed_from": step, "attempt": attempt}}).to_string())],
                    },
                    _ => return axum::response::Response::builder().header("content-type", "application/json").body(Body::from("{\"plain\":true}")).unwrap(),
                };
                let stream = futures::stream::iter(lines).then(|(delay, line)| async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    Ok::<_, std::convert::Infallible>(format!("{line}\n"))
                });
                axum::response::Response::builder().header("content-type", "application/x-ndjson").body(Body::from_stream(stream)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, calls, server)
}

use futures::StreamExt;

/// What a delegating agent in another language does (agent protocol §6): submits child 0 of
/// type `child_type` through the attempt's callback, asks for its outcome until it has one,
/// and answers it with the callback URL (for the test to try once the attempt ended), plus
/// what a bad child request answered.
async fn delegate_through(body: &Value) -> Value {
    let http = reqwest::Client::new();
    let Some(callback) = body["callback_url"].as_str() else { return json!({"error": "no callback_url"}) };
    let child = json!({"n": 0, "agent_type": body["input"]["child_type"], "input": {"mode": "plain"}, "labels": {"from": "boss"}});
    let submitted = http.post(format!("{callback}/children")).json(&child).send().await.expect("submit child");
    let status = submitted.status().as_u16();
    let submitted: Value = submitted.json().await.expect("child JSON");
    let bad = http.post(format!("{callback}/children")).json(&json!({"n": 1, "agent_type": "Not A Type!", "input": 1})).send().await.expect("bad child");
    let bad = (bad.status().as_u16(), bad.json::<Value>().await.expect("bad child JSON"));
    let unknown =
        http.post(format!("{callback}/children")).json(&json!({"n": 2, "agent_type": "no_such_type", "input": 1})).send().await.expect("unknown child");
    let unknown = (unknown.status().as_u16(), unknown.json::<Value>().await.expect("unknown child JSON"));
    let deadline = Instant::now() + WITHIN;
    let outcome = loop {
        let answer = http.get(format!("{callback}/children/0/outcome?wait_ms=2000")).send().await.expect("child outcome");
        let code = answer.status().as_u16();
        let outcome: Value = answer.json().await.expect("outcome JSON");
        if code == 200 || Instant::now() > deadline {
            break outcome;
        }
    };
    json!({"submitted": [status, submitted], "bad": [bad.0, bad.1], "unknown": [unknown.0, unknown.1], "outcome": outcome, "callback_url": callback})
}

/// One API replica: its own projection (store, projector) and server over the shared log.
struct Replica {
    base: String,
    projector: JoinHandle<Result<(), ProjectorError>>,
    server: JoinHandle<Result<(), ApiStartError>>,
    _dir: tempfile::TempDir,
}

async fn replica(f: &Fixture, agents: &BTreeMap<String, AgentTypeConfig>, stop: &CancellationToken) -> Replica {
    let dir = tempfile::tempdir().expect("projection dir");
    let projection = Projection::new(ProjectionStore::open(dir.path()).expect("store"), sources(&f.topics, agents)).expect("projection");
    let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
    let config = ApiConfig { listen: "127.0.0.1:0".into(), ..ApiConfig::default() };
    let state = ApiState::new(f.log.clone(), f.client.clone(), agents.clone(), projection, config.clone()).expect("api state");
    let listener = bind(&config).await.expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(serve(listener, Arc::new(state), 1 << 20, stop.clone()));
    Replica { base, projector, server, _dir: dir }
}

struct Setup {
    f: Fixture,
    agent_type: String,
    agent: AgentTypeConfig,
    calls: Calls,
    replicas: Vec<Replica>,
    stop: CancellationToken,
    agent_server: JoinHandle<()>,
    http: reqwest::Client,
}

impl Setup {
    /// `extra`: more of the agent type's TOML (before its `[retry]` table).
    async fn start(h: &Harness, replicas: usize, extra: &str) -> Setup {
        let (url, calls, agent_server) = protocol_agent().await;
        let mut f = Fixture::new(h).await;
        let toml_text =
            format!("runtime = {{ kind = \"http\", url = \"{url}\" }}\n{extra}\n[retry]\nmax_attempts = 3\ninitial_backoff_ms = 50\nmax_backoff_ms = 100\n");
        let (agent_type, agent) = f.agent_type("llm", &toml_text).await;
        // The catalog a worker's callback accepts children of: this type alone.
        f.callback.agent_types = Some(Arc::new([agent_type.clone()].into()));
        let runtime = build(&agent.runtime, Duration::from_secs(20)).expect("http runtime");
        f.start_worker(&agent_type, &agent, runtime, "llm-1");
        // Retries wait on `timers`, which the supervisor fires.
        f.start_supervisor(3);
        let agents = BTreeMap::from([(agent_type.clone(), agent.clone())]);
        let stop = CancellationToken::new();
        let mut started = Vec::new();
        for _ in 0..replicas {
            started.push(replica(&f, &agents, &stop).await);
        }
        Setup { f, agent_type, agent, calls, replicas: started, stop, agent_server, http: reqwest::Client::new() }
    }

    async fn submit(&self, task_id: &str, mode: &str) {
        let body = json!({"agent_type": self.agent_type, "task_id": task_id, "input": {"mode": mode}});
        let answer = self.http.post(format!("{}/v1/tasks", self.replicas[0].base)).json(&body).timeout(WITHIN).send().await.expect("submit");
        assert_eq!(answer.status().as_u16(), 202, "submit {task_id}: {}", answer.text().await.unwrap_or_default());
    }

    /// The task's outcome (the API's long poll), from replica 0.
    async fn outcome(&self, task_id: &str) -> Value {
        let url = format!("{}/v1/tasks/{task_id}/outcome?wait_ms=5000", self.replicas[0].base);
        let deadline = Instant::now() + WITHIN;
        loop {
            // A task the projection does not know yet answers 404 at once: ask again.
            let answer = self.http.get(&url).timeout(WITHIN).send().await.expect("outcome");
            let status = answer.status().as_u16();
            let body: Value = answer.json().await.expect("outcome JSON");
            if status == 200 {
                return body;
            }
            assert!(status == 404 && Instant::now() < deadline, "no outcome of {task_id} within {WITHIN:?}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The task as `GET /v1/tasks/{id}` shows it, once `until` holds (within [`WITHIN`]).
    async fn task_when(&self, task_id: &str, until: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WITHIN;
        loop {
            let answer = self.http.get(format!("{}/v1/tasks/{task_id}", self.replicas[0].base)).send().await.expect("get");
            let view: Value = answer.json().await.expect("task JSON");
            if until(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "task {task_id} not as expected within {WITHIN:?}: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal; returns the answer's status and body.
    async fn signal(&self, task_id: &str, name: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}/v1/tasks/{task_id}/signals/{name}", self.replicas[0].base)).timeout(WITHIN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.expect("signal");
        let status = answer.status().as_u16();
        (status, answer.json().await.expect("signal answer JSON"))
    }

    async fn stop(self) {
        self.stop.cancel();
        for replica in self.replicas {
            tokio::time::timeout(WITHIN, replica.server).await.expect("server stopped").expect("server task").expect("server");
            tokio::time::timeout(WITHIN, replica.projector).await.expect("projector stopped").expect("projector task").expect("projector");
        }
        self.f.stop().await;
        self.agent_server.abort();
    }
}

/// One SSE event: (id, event name, data).
type SseEvent = (Option<String>, String, Value);

/// Opens a task's stream, optionally after a position (as `Last-Event-ID`).
async fn open(http: &reqwest::Client, base: &str, task_id: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = http.get(format!("{base}/v1/tasks/{task_id}/stream"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let answer = request.send().await.expect("stream");
    assert_eq!(answer.status().as_u16(), 200, "stream of {task_id}");
    answer
}

/// The next event of an open stream; `None` when it ended.
async fn next(answer: &mut reqwest::Response, buffer: &mut String) -> Option<SseEvent> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            match event {
                Some(name) => return Some((id, name, serde_json::from_str(&data).expect("event data is JSON"))),
                None => continue, // a keep-alive comment
            }
        }
        match tokio::time::timeout_at(deadline, answer.chunk()).await.expect("an event within the bound") {
            Ok(Some(bytes)) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(None) => return None,
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
}

pub async fn a_framed_answer_streams_live_and_resumes_on_another_replica(h: &mut Harness) {
    let s = Setup::start(h, 2, "").await;
    s.submit("story-1", "stream").await;
    let mut events: Vec<SseEvent> = Vec::new();

    // Read the first chunks live from replica 0, then drop the connection mid-stream.
    let mut first = open(&s.http, &s.replicas[0].base, "story-1", None).await;
    let mut buffer = String::new();
    while events.iter().filter(|(_, name, _)| name == "chunk").count() < 5 {
        events.push(next(&mut first, &mut buffer).await.expect("the stream goes on"));
    }
    // Live: the task is still running while its first chunks arrive.
    let view: Value = s.http.get(format!("{}/v1/tasks/story-1", s.replicas[0].base)).send().await.expect("get").json().await.expect("json");
    assert_ne!(view["status"], "completed", "chunks arrive while the agent is still generating");
    drop(first);

    // Resume on the other replica (its own projection) after the last id seen.
    let last = events.last().and_then(|(id, _, _)| id.clone()).expect("chunk events carry an id");
    let mut second = open(&s.http, &s.replicas[1].base, "story-1", Some(&last)).await;
    let mut buffer = String::new();
    while let Some(event) = next(&mut second, &mut buffer).await {
        events.push(event);
    }

    let names: Vec<&str> = events.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"progress"), "{names:?}");
    assert_eq!(names.last(), Some(&"outcome"), "the stream ends with the outcome: {names:?}");
    let texts: Vec<&str> = events.iter().filter(|(_, n, d)| n == "chunk" && d["text"].is_string()).map(|(_, _, d)| d["text"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..CHUNKS).map(|i| format!("t{i} ")).collect();
    assert_eq!(texts, expected, "every chunk once, in order, across the reconnect");
    let seqs: Vec<i64> = events.iter().filter(|(_, n, _)| n == "chunk").map(|(_, _, d)| d["seq"].as_i64().expect("seq")).collect();
    assert_eq!(seqs, (0..=CHUNKS as i64).collect::<Vec<_>>());
    let json_chunk = events.iter().find(|(_, n, d)| n == "chunk" && d["json"].is_object()).expect("the JSON chunk");
    assert_eq!(json_chunk.2["json"], json!({"done": true}), "a JSON chunk arrives as JSON");
    let ids: Vec<&String> = events.iter().filter_map(|(id, _, _)| id.as_ref()).collect();
    assert_eq!(ids.len(), CHUNKS + 2, "progress and chunks carry ids: {ids:?}");
    let outcome = &events.last().expect("outcome").2;
    assert_eq!(outcome["status"], "completed");
    assert_eq!(outcome["outcome"]["output"], json!({"tokens": CHUNKS}), "{outcome}");

    // A finished task replays its whole stream at once, from either replica.
    let mut replay = open(&s.http, &s.replicas[1].base, "story-1", None).await;
    let mut buffer = String::new();
    let mut again = Vec::new();
    while let Some(event) = next(&mut replay, &mut buffer).await {
        again.push(event);
    }
    assert_eq!(again.len(), CHUNKS + 3, "progress, chunks, outcome");
    // Positions are the log's: both replicas name each record alike.
    let tail: Vec<&Option<String>> = again.iter().map(|(id, _, _)| id).collect();
    assert_eq!(tail[..5], events.iter().map(|(id, _, _)| id).collect::<Vec<_>>()[..5]);

    // Bad positions and unknown tasks answer clearly.
    let bad = s.http.get(format!("{}/v1/tasks/story-1/stream?after=nope", s.replicas[0].base)).send().await.expect("bad after");
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.text().await.unwrap_or_default().contains("nope"));
    let missing = s.http.get(format!("{}/v1/tasks/no-such-task/stream", s.replicas[0].base)).send().await.expect("missing");
    assert_eq!(missing.status().as_u16(), 404);
    // Another tenant using the same task id sees no task and no stream.
    let foreign = s.http.get(format!("{}/v1/tasks/story-1/stream", s.replicas[0].base)).header("x-tenant", "intruder").send().await.expect("foreign");
    assert_eq!(foreign.status().as_u16(), 404, "another tenant's task stream");
    s.stop().await;
}

pub async fn typed_errors_retry_after_and_broken_frames_end_attempts_not_workers(h: &mut Harness) {
    let s = Setup::start(h, 1, "").await;
    s.submit("limited-1", "limited").await;
    s.submit("typed-1", "typed").await;
    s.submit("broken-1", "broken").await;

    // The agent's retry-after (1.5 s) beats the type's backoff (50–100 ms).
    let limited = s.outcome("limited-1").await;
    assert_eq!(limited["status"], "completed", "{limited}");
    assert_eq!(limited["output"], "fine", "{limited}");
    let calls = s.calls.lock().unwrap().get("limited-1").cloned().expect("calls");
    assert_eq!(calls.len(), 2);
    let waited = calls[1].0 - calls[0].0;
    assert!(waited >= Duration::from_millis(1400), "the retry waited {waited:?}, the agent asked for 1.5 s");

    // The agent's own kind, not retried (not in retry_on).
    let typed = s.outcome("typed-1").await;
    assert_eq!(typed["status"], "failed", "{typed}");
    assert_eq!(typed["error_kind"], "bad_input", "{typed}");
    assert_eq!(s.calls.lock().unwrap()["typed-1"].len(), 1);

    // A broken frame fails the attempt with kind protocol, naming the frame.
    let broken = s.outcome("broken-1").await;
    assert_eq!(broken["status"], "failed", "{broken}");
    assert_eq!(broken["error_kind"], "protocol", "{broken}");
    assert!(broken["message"].as_str().unwrap_or_default().contains("frame 2 (this is not a frame)"), "{broken}");

    // The worker goes on: a plain answer still completes.
    s.submit("plain-1", "plain").await;
    let plain = s.outcome("plain-1").await;
    assert_eq!(plain["status"], "completed", "{plain}");
    assert_eq!(plain["output"], json!({"plain": true}));
    s.stop().await;
}

pub async fn a_checkpoint_reaches_the_retry_and_the_rerun_after_a_worker_crash(h: &mut Harness) {
    let mut s = Setup::start(h, 1, "").await;
    let mut checkpoints = s.f.reader(&s.f.topics.checkpoints()).await;
    s.submit("steps-1", "steps").await;
    // Attempt 1 saves step 1 and fails; attempt 2 gets step 1, saves step 2 and hangs.
    let deadline = Instant::now() + WITHIN;
    loop {
        let event = checkpoints.next(WITHIN).await.expect("a checkpoint on task.checkpoints");
        if let agentlog::events::AnyEvent::TaskCheckpointed(e) = event
            && e.state.as_deref().is_some_and(|state| state.contains("\"step\":2"))
        {
            assert_eq!((e.task_id.as_str(), e.attempt), ("steps-1", 2));
            break;
        }
        assert!(Instant::now() < deadline, "no step-2 checkpoint");
    }
    // Its worker dies mid-attempt; another takes the task over and runs attempt 2 again.
    s.f.abort_worker(0);
    let runtime = build(&s.agent.runtime, Duration::from_secs(20)).expect("http runtime");
    s.f.start_worker(&s.agent_type, &s.agent, runtime, "llm-2");

    let done = s.outcome("steps-1").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"], json!({"resumed_from": 2, "attempt": 2}), "the re-run continued from the dead worker's checkpoint: {done}");
    let seen: Vec<Value> = s.calls.lock().unwrap()["steps-1"].iter().map(|(_, checkpoint)| checkpoint.clone()).collect();
    assert_eq!(seen, vec![Value::Null, json!({"step": 1}), json!({"step": 2})], "each call got the latest checkpoint");

    // The outcome cleared the checkpoint: the task is forgotten by every index.
    let mut cleared = false;
    while let Some(event) = checkpoints.next(Duration::from_secs(5)).await {
        if let agentlog::events::AnyEvent::TaskCheckpointed(e) = event {
            cleared = e.task_id == "steps-1" && e.state.is_none();
        }
    }
    assert!(cleared, "the last checkpoint record of the finished task clears it");
    s.stop().await;
}

pub async fn a_suspended_task_waits_for_its_signal_across_a_worker_restart(h: &mut Harness) {
    let mut s = Setup::start(h, 1, "").await;
    s.submit("approve-1", "approval").await;
    let waiting = s.task_when("approve-1", |t| t["status"] == "waiting").await;
    assert_eq!(waiting["waiting_for"]["signal"], "approval", "{waiting}");
    assert_eq!(waiting["waiting_for"]["attempt"], 2, "{waiting}");
    assert!(waiting["waiting_for"]["timeout_at_ms"].as_i64().unwrap_or_default() > 0, "{waiting}");

    // Bad signals answer clearly and change nothing.
    let (status, body) = s.signal("approve-1", "reject", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("unexpected_signal")), "{body}");
    assert_eq!(body["error"]["detail"]["waiting_for"], "approval", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("waits for signal `approval`, not `reject`"), "{body}");
    let (status, body) = s.signal("approve-1", "Not-A-Name", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "signal", "{body}");
    let (status, body) = s.signal("approve-1", "approval", Some(json!({"payload": "x".repeat(300 * 1024)}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{body}");
    let (status, body) = s.signal("no-such-task", "approval", None).await;
    assert_eq!(status, 404, "{body}");
    // Another tenant using the same task id has no such task.
    let foreign =
        s.http.post(format!("{}/v1/tasks/approve-1/signals/approval", s.replicas[0].base)).header("x-tenant", "intruder").send().await.expect("foreign");
    assert_eq!(foreign.status().as_u16(), 404, "another tenant's task");

    // The worker is gone (killed) when the approval comes; the task waits on the log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.f.abort_worker(0);
    let (status, body) = s.signal("approve-1", "approval", Some(json!({"signal_id": "sig-1", "payload": {"approved": true, "by": "ana"}}))).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!((body["status"].as_str(), body["signal_id"].as_str()), (Some("accepted"), Some("sig-1")), "{body}");
    let runtime = build(&s.agent.runtime, Duration::from_secs(20)).expect("http runtime");
    s.f.start_worker(&s.agent_type, &s.agent, runtime, "llm-2");

    let done = s.outcome("approve-1").await;
    assert_eq!(done["status"], "completed", "{done}");
    let output = &done["output"];
    assert_eq!(output["signal"], json!({"name": "approval", "id": "sig-1", "payload": {"approved": true, "by": "ana"}, "timed_out": false}), "{done}");
    assert_eq!(output["checkpoint"], json!({"draft": "d1"}), "the resumed attempt gets the checkpoint saved before the wait: {done}");
    assert_eq!(output["attempt"], 2, "{done}");

    // The same signal again is a duplicate, whatever the task's state; a new one is refused.
    let (status, body) = s.signal("approve-1", "approval", Some(json!({"signal_id": "sig-1"}))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")), "{body}");
    let (status, body) = s.signal("approve-1", "approval", Some(json!({"payload": 1}))).await;
    assert_eq!((status, body["error"]["code"].as_str(), body["error"]["detail"]["status"].as_str()), (409, Some("not_waiting"), Some("completed")), "{body}");
    let view = s.task_when("approve-1", |t| t["status"] == "completed").await;
    let events: Vec<&str> = view["timeline"].as_array().expect("timeline").iter().filter_map(|e| e["event"].as_str()).collect();
    assert!(events.contains(&"TaskSuspended") && events.contains(&"TaskSignalled"), "the timeline shows the wait: {events:?}");
    assert!(view["waiting_for"].is_null(), "{view}");
    s.stop().await;
}

pub async fn a_wait_that_times_out_fails_or_resumes_as_the_type_declares(h: &mut Harness) {
    // The default: the task fails with kind signal_timeout, without another call of the agent.
    let s = Setup::start(h, 1, "").await;
    let body = json!({"agent_type": s.agent_type, "task_id": "late-1", "input": {"mode": "approval", "timeout_ms": 300}});
    let answer = s.http.post(format!("{}/v1/tasks", s.replicas[0].base)).json(&body).send().await.expect("submit");
    assert_eq!(answer.status().as_u16(), 202);
    let failed = s.outcome("late-1").await;
    assert_eq!((failed["status"].as_str(), failed["error_kind"].as_str()), (Some("failed"), Some("signal_timeout")), "{failed}");
    assert_eq!(s.calls.lock().unwrap()["late-1"].len(), 1, "the timeout does not call the agent");

    // A waiting task is cancelled at once.
    s.submit("cancel-1", "approval").await;
    s.task_when("cancel-1", |t| t["status"] == "waiting").await;
    let answer = s.http.post(format!("{}/v1/tasks/cancel-1/cancel", s.replicas[0].base)).json(&json!({"reason": "not needed"})).send().await.expect("cancel");
    assert_eq!(answer.status().as_u16(), 202);
    let cancelled = s.outcome("cancel-1").await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    // Its checkpoint (the draft) is cleared, as an outcome written by a worker clears it.
    let mut checkpoints = s.f.reader(&s.f.topics.checkpoints()).await;
    let mut last = None;
    while let Some(event) = checkpoints.next(Duration::from_secs(3)).await {
        if let agentlog::events::AnyEvent::TaskCheckpointed(e) = event
            && e.task_id == "cancel-1"
        {
            last = Some(e.state);
        }
    }
    assert_eq!(last, Some(None), "the last checkpoint record of the cancelled waiting task clears it");
    s.stop().await;

    // `on_signal_timeout = "resume"`: the next attempt runs and learns the wait timed out.
    let s = Setup::start(h, 1, "on_signal_timeout = \"resume\"").await;
    let body = json!({"agent_type": s.agent_type, "task_id": "late-2", "input": {"mode": "approval", "timeout_ms": 300}});
    let answer = s.http.post(format!("{}/v1/tasks", s.replicas[0].base)).json(&body).send().await.expect("submit");
    assert_eq!(answer.status().as_u16(), 202);
    let resumed = s.outcome("late-2").await;
    assert_eq!(resumed["status"], "completed", "{resumed}");
    assert_eq!(resumed["output"]["signal"], json!({"name": "approval", "id": null, "payload": null, "timed_out": true}), "{resumed}");
    assert_eq!(resumed["output"]["checkpoint"], json!({"draft": "d1"}), "{resumed}");
    s.stop().await;
}

pub async fn an_http_agent_delegates_through_its_attempts_callback(h: &mut Harness) {
    let s = Setup::start(h, 1, "delegates = true").await;
    let body = json!({"agent_type": s.agent_type, "task_id": "boss-1", "input": {"mode": "delegate", "child_type": s.agent_type}});
    let answer = s.http.post(format!("{}/v1/tasks", s.replicas[0].base)).json(&body).send().await.expect("submit");
    assert_eq!(answer.status().as_u16(), 202);
    let done = s.outcome("boss-1").await;
    assert_eq!(done["status"], "completed", "{done}");
    let output = &done["output"];
    assert_eq!(output["submitted"], json!([202, {"task_id": "boss-1.0"}]), "{done}");
    assert_eq!(output["outcome"]["status"], "completed", "{done}");
    assert_eq!(output["outcome"]["output"], json!({"plain": true}), "{done}");
    assert_eq!(output["bad"][0], 400, "a bad child is refused naming the field: {done}");
    assert_eq!(output["bad"][1]["error"]["field"], "agent_type", "{done}");
    assert_eq!(output["unknown"][0], 404, "a child of a type not in the catalog: {done}");
    assert_eq!(output["unknown"][1]["error"]["code"], "unknown_agent_type", "{done}");

    // The child is the parent's, on the log and in the API.
    let child = s.task_when("boss-1.0", |t| t["status"] == "completed").await;
    assert_eq!(child["parent_task_id"], "boss-1", "{child}");
    assert_eq!(child["labels"]["from"], "boss", "{child}");
    // The callback died with its attempt.
    let callback = output["callback_url"].as_str().expect("callback url");
    let gone = s.http.get(format!("{callback}/children/0/outcome")).send().await.expect("late callback");
    assert_eq!(gone.status().as_u16(), 404, "a callback of an attempt that ended");
    s.stop().await;
}

/// Usage (issue 17) travels with a framed `result` and with a plain answer's `Agentlog-Usage`
/// header into the task and the tenant's `/v1/stats`; a report breaking the rules fails the
/// attempt with kind `protocol` naming the field, and the worker goes on.
pub async fn usage_travels_with_framed_and_plain_answers(h: &mut Harness) {
    let s = Setup::start(h, 1, "").await;
    s.submit("billed-1", "billed").await;
    s.submit("billed-2", "billed_plain").await;
    s.submit("billed-3", "billed_badly").await;
    let framed = s.outcome("billed-1").await;
    assert_eq!(framed["status"], "completed", "{framed}");
    assert_eq!(
        framed["usage"],
        json!({"input_tokens": 120, "output_tokens": 30, "model": "gpt-x", "cost_micros": 210, "currency": "USD", "counters": {"cached_input_tokens": 100}}),
        "{framed}"
    );
    let plain = s.outcome("billed-2").await;
    assert_eq!((plain["output"].clone(), plain["usage"]["input_tokens"].clone()), (json!({"plain": true}), json!(8)), "{plain}");
    let bad = s.outcome("billed-3").await;
    assert_eq!((bad["status"].clone(), bad["error_kind"].clone()), (json!("failed"), json!("protocol")), "{bad}");
    assert!(bad["message"].as_str().unwrap_or_default().contains("usage.input_tokens"), "{bad}");

    let deadline = Instant::now() + WITHIN;
    loop {
        let stats: Value = s.http.get(format!("{}/v1/stats", s.replicas[0].base)).send().await.expect("stats").json().await.expect("stats JSON");
        let usage = &stats["usage"];
        if usage["tasks"] == 2 {
            assert_eq!(
                (usage["input_tokens"].clone(), usage["output_tokens"].clone(), usage["cost_micros"].clone()),
                (json!(128), json!(32), json!({"USD": 219})),
                "{stats}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the stats never counted both reports: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}
