//! The HTTP API's reads and guards on a real port over the embedded log, with real workers
//! running the builtin `echo` agent: read your writes with `after`, listing with filters and
//! cursors, idempotency keys, batches, input schemas, API keys and tenants, rate limit and
//! in-flight quota, cancel conflicts, the outcome stream, readiness, metrics, agents, agent
//! types and stats. Every wait is bounded.

use crate::fixture;
use crate::harness;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use agentlog::agent::AgentTypeConfig;
use agentlog::agent::runtime::build;
use agentlog::api::{ApiConfig, ApiKeyConfig, ApiStartError, ApiState, bind, serve};
use agentlog::events::Lane;
use agentlog::http::access::sha256_hex;
use agentlog::log::TopicPartition;
use agentlog::projection::{Projection, ProjectionStore, ProjectorError, sources};

use fixture::Fixture;
use harness::Harness;

const MAX_BODY: usize = 64 * 1024;
const WITHIN: Duration = Duration::from_secs(20);

const ECHO: &str = "runtime = { kind = \"builtin\", name = \"echo\" }\nlanes = [\"high\", \"normal\"]\n";

/// An embedded log with agent types, workers for some of them, a projection, and API servers.
struct Api {
    h: Harness,
    f: Fixture,
    agents: BTreeMap<String, AgentTypeConfig>,
    projection: Arc<Projection>,
    stop: CancellationToken,
    projector: JoinHandle<Result<(), ProjectorError>>,
    servers: Vec<JoinHandle<Result<(), ApiStartError>>>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Api {
    /// `types`: name, TOML, and whether a worker (`<name>-1`) runs it.
    async fn start(types: &[(&str, &str, bool)]) -> Api {
        let h = Harness::embedded();
        let mut f = Fixture::new(&h).await;
        let mut agents = BTreeMap::new();
        for (name, toml_text, worker) in types {
            let (name, agent) = f.agent_type_named(name, toml_text).await;
            if *worker {
                let runtime = build(&agent.runtime, Duration::from_secs(5)).expect("builtin runtime");
                f.start_worker(&name, &agent, runtime, &format!("{name}-1"));
            }
            agents.insert(name, agent);
        }
        let dir = tempfile::tempdir().expect("projection dir");
        let projection = Projection::new(ProjectionStore::open(dir.path()).expect("projection store"), sources(&f.topics, &agents)).expect("projection");
        let stop = CancellationToken::new();
        let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
        Api { h, f, agents, projection, stop, projector, servers: Vec::new(), http: reqwest::Client::new(), _dir: dir }
    }

    /// Serves the API with `config` on a free loopback port; returns its base URL.
    async fn serve(&mut self, config: ApiConfig) -> String {
        let config = ApiConfig { listen: "127.0.0.1:0".into(), ..config };
        let state = ApiState::new(self.f.log.clone(), self.f.client.clone(), self.agents.clone(), self.projection.clone(), config.clone()).expect("api state");
        let listener = bind(&config).await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        self.servers.push(tokio::spawn(serve(listener, Arc::new(state), MAX_BODY, self.stop.clone())));
        base
    }

    async fn stop(self) {
        self.stop.cancel();
        for server in self.servers {
            tokio::time::timeout(WITHIN, server).await.expect("server stopped in time").expect("server task").expect("server");
        }
        tokio::time::timeout(WITHIN, self.projector).await.expect("projector stopped in time").expect("projector task").expect("projector");
        self.f.stop().await;
        let mut h = self.h;
        h.release().await;
    }

    /// High watermarks of every partition of every lane topic of every type.
    async fn lane_marks(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for (name, agent) in &self.agents {
            for lane in agent.lanes_by_priority() {
                let topic = self.f.topics.lane(name, lane);
                for p in 0..fixture::PARTITIONS {
                    out.push(self.f.log.admin().watermarks(&TopicPartition::new(topic.clone(), p)).await.expect("watermarks").high);
                }
            }
        }
        out
    }
}

/// A request with a tenant header (no keys configured) or an API key.
#[derive(Clone, Copy)]
enum Who<'a> {
    Tenant(&'a str),
    Key(&'a str),
    Nobody,
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, who: Who<'_>, body: Option<Value>) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = http.request(method, url).timeout(WITHIN);
    request = match who {
        Who::Tenant(t) => request.header("x-tenant", t),
        Who::Key(k) => request.header("authorization", format!("Bearer {k}")),
        Who::Nobody => request,
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.expect("answer");
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let text = answer.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, headers)
}

async fn get(http: &reqwest::Client, url: String, who: Who<'_>) -> (u16, Value) {
    let (status, body, _) = call(http, reqwest::Method::GET, url, who, None).await;
    (status, body)
}

async fn post(http: &reqwest::Client, url: String, who: Who<'_>, body: Value) -> (u16, Value) {
    let (status, body, _) = call(http, reqwest::Method::POST, url, who, Some(body)).await;
    (status, body)
}

/// Polls `probe` every 50 ms until it returns `Some`, failing after `WITHIN`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids_of(page: &Value) -> Vec<String> {
    page["tasks"].as_array().expect("tasks").iter().map(|t| t["task_id"].as_str().expect("task_id").to_string()).collect()
}

/// Every task of a listing, following `next_cursor` with pages of `limit`.
async fn all_pages(http: &reqwest::Client, base: &str, query: &str, who: Who<'_>, limit: usize) -> (Vec<Value>, usize) {
    let mut tasks = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/tasks?limit={limit}{query}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get(http, url, who).await;
        assert_eq!(status, 200, "{page}");
        let items = page["tasks"].as_array().expect("tasks").clone();
        assert!(items.len() <= limit);
        pages += 1;
        tasks.extend(items);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return (tasks, pages),
        }
        assert!(pages < 100, "pagination does not end");
    }
}

fn error_field(body: &Value) -> &str {
    body["error"]["field"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_after_a_submit_answers_at_once_and_listings_page_through_every_task_once() {
    let mut api = Api::start(&[("echo", ECHO, true), ("idle", ECHO, false)]).await;
    let base = api.serve(ApiConfig::default()).await;
    let http = api.http.clone();
    let me = Who::Tenant("reader");

    // Submit, wait for the outcome, then read the task at the submit's position.
    let (status, body) = post(&http, format!("{base}/v1/tasks?wait_ms=15000"), me, json!({"agent_type": "echo", "input": {"q": 7}})).await;
    assert_eq!(status, 200, "{body}");
    let id = body["task_id"].as_str().expect("task id").to_string();
    let position = body["position"].as_str().expect("position").to_string();
    let asked = Instant::now();
    let (status, task) = get(&http, format!("{base}/v1/tasks/{id}?after={position}"), me).await;
    assert_eq!(status, 200, "{task}");
    assert!(asked.elapsed() < Duration::from_secs(2), "answered right away");
    assert_eq!(task["status"], "completed");
    assert_eq!(task["agent_type"], "echo");
    assert_eq!(task["tenant"], "reader");
    assert_eq!(task["input"], json!({"q": 7}));
    assert_eq!(task["outcome"]["status"], "completed");
    assert_eq!(task["outcome"]["output"], json!({"q": 7}));
    // TaskStarted is on `task.events`, another topic than the outcome: written before it, but
    // the projection may read the two partitions in either order, so allow it a moment.
    let task = eventually("the task's start is projected", || {
        let (http, base, id, position) = (http.clone(), base.clone(), id.clone(), position.clone());
        async move {
            let (_, task) = get(&http, format!("{base}/v1/tasks/{id}?after={position}"), me).await;
            (task["attempts"] == 1).then_some(task)
        }
    })
    .await;
    assert_eq!(task["agent_id"], "echo-1");
    let timeline: Vec<&str> = task["timeline"].as_array().expect("timeline").iter().map(|e| e["event"].as_str().unwrap_or("")).collect();
    assert_eq!(timeline, ["TaskSubmitted", "TaskStarted", "TaskCompleted"], "{task}");
    assert_eq!(task["timeline"][1]["agent_id"], "echo-1");

    // Without waiting: the submit's position makes the very next read see the task.
    for _ in 0..5 {
        let (status, body) = post(&http, format!("{base}/v1/tasks"), me, json!({"agent_type": "idle", "input": {}})).await;
        assert_eq!(status, 202, "{body}");
        let id = body["task_id"].as_str().expect("id");
        let (status, task) = get(&http, format!("{base}/v1/tasks/{id}?after={}", body["position"].as_str().expect("position")), me).await;
        assert_eq!(status, 200, "read your write: {task}");
        assert_eq!(task["status"], "queued", "no worker runs `idle`");
        assert_eq!(task["attempts"], 0);
    }
    // A position that was never written answers 400 at once (waiting for it could never
    // succeed; tests/integration/api_positions.rs covers the cases); a malformed one 400 too.
    let topic = api.f.topics.lane("idle", Lane::Normal);
    let (status, body) = get(&http, format!("{base}/v1/tasks/{id}?after={topic}:0:999999&wait_ms=200"), me).await;
    assert_eq!((status, error_field(&body)), (400, "after"), "{body}");
    let (status, body) = get(&http, format!("{base}/v1/tasks/{id}?after=nonsense"), me).await;
    assert_eq!((status, error_field(&body)), (400, "after"), "{body}");
    // Another tenant's task is not found.
    let (status, _) = get(&http, format!("{base}/v1/tasks/{id}"), Who::Tenant("someone-else")).await;
    assert_eq!(status, 404);

    // 25 tasks of one tenant, submitted one after another, a few ms apart.
    let pager = Who::Tenant("pager");
    let mut submitted = Vec::new();
    for i in 0..25 {
        let (status, body) = post(&http, format!("{base}/v1/tasks"), pager, json!({"agent_type": "echo", "input": {"i": i}, "lane": "high"})).await;
        assert_eq!(status, 202, "{body}");
        submitted.push(body["task_id"].as_str().expect("id").to_string());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    eventually("25 tasks completed", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let (_, page) = get(&http, format!("{base}/v1/tasks?status=completed&limit=100"), pager).await;
            (page["tasks"].as_array().map_or(0, Vec::len) == 25).then_some(())
        }
    })
    .await;
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    for query in ["", "&status=completed", "&agent_type=echo", "&status=completed&agent_type=echo"] {
        let (tasks, pages) = all_pages(&http, &base, query, pager, 10).await;
        assert_eq!(pages, 3, "{query}: 10 + 10 + 5");
        let ids: Vec<String> = tasks.iter().map(|t| t["task_id"].as_str().expect("id").to_string()).collect();
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 25, "{query}: each task exactly once");
        assert_eq!(ids, newest_first, "{query}: newest first");
        let created: Vec<i64> = tasks.iter().map(|t| t["created_at_ms"].as_i64().expect("created")).collect();
        assert!(created.windows(2).all(|w| w[0] >= w[1]), "{query}: {created:?}");
    }
    // Exactly 10 per page, then the rest with no cursor after it.
    let (_, first) = get(&http, format!("{base}/v1/tasks?limit=25"), pager).await;
    assert_eq!((ids_of(&first).len(), first["next_cursor"].clone()), (25, Value::Null), "a page that holds everything has no cursor");
    // Filters that match nothing, for this tenant.
    for query in ["status=queued", "status=failed", "agent_type=idle"] {
        let (status, page) = get(&http, format!("{base}/v1/tasks?{query}"), pager).await;
        assert_eq!((status, ids_of(&page).len()), (200, 0), "{query}: {page}");
    }
    // The `reader` tenant's idle tasks are queued.
    let (_, queued) = get(&http, format!("{base}/v1/tasks?status=queued&agent_type=idle"), me).await;
    assert_eq!(ids_of(&queued).len(), 5, "{queued}");

    // Bad filters name the field.
    for (query, field) in [
        ("status=done", "status"),
        ("agent_type=nope", "agent_type"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=xyz", "cursor"),
        ("cursor=zzzz", "cursor"),
    ] {
        let (status, body) = get(&http, format!("{base}/v1/tasks?{query}"), pager).await;
        assert_eq!((status, error_field(&body)), (400, field), "{query}: {body}");
    }
    let (status, body) = get(&http, format!("{base}/v1/tasks?limit=ten"), pager).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("limit"), "{body}");

    api.stop().await;
}

const CHECKED: &str = "runtime = { kind = \"builtin\", name = \"echo\" }\nlanes = [\"normal\"]\ninput_schema = '''{\"type\": \"object\", \"required\": [\"text\"], \"properties\": {\"text\": {\"type\": \"string\", \"minLength\": 1}}}'''\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_batches_and_input_schemas() {
    let mut api = Api::start(&[("echo", ECHO, true), ("checked", CHECKED, true)]).await;
    let base = api.serve(ApiConfig::default()).await;
    let http = api.http.clone();
    let me = Who::Tenant("writer");

    // Idempotency key: the second submit returns the first task and writes nothing.
    let (status, first) =
        post(&http, format!("{base}/v1/tasks?wait_ms=15000"), me, json!({"agent_type": "echo", "input": {"n": 1}, "idempotency_key": "order-17"})).await;
    assert_eq!(status, 200, "{first}");
    let original = first["task_id"].as_str().expect("id").to_string();
    let marks = api.lane_marks().await;
    let (status, again) = post(&http, format!("{base}/v1/tasks"), me, json!({"agent_type": "echo", "input": {"n": 2}, "idempotency_key": "order-17"})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["task_id"], original.as_str());
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["task"]["input"], json!({"n": 1}), "the original task, not the new input");
    // The same key in a batch, next to a new task: only the new one is written.
    let (status, batch) = post(
        &http,
        format!("{base}/v1/tasks/batch"),
        me,
        json!({"tasks": [
            {"agent_type": "echo", "input": {}, "idempotency_key": "order-17"},
            {"agent_type": "echo", "input": {}, "task_id": "fresh-1"},
        ]}),
    )
    .await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!((batch["tasks"][0]["task_id"].as_str(), batch["tasks"][0]["duplicate"].as_bool()), (Some(original.as_str()), Some(true)));
    assert_eq!(batch["tasks"][1]["task_id"], "fresh-1");
    let after: i64 = api.lane_marks().await.iter().sum();
    assert_eq!(after, marks.iter().sum::<i64>() + 1, "one record for the one new task");
    // Keys are per tenant: another tenant's same key is a new task.
    let (status, other) =
        post(&http, format!("{base}/v1/tasks"), Who::Tenant("other"), json!({"agent_type": "echo", "input": {}, "idempotency_key": "order-17"})).await;
    assert_eq!(status, 202, "{other}");
    assert_ne!(other["task_id"], original.as_str());

    // Racing submits of a new key (none of them can find it in the projection yet), and the
    // key twice in one batch: one task is written, and every answer names it.
    let marks = api.lane_marks().await;
    let racing = (0..32).map(|n| post(&http, format!("{base}/v1/tasks"), me, json!({"agent_type": "echo", "input": {"n": n}, "idempotency_key": "race-1"})));
    let answers = futures::future::join_all(racing).await;
    let winner = answers.iter().find(|(status, _)| *status == 202).map(|(_, body)| body["task_id"].clone()).expect("one submit wrote the task");
    for (status, body) in &answers {
        assert!(*status == 202 || (*status == 200 && body["duplicate"] == true), "{status} {body}");
        assert_eq!(body["task_id"], winner, "every racing submit names the one task: {body}");
    }
    let (status, twice) = post(
        &http,
        format!("{base}/v1/tasks/batch"),
        me,
        json!({"tasks": [
            {"agent_type": "echo", "input": {}, "idempotency_key": "race-2"},
            {"agent_type": "echo", "input": {}, "idempotency_key": "race-2"},
        ]}),
    )
    .await;
    assert_eq!(status, 202, "{twice}");
    assert_eq!(twice["tasks"][0]["task_id"], twice["tasks"][1]["task_id"], "{twice}");
    assert_eq!(twice["tasks"][1]["duplicate"], true, "{twice}");
    let written: i64 = api.lane_marks().await.iter().sum::<i64>() - marks.iter().sum::<i64>();
    assert_eq!(written, 2, "one record per key");

    // A batch is accepted in order: answers in request order, one ordering key → one
    // partition, offsets increasing.
    let ids: Vec<String> = (0..6).map(|i| format!("batch-{i}")).collect();
    let tasks: Vec<Value> = ids.iter().map(|id| json!({"agent_type": "echo", "input": {"id": id}, "task_id": id, "ordering_key": "cart-9"})).collect();
    let (status, batch) = post(&http, format!("{base}/v1/tasks/batch"), me, json!({ "tasks": tasks })).await;
    assert_eq!(status, 202, "{batch}");
    let answers = batch["tasks"].as_array().expect("answers");
    let answered: Vec<&str> = answers.iter().map(|a| a["task_id"].as_str().expect("id")).collect();
    assert_eq!(answered, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(answers.iter().all(|a| a["partition"] == answers[0]["partition"] && a["topic"] == api.f.topics.lane("echo", Lane::Normal)), "{batch}");
    let offsets: Vec<i64> = answers.iter().map(|a| a["offset"].as_i64().expect("offset")).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in order: {offsets:?}");
    let last = answers.last().expect("answers");
    let (status, task) = get(&http, format!("{base}/v1/tasks/batch-5?after={}", last["position"].as_str().expect("position")), me).await;
    assert_eq!((status, task["task_id"].as_str()), (200, Some("batch-5")), "{task}");

    // One bad task: 400 naming it, and nothing of the batch written.
    let marks = api.lane_marks().await;
    let mut tasks: Vec<Value> = (0..5).map(|i| json!({"agent_type": "echo", "input": {"i": i}})).collect();
    tasks[3]["agent_type"] = json!("summarize");
    let (status, body) = post(&http, format!("{base}/v1/tasks/batch"), me, json!({ "tasks": tasks })).await;
    assert_eq!((status, error_field(&body)), (400, "tasks[3].agent_type"), "{body}");
    let mut tasks: Vec<Value> = (0..5).map(|i| json!({"agent_type": "checked", "input": {"text": format!("t{i}")}})).collect();
    tasks[4]["input"] = json!({"text": ""});
    let (status, body) = post(&http, format!("{base}/v1/tasks/batch"), me, json!({ "tasks": tasks })).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_field(&body).starts_with("tasks[4].input"), "{body}");
    let (status, body) = post(&http, format!("{base}/v1/tasks/batch"), me, json!({ "tasks": [] })).await;
    assert_eq!((status, error_field(&body)), (400, "tasks"), "{body}");
    assert_eq!(api.lane_marks().await, marks, "nothing written for rejected batches");

    // Input schema: non-matching inputs are 400 on `input…`, a matching one runs.
    for input in [json!({"n": 1}), json!({"text": 5}), json!({"text": ""}), json!("text")] {
        let (status, body) = post(&http, format!("{base}/v1/tasks"), me, json!({"agent_type": "checked", "input": input.clone()})).await;
        assert_eq!(status, 400, "{input}: {body}");
        assert!(error_field(&body).starts_with("input"), "{input}: {body}");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains("input schema"), "{body}");
    }
    let (_, body) = post(&http, format!("{base}/v1/tasks"), me, json!({"agent_type": "checked", "input": {"text": 5}})).await;
    assert_eq!(error_field(&body), "input/text", "the field points into the input: {body}");
    assert_eq!(api.lane_marks().await, marks, "nothing written for rejected inputs");
    let (status, body) = post(&http, format!("{base}/v1/tasks?wait_ms=15000"), me, json!({"agent_type": "checked", "input": {"text": "hello"}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"]["output"], json!({"text": "hello"}));
    // The schema is part of the catalog.
    let (_, types) = get(&http, format!("{base}/v1/agent-types"), me).await;
    let checked = types["agent_types"].as_array().expect("types").iter().find(|t| t["name"] == "checked").expect("checked type").clone();
    assert_eq!(checked["input_schema"]["required"], json!(["text"]));

    api.stop().await;
}

/// One `outcome` (or other) event of a Server-Sent Events stream, or `None` at the deadline.
async fn next_event(answer: &mut reqwest::Response, buffer: &mut String, within: Duration) -> Option<(String, Value)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut event = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = Some(name.trim().to_string());
                } else if let Some(text) = line.strip_prefix("data:") {
                    data.push_str(text.trim_start());
                }
            }
            match event {
                Some(name) => return Some((name, serde_json::from_str(&data).unwrap_or(Value::String(data)))),
                None => continue, // a keep-alive comment
            }
        }
        match tokio::time::timeout_at(deadline, answer.chunk()).await {
            Err(_) => return None,
            Ok(Ok(Some(bytes))) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => panic!("reading the event stream: {e}"),
        }
    }
}

async fn open_stream(http: &reqwest::Client, base: &str, key: &str) -> reqwest::Response {
    let answer = http.get(format!("{base}/v1/stream/outcomes")).header("authorization", format!("Bearer {key}")).send().await.expect("stream");
    assert_eq!(answer.status(), 200);
    assert!(answer.headers()["content-type"].to_str().unwrap_or("").starts_with("text/event-stream"));
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_keep_tenants_apart_in_reads_cancels_and_the_outcome_stream() {
    let mut api = Api::start(&[("echo", ECHO, true)]).await;
    let (key_a, key_b) = ("key-of-tenant-a-0123456789", "key-of-tenant-b-9876543210");
    let keys =
        vec![ApiKeyConfig { tenant: "a".into(), sha256: sha256_hex(key_a) }, ApiKeyConfig { tenant: "b".into(), sha256: sha256_hex(key_b).to_uppercase() }];
    let base = api.serve(ApiConfig { keys, ..ApiConfig::default() }).await;
    let http = api.http.clone();
    let (a, b) = (Who::Key(key_a), Who::Key(key_b));

    // Without a key, or with a wrong one: 401 (also for the tenant header of keyless mode).
    for who in [Who::Nobody, Who::Key("not-a-key"), Who::Tenant("a")] {
        let (status, body) = get(&http, format!("{base}/v1/tasks"), who).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
        let (status, _) = post(&http, format!("{base}/v1/tasks"), who, json!({"agent_type": "echo", "input": {}})).await;
        assert_eq!(status, 401);
    }
    let (status, _) = get(&http, format!("{base}/v1/tasks"), Who::Key("")).await;
    assert_eq!(status, 401);
    // x-api-key works as well as the bearer header.
    let answer = http.get(format!("{base}/v1/tasks")).header("x-api-key", key_b).send().await.expect("answer");
    assert_eq!(answer.status(), 200);
    // Health and readiness need no key.
    assert_eq!(get(&http, format!("{base}/healthz"), Who::Nobody).await.0, 200);

    // Both tenants stream outcomes; then each submits one task.
    let mut stream_a = open_stream(&http, &base, key_a).await;
    let mut stream_b = open_stream(&http, &base, key_b).await;
    let (status, body) = post(&http, format!("{base}/v1/tasks?wait_ms=15000"), a, json!({"agent_type": "echo", "input": {"who": "a"}})).await;
    assert_eq!(status, 200, "{body}");
    let task_a = body["task_id"].as_str().expect("id").to_string();
    let (status, body) = post(&http, format!("{base}/v1/tasks?wait_ms=15000"), b, json!({"agent_type": "echo", "input": {"who": "b"}})).await;
    assert_eq!(status, 200, "{body}");
    let task_b = body["task_id"].as_str().expect("id").to_string();

    let (mut buf_a, mut buf_b) = (String::new(), String::new());
    let (event, data) = next_event(&mut stream_a, &mut buf_a, WITHIN).await.expect("an event for tenant a");
    assert_eq!((event.as_str(), data["task_id"].as_str()), ("outcome", Some(task_a.as_str())), "{data}");
    assert_eq!(data["outcome"]["output"], json!({"who": "a"}));
    // b's first event is its own task, though a's finished first.
    let (event, data) = next_event(&mut stream_b, &mut buf_b, WITHIN).await.expect("an event for tenant b");
    assert_eq!((event.as_str(), data["task_id"].as_str()), ("outcome", Some(task_b.as_str())), "{data}");
    assert!(next_event(&mut stream_a, &mut buf_a, Duration::from_millis(1500)).await.is_none(), "a does not see b's outcome");
    drop((stream_a, stream_b));

    // b cannot see, wait for or cancel a's task: 404, as if it did not exist.
    let (status, body) = get(&http, format!("{base}/v1/tasks/{task_a}"), b).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("no_task")), "{body}");
    let (status, _) = get(&http, format!("{base}/v1/tasks/{task_a}/outcome"), b).await;
    assert_eq!(status, 404);
    let (status, _) = get(&http, format!("{base}/v1/tasks/{task_a}/outcome?wait_ms=300"), b).await;
    assert_eq!(status, 404);
    let (status, body) = post(&http, format!("{base}/v1/tasks/{task_a}/cancel"), b, json!({})).await;
    assert_eq!(status, 404, "not 403: {body}");
    // a sees its own task; cancelling it now conflicts, since it has finished.
    let (status, body) = get(&http, format!("{base}/v1/tasks/{task_a}/outcome"), a).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("completed")), "{body}");
    let (status, body) = post(&http, format!("{base}/v1/tasks/{task_a}/cancel"), a, json!({"reason": "too late"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("task_finished")), "{body}");
    let (status, _) = post(&http, format!("{base}/v1/tasks/no-such-task/cancel"), a, json!({})).await;
    assert_eq!(status, 404);

    // Listings show only the caller's tasks.
    let (_, page_a) = get(&http, format!("{base}/v1/tasks"), a).await;
    let (_, page_b) = get(&http, format!("{base}/v1/tasks"), b).await;
    assert_eq!(ids_of(&page_a), std::slice::from_ref(&task_a));
    assert_eq!(ids_of(&page_b), std::slice::from_ref(&task_b));
    let (_, stats_b) = get(&http, format!("{base}/v1/stats"), b).await;
    assert_eq!((stats_b["tenant"]["name"].as_str(), stats_b["tenant"]["submitted"].as_u64()), (Some("b"), Some(1)), "{stats_b}");

    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_the_in_flight_quota_answer_429_with_retry_after() {
    let mut api = Api::start(&[("echo", ECHO, true), ("idle", ECHO, false)]).await;
    let http = api.http.clone();

    // 1 request/s with bursts of 3, per tenant.
    let limited = api.serve(ApiConfig { rate_per_s: 1, burst: 3, ..ApiConfig::default() }).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let (status, body, headers) = call(&http, reqwest::Method::GET, format!("{limited}/v1/tasks"), Who::Tenant("greedy"), None).await;
        statuses.push(status);
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            retry_after = headers.get("retry-after").map(|v| v.to_str().expect("ascii").parse::<u64>().expect("seconds"));
        }
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "the burst passes: {statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "then 429: {statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After in whole seconds: {retry_after:?}");
    // Submits are limited too, and nothing is written for them.
    let (status, _) = post(&http, format!("{limited}/v1/tasks"), Who::Tenant("greedy"), json!({"agent_type": "echo", "input": {}})).await;
    assert_eq!(status, 429);
    // Another tenant has its own budget.
    assert_eq!(get(&http, format!("{limited}/v1/tasks"), Who::Tenant("modest")).await.0, 200);
    // The budget refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&http, format!("{limited}/v1/tasks"), Who::Tenant("greedy")).await.0, 200);

    // At most 3 open tasks per tenant; `idle` has no worker, so its tasks stay open.
    let quota = api.serve(ApiConfig { max_in_flight: 3, ..ApiConfig::default() }).await;
    let busy = Who::Tenant("busy");
    for i in 0..3 {
        let (status, body) = post(&http, format!("{quota}/v1/tasks"), busy, json!({"agent_type": "idle", "input": {"i": i}})).await;
        assert_eq!(status, 202, "{body}");
    }
    eventually("the projection counts 3 open tasks", || {
        let (http, quota) = (http.clone(), quota.clone());
        async move {
            let (_, stats) = get(&http, format!("{quota}/v1/stats"), busy).await;
            (stats["tenant"]["open"] == 3).then_some(())
        }
    })
    .await;
    let marks = api.lane_marks().await;
    let (status, body, headers) = call(&http, reqwest::Method::POST, format!("{quota}/v1/tasks"), busy, Some(json!({"agent_type": "idle", "input": {}}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // A batch that would pass the quota is refused whole.
    let (status, body) = post(&http, format!("{quota}/v1/tasks/batch"), busy, json!({"tasks": [{"agent_type": "echo", "input": {}}]})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("quota_exceeded")), "{body}");
    assert_eq!(api.lane_marks().await, marks, "nothing written over quota");
    // Other tenants are not affected; finished tasks do not count.
    let (status, body) = post(&http, format!("{quota}/v1/tasks?wait_ms=15000"), Who::Tenant("calm"), json!({"agent_type": "echo", "input": {}})).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..4 {
        let (status, body) = post(&http, format!("{quota}/v1/tasks?wait_ms=15000"), Who::Tenant("calm"), json!({"agent_type": "echo", "input": {}})).await;
        assert_eq!(status, 200, "finished tasks are not open: {body}");
    }

    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_metrics_agents_agent_types_and_stats() {
    let mut api = Api::start(&[("echo", ECHO, true), ("idle", ECHO, false)]).await;
    let base = api.serve(ApiConfig::default()).await;
    let http = api.http.clone();
    let me = Who::Tenant("ops");

    let ready = eventually("ready", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let (status, body) = get(&http, format!("{base}/readyz"), Who::Nobody).await;
            (status == 200).then_some(body)
        }
    })
    .await;
    assert_eq!(ready["ready"], true, "{ready}");

    for i in 0..4 {
        let (status, body) = post(&http, format!("{base}/v1/tasks?wait_ms=15000"), me, json!({"agent_type": "echo", "input": {"i": i}})).await;
        assert_eq!(status, 200, "{body}");
    }
    let before_idle = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(post(&http, format!("{base}/v1/tasks"), me, json!({"agent_type": "idle", "input": {}})).await.0, 202);
    }

    // Stats: the completed tasks counted once each; the idle ones submitted and open.
    let stats = eventually("stats count the idle submissions", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let (_, stats) = get(&http, format!("{base}/v1/stats"), me).await;
            (stats["agent_types"]["idle"]["submitted"] == 3).then_some(stats)
        }
    })
    .await;
    let echo = &stats["agent_types"]["echo"];
    assert_eq!((echo["submitted"].as_u64(), echo["completed"].as_u64(), echo["failed"].as_u64()), (Some(4), Some(4), Some(0)), "{stats}");
    assert_eq!(echo["submit_to_outcome_ms"]["count"], 4, "{stats}");
    assert_eq!(echo["run_duration_ms"]["count"], 4, "{stats}");
    assert_eq!(stats["agent_types"]["idle"]["completed"], 0);
    assert_eq!(stats["agent_types"]["echo"]["retries"], 0, "retries are reported (counting: tests/integration/projection_apply.rs): {stats}");
    assert_eq!((stats["tenant"]["submitted"].as_u64(), stats["tenant"]["open"].as_u64()), (Some(7), Some(3)), "{stats}");
    assert_eq!(stats["projection"]["caught_up"], true);

    // The worker is listed with its type, running, least loaded first; filters work.
    let agent = eventually("the worker is listed as running", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let (_, body) = get(&http, format!("{base}/v1/agents"), me).await;
            body["agents"].as_array()?.iter().find(|a| a["agent_id"] == "echo-1" && a["status"] == "running").cloned()
        }
    })
    .await;
    assert_eq!(agent["agent_type"], "echo", "{agent}");
    assert_eq!(agent["concurrency"], 4, "{agent}");
    let (_, none) = get(&http, format!("{base}/v1/agents?agent_type=idle"), me).await;
    assert_eq!(none["agents"], json!([]));
    let (_, by_type) = get(&http, format!("{base}/v1/agents?agent_type=echo&status=running"), me).await;
    assert_eq!(by_type["agents"].as_array().map(Vec::len), Some(1), "{by_type}");

    // Agent types: lag per lane; `idle` has 3 waiting on normal, echo none once committed.
    let types = eventually("echo's lag reaches 0", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let (_, body) = get(&http, format!("{base}/v1/agent-types"), me).await;
            let echo = body["agent_types"].as_array()?.iter().find(|t| t["name"] == "echo")?.clone();
            (echo["lag"] == json!({"high": 0, "normal": 0})).then_some(body)
        }
    })
    .await;
    let idle = types["agent_types"].as_array().expect("types").iter().find(|t| t["name"] == "idle").expect("idle").clone();
    assert_eq!(idle["lag"], json!({"high": 0, "normal": 3}), "{idle}");
    assert_eq!(idle["lanes"], json!(["high", "normal"]));

    // Metrics: HTTP requests by route and status, tasks by type and outcome.
    let answer = http.get(format!("{base}/metrics")).send().await.expect("metrics");
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.expect("text");
    assert!(text.contains("agentlog_http_requests_total{"), "{text}");
    assert!(text.contains("route=\"/v1/tasks\""), "{text}");
    assert!(text.contains("agentlog_tasks_total{agent_type=\"echo\",outcome=\"completed\"} 4"), "{text}");
    assert!(text.contains("agentlog_task_retries_total{agent_type=\"echo\"} 0"), "{text}");
    assert!(text.contains("agentlog_projection_caught_up 1"), "{text}");
    // Waiting tasks per agent type and lane, as /v1/agent-types counts them above.
    assert!(text.contains("agentlog_lane_waiting_tasks{agent_type=\"idle\",lane=\"normal\"} 3"), "{text}");
    assert!(text.contains("agentlog_lane_waiting_tasks{agent_type=\"echo\",lane=\"high\"} 0"), "{text}");
    // How long the oldest has waited: since the first idle submit, give or take the clock's ms.
    let waited = before_idle.elapsed().as_secs_f64();
    let value = |series: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in {text}"));
        line[series.len()..].trim().parse().unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let age = value("agentlog_lane_backlog_age_seconds{agent_type=\"idle\",lane=\"normal\"}");
    assert!(age > 0.0 && age <= waited + 0.01, "the oldest idle task waited {age} s; {waited} s passed since the first was submitted");
    assert_eq!(value("agentlog_lane_backlog_age_seconds{agent_type=\"echo\",lane=\"high\"}"), 0.0, "nothing waits for echo");
    let ready = get(&http, format!("{base}/readyz"), Who::Nobody).await.1;
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(ready["lag_records"].is_i64(), "{ready}");

    api.stop().await;
}
