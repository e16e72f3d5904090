//! Hostile inputs (issue 14, item 2): nothing a tenant submits or an agent returns stops a
//! worker. Each scenario runs at the shipped record limit (`log.max_record_bytes` =
//! 1,000,000), writes what a tester or a foreign producer can write, and checks that the
//! offending task ends with an outcome that names the limit and that the same worker then
//! completes the next task on the same partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use agentlog::agent::client::timer_record;
use agentlog::agent::dlq;
use agentlog::agent::limits::max_command_bytes;
use agentlog::agent::runtime::build;
use agentlog::api::{ApiConfig, ApiState, serve};
use agentlog::config::Backend;
use agentlog::events::{AnyEvent, Lane, TaskSubmitted, TimestampMicros};
use agentlog::log::{Record, TopicPartition};
use agentlog::projection::{Projection, ProjectionStore, sources};

use super::fixture::Fixture;
use crate::harness::Harness;

const WITHIN: Duration = Duration::from_secs(40);

/// The shipped default of `log.max_record_bytes` (the harness runs at 100,000).
const LIMIT: usize = 1_000_000;

/// The input size of the tester's report: an echo task with it killed the echo worker.
const TESTER_INPUT: usize = 999_834;

/// Reopens the harness's log at the shipped record limit.
async fn at_shipped_limit(h: &mut Harness) {
    h.release().await;
    h.config.log.max_record_bytes = LIMIT;
    h.reopen();
}

/// Writes `task` straight to its lane topic's partition 0, as any Kafka client can (no
/// submit-time check on the way); returns the record's size.
async fn produce_raw(f: &Fixture, task: &TaskSubmitted) -> usize {
    let topic = f.topics.lane(&task.agent_type, task.lane);
    let payload = f.codec.encode(&topic, task).await.expect("encode");
    let mut record = Record::new(topic, payload).with_key(Bytes::from(task.task_id.clone()));
    record.partition = Some(0);
    let size = record.size();
    f.log.producer().expect("producer").send(record).await.expect("accepted").await.expect("durable");
    size
}

/// A task on partition 0 with an input of `len` bytes; its record is at most `LIMIT` bytes.
async fn near_limit_task(f: &Fixture, agent_type: &str, len: usize) -> TaskSubmitted {
    let mut task = f.task(agent_type, Lane::Normal, "");
    let topic = f.topics.lane(agent_type, Lane::Normal);
    let envelope = f.codec.encode(&topic, &task).await.expect("encode").len() + task.task_id.len();
    // Avro's length prefix of the input grows by 2 bytes past 16 KiB.
    let len = len.min(LIMIT - envelope - 3);
    task.input = vec![b'x'; len];
    task
}

/// A small task on partition 0 behind the hostile one: it completes only if the worker went on.
async fn follow_up(f: &Fixture, agent_type: &str) -> TaskSubmitted {
    let task = f.task(agent_type, Lane::Normal, r#"{"ok":true}"#);
    produce_raw(f, &task).await;
    task
}

fn assert_completed(outcomes: &std::collections::HashMap<String, AnyEvent>, task: &TaskSubmitted) {
    match &outcomes[&task.task_id] {
        AnyEvent::TaskCompleted(done) => assert_eq!(done.attempt, 1),
        other => panic!("the worker did not go on: the next task ended {other:?}"),
    }
}

/// An agent answering {"ok":true} with 200, `size` bytes when the input asks for them, 503
/// when the input holds `fail`.
async fn http_agent() -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/agent",
        post(|body: String| async move {
            let request: Value = serde_json::from_str(&body).unwrap_or_default();
            let input = request["input"].clone();
            if let Some(size) = input["size"].as_u64() {
                return (axum::http::StatusCode::OK, vec![b'y'; size as usize]);
            }
            if body.contains("fail") {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, b"down".to_vec());
            }
            (axum::http::StatusCode::OK, br#"{"ok":true}"#.to_vec())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/agent", listener.local_addr().expect("addr"));
    (url, tokio::spawn(async move { axum::serve(listener, app).await }))
}

/// The tester's echo task: the command fits the log, its echo does not fit an outcome. The
/// task ends `failed` with kind `output_too_large` (not retried), and the same worker
/// completes the next task of the partition.
pub async fn an_echo_too_large_for_its_outcome_fails_the_task(h: &mut Harness) {
    at_shipped_limit(h).await;
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f
        .agent_type("echo", "runtime = { kind = \"builtin\", name = \"echo\" }\n[retry]\nretry_on = [\"timeout\", \"transient\", \"output_too_large\"]\n")
        .await;
    // A worker id like `agentlog worker` makes on a cloud host (`<type>-<hostname>-<pid>`): the
    // outcome's envelope carries it, so the echo of a command at the limit does not fit.
    let worker_id = format!("{ty}-ip-172-31-20-117.eu-west-1.compute.internal-{}", std::process::id());
    f.start_worker(&ty, &agent, build(&agent.runtime, Duration::from_secs(10)).expect("echo"), &worker_id);
    // As large as the lane record allows: 999,827 bytes here. The tester's 999,834 bytes are
    // refused at submit (`submit_past_the_headroom_answers_413`).
    let big = near_limit_task(&f, &ty, TESTER_INPUT).await;
    assert!(big.input.len() >= 999_800, "an input as large as the tester's: {}", big.input.len());
    let size = produce_raw(&f, &big).await;
    assert!(size <= LIMIT);
    let next = follow_up(&f, &ty).await;
    let outcomes = f.outcomes(&[big.task_id.clone(), next.task_id.clone()], WITHIN).await;
    match &outcomes[&big.task_id] {
        AnyEvent::TaskFailed(failed) => {
            // Not retried even though this type's policy lists the kind: the output would be the same.
            assert_eq!((failed.error_kind.as_str(), failed.attempt, failed.retryable), ("output_too_large", 1, false));
            assert!(failed.message.contains("log.max_record_bytes") && failed.message.contains("1000000"), "{}", failed.message);
        }
        other => panic!("expected TaskFailed output_too_large, got {other:?}"),
    }
    assert_completed(&outcomes, &next);
    let reports = f.stop().await;
    assert_eq!((reports[0].failed, reports[0].completed), (1, 1), "{:?}", reports[0]);
}

/// An http agent answering 17 MB (past the runtime's 16 MiB cap) and one answering 2 MB (under
/// the cap, over the log's limit) both end `failed` with kind `output_too_large` and a message
/// naming the size; the worker completes the next task.
pub async fn an_http_agent_answering_megabytes_fails_the_task(h: &mut Harness) {
    at_shipped_limit(h).await;
    let (url, server) = http_agent().await;
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("http", &format!("runtime = {{ kind = \"http\", url = \"{url}\" }}\ntimeout_ms = 30000\n")).await;
    f.start_worker(&ty, &agent, build(&agent.runtime, Duration::from_secs(30)).expect("http"), "http-1");
    let huge = f.task(&ty, Lane::Normal, r#"{"size": 17000000}"#);
    let large = f.task(&ty, Lane::Normal, r#"{"size": 2000000}"#);
    produce_raw(&f, &huge).await;
    produce_raw(&f, &large).await;
    let next = follow_up(&f, &ty).await;
    let outcomes = f.outcomes(&[huge.task_id.clone(), large.task_id.clone(), next.task_id.clone()], WITHIN).await;
    for (task, names) in [(&huge, "16777216"), (&large, "2000000")] {
        match &outcomes[&task.task_id] {
            AnyEvent::TaskFailed(failed) => {
                assert_eq!((failed.error_kind.as_str(), failed.attempt), ("output_too_large", 1));
                assert!(failed.message.contains(names), "the message names the size: {}", failed.message);
            }
            other => panic!("expected TaskFailed output_too_large, got {other:?}"),
        }
    }
    assert_completed(&outcomes, &next);
    f.stop().await;
    server.abort();
}

/// A failing http task whose command sits at the limit (written straight to the lane, past
/// the submit check): its dead letter, which embeds the command, cannot be written whole. It
/// is dead-lettered with the metadata kept and the input cut, marked in the `dlq` record's
/// `agentlog.dlq.truncated` header and in the outcome's last error; the worker goes on.
pub async fn a_near_limit_dead_letter_is_truncated(h: &mut Harness) {
    at_shipped_limit(h).await;
    let (url, server) = http_agent().await;
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("http", &format!("runtime = {{ kind = \"http\", url = \"{url}\" }}\n[retry]\nmax_attempts = 1\n")).await;
    f.start_worker(&ty, &agent, build(&agent.runtime, Duration::from_secs(30)).expect("http"), "http-1");
    let mut failing = near_limit_task(&f, &ty, LIMIT).await;
    failing.input[..6].copy_from_slice(b"fail!!");
    let size = produce_raw(&f, &failing).await;
    let next = follow_up(&f, &ty).await;
    let outcomes = f.outcomes(&[failing.task_id.clone(), next.task_id.clone()], WITHIN).await;
    match &outcomes[&failing.task_id] {
        AnyEvent::TaskDeadLettered(dead) => {
            assert!(dead.last_error.contains("truncated") && dead.last_error.contains("log.max_record_bytes"), "{}", dead.last_error);
            assert!(dead.original_command.len() + 500 < size, "the embedded command was cut: {} of {size}", dead.original_command.len());
        }
        other => panic!("expected TaskDeadLettered, got {other:?}"),
    }
    assert_completed(&outcomes, &next);
    // The letter is written before the outcome; on Kafka they are on different partitions,
    // so it may become readable a moment after the outcome: looked for up to 5 s.
    let mut letters = dlq::list(&f.log, &f.client).await.expect("dlq list");
    for _ in 0..50 {
        if dlq::find(&letters, &failing.meta.tenant, &failing.task_id).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        letters = dlq::list(&f.log, &f.client).await.expect("dlq list");
    }
    let letter = dlq::find(&letters, &failing.meta.tenant, &failing.task_id).expect("the dead letter keeps the task's metadata");
    let marker = letter.record.header("agentlog.dlq.truncated").map(|v| String::from_utf8_lossy(v).into_owned()).expect("truncation marker");
    assert!(marker.contains("cut from"), "{marker}");
    let parked = letter.task.as_ref().expect("decodable");
    assert_eq!((parked.agent_type.as_str(), parked.attempt), (ty.as_str(), 1));
    assert!(parked.input.len() < failing.input.len() && failing.input.starts_with(&parked.input), "a prefix of the input is kept");
    assert!(dlq::resubmit(&f.client, letter).await.is_err(), "a truncated letter is never re-submitted");
    f.stop().await;
    server.abort();
}

/// A timer whose command fits `timers` but is past the submit limit of its lane (a worker's
/// retry timer may carry a command up to the record limit; so may a foreign producer's) is
/// refused by its lane on every try. It used to end the supervisor's term each time, a crash
/// loop that fired nothing else: now it is dead-lettered with its outcome, and the timer due
/// after it fires.
pub async fn a_timer_too_large_for_its_lane_is_dead_lettered(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("bigtimer", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    f.start_worker(&ty, &agent, build(&agent.runtime, Duration::from_secs(5)).expect("echo"), "w1");
    let max = f.log.max_record_bytes();
    let now = TimestampMicros::now().0;
    let mut big = f.task(&ty, Lane::Normal, "");
    big.not_before = Some(TimestampMicros(now + 200_000));
    big.input = vec![b'x'; max - 4_000];
    let timer = timer_record(&f.codec, &f.topics, &big).await.expect("encode");
    assert!(timer.size() <= max && timer.size() > max_command_bytes(max), "a timer the log takes and the lane's submit check refuses: {} bytes", timer.size());
    f.log.producer().expect("producer").send(timer).await.expect("accepted").await.expect("durable");
    let mut next = f.task(&ty, Lane::Normal, r#"{"ok":true}"#);
    next.not_before = Some(TimestampMicros(now + 400_000));
    f.submit(&next).await;
    f.start_supervisor(3);

    let outcomes = f.outcomes(&[big.task_id.clone(), next.task_id.clone()], WITHIN).await;
    match &outcomes[&big.task_id] {
        AnyEvent::TaskDeadLettered(dead) => {
            assert_eq!(dead.reason, "record_too_large");
            assert!(dead.last_error.contains("log.max_record_bytes") && dead.last_error.contains(&f.topics.lane(&ty, Lane::Normal)), "{}", dead.last_error);
        }
        other => panic!("expected TaskDeadLettered, got {other:?}"),
    }
    assert_completed(&outcomes, &next);
    // On Kafka the letter and the outcome are on different partitions: looked for up to 5 s.
    let mut letters = dlq::list(&f.log, &f.client).await.expect("dlq list");
    for _ in 0..50 {
        if dlq::find(&letters, &big.meta.tenant, &big.task_id).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        letters = dlq::list(&f.log, &f.client).await.expect("dlq list");
    }
    let letter = dlq::find(&letters, &big.meta.tenant, &big.task_id).expect("the command is on the dead-letter topic");
    assert_eq!(letter.error_kind, "record_too_large");
    assert!(letter.source.starts_with(&format!("{}/", f.topics.timers())), "the letter names its timer: {}", letter.source);
    f.stop().await;
}

/// Garbage bytes and an undecodable record at the limit (and on Kafka one past it, from a
/// foreign producer) on a lane are dead-lettered — the large ones cut with a marker — and the
/// worker completes the task behind them on the same partition.
pub async fn undecodable_lane_records_are_dead_lettered(h: &mut Harness) {
    at_shipped_limit(h).await;
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("echo", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    f.start_worker(&ty, &agent, build(&agent.runtime, Duration::from_secs(10)).expect("echo"), "echo-1");
    let lane = f.topics.lane(&ty, Lane::Normal);
    let producer = f.log.producer().expect("producer");
    let mut garbage = Record::new(lane.clone(), b"not avro at all".to_vec()).with_key(Bytes::from_static(b"g1"));
    garbage.partition = Some(0);
    let mut large = Record::new(lane.clone(), vec![0xffu8; LIMIT - 2]).with_key(Bytes::from_static(b"g2"));
    large.partition = Some(0);
    let mut sources = Vec::new();
    for record in [garbage, large] {
        let at = producer.send(record).await.expect("accepted").await.expect("durable");
        sources.push(format!("{lane}/0/{}", at.offset));
    }
    if h.backend == Backend::Kafka {
        sources.push(produce_past_the_limit(h, &lane).await);
    }
    let next = follow_up(&f, &ty).await;
    let outcomes = f.outcomes(std::slice::from_ref(&next.task_id), WITHIN).await;
    assert_completed(&outcomes, &next);
    let letters = dlq::list(&f.log, &f.client).await.expect("dlq list");
    for source in &sources {
        let letter = letters.iter().find(|l| &l.source == source).unwrap_or_else(|| panic!("no dead letter from {source}"));
        let truncated = letter.record.header("agentlog.dlq.truncated").is_some();
        assert_eq!(truncated, letter.record.payload.len() > 1000, "only the large ones are cut ({source})");
        let size = letter.record.payload.len()
            + letter.record.key.as_ref().map_or(0, |k| k.len())
            + letter.record.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>();
        assert!(size <= LIMIT, "{source}: {size}");
    }
    let reports = f.stop().await;
    assert_eq!(reports[0].undecodable, sources.len() as u64, "{:?}", reports[0]);
}

/// A record past agentlog's limit, as a foreign Kafka producer may write it (bound only by the
/// broker's 1 MiB); returns its dead-letter source.
async fn produce_past_the_limit(h: &Harness, lane: &str) -> String {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &h.config.log.kafka.bootstrap_servers)
        .set("message.max.bytes", "2000000")
        .create()
        .expect("foreign producer");
    let payload = vec![0xeeu8; LIMIT + 30_000];
    let delivered = producer
        .send(FutureRecord::to(lane).partition(0).key("g3").payload(&payload), Duration::from_secs(15))
        .await
        .map_err(|(e, _)| e)
        .expect("the broker takes a record past agentlog's limit");
    format!("{lane}/{}/{}", delivered.partition, delivered.offset)
}

/// Submit over HTTP: a command that leaves no room under `log.max_record_bytes` for its later
/// envelopes answers 413 naming the limit and the key (it answered 503, "retry", before) and
/// writes nothing; one that leaves the room is accepted.
pub async fn submit_past_the_headroom_answers_413(h: &mut Harness) {
    at_shipped_limit(h).await;
    let f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("echo", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    let mut agents = BTreeMap::new();
    agents.insert(ty.clone(), agent);
    let dir = tempfile::tempdir().expect("projection dir");
    let projection = Projection::new(ProjectionStore::open(dir.path()).expect("projection store"), sources(&f.topics, &agents)).expect("projection");
    let state = Arc::new(ApiState::new(f.log.clone(), f.client.clone(), agents, projection, ApiConfig::default()).expect("api state"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    // As `agentlog dev` and `agentlog api` do: the body limit is the record limit.
    let server = tokio::spawn(serve(listener, state, LIMIT, stop.clone()));
    let http = reqwest::Client::new();
    let lane = f.topics.lane(&ty, Lane::Normal);
    let before = high_watermarks(&f, &lane).await;

    // The tester's input: a JSON string of 999,834 bytes.
    let input = Value::String("x".repeat(TESTER_INPUT - 2));
    let answer = http.post(format!("{base}/v1/tasks")).json(&json!({"agent_type": ty, "input": input})).send().await.expect("answer");
    assert_eq!(answer.status(), 413);
    let body: Value = answer.json().await.expect("json error");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("log.max_record_bytes") && message.contains("1000000"), "{body}");
    assert_eq!(body["error"]["field"], "input", "{body}");
    assert_eq!(high_watermarks(&f, &lane).await, before, "nothing was written");

    let fits = Value::String("x".repeat(900_000));
    let answer = http.post(format!("{base}/v1/tasks")).json(&json!({"agent_type": ty, "input": fits})).send().await.expect("answer");
    assert_eq!(answer.status(), 202, "{:?}", answer.text().await);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    f.stop().await;
}

/// Credentials in an http agent's URL stay secret (issue 14, item 7): a task failing at such
/// an agent is dead-lettered, and its outcome, its timeline, its dead letter and the catalog
/// (as an admin sees it) all answer over HTTP with the password and the query token masked.
pub async fn url_credentials_never_reach_an_answer(h: &mut Harness) {
    let (url, agent_server) = http_agent().await;
    let secret_url = format!("{}?token=t0ken-abc", url.replacen("http://", "http://agent-user:s3cret-pass@", 1));
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("http", &format!("runtime = {{ kind = \"http\", url = \"{secret_url}\" }}\n[retry]\nmax_attempts = 1\n")).await;
    f.start_worker(&ty, &agent, build(&agent.runtime, Duration::from_secs(10)).expect("http"), "http-1");
    let mut agents = BTreeMap::new();
    agents.insert(ty.clone(), agent);
    let dir = tempfile::tempdir().expect("projection dir");
    let projection = Projection::new(ProjectionStore::open(dir.path()).expect("projection store"), sources(&f.topics, &agents)).expect("projection");
    let stop = CancellationToken::new();
    let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), f.codec.clone(), projection.clone(), stop.clone()));
    // No keys: every caller is an admin and sees the runtime's configuration.
    let state = Arc::new(ApiState::new(f.log.clone(), f.client.clone(), agents, projection, ApiConfig::default()).expect("api state"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(serve(listener, state, 64 * 1024, stop.clone()));
    let http = reqwest::Client::new();
    let get = |path: String| {
        let request = http.get(format!("{base}{path}"));
        async move { request.send().await.expect("answer").json::<Value>().await.expect("json") }
    };

    let answer = http.post(format!("{base}/v1/tasks?wait_ms=20000")).json(&json!({"agent_type": ty, "input": {"fail": true}})).send().await.expect("submit");
    assert_eq!(answer.status(), 200, "finished within the wait");
    let submitted: Value = answer.json().await.expect("json");
    assert_eq!(submitted["outcome"]["status"], "dead_lettered", "{submitted}");
    let id = submitted["task_id"].as_str().expect("task id").to_string();
    let task = get(format!("/v1/tasks/{id}")).await;
    // The letter is written before the outcome; on Kafka it may show a moment later (5 s).
    let mut dlq = get("/v1/dlq".into()).await;
    for _ in 0..50 {
        if dlq["dead_letters"].as_array().is_some_and(|l| l.iter().any(|d| d["task_id"] == json!(id))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        dlq = get("/v1/dlq".into()).await;
    }
    let letter = dlq["dead_letters"].as_array().and_then(|l| l.iter().find(|d| d["task_id"] == json!(id)).cloned()).expect("the dead letter is listed");
    let catalog = get("/v1/agent-types".into()).await;
    for (what, answer) in [("the submit", &submitted), ("the task", &task), ("the dead letter", &letter), ("the catalog", &catalog)] {
        let text = answer.to_string();
        assert!(!text.contains("s3cret-pass") && !text.contains("t0ken-abc"), "{what} shows the URL's credentials: {text}");
    }
    let message = task["outcome"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("agent-user:***@") && message.contains("token=***") && message.contains("503"),
        "the failure still says where and what: {message}"
    );
    let runtime = &catalog["agent_types"].as_array().expect("types").iter().find(|t| t["name"] == json!(ty)).expect("listed")["runtime"];
    assert_eq!(runtime["url"], json!(format!("{}?token=***", url.replacen("http://", "http://agent-user:***@", 1))), "{runtime}");

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), projector).await;
    f.stop().await;
    agent_server.abort();
}

async fn high_watermarks(f: &Fixture, topic: &str) -> Vec<i64> {
    let admin = f.log.admin();
    let mut out = Vec::new();
    for p in 0..super::fixture::PARTITIONS {
        out.push(admin.watermarks(&TopicPartition::new(topic, p)).await.expect("watermarks").high);
    }
    out
}
