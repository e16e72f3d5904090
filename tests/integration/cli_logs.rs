//! A process's log says what it decided: `agentlog supervisor` logs that it leads. An operator (and the fault suite, which waits for
//! "leading: starting") reads these; with tracing off, the log filter set on the only layer
//! dropped them (2026-12-05: a Kafka supervisor logged nothing while it led).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `agentlog supervisor` with `env` until its stderr holds every one of `wanted` (or 60 s
/// pass), then stops it with SIGTERM; returns what it wrote.
fn supervisor_log(env: &[(&str, String)], wanted: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("supervisor.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentlog"));
    command
        .arg("supervisor")
        .current_dir(dir.path())
        .env("RUST_LOG", "debug,librdkafka=warn,rdkafka=warn,h2=info,hyper=info,hyper_util=info,reqwest=info")
        .env("NO_COLOR", "1")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child: Child = command.spawn().expect("spawn agentlog supervisor");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    while Instant::now() < deadline {
        text.clear();
        std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text)).expect("read log");
        if wanted.iter().all(|w| text.contains(w)) || child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling a child this test started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    text.clear();
    std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text)).expect("read log");
    text
}

fn assert_leads(env: &[(&str, String)]) {
    let apply = Command::new(env!("CARGO_BIN_EXE_agentlog"))
        .args(["topics", "apply"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("agentlog topics apply");
    assert!(apply.status.success(), "topics apply: {}", String::from_utf8_lossy(&apply.stderr));
    let wanted = ["leading: starting"];
    let text = supervisor_log(env, &wanted);
    for w in wanted {
        assert!(text.contains(w), "the supervisor's log lacks `{w}`:\n{text}");
    }
}

#[test]
fn a_supervisor_on_the_embedded_log_says_it_leads() {
    let data = tempfile::tempdir().expect("tempdir");
    assert_leads(&[
        ("AGENTLOG__LOG__BACKEND", "embedded".into()),
        ("AGENTLOG__LOG__EMBEDDED__DATA_DIR", data.path().display().to_string()),
        ("AGENTLOG__TELEMETRY__ENABLED", "false".into()),
    ]);
}

/// On Kafka, with tracing off and on (exporting to a port where nothing listens: the log
/// filter then sits beside the trace layer).
fn on_kafka(tracing: bool) {
    let prefix = format!("cli-logs-{:06x}.", rand::random::<u32>() & 0xff_ffff);
    let mut env = vec![
        ("AGENTLOG__LOG__BACKEND", "kafka".to_string()),
        ("AGENTLOG__LOG__KAFKA__BOOTSTRAP_SERVERS", super::harness::kafka_bootstrap()),
        ("AGENTLOG__LOG__TOPIC_PREFIX", prefix),
        ("AGENTLOG__TELEMETRY__ENABLED", tracing.to_string()),
    ];
    if tracing {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        env.push(("AGENTLOG__TELEMETRY__ENDPOINT", format!("http://127.0.0.1:{port}")));
    }
    assert_leads(&env);
}

#[test]
#[ignore = "needs Kafka: AGENTLOG_TEST_KAFKA names a broker (make test starts one and runs these)"]
fn a_supervisor_on_kafka_says_it_leads() {
    on_kafka(false);
}

#[test]
#[ignore = "needs Kafka: AGENTLOG_TEST_KAFKA names a broker (make test starts one and runs these)"]
fn a_tracing_supervisor_on_kafka_says_it_leads() {
    on_kafka(true);
}
