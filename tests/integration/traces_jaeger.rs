//! Traces end to end, read back from a real trace backend: Jaeger v1.75.0 (built from the Go
//! module proxy by `scripts/jaeger.sh`; `AGENTLOG_TEST_JAEGER` names the binary, `make test`
//! sets it) receives `agentlog dev`'s spans over OTLP/HTTP. A task of the builtin coordinator
//! is submitted with a `traceparent` of the test's own; the coordinator fans out to `echo`
//! (here an `http` agent this test serves, so the agent's request can be inspected) and
//! `textstats`. The trace read from Jaeger's query API must be the caller's trace, with the
//! request span under the caller, the coordinator's attempt under the request, each child's
//! attempt under the coordinator's, the agent call under the echo attempt, every outcome's
//! projection under its attempt; and the agent's request must carry that call's
//! `traceparent`. On the embedded log and on Kafka.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{kafka_bootstrap, unique};

/// The trace id and span id of the caller's own (unexported) span.
const CALLER_TRACE: &str = "5e1f0c2a9b8d7e6f5a4b3c2d1e0f9a8b";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn jaeger_bin() -> PathBuf {
    match std::env::var("AGENTLOG_TEST_JAEGER") {
        Ok(path) if !path.trim().is_empty() => PathBuf::from(path),
        _ => panic!("this test needs AGENTLOG_TEST_JAEGER to name a jaeger binary (scripts/jaeger.sh builds one; make test does both)"),
    }
}

/// A process this test started, stopped by its pid when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Jaeger with in-memory storage, its OTLP/HTTP receiver and query API on ports of its own.
struct Jaeger {
    _process: Started,
    otlp: String,
    query: String,
}

impl Jaeger {
    async fn start(dir: &Path, http: &reqwest::Client) -> Jaeger {
        let (otlp, query, grpc) = (free_port(), free_port(), free_port());
        let config = dir.join("jaeger.yaml");
        std::fs::write(
            &config,
            format!(
                r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{grpc}
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
            ),
        )
        .expect("write jaeger config");
        let log = std::fs::File::create(dir.join("jaeger.log")).expect("jaeger log");
        let process = Command::new(jaeger_bin())
            .arg("--config")
            .arg(format!("file:{}", config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start jaeger");
        let jaeger = Jaeger { _process: Started(process), otlp: format!("http://127.0.0.1:{otlp}"), query: format!("http://127.0.0.1:{query}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(answer) = http.get(format!("{}/api/services", jaeger.query)).send().await
                && answer.status() == 200
            {
                return jaeger;
            }
            assert!(Instant::now() < deadline, "jaeger did not answer within 60 s: {}", std::fs::read_to_string(dir.join("jaeger.log")).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The trace's spans once every one of `expected` operation names is among them.
    async fn trace(&self, http: &reqwest::Client, trace_id: &str, expected: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut spans = Vec::new();
        while Instant::now() < deadline {
            if let Ok(answer) = http.get(format!("{}/api/traces/{trace_id}", self.query)).send().await
                && answer.status() == 200
                && let Ok(body) = answer.json::<Value>().await
            {
                spans = body["data"][0]["spans"].as_array().cloned().unwrap_or_default();
                let names: Vec<&str> = spans.iter().filter_map(|s| s["operationName"].as_str()).collect();
                if expected.iter().all(|e| names.contains(e)) {
                    return spans;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let names: Vec<&str> = spans.iter().filter_map(|s| s["operationName"].as_str()).collect();
        panic!("trace {trace_id} did not get {expected:?} within 60 s; it has {names:?}");
    }
}

/// What the test's http agent saw: each request's `traceparent` header and body field.
#[derive(Default)]
struct Seen {
    headers: Vec<String>,
    bodies: Vec<String>,
}

/// Serves an http agent answering `{"echoed": true}`, recording what each request carried.
async fn serve_agent(seen: Arc<Mutex<Seen>>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
    let address = listener.local_addr().expect("agent address");
    let app = axum::Router::new().route(
        "/run",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().expect("seen");
                seen.headers.push(headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_string());
                seen.bodies.push(body.0["traceparent"].as_str().unwrap_or("").to_string());
                axum::Json(json!({"echoed": true}))
            }
        }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{address}/run"), server)
}

fn config(dir: &Path, backend: &str, api: u16, registry: u16, otlp: &str, agent_url: &str) -> PathBuf {
    let log = match backend {
        "kafka" => format!(
            "[log]\nbackend = \"kafka\"\ntopic_prefix = \"{}.\"\n\n[log.kafka]\nbootstrap_servers = \"{}\"\nrequest_timeout_ms = 15000\n",
            unique("traces").replace('-', ""),
            kafka_bootstrap()
        ),
        _ => format!("[log]\nbackend = \"embedded\"\n\n[log.embedded]\ndata_dir = \"{}\"\n", dir.join("log").display()),
    };
    let text = format!(
        r#"{log}
[supervisor]
state_dir = "{supervisor}"

[projection]
dir = "{projection}"

[api]
listen = "127.0.0.1:{api}"

[registry]
listen = "127.0.0.1:{registry}"
url = "http://127.0.0.1:{registry}"

[telemetry]
enabled = true
endpoint = "{otlp}"
sampling_ratio = 1.0
service_name = "agentlog-test"

[agents.coordinator]
runtime = {{ kind = "builtin", name = "coordinator" }}
delegates = true

[agents.echo]
runtime = {{ kind = "http", url = "{agent_url}" }}

[agents.textstats]
runtime = {{ kind = "builtin", name = "textstats" }}
"#,
        supervisor = dir.join("supervisor").display(),
        projection = dir.join("projection").display(),
    );
    let path = dir.join("agentlog.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"].as_array()?.iter().find(|t| t["key"] == key).map(|t| &t["value"])
}

fn parent_of(span: &Value) -> Option<&str> {
    span["references"].as_array()?.iter().find(|r| r["refType"] == "CHILD_OF").and_then(|r| r["spanID"].as_str())
}

/// The one span named `name` (and, when given, with agentlog.agent_type `agent_type`).
fn one<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|s| s["operationName"] == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span expected, found {}", found.len());
    found[0]
}

async fn a_fan_out_is_one_trace_in_jaeger(backend: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let http = reqwest::Client::new();
    let jaeger = Jaeger::start(dir.path(), &http).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (agent_url, agent) = serve_agent(seen.clone()).await;
    let (api, registry) = (free_port(), free_port());
    let config = config(dir.path(), backend, api, registry, &jaeger.otlp, &agent_url);
    let log = std::fs::File::create(dir.path().join("agentlog.log")).expect("agentlog log");
    let dev = Started(
        Command::new(env!("CARGO_BIN_EXE_agentlog"))
            .arg("--config")
            .arg(&config)
            .arg("dev")
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agentlog dev"),
    );
    let base = format!("http://127.0.0.1:{api}");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !http.get(format!("{base}/readyz")).send().await.is_ok_and(|a| a.status() == 200) {
        assert!(
            Instant::now() < deadline,
            "agentlog dev was not ready within 90 s: {}",
            std::fs::read_to_string(dir.path().join("agentlog.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let answer: Value = http
        .post(format!("{base}/v1/tasks?wait_ms=30000"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"agent_type": "coordinator", "input": {"text": "trace me across the log"}}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("submit answer");
    assert_eq!(answer["outcome"]["status"], "completed", "the fan-out completes: {answer}");

    let spans = jaeger
        .trace(&http, CALLER_TRACE, &["POST /v1/tasks", "attempt coordinator", "attempt echo", "attempt textstats", "POST agent", "project TaskCompleted"])
        .await;
    let id = |s: &Value| s["spanID"].as_str().expect("span id").to_string();
    assert!(spans.iter().all(|s| s["traceID"] == CALLER_TRACE), "every span is in the caller's trace");

    let request = one(&spans, "POST /v1/tasks");
    assert_eq!(parent_of(request), Some(CALLER_SPAN), "the submit continues the caller's traceparent");
    assert_eq!(tag(request, "http.response.status_code").and_then(Value::as_i64), Some(200), "{request}");

    let coordinator = one(&spans, "attempt coordinator");
    assert_eq!(parent_of(coordinator).map(str::to_string), Some(id(request)), "the attempt descends from the submit");
    assert_eq!(tag(coordinator, "agentlog.agent_type"), Some(&json!("coordinator")));
    assert_eq!(tag(coordinator, "agentlog.lane"), Some(&json!("normal")));
    assert_eq!(tag(coordinator, "agentlog.attempt").and_then(Value::as_i64), Some(1));
    assert_eq!(tag(coordinator, "agentlog.outcome"), Some(&json!("completed")));
    for child in ["attempt echo", "attempt textstats"] {
        let span = one(&spans, child);
        assert_eq!(parent_of(span).map(str::to_string), Some(id(coordinator)), "{child} is a child of the coordinator's attempt");
        assert_eq!(tag(span, "agentlog.outcome"), Some(&json!("completed")), "{child}");
        assert!(tag(span, "agentlog.parent_task_id").and_then(Value::as_str).is_some_and(|p| !p.is_empty()), "{child} names its parent task");
    }
    let call = one(&spans, "POST agent");
    assert_eq!(parent_of(call).map(str::to_string), Some(id(one(&spans, "attempt echo"))), "the agent call is under the echo attempt");
    let projected: Vec<&Value> = spans.iter().filter(|s| s["operationName"] == "project TaskCompleted").collect();
    let attempts: Vec<String> = spans.iter().filter(|s| s["operationName"].as_str().is_some_and(|n| n.starts_with("attempt "))).map(id).collect();
    assert!(projected.iter().all(|p| parent_of(p).is_some_and(|parent| attempts.iter().any(|a| a == parent))), "each projection is under an attempt");
    assert!(!projected.is_empty());

    // The task's view names the trace to look up (what the dashboard's task page shows).
    let task_id = answer["task_id"].as_str().expect("task id");
    let task: Value = http.get(format!("{base}/v1/tasks/{task_id}")).send().await.expect("get task").json().await.expect("task json");
    assert_eq!(task["trace_id"], CALLER_TRACE, "{task}");

    let traceparent = format!("00-{CALLER_TRACE}-{}-01", id(call));
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.headers, vec![traceparent.clone()], "the agent's request carries the call's traceparent header");
    assert_eq!(seen.bodies, vec![traceparent], "and the protocol's body field");
    drop(seen);

    drop(dev);
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs AGENTLOG_TEST_JAEGER (scripts/jaeger.sh builds it; make test sets it)"]
async fn embedded_fan_out_is_one_trace_in_jaeger() {
    a_fan_out_is_one_trace_in_jaeger("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs AGENTLOG_TEST_JAEGER and AGENTLOG_TEST_KAFKA (make test sets both)"]
async fn kafka_fan_out_is_one_trace_in_jaeger() {
    a_fan_out_is_one_trace_in_jaeger("kafka").await;
}
