//! The built-in schema registry over real HTTP, the way Confluent clients use it: a server on a
//! port the OS picks, over an embedded log in a temp dir (and over the Kafka broker
//! `AGENTLOG_TEST_KAFKA` names, in an `#[ignore]`d test `make test` runs).

use std::sync::Arc;
use std::time::Duration;

use agentlog::api::{ApiConfig, ApiKeyConfig};
use agentlog::config::{Backend, Config, LogConfig};
use agentlog::events::reader::{EventReader, ReadOutcome, error_kind};
use agentlog::events::wire::{WireCodec, WireError};
use agentlog::events::{Lane, Meta, TaskSubmitted};
use agentlog::http::access::sha256_hex;
use agentlog::log::{ConsumerOptions, EventLog, Record, SeekTo, TopicPartition, TopicSpec};
use agentlog::open::open_log;
use agentlog::registry::{Registry, RegistryConfig, RegistryError, bind, serve};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CT: &str = "application/vnd.schemaregistry.v1+json";
const V1: &str = r#"{"type":"record","name":"Order","namespace":"io.agentlog.test","fields":[{"name":"id","type":"string"}]}"#;
/// V1 plus a field with a default: BACKWARD compatible.
const V2: &str =
    r#"{"type":"record","name":"Order","namespace":"io.agentlog.test","fields":[{"name":"id","type":"string"},{"name":"qty","type":"int","default":1}]}"#;
/// A new required field: not BACKWARD compatible with V2.
const V3_BREAKING: &str = r#"{"type":"record","name":"Order","namespace":"io.agentlog.test","fields":[{"name":"id","type":"string"},{"name":"qty","type":"int","default":1},{"name":"price","type":"double"}]}"#;

/// The broker the Kafka variants use (they are `#[ignore]`d unless asked for; see
/// tests/integration/harness.rs).
fn kafka_bootstrap() -> String {
    match std::env::var("AGENTLOG_TEST_KAFKA") {
        Ok(servers) if !servers.trim().is_empty() => servers,
        _ => panic!("this Kafka test needs AGENTLOG_TEST_KAFKA to name a broker (scripts/kafka-local.sh start; make test does both)"),
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

fn embedded_config(dir: &tempfile::TempDir) -> LogConfig {
    let mut config = Config::load_with_env(None, Vec::new()).expect("default config");
    config.log.backend = Backend::Embedded;
    config.log.embedded.data_dir = dir.path().join("log");
    config.log
}

fn kafka_config(bootstrap: &str) -> LogConfig {
    let mut config = Config::load_with_env(None, Vec::new()).expect("default config");
    config.log.backend = Backend::Kafka;
    config.log.kafka.bootstrap_servers = bootstrap.to_string();
    config.log
}

/// A registry served on 127.0.0.1 with its log; `stop` tears everything down in order.
struct Server {
    log: Arc<dyn EventLog>,
    registry: Arc<Registry>,
    url: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RegistryError>>,
    http: reqwest::Client,
}

impl Server {
    async fn start(config: &LogConfig, topic: &str) -> Server {
        Server::start_with(config, topic, ApiConfig::default(), &RegistryConfig::default()).await
    }

    /// A server with the access rules of `access` (`[api]`) and the limits of `registry`.
    async fn start_with(config: &LogConfig, topic: &str, access: ApiConfig, registry: &RegistryConfig) -> Server {
        let log = open_log(config).expect("open log");
        let shutdown = CancellationToken::new();
        let registry = Registry::open_with(log.clone(), topic, registry, shutdown.clone()).await.expect("open registry");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let task = tokio::spawn(serve(registry.clone(), listener, access.access(), shutdown.clone()));
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("http client");
        Server { log, registry, url, shutdown, task, http }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("server task").expect("server ran");
        self.registry.close().await;
        drop(self.registry);
        self.log.shutdown(Duration::from_secs(10)).await.expect("log shutdown");
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send_text(method, path, body.map(|b| b.to_string())).await
    }

    /// As `send`, with the body as raw text (to send what is not JSON). Every answer, errors
    /// included, must carry the registry media type.
    async fn send_text(&self, method: reqwest::Method, path: &str, body: Option<String>) -> (StatusCode, Value) {
        self.send_with(method, path, body, &[]).await
    }

    /// As `send_text`, with extra headers (credentials).
    async fn send_with(&self, method: reqwest::Method, path: &str, body: Option<String>, headers: &[(&str, String)]) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url)).header("Accept", CT);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.header("Content-Type", CT).body(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert_eq!(content_type, CT, "{path}");
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn register(&self, subject: &str, schema: &str) -> (StatusCode, Value) {
        self.post(&format!("/subjects/{subject}/versions"), json!({ "schema": schema, "schemaType": "AVRO" })).await
    }
}

fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: u64) {
    assert_eq!(answer.0, status, "{:?}", answer.1);
    assert_eq!(answer.1["error_code"], json!(code), "{:?}", answer.1);
    assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{:?}", answer.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_lookup_versions_delete() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&embedded_config(&dir), "agentlog.schemas").await;
    let subject = "orders-io.agentlog.test.Order";

    let (status, body) = server.register(subject, V1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "id": 1 }));
    // Same schema again (other formatting): same id, no new version.
    let spaced = serde_json::to_string_pretty(&serde_json::from_str::<Value>(V1).expect("json")).expect("json");
    assert_eq!(server.register(subject, &spaced).await.1, json!({ "id": 1 }));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions")).await.1, json!([1]));

    let (status, body) = server.register(subject, V2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "id": 2 }));
    // The same schema under another subject keeps its global id.
    assert_eq!(server.register("other-io.agentlog.test.Order", V1).await.1, json!({ "id": 1 }));

    assert_eq!(server.get("/schemas/ids/2").await.1, json!({ "schema": V2 }));
    assert_eq!(server.get("/schemas/ids/1/subjects").await.1, json!(["orders-io.agentlog.test.Order", "other-io.agentlog.test.Order"]));
    assert_eq!(server.get("/subjects").await.1, json!(["orders-io.agentlog.test.Order", "other-io.agentlog.test.Order"]));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions")).await.1, json!([1, 2]));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions/latest")).await.1, json!({ "subject": subject, "version": 2, "id": 2, "schema": V2 }));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions/1")).await.1["id"], json!(1));

    // Lookup by schema.
    let (status, found) = server.post(&format!("/subjects/{subject}"), json!({ "schema": V1 })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found, json!({ "subject": subject, "version": 1, "id": 1, "schema": V1 }));
    assert_error(&server.post(&format!("/subjects/{subject}"), json!({ "schema": V3_BREAKING })).await, StatusCode::NOT_FOUND, 40403);

    // Compatibility endpoint.
    let (status, compat) = server.post(&format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"), json!({ "schema": V3_BREAKING })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(compat["is_compatible"], json!(false));
    assert!(compat["messages"].as_array().is_some_and(|m| !m.is_empty()), "{compat}");
    assert_eq!(server.post(&format!("/compatibility/subjects/{subject}/versions/latest"), json!({ "schema": V2 })).await.1, json!({ "is_compatible": true }));

    // Soft delete: version 2 disappears from the subject, its id stays readable.
    let (status, deleted) = server.send(reqwest::Method::DELETE, &format!("/subjects/{subject}/versions/2"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted, json!(2));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions")).await.1, json!([1]));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions?deleted=true")).await.1, json!([1, 2]));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions/latest")).await.1["version"], json!(1));
    assert_error(&server.get(&format!("/subjects/{subject}/versions/2")).await, StatusCode::NOT_FOUND, 40402);
    assert_eq!(server.get("/schemas/ids/2").await.1, json!({ "schema": V2 }));
    // Registering it again makes a new version (numbers are never reused) with the same id.
    assert_eq!(server.register(subject, V2).await.1, json!({ "id": 2 }));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions")).await.1, json!([1, 3]));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_use_confluent_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&embedded_config(&dir), "agentlog.schemas").await;

    assert_error(&server.get("/subjects/nope/versions").await, StatusCode::NOT_FOUND, 40401);
    assert_error(&server.get("/subjects/nope/versions/latest").await, StatusCode::NOT_FOUND, 40401);
    assert_error(&server.get("/schemas/ids/999999").await, StatusCode::NOT_FOUND, 40403);
    let invalid = server.register("s", r#"{"type":"record","name":"X","fields":[{"name":"a","type":"nosuchtype"}]}"#).await;
    assert_error(&invalid, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    assert_error(&server.register("s", "not json at all").await, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    assert_eq!(server.register("s", V1).await.0, StatusCode::OK);
    assert_error(&server.get("/subjects/s/versions/zero").await, StatusCode::UNPROCESSABLE_ENTITY, 42202);
    assert_error(&server.get("/subjects/s/versions/7").await, StatusCode::NOT_FOUND, 40402);
    let bad_level = server.send(reqwest::Method::PUT, "/config", Some(json!({ "compatibility": "SIDEWAYS" }))).await;
    assert_error(&bad_level, StatusCode::UNPROCESSABLE_ENTITY, 42203);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatibility_levels_gate_registration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&embedded_config(&dir), "agentlog.schemas").await;
    let subject = "levels-io.agentlog.test.Order";

    assert_eq!(server.get("/config").await.1, json!({ "compatibilityLevel": "BACKWARD" }));
    assert_eq!(server.register(subject, V2).await.1, json!({ "id": 1 }));
    let rejected = server.register(subject, V3_BREAKING).await;
    assert_error(&rejected, StatusCode::CONFLICT, 409);
    assert!(rejected.1["message"].as_str().is_some_and(|m| m.contains("price")), "the message names why: {}", rejected.1);

    // Per-subject NONE lets it through; the global level is untouched.
    let (status, body) = server.send(reqwest::Method::PUT, &format!("/config/{subject}"), Some(json!({ "compatibility": "NONE" }))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "compatibility": "NONE" })));
    assert_eq!(server.get(&format!("/config/{subject}")).await.1, json!({ "compatibilityLevel": "NONE" }));
    assert_eq!(server.get("/config").await.1, json!({ "compatibilityLevel": "BACKWARD" }));
    assert_eq!(server.register(subject, V3_BREAKING).await.1, json!({ "id": 2 }));

    let (status, body) = server.send(reqwest::Method::PUT, "/config", Some(json!({ "compatibility": "full" }))).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "compatibility": "FULL" })));
    assert_eq!(server.get("/config").await.1, json!({ "compatibilityLevel": "FULL" }));
    assert_eq!(server.get("/config/unconfigured").await.1, json!({ "compatibilityLevel": "FULL" }));

    server.stop().await;
}

/// Registers, restarts (server and log), and checks subjects, versions, ids and config survive,
/// and that ids keep increasing after the restart.
async fn survives_restart(config: LogConfig, topic: &str) {
    let server = Server::start(&config, topic).await;
    let a = format!("{}-io.agentlog.test.Order", unique("a"));
    let b = format!("{}-io.agentlog.test.Order", unique("b"));
    assert_eq!(server.register(&a, V1).await.1, json!({ "id": 1 }));
    assert_eq!(server.register(&a, V2).await.1, json!({ "id": 2 }));
    assert_eq!(server.register(&b, V2).await.1, json!({ "id": 2 }));
    assert_eq!(server.send(reqwest::Method::PUT, &format!("/config/{b}"), Some(json!({ "compatibility": "NONE" }))).await.0, StatusCode::OK);
    assert_eq!(server.send(reqwest::Method::DELETE, &format!("/subjects/{a}/versions/1"), None).await.1, json!(1));
    server.stop().await;

    let server = Server::start(&config, topic).await;
    let mut subjects = vec![a.clone(), b.clone()];
    subjects.sort();
    assert_eq!(server.get("/subjects").await.1, json!(subjects));
    assert_eq!(server.get(&format!("/subjects/{a}/versions")).await.1, json!([2]));
    assert_eq!(server.get(&format!("/subjects/{a}/versions?deleted=true")).await.1, json!([1, 2]));
    assert_eq!(server.get(&format!("/subjects/{b}/versions/latest")).await.1, json!({ "subject": b, "version": 1, "id": 2, "schema": V2 }));
    assert_eq!(server.get("/schemas/ids/1").await.1, json!({ "schema": V1 }));
    assert_eq!(server.get(&format!("/config/{b}")).await.1, json!({ "compatibilityLevel": "NONE" }));
    assert_eq!(server.register(&a, V2).await.1, json!({ "id": 2 }), "still registered after restart");
    assert_eq!(server.register(&b, V3_BREAKING).await.1, json!({ "id": 3 }), "ids continue after restart");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_subjects_versions_and_ids_embedded() {
    let dir = tempfile::tempdir().expect("temp dir");
    survives_restart(embedded_config(&dir), "agentlog.schemas").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: AGENTLOG_TEST_KAFKA names a broker (make test starts one and runs these)"]
async fn restart_keeps_subjects_versions_and_ids_kafka() {
    let bootstrap = kafka_bootstrap();
    survives_restart(kafka_config(&bootstrap), &unique("agentlog.schemas")).await;
}

/// Two registries on one log: a write through one becomes visible in the other (the tail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_sees_writes_through_its_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = open_log(&embedded_config(&dir)).expect("open log");
    let shutdown = CancellationToken::new();
    let writer = Registry::open(log.clone(), "agentlog.schemas", shutdown.clone()).await.expect("writer");
    let reader = Registry::open(log.clone(), "agentlog.schemas", shutdown.clone()).await.expect("reader");
    let id = writer.register("shared-io.agentlog.test.Order", V1).await.expect("register");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reader.schema_by_id(id).is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the second instance never saw the write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reader.versions("shared-io.agentlog.test.Order", false).expect("versions"), vec![1]);
    shutdown.cancel();
    writer.close().await;
    reader.close().await;
    log.shutdown(Duration::from_secs(10)).await.expect("log shutdown");
}

/// confluent-kafka's Python client formats booleans as `True`/`False` (`lookup_schema` sends
/// `?normalize=False&deleted=False`), Java and Go as `true`/`false`; Confluent reads both, and
/// ignores parameters it does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_booleans_in_any_case_and_unknown_parameters_ignored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&embedded_config(&dir), "agentlog.schemas").await;
    let subject = "flags-io.agentlog.test.Order";
    assert_eq!(server.register(subject, V1).await.1, json!({ "id": 1 }));
    let found = json!({ "subject": subject, "version": 1, "id": 1, "schema": V1 });

    for query in ["normalize=False&deleted=False", "normalize=false&deleted=false", "normalize=TRUE&deleted=True", "deleted=fAlSe"] {
        let answer = server.post(&format!("/subjects/{subject}?{query}"), json!({ "schema": V1 })).await;
        assert_eq!(answer, (StatusCode::OK, found.clone()), "{query}");
    }
    let register = server.post(&format!("/subjects/{subject}/versions?normalize=False"), json!({ "schema": V1 })).await;
    assert_eq!(register, (StatusCode::OK, json!({ "id": 1 })));
    // What the Python client's listings send, unknown `offset`/`limit`/`subjectPrefix` included.
    assert_eq!(server.get("/subjects?deleted=False&deleted_only=False&offset=0&limit=-1&subjectPrefix=x").await.1, json!([subject]));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions?deleted=False&deleted_only=False&offset=0&limit=-1")).await.1, json!([1]));
    assert_eq!(server.get(&format!("/subjects/{subject}/versions/1?deleted=False&format=x")).await.1, found);
    assert_eq!(server.get("/schemas/ids/1?subject=whatever&fetchMaxId=True").await.1, json!({ "schema": V1, "maxId": 1 }));

    // Soft delete, then the three listings `deleted` and `deleted_only` select.
    assert_eq!(server.register(subject, V2).await.1, json!({ "id": 2 }));
    assert_eq!(server.send(reqwest::Method::DELETE, &format!("/subjects/{subject}/versions/1?permanent=False"), None).await.1, json!(1));
    let versions = |query: &str| format!("/subjects/{subject}/versions?{query}");
    assert_eq!(server.get(&versions("deleted=False")).await.1, json!([2]));
    assert_eq!(server.get(&versions("deleted=True")).await.1, json!([1, 2]));
    assert_eq!(server.get(&versions("deletedOnly=TRUE")).await.1, json!([1]));
    assert_eq!(server.get(&versions("deleted=true&deleted_only=True")).await.1, json!([1]), "deleted_only wins");
    assert_eq!(server.get("/subjects?deleted_only=true").await.1, json!([]));

    // A value that is no boolean is a 400 naming the parameter, not a silent `false`.
    let malformed = server.post(&format!("/subjects/{subject}?normalize=False&deleted=yes"), json!({ "schema": V1 })).await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, 400);
    let message = malformed.1["message"].as_str().unwrap_or_default();
    assert!(message.contains("deleted") && message.contains("yes"), "{message}");
    assert_error(&server.get("/subjects?deleted=").await, StatusCode::BAD_REQUEST, 400);

    server.stop().await;
}

/// Every way a request can fail answers Confluent's `{"error_code", "message"}` with the
/// registry media type (`send_text` checks it), including what axum would answer in plain
/// text: a body that is not JSON, a bad query string, a bad path, an unknown route, a method
/// the route does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_a_confluent_json_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&embedded_config(&dir), "agentlog.schemas").await;
    assert_eq!(server.register("s", V1).await.0, StatusCode::OK);
    let post = reqwest::Method::POST;

    // Not JSON: 400 (Confluent's JSON parse error); JSON of the wrong shape: 422.
    assert_error(&server.send_text(post.clone(), "/subjects/s/versions", Some("{\"schema\": ".into())).await, StatusCode::BAD_REQUEST, 400);
    assert_error(&server.send_text(post.clone(), "/subjects/s", Some("not json".into())).await, StatusCode::BAD_REQUEST, 400);
    assert_error(&server.send_text(post.clone(), "/subjects/s/versions", None).await, StatusCode::BAD_REQUEST, 400);
    assert_error(&server.post("/subjects/s/versions", json!({ "schemaa": V1 })).await, StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_error(&server.post("/compatibility/subjects/s/versions/latest", json!({ "schema": 7 })).await, StatusCode::UNPROCESSABLE_ENTITY, 422);
    assert_error(&server.send(reqwest::Method::PUT, "/config", Some(json!([]))).await, StatusCode::UNPROCESSABLE_ENTITY, 422);

    // Bad query values, on every kind of route.
    assert_error(&server.get("/subjects?deleted=maybe").await, StatusCode::BAD_REQUEST, 400);
    assert_error(&server.post("/compatibility/subjects/s/versions/latest?verbose=1", json!({ "schema": V1 })).await, StatusCode::BAD_REQUEST, 400);
    assert_error(&server.send(reqwest::Method::DELETE, "/subjects/s/versions/1?permanent=sure", None).await, StatusCode::BAD_REQUEST, 400);
    assert_error(&server.get("/schemas/ids/1?fetchMaxId=%FF").await, StatusCode::BAD_REQUEST, 400);

    // A path segment that is not UTF-8 once decoded.
    assert_error(&server.get("/subjects/%FF/versions").await, StatusCode::BAD_REQUEST, 400);

    // Unknown routes and methods, as Confluent's Jersey answers them.
    let unknown = server.get("/no/such/route").await;
    assert_error(&unknown, StatusCode::NOT_FOUND, 404);
    assert_eq!(unknown.1["message"], json!("HTTP 404 Not Found"));
    assert_error(&server.post("/subjects", json!({})).await, StatusCode::METHOD_NOT_ALLOWED, 405);
    assert_error(&server.send(reqwest::Method::PUT, "/schemas/ids/1", Some(json!({}))).await, StatusCode::METHOD_NOT_ALLOWED, 405);
    let wrong_method = server.send(reqwest::Method::PATCH, "/subjects/s/versions/1", None).await;
    assert_error(&wrong_method, StatusCode::METHOD_NOT_ALLOWED, 405);
    assert_eq!(wrong_method.1["message"], json!("HTTP 405 Method Not Allowed"));

    // A hard delete is refused in words rather than done as a soft one.
    let permanent = server.send(reqwest::Method::DELETE, "/subjects/s/versions/1?permanent=true", None).await;
    assert_error(&permanent, StatusCode::UNPROCESSABLE_ENTITY, 42205);
    assert_eq!(server.get("/subjects/s/versions").await.1, json!([1]), "nothing was deleted");

    server.stop().await;
}

/// `verbose=true` answers `{"is_compatible", "messages"}` as Confluent does, `messages` empty
/// when compatible; without it, `is_compatible` alone. Also against every version the level
/// names (`POST /compatibility/subjects/{s}/versions`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_compatibility_lists_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&embedded_config(&dir), "agentlog.schemas").await;
    let subject = "verbose-io.agentlog.test.Order";
    assert_eq!(server.register(subject, V2).await.1, json!({ "id": 1 }));

    for route in [format!("/compatibility/subjects/{subject}/versions/latest"), format!("/compatibility/subjects/{subject}/versions")] {
        let (status, answer) = server.post(&format!("{route}?verbose=True"), json!({ "schema": V3_BREAKING })).await;
        assert_eq!(status, StatusCode::OK, "{route}: {answer}");
        assert_eq!(answer["is_compatible"], json!(false), "{route}");
        let messages = answer["messages"].as_array().cloned().unwrap_or_default();
        assert!(!messages.is_empty() && messages.iter().all(Value::is_string), "{route}: {answer}");
        assert!(messages.iter().any(|m| m.as_str().is_some_and(|m| m.contains("price"))), "names the field: {answer}");
        assert_eq!(answer.as_object().map(|o| o.len()), Some(2), "{route}: {answer}");

        let compatible = server.post(&format!("{route}?verbose=true&normalize=False"), json!({ "schema": V2 })).await;
        assert_eq!(compatible, (StatusCode::OK, json!({ "is_compatible": true, "messages": [] })), "{route}");
        let terse = server.post(&format!("{route}?verbose=False"), json!({ "schema": V3_BREAKING })).await;
        assert_eq!(terse, (StatusCode::OK, json!({ "is_compatible": false })), "{route}");
    }

    server.stop().await;
}

const ADMIN_KEY: &str = "sr-admin-key";
const APP_KEY: &str = "sr-app-key";

/// `[api]` with an admin tenant `ops` and an ordinary tenant `app`.
fn keyed_access(failure_delay_ms: u64) -> ApiConfig {
    let key = |tenant: &str, secret: &str| ApiKeyConfig { tenant: tenant.into(), sha256: sha256_hex(secret) };
    ApiConfig {
        keys: vec![key("ops", ADMIN_KEY), key("app", APP_KEY)],
        admin_tenants: vec!["ops".into()],
        auth_failure_delay_ms: failure_delay_ms,
        ..ApiConfig::default()
    }
}

fn bearer(key: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {key}"))]
}

/// What Confluent clients send from `basic.auth.user.info = user:<key>`.
fn basic(key: &str) -> Vec<(&'static str, String)> {
    let pair = format!("any-user:{key}");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::new();
    for chunk in pair.as_bytes().chunks(3) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (i, b)| bits | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            encoded.push(if i <= chunk.len() { alphabet[(bits >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    vec![("Authorization", format!("Basic {encoded}"))]
}

/// With keys: reads need any valid key, writes an admin tenant's, except registering what is
/// already registered; refusals are Confluent-shaped and held `auth_failure_delay_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_let_any_tenant_read_and_only_admins_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(&embedded_config(&dir), "agentlog.schemas", keyed_access(100), &RegistryConfig::default()).await;
    let subject = "orders-io.agentlog.test.Order";
    let versions = format!("/subjects/{subject}/versions");
    let body = |schema: &str| Some(json!({ "schema": schema }).to_string());
    let post = reqwest::Method::POST;

    let started = std::time::Instant::now();
    let answer = server.send_with(post.clone(), &versions, body(V1), &[]).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, 40101);
    assert!(started.elapsed() >= Duration::from_millis(100), "a 401 is held api.auth_failure_delay_ms");
    assert_error(&server.send_with(post.clone(), &versions, body(V1), &bearer("not-a-key")).await, StatusCode::UNAUTHORIZED, 40101);
    assert_error(&server.send_with(post.clone(), &versions, body(V1), &bearer(APP_KEY)).await, StatusCode::FORBIDDEN, 40301);
    assert_eq!(server.send_with(post.clone(), &versions, body(V1), &bearer(ADMIN_KEY)).await, (StatusCode::OK, json!({ "id": 1 })));

    // Reads: any key, in any of the three forms; none is 401. `GET /` (health) needs none.
    assert_error(&server.get("/subjects").await, StatusCode::UNAUTHORIZED, 40101);
    for headers in [bearer(APP_KEY), vec![("Authorization", format!("bEaReR {APP_KEY}"))], vec![("x-api-key", APP_KEY.to_owned())], basic(APP_KEY)] {
        assert_eq!(server.send_with(reqwest::Method::GET, "/subjects", None, &headers).await, (StatusCode::OK, json!([subject])), "{headers:?}");
    }
    assert_eq!(server.get("/").await, (StatusCode::OK, json!({})));
    let lookup = server.send_with(post.clone(), &format!("/subjects/{subject}"), body(V1), &basic(APP_KEY)).await;
    assert_eq!((lookup.0, lookup.1["id"].clone()), (StatusCode::OK, json!(1)), "{lookup:?}");
    let compatible = server.send_with(post.clone(), &format!("/compatibility/subjects/{subject}/versions/latest"), body(V2), &bearer(APP_KEY)).await;
    assert_eq!(compatible, (StatusCode::OK, json!({ "is_compatible": true })));

    // auto.register.schemas=true against an applied catalog: registering what is there is a
    // lookup any key may do; a new version is a write.
    assert_eq!(server.send_with(post.clone(), &versions, body(V1), &basic(APP_KEY)).await, (StatusCode::OK, json!({ "id": 1 })));
    assert_error(&server.send_with(post.clone(), &versions, body(V2), &basic(APP_KEY)).await, StatusCode::FORBIDDEN, 40301);
    assert_eq!(server.send_with(post.clone(), &versions, body(V2), &basic(ADMIN_KEY)).await, (StatusCode::OK, json!({ "id": 2 })));

    let config = Some(json!({ "compatibility": "FULL" }).to_string());
    for (method, path) in
        [(reqwest::Method::PUT, "/config".to_owned()), (reqwest::Method::PUT, format!("/config/{subject}")), (reqwest::Method::DELETE, format!("{versions}/2"))]
    {
        let body = if method == reqwest::Method::PUT { config.clone() } else { None };
        assert_error(&server.send_with(method.clone(), &path, body.clone(), &bearer(APP_KEY)).await, StatusCode::FORBIDDEN, 40301);
        let done = server.send_with(method.clone(), &path, body, &bearer(ADMIN_KEY)).await;
        assert_eq!(done.0, StatusCode::OK, "{method} {path}: {:?}", done.1);
    }
    server.stop().await;
}

/// Without keys the registry serves this machine only: a non-loopback address is refused at
/// start-up, and a request naming a foreign Host (DNS rebinding) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_only_this_machine_is_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&embedded_config(&dir), "agentlog.schemas").await;
    let refused = bind("0.0.0.0:0", &ApiConfig::default().access()).await.expect_err("bind refuses");
    assert!(matches!(refused, RegistryError::NotLoopback { .. }), "{refused}");
    assert!(refused.to_string().contains("api.keys"), "{refused}");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let served = serve(server.registry.clone(), listener, ApiConfig::default().access(), CancellationToken::new()).await;
    assert!(matches!(served, Err(RegistryError::NotLoopback { .. })), "{served:?}");
    // With keys the same address is fine.
    drop(bind("0.0.0.0:0", &keyed_access(0).access()).await.expect("keys allow any address"));

    let foreign = server.send_with(reqwest::Method::GET, "/subjects", None, &[("Host", "evil.example".to_owned())]).await;
    assert_error(&foreign, StatusCode::FORBIDDEN, 40301);
    assert_eq!(server.get("/subjects").await, (StatusCode::OK, json!([])));
    server.stop().await;
}

fn enum_schema(name: &str, symbols: usize) -> String {
    let symbols: Vec<String> = (0..symbols).map(|i| format!("\"S{i:x}\"")).collect();
    format!(r#"{{"type":"enum","name":"{name}","namespace":"io.agentlog.test","symbols":[{}]}}"#, symbols.join(","))
}

/// Schemas that crash or hang apache-avro are refused before it sees them, naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_schemas_are_refused_naming_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Room in bytes for the deep chain, so its depth is what is refused.
    let limits = RegistryConfig { max_schema_bytes: 1024 * 1024, ..RegistryConfig::default() };
    let server = Server::start_with(&embedded_config(&dir), "agentlog.schemas", ApiConfig::default(), &limits).await;
    let recursive = r#"{"type":"record","name":"R","fields":[{"name":"r","type":"R"}]}"#.to_owned();
    let huge_fixed = r#"{"type":"fixed","name":"F","size":1000000000000}"#.to_owned();
    let mut chain = String::new();
    for i in 0..11_000 {
        chain.push_str(&format!(r#"{{"type":"record","name":"R{i}","fields":[{{"name":"f","type":"#));
    }
    chain.push_str(r#""string""#);
    chain.push_str(&"}]}".repeat(11_000));
    for (schema, names) in [(recursive, "contains itself"), (huge_fixed, "registry.max_fixed_size"), (chain, "registry.max_schema_depth")] {
        let answer = server.register("hostile", &schema).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, 42201);
        assert!(answer.1["message"].as_str().is_some_and(|m| m.contains(names)), "{names}: {:?}", answer.1);
    }
    // Enum symbols: the default limit (10,000) is accepted against an existing version; one
    // more is refused, naming the key.
    let subject = "colors-io.agentlog.test.Color";
    assert_eq!(server.register(subject, &enum_schema("Color", 9_999)).await.0, StatusCode::OK);
    let started = std::time::Instant::now();
    assert_eq!(server.register(subject, &enum_schema("Color", 10_000)).await.0, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5), "checked within the default budget: {:?}", started.elapsed());
    let answer = server.register(subject, &enum_schema("Color", 10_001)).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    assert!(answer.1["message"].as_str().is_some_and(|m| m.contains("registry.max_enum_symbols")), "{:?}", answer.1);
    server.stop().await;
}

/// A compatibility check over its budget is refused naming the budget, and meanwhile the
/// server answers other requests at once: the check runs off the async threads. One worker
/// thread, so a check run on it would hold up everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_compatibility_check_is_cut_at_its_budget_and_blocks_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = RegistryConfig { max_enum_symbols: 200_000, max_schema_bytes: 4 * 1024 * 1024, compatibility_timeout_ms: 100, ..RegistryConfig::default() };
    let server = Arc::new(Server::start_with(&embedded_config(&dir), "agentlog.schemas", ApiConfig::default(), &limits).await);
    let subject = "big-io.agentlog.test.Big";
    // Quadratic in symbols: 60,000 take well over the 100 ms budget.
    assert_eq!(server.register(subject, &enum_schema("Big", 60_000)).await.0, StatusCode::OK);

    let done = CancellationToken::new();
    let probe = {
        let (server, done) = (server.clone(), done.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while !done.is_cancelled() {
                let started = std::time::Instant::now();
                assert_eq!(server.get("/").await.0, StatusCode::OK);
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            slowest
        })
    };
    let started = std::time::Instant::now();
    let answer = server.register(subject, &enum_schema("Big", 60_001)).await;
    let took = started.elapsed();
    done.cancel();
    let slowest = probe.await.expect("probe");
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, 42201);
    assert!(answer.1["message"].as_str().is_some_and(|m| m.contains("registry.compatibility_timeout_ms")), "{:?}", answer.1);
    assert!(took < Duration::from_secs(2), "refused at the budget, not after the check: {took:?}");
    assert!(slowest < Duration::from_millis(50), "GET / took {slowest:?} during the check");
    let Ok(server) = Arc::try_unwrap(server) else { panic!("the probe still holds the server") };
    server.stop().await;
}

/// agentlog's own codecs send `registry.api_key`; a writer schema over the limits (from a
/// registry that allows more) is a typed error, and readers dead-letter its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codecs_send_the_registry_key_and_refuse_writer_schemas_over_the_limits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let generous = RegistryConfig { max_enum_symbols: 100_000, ..RegistryConfig::default() };
    let server = Server::start_with(&embedded_config(&dir), "agentlog.schemas", keyed_access(0), &generous).await;
    let topic = unique("tasks");
    let event = TaskSubmitted::new(Meta::new("evt-1", "app", "test"), "task-1", "echo", Lane::High, b"{}".to_vec());

    let keyless = WireCodec::from_config(&RegistryConfig { url: server.url.clone(), ..RegistryConfig::default() }).expect("codec");
    assert!(keyless.encode(&topic, &event).await.is_err(), "a codec without the key is refused");
    let keyed = RegistryConfig { url: server.url.clone(), api_key: ADMIN_KEY.into(), ..RegistryConfig::default() };
    let codec = Arc::new(WireCodec::from_config(&keyed).expect("codec"));
    let payload = codec.encode(&topic, &event).await.expect("encode registers with the key");
    assert_eq!(codec.decode::<TaskSubmitted>(&payload).await.expect("decode").1.task_id, "task-1");

    // 20,000 symbols: within this registry's limits, over the codec's (10,000).
    let registered = server
        .send_with(reqwest::Method::POST, "/subjects/wide/versions", Some(json!({ "schema": enum_schema("Wide", 20_000) }).to_string()), &bearer(ADMIN_KEY))
        .await;
    assert_eq!(registered.0, StatusCode::OK, "{:?}", registered.1);
    let id = registered.1["id"].as_u64().expect("id") as u32;
    let mut hostile = vec![0u8];
    hostile.extend_from_slice(&id.to_be_bytes());
    hostile.push(0);
    let refused = codec.decode_value(&hostile).await.expect_err("over the limits");
    assert!(matches!(&refused, WireError::SchemaOverLimits { id: refused_id, .. } if *refused_id == id), "{refused}");
    assert_eq!(error_kind(&refused), "schema_over_limits");

    let log = server.log.clone();
    log.admin().create_topic(&TopicSpec::new(topic.clone(), 1)).await.expect("topic");
    let dlq = unique("dlq");
    log.admin().create_topic(&TopicSpec::new(dlq.clone(), 1)).await.expect("dlq topic");
    let producer = log.producer().expect("producer");
    producer.send(Record::new(topic.clone(), hostile)).await.expect("send").await.expect("durable");
    let mut consumer = log.consumer(ConsumerOptions::default()).expect("consumer");
    consumer.assign(&[(TopicPartition::new(topic.clone(), 0), SeekTo::Earliest)]).await.expect("assign");
    let mut reader = EventReader::<TaskSubmitted>::new(consumer, codec.clone(), producer, dlq);
    match tokio::time::timeout(Duration::from_secs(30), reader.next()).await.expect("in time").expect("read") {
        ReadOutcome::DeadLettered { error: WireError::SchemaOverLimits { .. }, .. } => {}
        other => panic!("expected a dead letter for the schema over the limits, got {other:?}"),
    }
    drop(reader);
    server.stop().await;
}
