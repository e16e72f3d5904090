//! The agent runtimes against real parts: a local HTTP agent (axum on 127.0.0.1:0), real
//! programs for exec, and the builtins, each through `agent::runtime::build`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentlog::agent::RuntimeConfig;
use agentlog::agent::runtime::{self, Agent, AgentFailure, RuntimeError, TaskContext, TaskOutput};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

const TEST_BOUND: Duration = Duration::from_secs(20);

/// Runs a test body under a hard time bound.
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_BOUND, body).await.expect("test exceeded its time bound");
}

fn ctx(input: impl Into<Bytes>, content_type: &str) -> TaskContext {
    TaskContext {
        task_id: "task-0001".into(),
        agent_type: "demo".into(),
        attempt: 2,
        input: input.into(),
        content_type: content_type.into(),
        labels: HashMap::from([("team".to_string(), "search".to_string())]),
        idempotency_key: "task-0001/idem".into(),
        cancel: CancellationToken::new(),
        delegate: None,
        checkpoint: None,
        stream: None,
        signal: None,
        callback_url: None,
    }
}

fn agent(config: RuntimeConfig, timeout: Duration) -> Arc<dyn Agent> {
    runtime::build(&config, timeout).expect("runtime builds")
}

fn exec(program: &str, args: &[&str]) -> Arc<dyn Agent> {
    agent(
        RuntimeConfig::Exec { program: program.into(), args: args.iter().map(|a| a.to_string()).collect(), env: Default::default(), frames: false },
        Duration::from_secs(10),
    )
}

/// Runs `agent` on `ctx`, cancels `ctx` after `after`, and returns the outcome and how long
/// the attempt took past the cancel.
async fn run_and_cancel(agent: &dyn Agent, ctx: TaskContext, after: Duration) -> (Result<TaskOutput, AgentFailure>, Duration) {
    let cancel = ctx.cancel.clone();
    let cancelled_at = Arc::new(Mutex::new(None));
    let stamp = cancelled_at.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(after).await;
        *stamp.lock().unwrap() = Some(Instant::now());
        cancel.cancel();
    });
    let result = agent.run(ctx).await;
    let ended = Instant::now();
    canceller.await.unwrap();
    let at = cancelled_at.lock().unwrap().expect("cancel fired before the attempt ended");
    (result, ended.saturating_duration_since(at))
}

// ---------------------------------------------------------------------------------------------
// http

#[derive(Default)]
struct Seen {
    keys: Vec<String>,
    bodies: Vec<serde_json::Value>,
}

/// A local HTTP agent: `/ok` answers 200 with a JSON summary of what it got, `/reject` 422,
/// `/unavailable` 503, `/busy` 429, `/slow` after 30 s. Records what `/ok` saw.
async fn http_agent_server() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let app = Router::new()
        .route(
            "/ok",
            post(move |headers: HeaderMap, body: Bytes| {
                let record = record.clone();
                async move {
                    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let body: serde_json::Value = serde_json::from_slice(&body).expect("the runtime posts JSON");
                    assert_eq!(headers.get("content-type").unwrap(), "application/json");
                    let answer = serde_json::json!({ "got": body["input"], "key": key });
                    let mut seen = record.lock().unwrap();
                    seen.keys.push(key);
                    seen.bodies.push(body);
                    ([("content-type", "application/json")], answer.to_string())
                }
            }),
        )
        .route("/reject", post(|| async { (StatusCode::UNPROCESSABLE_ENTITY, "field `text` is required".repeat(200)) }))
        .route("/unavailable", post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "overloaded, try later") }))
        .route("/busy", post(|| async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "7")], "slow down") }))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (format!("http://{addr}"), seen)
}

fn http(url: String, timeout: Duration) -> Arc<dyn Agent> {
    agent(RuntimeConfig::Http { url }, timeout)
}

#[tokio::test]
async fn http_2xx_completes_with_the_body_and_its_content_type() {
    bounded(async {
        let (base, seen) = http_agent_server().await;
        let agent = http(format!("{base}/ok"), Duration::from_secs(5));
        let out = agent.run(ctx(r#"{"text": "hi"}"#, "application/json")).await.expect("completed");
        assert_eq!(out.content_type, "application/json");
        let answer: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
        assert_eq!(answer, serde_json::json!({"got": {"text": "hi"}, "key": "task-0001/idem"}));

        // Text input travels as a string; the same client serves a second call.
        let out = agent.run(ctx("plain words", "text/plain")).await.expect("completed");
        let answer: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
        assert_eq!(answer["got"], "plain words");

        let seen = seen.lock().unwrap();
        assert_eq!(seen.keys, ["task-0001/idem", "task-0001/idem"]);
        let first = &seen.bodies[0];
        assert_eq!(first["task_id"], "task-0001");
        assert_eq!(first["agent_type"], "demo");
        assert_eq!(first["attempt"], 2);
        assert_eq!(first["idempotency_key"], "task-0001/idem");
        assert_eq!(first["content_type"], "application/json");
        assert_eq!(first["input_encoding"], "json");
        assert_eq!(first["labels"], serde_json::json!({"team": "search"}));
        assert_eq!(seen.bodies[1]["input_encoding"], "utf8");
    })
    .await;
}

#[tokio::test]
async fn http_4xx_is_rejected_not_retryable_with_a_bounded_excerpt() {
    bounded(async {
        let (base, _) = http_agent_server().await;
        let err = http(format!("{base}/reject"), Duration::from_secs(5)).run(ctx("{}", "application/json")).await.expect_err("rejected");
        assert_eq!(err.kind, "rejected");
        assert!(!err.retryable);
        assert!(err.message.contains("422"), "{}", err.message);
        assert!(err.message.contains("field `text` is required"), "{}", err.message);
        // The server sent ~5 KiB; the message quotes a bounded part of it.
        assert!(err.message.len() < 1400, "message of {} bytes", err.message.len());
    })
    .await;
}

#[tokio::test]
async fn http_5xx_and_429_are_transient_and_retryable() {
    bounded(async {
        let (base, _) = http_agent_server().await;
        let err = http(format!("{base}/unavailable"), Duration::from_secs(5)).run(ctx("{}", "application/json")).await.expect_err("503");
        assert_eq!((err.kind.as_str(), err.retryable), ("transient", true));
        assert!(err.message.contains("503") && err.message.contains("overloaded, try later"), "{}", err.message);
        let err = http(format!("{base}/busy"), Duration::from_secs(5)).run(ctx("{}", "application/json")).await.expect_err("429");
        assert_eq!((err.kind.as_str(), err.retryable), ("transient", true));
        assert!(err.message.contains("429"), "{}", err.message);
        // The agent's Retry-After travels with the failure; the retry waits at least that.
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
    })
    .await;
}

#[tokio::test]
async fn http_connection_refused_is_transient() {
    bounded(async {
        // A port that was just free: nothing listens there.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = http(format!("http://{addr}/run"), Duration::from_secs(5)).run(ctx("{}", "application/json")).await.expect_err("refused");
        assert_eq!((err.kind.as_str(), err.retryable), ("transient", true), "{err}");
    })
    .await;
}

/// Credentials in an agent's URL (user info, query values) never reach a failure message:
/// those become outcomes and dead letters that tenants read.
#[tokio::test]
async fn http_failure_messages_mask_the_urls_credentials() {
    bounded(async {
        let (base, _) = http_agent_server().await;
        let with_credentials = |base: &str, path: &str| format!("{}{path}?token=t0ken-abc", base.replacen("http://", "http://agent-user:s3cret-pass@", 1));
        let leaks = |text: &str| text.contains("s3cret-pass") || text.contains("t0ken-abc");
        let err = http(with_credentials(&base, "/unavailable"), Duration::from_secs(5)).run(ctx("{}", "application/json")).await.expect_err("503");
        assert!(!leaks(&err.message) && err.message.contains("agent-user:***@") && err.message.contains("token=***"), "{}", err.message);
        let err = http(with_credentials(&base, "/slow"), Duration::from_millis(300)).run(ctx("{}", "application/json")).await.expect_err("timeout");
        assert!(!leaks(&err.message), "{}", err.message);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = http(with_credentials(&refused, "/run"), Duration::from_secs(5)).run(ctx("{}", "application/json")).await.expect_err("refused");
        assert_eq!(err.kind, "transient", "{err}");
        assert!(!leaks(&err.message), "{}", err.message);
        let err = runtime::build(&RuntimeConfig::Http { url: "ftp://agent-user:s3cret-pass@h/?token=t0ken-abc".into() }, Duration::from_secs(1))
            .err()
            .expect("ftp refused");
        assert!(!leaks(&err.to_string()), "{err}");
    })
    .await;
}

#[tokio::test]
async fn http_request_timeout_is_kind_timeout_and_retryable() {
    bounded(async {
        let (base, _) = http_agent_server().await;
        let started = Instant::now();
        let err = http(format!("{base}/slow"), Duration::from_millis(300)).run(ctx("{}", "application/json")).await.expect_err("timeout");
        assert_eq!((err.kind.as_str(), err.retryable), ("timeout", true), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    })
    .await;
}

#[tokio::test]
async fn http_cancel_abandons_the_request_within_a_second() {
    bounded(async {
        let (base, _) = http_agent_server().await;
        let agent = http(format!("{base}/slow"), Duration::from_secs(60));
        let (result, late) = run_and_cancel(agent.as_ref(), ctx("{}", "application/json"), Duration::from_millis(200)).await;
        assert_eq!(result.expect_err("cancelled").kind, "cancelled");
        assert!(late < Duration::from_secs(1), "returned {late:?} after the cancel");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// exec

/// A shell script in a temp dir, run as `/bin/sh <script>` (configured args only, so no
/// executable-file race with concurrently forking tests).
fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

fn exec_frames(program: &str) -> Arc<dyn Agent> {
    agent(RuntimeConfig::Exec { program: program.into(), args: vec![], env: Default::default(), frames: true }, Duration::from_secs(10))
}

#[tokio::test]
async fn exec_frames_decide_the_attempt_whatever_the_exit_status() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        // The protocol's frames on stdout, the result last; AGENTLOG_PROTOCOL says which protocol.
        let ok = script(&dir, "ok.sh", "#!/bin/sh\necho '{\"type\":\"progress\",\"percent\":50}'\necho '{\"type\":\"chunk\",\"text\":\"a\"}'\nprintf '{\"type\":\"result\",\"output\":{\"protocol\":\"%s\"}}' \"$AGENTLOG_PROTOCOL\"\n");
        let typed = script(&dir, "typed.sh", "#!/bin/sh\necho '{\"type\":\"error\",\"kind\":\"quota\",\"message\":\"out of tokens\",\"retryable\":true,\"retry_after_ms\":250}'\nexit 3\n");
        let silent_ok = script(&dir, "silent.sh", "#!/bin/sh\necho '{\"type\":\"chunk\",\"text\":\"a\"}'\n");
        let silent_fail = script(&dir, "fail.sh", "#!/bin/sh\necho 'boom' >&2\nexit 4\n");
        let broken = script(&dir, "broken.sh", "#!/bin/sh\necho 'not a frame'\nexec sleep 30\n");
        for path in [&ok, &typed, &silent_ok, &silent_fail, &broken] {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let out = exec_frames(&ok).run(ctx("{}", "application/json")).await.expect("completed");
        assert_eq!((&out.output[..], out.content_type.as_str()), (&br#"{"protocol":"1"}"#[..], "application/json"));

        let err = exec_frames(&typed).run(ctx("{}", "application/json")).await.expect_err("the agent's error");
        assert_eq!((err.kind.as_str(), err.retryable, err.retry_after), ("quota", true, Some(Duration::from_millis(250))));

        let err = exec_frames(&silent_ok).run(ctx("{}", "application/json")).await.expect_err("no result");
        assert_eq!(err.kind, "protocol", "{err}");
        let err = exec_frames(&silent_fail).run(ctx("{}", "application/json")).await.expect_err("exit");
        assert_eq!(err.kind, "exit", "{err}");
        assert!(err.message.contains("boom"), "{err}");

        // A broken frame ends the attempt at once: the program (sleeping 30 s) is killed.
        let started = Instant::now();
        let err = exec_frames(&broken).run(ctx("{}", "application/json")).await.expect_err("protocol");
        assert!(err.kind == "protocol" && err.message.contains("frame 1 (not a frame)"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "the attempt waited for the program: {:?}", started.elapsed());
    })
    .await;
}

#[tokio::test]
async fn exec_cat_echoes_stdin_to_stdout() {
    bounded(async {
        let out = exec("/bin/cat", &[]).run(ctx("hello from stdin\n", "text/plain")).await.expect("completed");
        assert_eq!(&out.output[..], b"hello from stdin\n");
        assert_eq!(out.content_type, "application/octet-stream");

        // Larger than any pipe buffer: stdin and stdout are served at once, no deadlock.
        let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let out = exec("/bin/cat", &[]).run(ctx(big.clone(), "application/octet-stream")).await.expect("completed");
        assert!(out.output[..] == big[..], "4 MiB round trip differs");
    })
    .await;
}

#[tokio::test]
async fn exec_nonzero_exit_fails_with_kind_exit_and_the_stderr_tail() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            &dir,
            "fail.sh",
            "i=0\nwhile [ $i -lt 300 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done\necho 'the real reason: quota exceeded' >&2\nexit 3\n",
        );
        let err = exec("/bin/sh", &[&path]).run(ctx("x", "text/plain")).await.expect_err("exit 3");
        assert_eq!((err.kind.as_str(), err.retryable), ("exit", true));
        assert!(err.message.contains("exit status: 3"), "{}", err.message);
        assert!(err.message.contains("the real reason: quota exceeded"), "{}", err.message);
        assert!(!err.message.contains("noise line 0\n"), "kept the head of stderr");
        assert!(err.message.len() < 2048 + 200, "message of {} bytes", err.message.len());
    })
    .await;
}

#[tokio::test]
async fn exec_sees_only_metadata_in_its_environment_and_fixed_args() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            &dir,
            "env.sh",
            "printf '%s|%s|%s|%s|%s' \"$AGENTLOG_TASK_ID\" \"$AGENTLOG_ATTEMPT\" \"$AGENTLOG_AGENT_TYPE\" \"$AGENTLOG_IDEMPOTENCY_KEY\" \"$*\"\n",
        );
        let out = exec("/bin/sh", &[&path, "a1", "a2"]).run(ctx("ignored", "text/plain")).await.expect("completed");
        assert_eq!(String::from_utf8_lossy(&out.output), "task-0001|2|demo|task-0001/idem|a1 a2");
    })
    .await;
}

/// A test's name as the harness lists it: its module path without the test binary's name.
fn listed_name(test: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, module)| module);
    format!("{module}::{test}")
}

/// Marks the child run of [`exec_gets_only_the_environment_its_type_declares`].
const PLANTED_CHILD: &str = "AGENTLOG_TEST_PLANTED_CHILD";
/// A worker's credential, as `AGENTLOG__…` settings carry them.
const PLANTED_NAME: &str = "AGENTLOG__LOG__KAFKA__PROPERTIES__SASL.PASSWORD";
const PLANTED_VALUE: &str = "planted-sasl-password";

/// A program sees PATH, HOME and LANG, its type's declared `env` and the task's metadata,
/// and nothing else of the worker's environment: a SASL password planted there reached a
/// tenant's output. The planted variable must be in the environment from the start (setting
/// it in this multi-threaded process is unsound), so this test runs itself again as a child
/// process with it, and the child does the checking.
#[tokio::test]
async fn exec_gets_only_the_environment_its_type_declares() {
    bounded(async {
        if std::env::var_os(PLANTED_CHILD).is_none() {
            let me = std::env::current_exe().expect("test binary");
            let child = tokio::process::Command::new(me)
                .args([&listed_name("exec_gets_only_the_environment_its_type_declares"), "--exact", "--test-threads=1", "--nocapture"])
                .env(PLANTED_CHILD, "1")
                .env(PLANTED_NAME, PLANTED_VALUE)
                .kill_on_drop(true)
                .output()
                .await
                .expect("the child test runs");
            let stdout = String::from_utf8_lossy(&child.stdout);
            assert!(child.status.success() && stdout.contains("1 passed"), "child: {}\n{stdout}\n{}", child.status, String::from_utf8_lossy(&child.stderr));
            return;
        }
        assert_eq!(std::env::var(PLANTED_NAME).as_deref(), Ok(PLANTED_VALUE), "the worker has the secret");
        let env = std::collections::BTreeMap::from([("AGENT_API_KEY".to_string(), "declared-key".to_string())]);
        let program = agent(RuntimeConfig::Exec { program: "/usr/bin/env".into(), args: vec![], env, frames: false }, Duration::from_secs(10));
        let out = program.run(ctx("", "text/plain")).await.expect("completed");
        let seen = String::from_utf8_lossy(&out.output);
        assert!(!seen.contains(PLANTED_VALUE) && !seen.contains(PLANTED_NAME), "the worker's secret reached the program:\n{seen}");
        assert!(seen.lines().any(|l| l == "AGENT_API_KEY=declared-key"), "the declared variable is there:\n{seen}");
        assert!(seen.lines().any(|l| l == "AGENTLOG_TASK_ID=task-0001"), "the metadata is there:\n{seen}");
        if let Ok(path) = std::env::var("PATH") {
            assert!(seen.lines().any(|l| l == format!("PATH={path}")), "PATH is passed through:\n{seen}");
        }
        for line in seen.lines() {
            let name = line.split('=').next().unwrap_or_default();
            let allowed = ["PATH", "HOME", "LANG", "AGENT_API_KEY", "AGENTLOG_TASK_ID", "AGENTLOG_ATTEMPT", "AGENTLOG_AGENT_TYPE", "AGENTLOG_IDEMPOTENCY_KEY"];
            assert!(allowed.contains(&name), "`{name}` is not declared:\n{seen}");
        }
    })
    .await;
}

#[tokio::test]
async fn exec_task_data_never_reaches_argv_or_a_shell() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let m = marker.display();
        let input = format!("$(touch {m}) `touch {m}` ; touch {m} && touch {m} | touch {m}\n");
        let out = exec("/bin/echo", &["fixed"]).run(ctx(input, "text/plain")).await.expect("completed");
        assert_eq!(&out.output[..], b"fixed\n");
        assert!(!marker.exists(), "task input was executed");
    })
    .await;
}

#[tokio::test]
async fn exec_missing_program_is_kind_spawn_not_retryable() {
    bounded(async {
        let err = exec("/nonexistent/agentlog-no-such-program", &[]).run(ctx("x", "text/plain")).await.expect_err("spawn");
        assert_eq!((err.kind.as_str(), err.retryable), ("spawn", false));
        assert!(err.message.contains("/nonexistent/agentlog-no-such-program"), "{}", err.message);
    })
    .await;
}

fn processes_with_cmdline(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn exec_cancel_kills_the_program_within_a_second() {
    bounded(async {
        // `sleep 30 0.<unique>` sleeps ~30 s and is findable in /proc by its arguments.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let unique = format!("0.{:09}{}", nanos, std::process::id());
        let needle = format!("/bin/sleep 30 {unique}");
        let agent = exec("/bin/sleep", &["30", &unique]);
        let c = ctx("", "text/plain");
        let cancel = c.cancel.clone();
        let run = tokio::spawn(async move { agent.run(c).await });

        let mut pids = Vec::new();
        for _ in 0..100 {
            pids = processes_with_cmdline(&needle);
            if !pids.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pids.len(), 1, "the program did not start");
        let cancelled_at = Instant::now();
        cancel.cancel();
        let result = run.await.unwrap();
        assert!(cancelled_at.elapsed() < Duration::from_secs(1), "returned {:?} after the cancel", cancelled_at.elapsed());
        assert_eq!(result.expect_err("cancelled").kind, "cancelled");
        // Killed and reaped: no process, not even a zombie.
        assert!(!std::path::Path::new(&format!("/proc/{}", pids[0])).exists(), "process {} still there", pids[0]);
    })
    .await;
}

/// Whether process `pid` has ended: gone, or a zombie left for init to reap (a killed
/// grandchild is reparented, and this container's init may be slow to reap it).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to a second for every pid in `pidfile` (one per line) to end; returns those alive.
async fn alive_after_a_second(pidfile: &std::path::Path) -> Vec<u32> {
    let pids: Vec<u32> = std::fs::read_to_string(pidfile).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert!(!pids.is_empty(), "the script wrote no pids");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|pid| !ended(*pid)).collect();
        if alive.is_empty() || Instant::now() > deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exec_kills_what_the_program_left_running_when_it_exits() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        for exit in [0, 3] {
            let pidfile = dir.path().join(format!("pids-{exit}"));
            // The background sleep holds stdout and stderr: without the group kill the attempt
            // would wait 30 s for their end of file.
            let path = script(&dir, &format!("bg-{exit}.sh"), &format!("/bin/sleep 30 &\necho $! > {}\necho done\nexit {exit}\n", pidfile.display()));
            let began = Instant::now();
            let result = exec("/bin/sh", &[&path]).run(ctx("", "text/plain")).await;
            assert!(began.elapsed() < Duration::from_secs(5), "the attempt waited {:?} for the background job", began.elapsed());
            match exit {
                0 => assert_eq!(&result.expect("completed").output[..], b"done\n"),
                _ => assert_eq!(result.expect_err("exit 3").kind, "exit"),
            }
            assert_eq!(alive_after_a_second(&pidfile).await, Vec::<u32>::new(), "exit {exit}: the background job outlived the attempt");
        }
    })
    .await;
}

#[tokio::test]
async fn exec_cancel_or_drop_kills_the_programs_descendants() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        for how in ["cancel", "drop"] {
            let pidfile = dir.path().join(format!("pids-{how}"));
            let path =
                script(&dir, &format!("tree-{how}.sh"), &format!("/bin/sleep 30 &\necho $! > {p}\necho $$ >> {p}\n/bin/sleep 30\n", p = pidfile.display()));
            let agent = exec("/bin/sh", &[&path]);
            let c = ctx("", "text/plain");
            let cancel = c.cancel.clone();
            let run = tokio::spawn(async move { agent.run(c).await });
            for _ in 0..100 {
                if std::fs::read_to_string(&pidfile).is_ok_and(|t| t.lines().count() == 2) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match how {
                // The worker's cancel signal.
                "cancel" => {
                    cancel.cancel();
                    assert_eq!(run.await.unwrap().expect_err("cancelled").kind, "cancelled");
                }
                // The worker's attempt timeout drops the attempt's future.
                _ => {
                    run.abort();
                    assert!(run.await.unwrap_err().is_cancelled());
                }
            }
            assert_eq!(alive_after_a_second(&pidfile).await, Vec::<u32>::new(), "{how}: the program or its background job lives on");
        }
    })
    .await;
}

#[tokio::test]
async fn exec_unbounded_stdout_is_cut_off() {
    bounded(async {
        let err = exec("/usr/bin/yes", &[]).run(ctx("", "text/plain")).await.expect_err("too large");
        assert_eq!((err.kind.as_str(), err.retryable), ("output_too_large", false));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// builtins

fn builtin(name: &str) -> Arc<dyn Agent> {
    agent(RuntimeConfig::Builtin { name: name.into() }, Duration::from_secs(10))
}

#[tokio::test]
async fn builtin_tokens_answers_the_words_it_streamed() {
    bounded(async {
        let out = builtin("tokens").run(ctx(r#"{"text": " a  b\nc ", "delay_ms": 1}"#, "application/json")).await.expect("tokens");
        let answer: serde_json::Value = serde_json::from_slice(&out.output).expect("JSON");
        assert_eq!(answer, serde_json::json!({"text": "a b c", "words": 3}));
        let err = builtin("tokens").run(ctx(r#"{"words": 3}"#, "application/json")).await.expect_err("no text");
        assert_eq!(err.kind, "rejected");
        // Cancellable between words.
        let (result, past_cancel) =
            run_and_cancel(builtin("tokens").as_ref(), ctx(r#"{"text": "a b c d e f", "delay_ms": 10000}"#, "application/json"), Duration::from_millis(100))
                .await;
        assert_eq!(result.expect_err("cancelled").kind, "cancelled");
        assert!(past_cancel < Duration::from_secs(1), "{past_cancel:?}");
    })
    .await;
}

#[tokio::test]
async fn builtin_approval_drafts_waits_for_its_signal_and_answers_what_it_got() {
    bounded(async {
        let failure = builtin("approval").run(ctx(r#"{"text": "ship it", "timeout_ms": 5000}"#, "application/json")).await.expect_err("it waits");
        assert_eq!(failure.suspend, Some(agentlog::agent::runtime::Suspension { signal: "approval".into(), timeout: Duration::from_secs(5) }));

        let checkpoint = agentlog::agent::checkpoints::Checkpoint { attempt: 1, state: r#"{"draft": "Draft: ship it"}"#.into() };
        let signal = |payload: Option<&str>, timed_out: bool| agentlog::events::SignalDelivery {
            name: "approval".into(),
            signal_id: (!timed_out).then(|| "s-1".into()),
            payload: payload.map(str::to_string),
            timed_out,
        };
        let resumed = TaskContext {
            checkpoint: Some(checkpoint.clone()),
            signal: Some(signal(Some(r#"{"approved": true, "by": "ana"}"#), false)),
            ..ctx(r#"{"text": "ship it"}"#, "application/json")
        };
        let out = builtin("approval").run(resumed).await.expect("approved");
        let answer: serde_json::Value = serde_json::from_slice(&out.output).expect("JSON");
        assert_eq!(answer, serde_json::json!({"draft": "Draft: ship it", "approved": true, "by": "ana"}));

        let late = TaskContext { checkpoint: Some(checkpoint), signal: Some(signal(None, true)), ..ctx(r#"{"text": "ship it"}"#, "application/json") };
        let out = builtin("approval").run(late).await.expect("timed out");
        let answer: serde_json::Value = serde_json::from_slice(&out.output).expect("JSON");
        assert_eq!(answer, serde_json::json!({"draft": "Draft: ship it", "approved": false, "timed_out": true}));
    })
    .await;
}

#[tokio::test]
async fn builtin_echo_returns_its_input() {
    bounded(async {
        let out = builtin("echo").run(ctx(r#"{"a": [1, 2]}"#, "application/json")).await.expect("echo");
        assert_eq!(out, TaskOutput::new(Bytes::from_static(br#"{"a": [1, 2]}"#), "application/json"));
    })
    .await;
}

#[tokio::test]
async fn builtin_sleep_sleeps_and_honours_cancel() {
    bounded(async {
        let started = Instant::now();
        let out = builtin("sleep").run(ctx(r#"{"ms": 50}"#, "application/json")).await.expect("slept");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.output).unwrap(), serde_json::json!({"slept_ms": 50}));

        let agent = builtin("sleep");
        let (result, late) = run_and_cancel(agent.as_ref(), ctx(r#"{"ms": 60000}"#, "application/json"), Duration::from_millis(100)).await;
        assert_eq!(result.expect_err("cancelled").kind, "cancelled");
        assert!(late < Duration::from_secs(1), "returned {late:?} after the cancel");
    })
    .await;
}

#[tokio::test]
async fn builtin_textstats_counts() {
    bounded(async {
        let out = builtin("textstats").run(ctx(r#"{"text": "one two three\nfour"}"#, "application/json")).await.expect("stats");
        assert_eq!(out.content_type, "application/json");
        let stats: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
        assert_eq!(stats, serde_json::json!({"chars": 18, "words": 4, "lines": 2}));
    })
    .await;
}

#[test]
fn unknown_builtin_lists_the_known_ones() {
    let err = runtime::build(&RuntimeConfig::Builtin { name: "summarize".into() }, Duration::from_secs(1)).err().expect("unknown");
    match &err {
        RuntimeError::UnknownBuiltin { name, known } => {
            assert_eq!(name, "summarize");
            assert_eq!(known, &["echo", "sleep", "textstats", "coordinator", "tokens", "approval"]);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("echo, sleep, textstats"), "{err}");
}
