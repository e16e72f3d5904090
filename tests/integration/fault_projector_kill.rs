//! Fault test of the projection: kill -9 of the process running the projector, again and
//! again, while 100,000 events stream in; after the last restart has caught up, the
//! projection must equal a rebuild from scratch (compared as canonical dumps). That holds
//! only if the offsets written with the state are exactly where durable state ends: nothing
//! counted twice, nothing skipped. Both backends:
//!
//! - embedded: the log belongs to one process, so the killed process is `agentlog dev`
//!   (log, echo workers, supervisor, projector, API) and the events are tasks submitted over
//!   HTTP plus what the workers write for them;
//! - Kafka: the killed process is `agentlog api` (projector + API) and this test writes task
//!   events to the broker directly.
//!
//! Kill -9 tests a crashed process, not power loss.

use crate::harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};

use agentlog::agent::TaskTopics;
use agentlog::events::{Lane, Meta, TaskCompleted, TaskStarted, TaskSubmitted};
use agentlog::log::{Record, TopicSpec};

use harness::{Harness, TestRegistry, create_task_topics, kafka_bootstrap, unique};

const EVENTS: u64 = 100_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn spawn(config: &Path, args: &[&str], log_file: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_file).expect("child log file");
    Command::new(env!("CARGO_BIN_EXE_agentlog"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn agentlog")
}

fn kill_9(child: &mut Child) {
    child.kill().expect("kill -9");
    let _ = child.wait();
}

/// SIGTERM and wait (bounded), as a supervisor would stop it.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_9(child);
    panic!("the process did not stop within 30 s of SIGTERM");
}

/// Waits until the API answers /readyz with ready and no records left to apply.
async fn wait_caught_up(http: &reqwest::Client, base: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut zero_in_a_row = 0;
    loop {
        assert!(Instant::now() < deadline, "the projection did not catch up within {within:?}");
        if let Ok(answer) = http.get(format!("{base}/readyz")).send().await
            && answer.status() == 200
            && let Ok(body) = answer.json::<Value>().await
            && body["lag_records"] == json!(0)
        {
            zero_in_a_row += 1;
            if zero_in_a_row >= 2 {
                return;
            }
        } else {
            zero_in_a_row = 0;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_up(http: &reqwest::Client, base: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the API did not come up within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn run_cli(config: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_agentlog")).arg("--config").arg(config).args(args).env("RUST_LOG", "warn").output().expect("run agentlog");
    assert!(output.status.success(), "agentlog {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// The projection after the kills versus one rebuilt from the whole log into a fresh
/// directory: same text, line for line.
fn compare_with_rebuild(config: &Path, fresh_config: &Path, expect_tasks: u64) {
    let survived = run_cli(config, &["projection", "dump"]);
    run_cli(fresh_config, &["replay"]);
    let rebuilt = run_cli(fresh_config, &["projection", "dump"]);
    let tasks = survived.lines().filter(|l| l.starts_with("tasks\t")).count() as u64;
    eprintln!("projection dump: {} lines, {tasks} tasks; rebuild: {} lines", survived.lines().count(), rebuilt.lines().count());
    assert!(tasks >= expect_tasks, "the projection holds {tasks} tasks, expected at least {expect_tasks}");
    if survived != rebuilt {
        let a: Vec<&str> = survived.lines().collect();
        let b: Vec<&str> = rebuilt.lines().collect();
        let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
        panic!(
            "the projection after kill -9 differs from a rebuild ({} vs {} lines); first difference at line {first}:\n  after kills: {}\n  rebuilt:     {}",
            a.len(),
            b.len(),
            a.get(first).unwrap_or(&"<end>"),
            b.get(first).unwrap_or(&"<end>")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_projection_survives_repeated_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry_port = free_port();
    let api_port = free_port();
    let write_config = |path: &Path, projection: &Path| {
        std::fs::write(
            path,
            format!(
                "[log]\nbackend = \"embedded\"\n[log.embedded]\ndata_dir = \"{}\"\n\
                 [registry]\nlisten = \"127.0.0.1:{registry_port}\"\nurl = \"http://127.0.0.1:{registry_port}\"\n\
                 [api]\nlisten = \"127.0.0.1:{api_port}\"\n[projection]\ndir = \"{}\"\n[supervisor]\nheartbeat_interval_ms = 500\n\
                 [agents.echo]\nruntime = {{ kind = \"builtin\", name = \"echo\" }}\nconcurrency = 32\nlanes = [\"normal\"]\npartitions = 4\n",
                dir.path().join("log").display(),
                projection.display()
            ),
        )
        .expect("config file");
    };
    let config = dir.path().join("agentlog.toml");
    let fresh_config = dir.path().join("fresh.toml");
    write_config(&config, &dir.path().join("projection"));
    write_config(&fresh_config, &dir.path().join("fresh"));
    let child_log = dir.path().join("dev.log");
    let base = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();

    // Each task is at least three events (submitted, started, completed).
    let tasks_needed = EVENTS / 3 + 1;
    let mut accepted = 0u64;
    let mut kills = 0;
    let mut child = spawn(&config, &["dev"], &child_log);
    let started = Instant::now();
    while accepted < tasks_needed {
        assert!(started.elapsed() < Duration::from_secs(300), "streaming took too long: {accepted} tasks accepted, {kills} kills");
        wait_up(&http, &base, Duration::from_secs(60)).await;
        // Submit for a while, then kill -9 whatever the process is doing.
        let until = Instant::now() + Duration::from_millis(700 + 300 * (kills % 3));
        while Instant::now() < until && accepted < tasks_needed {
            let tasks: Vec<Value> = (0..250).map(|i| json!({"agent_type": "echo", "input": {"n": i}})).collect();
            match http.post(format!("{base}/v1/tasks/batch")).json(&json!({"tasks": tasks})).send().await {
                Ok(answer) if answer.status() == 202 => {
                    accepted += 250;
                    // About 5,000 tasks/s offered, so the stream spans many kills.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(answer) => panic!("batch refused: {} {}", answer.status(), answer.text().await.unwrap_or_default()),
                Err(_) => break,
            }
        }
        kill_9(&mut child);
        kills += 1;
        child = spawn(&config, &["dev"], &child_log);
    }
    // The last run finishes the work: every accepted task completed, in the projection.
    wait_up(&http, &base, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let stats: Value = http.get(format!("{base}/v1/stats")).send().await.expect("stats").json().await.expect("stats json");
        let completed = stats["agent_types"]["echo"]["completed"].as_u64().unwrap_or(0);
        if completed >= accepted {
            break;
        }
        assert!(Instant::now() < deadline, "only {completed} of {accepted} accepted tasks completed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    terminate(&mut child);
    // The drain wrote final agent events the projector may not have applied before it
    // stopped: a projector-only restart picks them up, as any restart would.
    let mut api = spawn(&config, &["api"], &child_log);
    wait_up(&http, &base, Duration::from_secs(60)).await;
    wait_caught_up(&http, &base, Duration::from_secs(120)).await;
    terminate(&mut api);
    eprintln!("fault report (embedded): accepted tasks={accepted} kills={kills} elapsed={:?}", started.elapsed());
    assert!(kills >= 3, "only {kills} kills");
    compare_with_rebuild(&config, &fresh_config, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka: AGENTLOG_TEST_KAFKA names a broker (make test starts one and runs these)"]
async fn kafka_projection_survives_repeated_kill_9() {
    let bootstrap = kafka_bootstrap();
    const PARTITIONS: i32 = 4;
    let h = Harness::kafka(&bootstrap);
    let log = h.log().clone();
    let registry = TestRegistry::start(&log).await;
    let codec = registry.codec();
    let prefix = format!("{}.", unique("projkill"));
    create_task_topics(&log, &prefix, PARTITIONS).await;
    let topics = TaskTopics::new(prefix.clone());
    let lane = topics.lane("echo", Lane::Normal);
    log.admin().create_topic(&TopicSpec::new(lane.clone(), PARTITIONS)).await.expect("lane topic");

    let dir = tempfile::tempdir().expect("temp dir");
    let api_port = free_port();
    let write_config = |path: &Path, projection: PathBuf| {
        std::fs::write(
            path,
            format!(
                "[log]\nbackend = \"kafka\"\ntopic_prefix = \"{prefix}\"\n[log.kafka]\nbootstrap_servers = \"{bootstrap}\"\nrequest_timeout_ms = 15000\n\
                 [registry]\nurl = \"{}\"\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n[projection]\ndir = \"{}\"\n\
                 [agents.echo]\nruntime = {{ kind = \"builtin\", name = \"echo\" }}\nlanes = [\"normal\"]\npartitions = {PARTITIONS}\n",
                registry.url,
                projection.display()
            ),
        )
        .expect("config file");
    };
    let config = dir.path().join("agentlog.toml");
    let fresh_config = dir.path().join("fresh.toml");
    write_config(&config, dir.path().join("projection"));
    write_config(&fresh_config, dir.path().join("fresh"));
    let child_log = dir.path().join("api.log");
    let base = format!("http://127.0.0.1:{api_port}");
    let http = reqwest::Client::new();

    // The writer: 100,000 events (per task: submitted on the lane, started, completed) at
    // about 8,000 events/s, so the stream lasts long enough for several kills.
    let done = std::sync::atomic::AtomicBool::new(false);
    let writer = async {
        {
            let producer = log.producer().expect("producer");
            let mut pending = FuturesUnordered::new();
            let tasks = EVENTS / 3 + 1;
            let started = Instant::now();
            for n in 0..tasks {
                let id = format!("k{n}");
                let key = Bytes::from(id.clone());
                let submitted = TaskSubmitted::new(Meta::new(format!("s{n}"), "t", "fault"), &id, "echo", Lane::Normal, b"{}".to_vec());
                let running =
                    TaskStarted { meta: Meta::new(format!("b{n}"), "t", "fault"), task_id: id.clone(), agent_id: format!("agent-{}", n % 3), attempt: 1 };
                let done = TaskCompleted {
                    meta: Meta::new(format!("c{n}"), "t", "fault"),
                    task_id: id.clone(),
                    attempt: 1,
                    output: b"{\"ok\":true}".to_vec(),
                    content_type: "application/json".into(),
                    duration_ms: (n % 50) as i64,
                    usage: None,
                };
                let records = [
                    Record::new(lane.clone(), codec.encode(&lane, &submitted).await.expect("encode")).with_key(key.clone()),
                    Record::new(topics.events(), codec.encode(&topics.events(), &running).await.expect("encode")).with_key(key.clone()),
                    Record::new(topics.results(), codec.encode(&topics.results(), &done).await.expect("encode")).with_key(key),
                ];
                for record in records {
                    pending.push(producer.send(record).await.expect("send"));
                }
                while pending.len() > 2_000 {
                    pending.next().await.expect("delivery").expect("delivered");
                }
                // Pace: 8,000 events/s.
                let due = Duration::from_micros(n * 3 * 125);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            while let Some(delivery) = pending.next().await {
                delivery.expect("delivered");
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            tasks
        }
    };

    // The killer, while the writer streams (both on this task: deliveries are not Send).
    let started = Instant::now();
    let killer = async {
        let mut kills = 0;
        let mut child = spawn(&config, &["api"], &child_log);
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(started.elapsed() < Duration::from_secs(300), "streaming took too long");
            wait_up(&http, &base, Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_millis(1_000 + 500 * (kills % 3))).await;
            kill_9(&mut child);
            kills += 1;
            child = spawn(&config, &["api"], &child_log);
        }
        (child, kills)
    };
    let (tasks, (mut child, kills)) = tokio::join!(writer, killer);
    wait_up(&http, &base, Duration::from_secs(60)).await;
    wait_caught_up(&http, &base, Duration::from_secs(180)).await;
    terminate(&mut child);
    eprintln!("fault report (kafka): tasks={tasks} events={} kills={kills} elapsed={:?}", tasks * 3, started.elapsed());
    assert!(kills >= 3, "only {kills} kills");
    compare_with_rebuild(&config, &fresh_config, tasks);
    registry.stop().await;
    let _: Arc<_> = codec;
}
