//! Tenants over HTTP, on both backends: a task's identity is (tenant, task id), so two tenants
//! may use the same id and never see or touch each other's task — not by submitting it again,
//! not by cancelling it, not through dead letters or stats — and the runtime configuration of
//! agent types (URLs, programs) and `/metrics` (all tenants' totals) are for admin tenants
//! only. Each scenario runs a real worker, supervisor, projector (RocksDB) and the API on a
//! real loopback port with API keys.

use crate::fixture;
use crate::harness;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use agentlog::agent::dlq;
use agentlog::api::{ApiConfig, ApiKeyConfig, ApiStartError, ApiState, bind, serve};
use agentlog::events::{JobSubmitted, Lane, TaskSubmitted};
use agentlog::http::access::sha256_hex;
use agentlog::log::{ConsumedRecord, Record};
use agentlog::projection::{Projection, ProjectionStore, ProjectorError, sources};

use fixture::{Fixture, scripted};
use harness::{Harness, kafka_bootstrap, unique};

const MAX_BODY: usize = 64 * 1024;
const WITHIN: Duration = Duration::from_secs(40);

/// One agent type run by the scripted test agent: no retries, so a transient failure is
/// dead-lettered at once.
const SCRIPTED: &str = r#"
runtime = { kind = "builtin", name = "echo" }
concurrency = 4
timeout_ms = 20000
[retry]
max_attempts = 1
initial_backoff_ms = 50
jitter = 0.0
"#;

/// A type nobody runs, whose runtime configuration names a private endpoint with credentials.
const PRIVATE: &str = "runtime = { kind = \"http\", url = \"http://deploy:s3cret-pass@10.1.2.3:9/secret-endpoint?token=t0ken-abc\" }\n";

/// The API with three keys: tenants `acme` and `globex`, and `ops`, an admin tenant.
struct Api {
    base: String,
    http: reqwest::Client,
    agent_type: String,
    private_type: String,
    stop: CancellationToken,
    server: JoinHandle<Result<(), ApiStartError>>,
    projector: JoinHandle<Result<(), ProjectorError>>,
    _dir: tempfile::TempDir,
    f: Fixture,
}

impl Api {
    async fn start(h: &Harness) -> Api {
        let mut f = Fixture::new(h).await;
        let (agent_type, agent) = f.agent_type("scripted", SCRIPTED).await;
        let (private_type, private) = f.agent_type("private", PRIVATE).await;
        let (_, runtime) = scripted();
        f.start_worker(&agent_type, &agent, runtime, "worker-1");
        f.start_supervisor(3);
        let mut agents = BTreeMap::new();
        agents.insert(agent_type.clone(), agent);
        agents.insert(private_type.clone(), private);
        let stop = CancellationToken::new();
        let dir = tempfile::tempdir().expect("projection dir");
        let projection = Projection::new(ProjectionStore::open(dir.path()).expect("projection store"), sources(&f.topics, &agents)).expect("projection");
        let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
        let key = |tenant: &str| ApiKeyConfig { tenant: tenant.into(), sha256: sha256_hex(&format!("key-of-{tenant}")) };
        let config = ApiConfig {
            listen: "127.0.0.1:0".into(),
            keys: vec![key("acme"), key("globex"), key("ops")],
            admin_tenants: vec!["ops".into()],
            ..ApiConfig::default()
        };
        let state = Arc::new(ApiState::new(f.log.clone(), f.client.clone(), agents, projection, config.clone()).expect("api state"));
        let listener = bind(&config).await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(serve(listener, state, MAX_BODY, stop.clone()));
        Api { base, http: reqwest::Client::new(), agent_type, private_type, stop, server, projector, _dir: dir, f }
    }

    async fn call(&self, tenant: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(format!("key-of-{tenant}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.expect("answer");
        let status = answer.status().as_u16();
        let text = answer.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, tenant: &str, path: &str) -> (u16, Value) {
        self.call(tenant, reqwest::Method::GET, path, None).await
    }

    async fn post(&self, tenant: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(tenant, reqwest::Method::POST, path, Some(body)).await
    }

    /// Submits `order-17`-style tasks of the scripted type; `input` drives the test agent.
    async fn submit(&self, tenant: &str, task_id: &str, input: Value, labels: Value, wait_ms: u64) -> (u16, Value) {
        let body = json!({"agent_type": self.agent_type, "task_id": task_id, "input": input, "labels": labels});
        self.post(tenant, &format!("/v1/tasks?wait_ms={wait_ms}"), body).await
    }

    /// Polls the task as `tenant` until `done` holds for it.
    async fn until(&self, tenant: &str, task_id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WITHIN;
        loop {
            let (status, body) = self.get(tenant, &format!("/v1/tasks/{task_id}")).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{tenant}'s task {task_id} never became {what}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `path` as `tenant` until its `key` array holds `n` items (the projector indexes
    /// what was written a moment ago).
    async fn until_listed(&self, tenant: &str, path: &str, key: &str, n: usize) -> Value {
        let deadline = Instant::now() + WITHIN;
        loop {
            let (status, body) = self.get(tenant, path).await;
            if status == 200 && body[key].as_array().is_some_and(|items| items.len() >= n) {
                return body;
            }
            assert!(Instant::now() < deadline, "{tenant}'s {path} never listed {n} {key}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn outcome(&self, tenant: &str, task_id: &str) -> Value {
        self.until(tenant, task_id, "finished", |t| t["outcome"].is_object()).await["outcome"].clone()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.server.await.expect("server task").expect("server");
        self.projector.await.expect("projector task").expect("projector");
        self.f.stop().await;
    }
}

/// Tenant B submitting A's task id gets its own task: A's input, labels and output stay
/// A's, readable by A only, and B reads only its own.
pub async fn a_foreign_submit_of_a_task_id_creates_a_separate_task(h: &mut Harness) {
    let api = Api::start(h).await;
    let id = unique("order-17");
    let (status, body) = api.submit("acme", &id, json!({"owner": "acme"}), json!({"who": "acme"}), 20_000).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"]["output"], json!({"owner": "acme"}));
    let (status, body) = api.submit("globex", &id, json!({"owner": "globex", "sleep_ms": 300}), json!({"who": "globex"}), 20_000).await;
    assert_eq!(status, 200, "globex's submit of the same id is a task of its own: {body}");
    assert_eq!(body["outcome"]["output"], json!({"owner": "globex", "sleep_ms": 300}));

    let (status, acme) = api.get("acme", &format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200, "acme still reads its task: {acme}");
    assert_eq!(acme["tenant"], "acme");
    assert_eq!(acme["input"], json!({"owner": "acme"}));
    assert_eq!(acme["labels"], json!({"who": "acme"}));
    assert_eq!(acme["outcome"]["output"], json!({"owner": "acme"}));
    assert_eq!(acme["attempts"], 1, "acme's task ran once: {acme}");
    let (status, globex) = api.get("globex", &format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 200, "{globex}");
    assert_eq!(globex["tenant"], "globex");
    assert_eq!(globex["input"], json!({"owner": "globex", "sleep_ms": 300}));
    assert_eq!(globex["labels"], json!({"who": "globex"}));
    assert!(!globex.to_string().contains("\"acme\""), "nothing of acme's task shows in globex's: {globex}");
    let (status, _) = api.get("ops", &format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 404, "a third tenant sees neither");
    let (_, outcome) = api.get("acme", &format!("/v1/tasks/{id}/outcome")).await;
    assert_eq!(outcome["output"], json!({"owner": "acme"}));
    api.stop().await;
}

/// Tenant B cannot cancel A's running task: not by its id (404), and not by submitting the
/// same id and cancelling that, which cancels B's task only.
pub async fn a_foreign_cancel_leaves_the_running_task_alone(h: &mut Harness) {
    let api = Api::start(h).await;
    let id = unique("order-17");
    let (status, body) = api.submit("acme", &id, json!({"owner": "acme", "sleep_ms": 2500}), json!({}), 0).await;
    assert_eq!(status, 202, "{body}");
    api.until("acme", &id, "running", |t| t["status"] == "running").await;
    let (status, _) = api.post("globex", &format!("/v1/tasks/{id}/cancel"), json!({"reason": "mine now"})).await;
    assert_eq!(status, 404, "globex has no task of that id");
    let (status, body) = api.submit("globex", &id, json!({"owner": "globex", "sleep_ms": 2500}), json!({}), 0).await;
    assert_eq!(status, 202, "{body}");
    // Cancels globex's own task, once its projection shows it.
    let deadline = Instant::now() + WITHIN;
    loop {
        let (status, body) = api.post("globex", &format!("/v1/tasks/{id}/cancel"), json!({"reason": "mine now"})).await;
        if status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "globex could not cancel its own task: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acme = api.outcome("acme", &id).await;
    assert_eq!(acme["status"], "completed", "acme's running task was not cancelled by globex: {acme}");
    assert_eq!(acme["output"], json!({"owner": "acme", "sleep_ms": 2500}));
    let globex = api.outcome("globex", &id).await;
    assert_eq!(globex["status"], "cancelled", "globex's own task was: {globex}");
    let (_, acme_task) = api.get("acme", &format!("/v1/tasks/{id}")).await;
    assert_eq!(acme_task["cancel_requested"], false, "acme's timeline shows no cancel request: {acme_task}");
    api.stop().await;
}

/// Two tenants submit the same id at once: both run and complete, each sees only its own
/// task (get, outcome, list), and each tenant's stats count only its own tasks.
pub async fn two_tenants_with_one_id_complete_independently(h: &mut Harness) {
    let api = Api::start(h).await;
    let id = unique("order-17");
    let (a, b) = tokio::join!(
        api.submit("acme", &id, json!({"owner": "acme", "sleep_ms": 200}), json!({"who": "acme"}), 20_000),
        api.submit("globex", &id, json!({"owner": "globex", "sleep_ms": 200}), json!({"who": "globex"}), 20_000),
    );
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(b.0, 200, "{}", b.1);
    for tenant in ["acme", "globex"] {
        let outcome = api.outcome(tenant, &id).await;
        assert_eq!(outcome["status"], "completed");
        assert_eq!(outcome["output"], json!({"owner": tenant, "sleep_ms": 200}), "{tenant} sees its own output");
        let (status, list) = api.get(tenant, "/v1/tasks").await;
        assert_eq!(status, 200);
        let tasks = list["tasks"].as_array().expect("tasks");
        assert_eq!(tasks.len(), 1, "{tenant} lists its one task: {list}");
        assert_eq!(tasks[0]["input"]["owner"], tenant);
        assert_eq!(tasks[0]["labels"]["who"], tenant);
    }
    // Three more for acme; globex's stats still count its one task.
    for n in 0..3 {
        let (status, body) = api.submit("acme", &format!("{id}-{n}"), json!({"owner": "acme"}), json!({}), 20_000).await;
        assert_eq!(status, 200, "{body}");
    }
    let deadline = Instant::now() + WITHIN;
    loop {
        let (_, acme) = api.get("acme", "/v1/stats").await;
        if acme["agent_types"][&api.agent_type]["completed"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "acme's stats never counted its 4 tasks: {acme}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, globex) = api.get("globex", "/v1/stats").await;
    assert_eq!(status, 200);
    let counted = &globex["agent_types"][&api.agent_type];
    assert_eq!((counted["submitted"].clone(), counted["completed"].clone()), (json!(1), json!(1)), "globex's stats count only globex's task: {globex}");
    assert_eq!(counted["submit_to_outcome_ms"]["count"], 1, "{globex}");
    assert_eq!(globex["tenant"]["submitted"], 1);
    let (_, ops) = api.get("ops", "/v1/stats").await;
    assert!(ops["agent_types"][&api.agent_type]["submitted"].as_u64().unwrap_or(0) == 0, "a tenant without tasks counts none: {ops}");
    api.stop().await;
}

/// Dead letters: each tenant lists only its own, and resubmits its own even when another
/// tenant's dead letter of the same id is newer.
pub async fn dead_letters_belong_to_their_tenant(h: &mut Harness) {
    let api = Api::start(h).await;
    let id = unique("order-17");
    let failing = |owner: &str| json!({"owner": owner, "fail_until": 99});
    let (status, body) = api.submit("acme", &id, failing("acme"), json!({}), 20_000).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(api.outcome("acme", &id).await["status"], "dead_lettered");
    let (status, body) = api.submit("globex", &id, failing("globex"), json!({}), 20_000).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(api.outcome("globex", &id).await["status"], "dead_lettered");
    assert_eq!(api.outcome("acme", &id).await["status"], "dead_lettered", "acme's dead letter is still acme's");

    for tenant in ["acme", "globex"] {
        // The letter and the outcome are on two topics: the projection may show either first.
        let dlq = api.until_listed(tenant, "/v1/dlq", "dead_letters", 1).await;
        let letters = dlq["dead_letters"].as_array().expect("dead letters");
        assert_eq!(letters.len(), 1, "{tenant} sees its own dead letter only: {dlq}");
        assert_eq!(letters[0]["task_id"], json!(id));
        assert_eq!(letters[0]["task_status"], "dead_lettered", "{dlq}");
    }
    let (_, ops) = api.get("ops", "/v1/dlq").await;
    assert_eq!(ops["dead_letters"], json!([]), "a tenant without dead letters sees none");

    // acme resubmits its own (older) dead letter: acme's task runs again, globex's does not.
    let (status, body) = api.post("acme", &format!("/v1/dlq/{id}/resubmit"), json!({})).await;
    assert_eq!(status, 202, "acme resubmits its own dead letter: {body}");
    let acme = api
        .until("acme", &id, "run again", |t| {
            t["attempts"] == 1 && t["timeline"].as_array().is_some_and(|e| e.iter().filter(|e| e["event"] == "TaskStarted").count() == 2)
        })
        .await;
    assert_eq!(acme["input"]["owner"], "acme");
    let (_, globex) = api.get("globex", &format!("/v1/tasks/{id}")).await;
    let starts = globex["timeline"].as_array().expect("timeline").iter().filter(|e| e["event"] == "TaskStarted").count();
    assert_eq!(starts, 1, "globex's task was not resubmitted: {globex}");
    // The task fails again: its new letter lists first, and the resubmitted one stays listed
    // (the topic is the record of what failed).
    let dlq = api.until_listed("acme", "/v1/dlq", "dead_letters", 2).await;
    let letters = dlq["dead_letters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), 2, "{dlq}");
    assert!(letters.iter().all(|l| l["task_id"] == json!(id)), "{dlq}");
    assert!(letters[0]["dead_lettered_at_ms"].as_i64() >= letters[1]["dead_lettered_at_ms"].as_i64(), "newest first: {dlq}");
    let (_, globex) = api.get("globex", "/v1/dlq").await;
    assert_eq!(globex["dead_letters"].as_array().map(Vec::len), Some(1), "globex's own letter only: {globex}");
    api.stop().await;
}

/// The dead letter of `tenant`'s task `task_id`, as a worker writes it to `dlq`.
async fn dead_letter_of(api: &Api, tenant: &str, task_id: &str) -> Record {
    let lane = api.f.topics.lane(&api.agent_type, Lane::Normal);
    let task = TaskSubmitted::new(api.f.client.meta(tenant), task_id, api.agent_type.as_str(), Lane::Normal, b"{}".to_vec());
    let payload = Bytes::from(api.f.codec.encode(&lane, &task).await.expect("encode"));
    let source = ConsumedRecord {
        topic: lane,
        partition: 0,
        offset: 0,
        key: Some(Bytes::from(task_id.to_string())),
        headers: Vec::new(),
        payload: payload.clone(),
        timestamp_ms: 0,
    };
    dlq::task_dead_letter(&api.f.topics.dlq(), &source, payload, 3, "transient", "kept failing", None)
}

/// Dead letters page through the projection's index, a tenant's own only: with 120 of
/// acme's, 5 of globex's and one that is not a command on `dlq`, acme pages through its 120
/// exactly once, newest first, 50 at a time; globex sees its 5; nobody (not even the admin
/// tenant) sees the undecodable one; globex cannot resubmit acme's letter, acme can; a bad
/// cursor or limit answers 400 naming the field.
pub async fn dead_letters_page_per_tenant(h: &mut Harness) {
    let api = Api::start(h).await;
    let producer = api.f.log.producer().expect("producer");
    let mut written = BTreeMap::<&str, Vec<String>>::new();
    let mut durable = Vec::new();
    for (tenant, n) in [("acme", 120), ("globex", 5)] {
        for i in 0..n {
            let id = unique(&format!("{tenant}-{i}"));
            durable.push(producer.send(dead_letter_of(&api, tenant, &id).await).await.expect("accepted"));
            written.entry(tenant).or_default().push(id);
        }
    }
    durable.push(producer.send(Record::new(api.f.topics.dlq(), b"not a command".to_vec()).with_key(Bytes::from_static(b"junk"))).await.expect("accepted"));
    for ack in durable {
        ack.await.expect("durable");
    }

    api.until_listed("acme", "/v1/dlq?limit=500", "dead_letters", 120).await;
    let mut seen = Vec::new();
    let mut times = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/dlq?limit=50&cursor={c}"),
            None => "/v1/dlq?limit=50".to_string(),
        };
        let (status, page) = api.get("acme", &path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let letters = page["dead_letters"].as_array().expect("dead letters");
        assert!(letters.len() <= 50, "a page holds at most its limit: {}", letters.len());
        for letter in letters {
            seen.push(letter["task_id"].as_str().expect("task id").to_string());
            times.push(letter["dead_lettered_at_ms"].as_i64().expect("time"));
            assert_eq!(letter["attempts"], 3);
            assert_eq!(letter["reason"], "kept failing");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3, "120 letters are 3 pages of at most 50");
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    let mut unique_seen = seen.clone();
    unique_seen.sort();
    unique_seen.dedup();
    assert_eq!(unique_seen.len(), seen.len(), "no letter listed twice");
    let mut acme = written["acme"].clone();
    acme.sort();
    assert_eq!(unique_seen, acme, "acme sees exactly its own 120");

    let globex = api.until_listed("globex", "/v1/dlq", "dead_letters", 5).await;
    let mut listed: Vec<String> = globex["dead_letters"].as_array().expect("letters").iter().map(|l| l["task_id"].as_str().expect("id").to_string()).collect();
    listed.sort();
    let mut expected = written["globex"].clone();
    expected.sort();
    assert_eq!(listed, expected, "globex sees its own 5 only: {globex}");
    assert_eq!(globex["next_cursor"], Value::Null);
    let (_, ops) = api.get("ops", "/v1/dlq").await;
    assert_eq!(ops["dead_letters"], json!([]), "a letter naming no tenant is listed to nobody: {ops}");

    let acme_id = &written["acme"][0];
    let (status, body) = api.post("globex", &format!("/v1/dlq/{acme_id}/resubmit"), json!({})).await;
    assert_eq!(status, 404, "globex cannot resubmit acme's letter: {body}");
    let (status, body) = api.post("acme", &format!("/v1/dlq/{acme_id}/resubmit"), json!({})).await;
    assert_eq!(status, 202, "acme resubmits its own, read back from the log: {body}");
    assert_eq!(body["task_id"], json!(acme_id), "{body}");

    for (query, field) in [("cursor=zz", "cursor"), ("cursor=00ff", "cursor"), ("limit=0", "limit"), ("limit=501", "limit")] {
        let (status, body) = api.get("acme", &format!("/v1/dlq?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    api.stop().await;
}

/// Jobs page newest first with a cursor, a tenant's own only.
pub async fn jobs_page_per_tenant(h: &mut Harness) {
    let api = Api::start(h).await;
    let producer = api.f.log.producer().expect("producer");
    let topic = api.f.topics.events();
    let mut ids = Vec::new();
    for i in 0..7 {
        let job_id = unique(&format!("job-{i}"));
        let mut meta = api.f.client.meta("acme");
        // A second apart, so newest first is one order.
        meta.occurred_at.0 += i64::from(i) * 1_000_000;
        let job = JobSubmitted { meta, job_id: job_id.clone(), task_ids: vec!["t".into()], total: 1 };
        let payload = api.f.codec.encode(&topic, &job).await.expect("encode");
        producer.send(Record::new(topic.clone(), payload).with_key(Bytes::from(job_id.clone()))).await.expect("accepted").await.expect("durable");
        ids.push(job_id);
    }
    api.until_listed("acme", "/v1/jobs?limit=500", "jobs", 7).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=3&cursor={c}"),
            None => "/v1/jobs?limit=3".to_string(),
        };
        let (status, page) = api.get("acme", &path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(page["jobs"].as_array().expect("jobs").iter().map(|j| j["job_id"].as_str().expect("id").to_string()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    ids.reverse();
    assert_eq!(seen, ids, "every job once, newest first, in {pages} pages");
    assert_eq!(pages, 3);
    let (_, globex) = api.get("globex", "/v1/jobs").await;
    assert_eq!(globex["jobs"], json!([]), "{globex}");
    for (query, field) in [("cursor=zz", "cursor"), ("cursor=00", "cursor"), ("limit=0", "limit")] {
        let (status, body) = api.get("acme", &format!("/v1/jobs?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    api.stop().await;
}

/// The runtime configuration of agent types (endpoints, programs) is for admin tenants, with
/// credentials in URLs masked even for them, and so is `/metrics`, which counts every
/// tenant's tasks.
pub async fn runtime_config_and_metrics_are_for_admins(h: &mut Harness) {
    let api = Api::start(h).await;
    let (status, plain) = api.get("acme", "/v1/agent-types").await;
    assert_eq!(status, 200);
    assert!(!plain.to_string().contains("secret-endpoint"), "a tenant does not see runtime URLs: {plain}");
    let private = plain["agent_types"].as_array().expect("types").iter().find(|t| t["name"] == json!(api.private_type)).cloned().expect("listed");
    assert_eq!(private["runtime"], json!({"kind": "http"}), "only the runtime's kind: {private}");
    let (status, admin) = api.get("ops", "/v1/agent-types").await;
    assert_eq!(status, 200);
    let private = admin["agent_types"].as_array().expect("types").iter().find(|t| t["name"] == json!(api.private_type)).cloned().expect("listed");
    assert_eq!(private["runtime"]["url"], "http://deploy:***@10.1.2.3:9/secret-endpoint?token=***", "an admin tenant does, credentials masked: {private}");
    assert!(!admin.to_string().contains("s3cret-pass") && !admin.to_string().contains("t0ken-abc"), "not even admins see credentials: {admin}");
    let (status, _) = api.get("acme", "/metrics").await;
    assert_eq!(status, 403, "a tenant does not read every tenant's totals");
    let (status, metrics) = api.get("ops", "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    api.stop().await;
}

/// Usage (issue 17): each tenant's `/v1/stats` sums its own tasks' reports only (an admin
/// tenant's too: it has no tasks, so none), the task shows its own report, `/metrics` (for
/// admins) sums all tenants', and a report breaking the rules fails its task with kind
/// `protocol` naming the field.
pub async fn usage_is_each_tenants_own(h: &mut Harness) {
    let api = Api::start(h).await;
    let id = unique("llm-call");
    let reported = |input: i64, output: i64, cost: i64| json!({"usage": {"input_tokens": input, "output_tokens": output, "model": "gpt-x", "cost_micros": cost, "currency": "USD", "counters": {"cached_input_tokens": 5}}});
    for (tenant, task_id, input) in
        [("acme", id.clone(), reported(100, 20, 300)), ("acme", format!("{id}-2"), reported(50, 10, 150)), ("globex", id.clone(), reported(7, 3, 40))]
    {
        let (status, body) = api.submit(tenant, &task_id, input, json!({}), 20_000).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["outcome"]["status"], "completed", "{body}");
    }
    let task = api.until("acme", &id, "shown with its usage", |t| t["outcome"]["usage"].is_object()).await;
    let usage = &task["outcome"]["usage"];
    assert_eq!((usage["input_tokens"].clone(), usage["output_tokens"].clone(), usage["model"].clone()), (json!(100), json!(20), json!("gpt-x")), "{task}");
    assert_eq!(
        (usage["cost_micros"].clone(), usage["currency"].clone(), usage["counters"].clone()),
        (json!(300), json!("USD"), json!({"cached_input_tokens": 5}))
    );

    let deadline = Instant::now() + WITHIN;
    let acme = loop {
        let (_, acme) = api.get("acme", "/v1/stats").await;
        if acme["usage"]["tasks"] == 2 {
            break acme;
        }
        assert!(Instant::now() < deadline, "acme's stats never counted its usage: {acme}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let usage = &acme["usage"];
    assert_eq!(
        (usage["input_tokens"].clone(), usage["output_tokens"].clone(), usage["cost_micros"].clone()),
        (json!(150), json!(30), json!({"USD": 450})),
        "{acme}"
    );
    assert_eq!(
        usage["by_model"],
        json!([{"agent_type": api.agent_type, "model": "gpt-x", "tasks": 2, "input_tokens": 150, "output_tokens": 30, "cost_micros": {"USD": 450}, "counters": {"cached_input_tokens": 10}}]),
        "{acme}"
    );
    let (_, globex) = api.get("globex", "/v1/stats").await;
    assert_eq!((globex["usage"]["tasks"].clone(), globex["usage"]["input_tokens"].clone()), (json!(1), json!(7)), "globex sees its own usage only: {globex}");
    let (_, ops) = api.get("ops", "/v1/stats").await;
    assert_eq!((ops["usage"]["tasks"].clone(), ops["usage"]["by_model"].clone()), (json!(0), json!([])), "an admin's stats are its own tenant's too: {ops}");
    let (status, metrics) = api.get("ops", "/metrics").await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("text");
    let series = format!("agentlog_usage_input_tokens_total{{agent_type=\"{}\",model=\"gpt-x\"}} 157", api.agent_type);
    assert!(metrics.contains(&series), "/metrics sums all tenants' usage ({series}):\n{metrics}");

    // A Rust agent's report is checked before it reaches the log.
    let bad = format!("{id}-bad");
    let (status, body) = api.submit("acme", &bad, json!({"usage": {"input_tokens": -1}}), json!({}), 20_000).await;
    assert_eq!(status, 200, "{body}");
    let outcome = api.outcome("acme", &bad).await;
    assert_eq!((outcome["status"].clone(), outcome["error_kind"].clone()), (json!("failed"), json!("protocol")), "{outcome}");
    assert!(outcome["message"].as_str().is_some_and(|m| m.contains("usage.input_tokens")), "{outcome}");
    api.stop().await;
}

// The scenarios are this module's functions; the shared suite macro calls them by this name.
use crate::tenancy as scenarios;

every_backend_suite!(
    a_foreign_submit_of_a_task_id_creates_a_separate_task,
    a_foreign_cancel_leaves_the_running_task_alone,
    two_tenants_with_one_id_complete_independently,
    dead_letters_belong_to_their_tenant,
    dead_letters_page_per_tenant,
    jobs_page_per_tenant,
    runtime_config_and_metrics_are_for_admins,
    usage_is_each_tenants_own;
    durable:
);
