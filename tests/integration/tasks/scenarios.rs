//! Task-lifecycle scenarios; each runs on the embedded log and on Kafka.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use agentlog::agent::dlq;
use agentlog::agent::runtime::build;
use agentlog::agent::worker::run_worker;
use agentlog::events::{AgentState, AnyEvent, Lane, TimestampMicros};
use agentlog::projection::{Projection, ProjectionStore, sources};

use super::fixture::{FirstTransactionHangs, Fixture, ResumesAtStart, scripted};
pub use super::hostile::*;
use crate::harness::Harness;

const WITHIN: Duration = Duration::from_secs(40);

const RETRYING: &str = r#"
runtime = { kind = "builtin", name = "echo" }
concurrency = 4
timeout_ms = 10000
[retry]
max_attempts = 3
initial_backoff_ms = 100
max_backoff_ms = 400
jitter = 0.0
"#;

/// A retryable failure goes through a durable timer (TaskRetryScheduled, then a new attempt
/// fired by the supervisor) and succeeds on the third attempt; a non-retryable kind fails at
/// once, without retries.
pub async fn retry_then_success_and_non_retryable_failure(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("flaky", RETRYING).await;
    let (journal, runtime) = scripted();
    f.start_supervisor(3);
    f.start_worker(&ty, &agent, runtime, "w1");
    let flaky = f.task(&ty, Lane::Normal, r#"{"fail_until": 3}"#);
    let rejected = f.task(&ty, Lane::Normal, r#"{"fail_until": 9, "fail_kind": "rejected"}"#);
    let begun = Instant::now();
    f.submit(&flaky).await;
    f.submit(&rejected).await;
    let outcomes = f.outcomes(&[flaky.task_id.clone(), rejected.task_id.clone()], WITHIN).await;
    match &outcomes[&flaky.task_id] {
        AnyEvent::TaskCompleted(done) => assert_eq!(done.attempt, 3, "completed on the third attempt"),
        other => panic!("expected TaskCompleted, got {other:?}"),
    }
    // Backoffs of 100 and 200 ms lie between the attempts: no retry ran early.
    assert!(begun.elapsed() >= Duration::from_millis(300), "retries waited for their backoff");
    assert_eq!(journal.attempts_of(&flaky.task_id), vec![1, 2, 3]);
    match &outcomes[&rejected.task_id] {
        AnyEvent::TaskFailed(failed) => {
            assert_eq!((failed.attempt, failed.error_kind.as_str(), failed.retryable), (1, "rejected", false));
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    assert_eq!(journal.attempts_of(&rejected.task_id), vec![1], "a non-retryable kind is not retried");
    let events = f.all_events(&f.topics.events(), Duration::from_secs(2)).await;
    let scheduled: Vec<i32> = events
        .iter()
        .filter_map(|e| match e {
            AnyEvent::TaskRetryScheduled(r) if r.task_id == flaky.task_id => Some(r.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(scheduled, vec![1, 2], "each retry was scheduled on task.events");
    f.stop().await;
}

/// A task that keeps failing is dead-lettered after max attempts with its last error, parked
/// on `dlq` as the original command, listed there, and re-submitted with a fresh budget.
pub async fn poison_task_is_dead_lettered_and_can_be_resubmitted(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("poison", RETRYING).await;
    let (journal, runtime) = scripted();
    f.start_supervisor(3);
    f.start_worker(&ty, &agent, runtime, "w1");
    // Fails attempts 1..=3 (all it gets), and would succeed from attempt 4 on.
    let poison = f.task(&ty, Lane::High, r#"{"fail_until": 4}"#);
    f.submit(&poison).await;
    let outcomes = f.outcomes(std::slice::from_ref(&poison.task_id), WITHIN).await;
    match &outcomes[&poison.task_id] {
        AnyEvent::TaskDeadLettered(dead) => {
            assert_eq!(dead.attempts, 3);
            assert!(dead.last_error.contains("scripted failure of attempt 3"), "last error kept: {}", dead.last_error);
        }
        other => panic!("expected TaskDeadLettered, got {other:?}"),
    }
    assert_eq!(journal.attempts_of(&poison.task_id), vec![1, 2, 3]);

    let letters = dlq::list(&f.log, &f.client).await.expect("dlq list");
    let letter = dlq::find(&letters, &poison.meta.tenant, &poison.task_id).expect("the task is on the dlq");
    assert_eq!(letter.attempts, Some(3));
    assert_eq!(letter.error_kind, "transient");
    assert_eq!(letter.task.as_ref().map(|t| t.input.clone()), Some(poison.input.clone()), "the original command is parked");

    // A fresh budget: attempt numbers restart at 1, so with fail_until 4 it is parked again
    // after three more attempts — the re-submission really ran.
    dlq::resubmit(&f.client, letter).await.expect("resubmit");
    let deadline = Instant::now() + WITHIN;
    while journal.attempts_of(&poison.task_id).len() < 6 {
        assert!(Instant::now() < deadline, "re-submitted task did not run: {:?}", journal.attempts_of(&poison.task_id));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(journal.attempts_of(&poison.task_id), vec![1, 2, 3, 1, 2, 3]);
    f.stop().await;
}

/// An attempt past its timeout fails with kind `timeout` and follows the retry policy; a task
/// taken after its deadline ends Expired without running.
pub async fn timeouts_retry_and_expired_tasks_never_run(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f
        .agent_type(
            "slow",
            "runtime = { kind = \"builtin\", name = \"echo\" }\ntimeout_ms = 300\n[retry]\nmax_attempts = 2\ninitial_backoff_ms = 50\njitter = 0.0\n",
        )
        .await;
    let (journal, runtime) = scripted();
    f.start_supervisor(3);
    f.start_worker(&ty, &agent, runtime, "w1");
    let slow = f.task(&ty, Lane::Normal, r#"{"sleep_ms": 5000}"#);
    let mut late = f.task(&ty, Lane::Normal, r#"{}"#);
    late.deadline = Some(TimestampMicros(TimestampMicros::now().0 - 1_000_000));
    f.submit(&slow).await;
    f.submit(&late).await;
    let outcomes = f.outcomes(&[slow.task_id.clone(), late.task_id.clone()], WITHIN).await;
    match &outcomes[&slow.task_id] {
        AnyEvent::TaskDeadLettered(dead) => {
            assert_eq!(dead.attempts, 2);
            assert!(dead.last_error.starts_with("timeout"), "{}", dead.last_error);
        }
        other => panic!("expected TaskDeadLettered after two timeouts, got {other:?}"),
    }
    assert!(matches!(outcomes[&late.task_id], AnyEvent::TaskExpired(_)), "{:?}", outcomes[&late.task_id]);
    assert!(journal.attempts_of(&late.task_id).is_empty(), "an expired task never runs");
    f.stop().await;
}

/// Cancel before start: the task never runs (queued behind a busy worker, or waiting on a
/// timer). Cancel during a run: the agent gets its signal and the task ends Cancelled within
/// 1 s, even for an agent that ignores the signal.
pub async fn cancel_before_and_during_a_run(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("cancellable", "runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 1\nlanes = [\"normal\"]\n").await;
    let (journal, runtime) = scripted();
    f.start_supervisor(3);
    f.start_worker(&ty, &agent, runtime, "w1");

    let running = f.task(&ty, Lane::Normal, r#"{"sleep_ms": 30000}"#);
    let mut queued = f.task(&ty, Lane::Normal, r#"{}"#);
    queued.ordering_key = running.ordering_key.clone();
    let mut delayed = f.task(&ty, Lane::Normal, r#"{}"#);
    delayed.not_before = Some(TimestampMicros(TimestampMicros::now().0 + 20_000_000));
    let stubborn = f.task(&ty, Lane::Normal, r#"{"sleep_ms": 30000, "ignore_cancel": true}"#);
    f.submit(&running).await;
    f.submit(&delayed).await;
    wait_started(&journal, &running.task_id).await;
    f.submit(&queued).await;

    // `queued` waits behind `running` (concurrency 1): cancel it, then the running one.
    f.client.cancel(&queued.task_id, "tenant-a", Some("not needed".into())).await.expect("cancel");
    f.client.cancel(&delayed.task_id, "tenant-a", None).await.expect("cancel");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Timed by the outcome's own timestamp (written by the worker), not by when this test's
    // reader gets to it: the promise is about the task, not about the reader.
    let asked = TimestampMicros::now();
    f.client.cancel(&running.task_id, "tenant-a", None).await.expect("cancel");
    let outcomes = f.outcomes(&[running.task_id.clone(), queued.task_id.clone(), delayed.task_id.clone()], WITHIN).await;
    for id in [&running.task_id, &queued.task_id, &delayed.task_id] {
        assert!(matches!(outcomes[id], AnyEvent::TaskCancelled(_)), "{id}: {:?}", outcomes[id]);
    }
    let cancel_took = cancelled_after(&outcomes[&running.task_id], asked);
    assert!(cancel_took < Duration::from_secs(1), "a running task ended Cancelled {cancel_took:?} after the request");
    assert!(journal.attempts_of(&queued.task_id).is_empty(), "a task cancelled before it started never ran");
    assert!(journal.attempts_of(&delayed.task_id).is_empty(), "a delayed task cancelled on its timer never ran");

    // An agent that ignores the signal is dropped after the grace period.
    f.submit(&stubborn).await;
    wait_started(&journal, &stubborn.task_id).await;
    let asked = TimestampMicros::now();
    f.client.cancel(&stubborn.task_id, "tenant-a", None).await.expect("cancel");
    let outcomes = f.outcomes(std::slice::from_ref(&stubborn.task_id), WITHIN).await;
    let took = cancelled_after(&outcomes[&stubborn.task_id], asked);
    assert!(took < Duration::from_secs(1), "ignored cancel still ended within 1 s: {took:?}");
    f.stop().await;
}

/// Time from `asked` to when the TaskCancelled outcome was written.
fn cancelled_after(outcome: &AnyEvent, asked: TimestampMicros) -> Duration {
    let AnyEvent::TaskCancelled(cancelled) = outcome else { panic!("expected TaskCancelled, got {outcome:?}") };
    Duration::from_micros((cancelled.meta.occurred_at.0 - asked.0).max(0) as u64)
}

async fn wait_started(journal: &super::fixture::Journal, task_id: &str) {
    let deadline = Instant::now() + WITHIN;
    while !journal.started_ids().iter().any(|id| id == task_id) {
        assert!(Instant::now() < deadline, "{task_id} never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A backlog of low tasks, then one high task: the high one starts next.
pub async fn a_high_task_overtakes_a_low_backlog(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("prio", "runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 1\n").await;
    let (journal, runtime) = scripted();
    let mut low = Vec::new();
    for _ in 0..12 {
        let task = f.task(&ty, Lane::Low, r#"{"sleep_ms": 150}"#);
        f.submit(&task).await;
        low.push(task.task_id);
    }
    f.start_worker(&ty, &agent, runtime, "w1");
    let deadline = Instant::now() + WITHIN;
    while journal.started_ids().len() < 2 {
        assert!(Instant::now() < deadline, "the backlog never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let high = f.task(&ty, Lane::High, r#"{}"#);
    f.submit(&high).await;
    let started_before = journal.started_ids().len();
    let mut ids = low.clone();
    ids.push(high.task_id.clone());
    f.outcomes(&ids, WITHIN).await;
    let order = journal.started_ids();
    let position = order.iter().position(|id| *id == high.task_id).expect("high ran");
    // It starts as soon as the one low task running at submission finishes.
    assert!(position <= started_before, "high started at {position}, {started_before} had started when it was submitted: {order:?}");
    assert!(position < order.len() - 1, "high started before the rest of the backlog");
    f.stop().await;
}

/// Tasks sharing an ordering key run one at a time and in submission order, while different
/// keys run concurrently.
pub async fn ordering_keys_hold_under_concurrency(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("ordered", "runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 4\n").await;
    let (journal, runtime) = scripted();
    f.start_worker(&ty, &agent, runtime, "w1");
    let mut by_key: HashMap<String, Vec<String>> = Default::default();
    let mut ids = Vec::new();
    for i in 0..24 {
        let key = format!("k{}", i % 3);
        let mut task = f.task(&ty, Lane::Normal, r#"{"sleep_ms": 20}"#);
        task.ordering_key = Some(key.clone());
        f.submit(&task).await;
        by_key.entry(key).or_default().push(task.task_id.clone());
        ids.push(task.task_id);
    }
    f.outcomes(&ids, WITHIN).await;
    let started = journal.started.lock().unwrap().clone();
    let finished = journal.finished.lock().unwrap().clone();
    let mut overlapping_keys = false;
    for (key, tasks) in &by_key {
        let order: Vec<&String> = started.iter().filter(|(id, _, _)| tasks.contains(id)).map(|(id, _, _)| id).collect();
        assert_eq!(order, tasks.iter().collect::<Vec<_>>(), "key {key} ran in submission order");
        for pair in tasks.windows(2) {
            let end_prev = finished.iter().find(|(id, _, _)| *id == pair[0]).expect("finished").2;
            let start_next = started.iter().find(|(id, _, _)| *id == pair[1]).expect("started").2;
            assert!(start_next >= end_prev, "key {key}: {} started before {} finished", pair[1], pair[0]);
        }
    }
    // Different keys did overlap (the worker really ran concurrently).
    for (i, (id, _, _)) in started.iter().enumerate() {
        let end = finished.iter().find(|(f, _, _)| f == id).expect("finished").2;
        if started.iter().skip(i + 1).any(|(_, _, s)| *s < end) {
            overlapping_keys = true;
        }
    }
    assert!(overlapping_keys, "tasks of different keys ran concurrently");
    f.stop().await;
}

/// The http runtime in a worker: 2xx completes, 4xx fails without retry, 5xx retries and is
/// dead-lettered. The exec runtime: stdout is the output, a non-zero exit fails with stderr.
pub async fn http_and_exec_runtimes_map_failures(h: &mut Harness) {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/agent",
        post(|body: String| async move {
            let status = if body.contains("\"bad\"") {
                axum::http::StatusCode::BAD_REQUEST
            } else if body.contains("\"down\"") {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                axum::http::StatusCode::OK
            };
            (status, r#"{"answer":42}"#)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/agent", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut f = Fixture::new(h).await;
    f.start_supervisor(3);
    let http_toml = format!("runtime = {{ kind = \"http\", url = \"{url}\" }}\n[retry]\nmax_attempts = 2\ninitial_backoff_ms = 50\njitter = 0.0\n");
    let (http_ty, http_agent) = f.agent_type("http", &http_toml).await;
    let runtime = build(&http_agent.runtime, Duration::from_secs(5)).expect("http runtime");
    f.start_worker(&http_ty, &http_agent, runtime, "http-1");
    let exec_toml = "runtime = { kind = \"exec\", program = \"/bin/sh\", args = [\"-c\", \"read line; case \\\"$line\\\" in *fail*) echo boom >&2; exit 3;; *) echo \\\"got $line\\\";; esac\"] }\n";
    let (exec_ty, exec_agent) = f.agent_type("exec", exec_toml).await;
    let runtime = build(&exec_agent.runtime, Duration::from_secs(5)).expect("exec runtime");
    f.start_worker(&exec_ty, &exec_agent, runtime, "exec-1");

    let ok = f.task(&http_ty, Lane::Normal, r#"{"q":"fine"}"#);
    let bad = f.task(&http_ty, Lane::Normal, r#"{"q":"bad"}"#);
    let down = f.task(&http_ty, Lane::Normal, r#"{"q":"down"}"#);
    let exec_ok = f.task(&exec_ty, Lane::Normal, r#"{"q":"hello"}"#);
    let exec_fail = f.task(&exec_ty, Lane::Normal, r#"{"q":"fail"}"#);
    for t in [&ok, &bad, &down, &exec_ok, &exec_fail] {
        f.submit(t).await;
    }
    let ids: Vec<String> = [&ok, &bad, &down, &exec_ok, &exec_fail].iter().map(|t| t.task_id.clone()).collect();
    let outcomes = f.outcomes(&ids, WITHIN).await;
    match &outcomes[&ok.task_id] {
        AnyEvent::TaskCompleted(c) => assert_eq!(c.output, br#"{"answer":42}"#.to_vec()),
        other => panic!("2xx: {other:?}"),
    }
    match &outcomes[&bad.task_id] {
        AnyEvent::TaskFailed(e) => assert_eq!((e.error_kind.as_str(), e.attempt), ("rejected", 1)),
        other => panic!("4xx: {other:?}"),
    }
    match &outcomes[&down.task_id] {
        AnyEvent::TaskDeadLettered(d) => {
            assert_eq!(d.attempts, 2);
            assert!(d.last_error.starts_with("transient"), "{}", d.last_error);
        }
        other => panic!("5xx: {other:?}"),
    }
    match &outcomes[&exec_ok.task_id] {
        AnyEvent::TaskCompleted(c) => assert_eq!(String::from_utf8_lossy(&c.output).trim(), r#"got {"q":"hello"}"#),
        other => panic!("exec ok: {other:?}"),
    }
    match &outcomes[&exec_fail.task_id] {
        AnyEvent::TaskFailed(e) => {
            assert_eq!(e.error_kind, "exit");
            assert!(e.message.contains("boom"), "stderr's tail is in the error: {}", e.message);
        }
        other => panic!("exec failure: {other:?}"),
    }
    f.stop().await;
    server.abort();
}

/// SIGTERM drain: the worker stops taking work, finishes what runs, commits and leaves; a
/// second worker runs the rest. Every task has exactly one outcome: nothing lost, nothing run
/// twice. The worker's lifecycle is on `agent.events`.
pub async fn a_drain_loses_nothing_and_runs_nothing_twice(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("drained", "runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 3\n").await;
    let (journal, runtime) = scripted();
    let mut ids = Vec::new();
    for _ in 0..30 {
        let task = f.task(&ty, Lane::Normal, r#"{"sleep_ms": 100}"#);
        f.submit(&task).await;
        ids.push(task.task_id);
    }
    f.start_worker(&ty, &agent, runtime.clone(), "first");
    let deadline = Instant::now() + WITHIN;
    while journal.started_ids().len() < 5 {
        assert!(Instant::now() < deadline, "work never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = f.drain_worker(0).await;
    assert_eq!(first.abandoned, 0, "the drain finished what was running");
    assert!(first.completed >= 5 && first.completed < 30, "drained mid-way: {first:?}");
    f.start_worker(&ty, &agent, runtime, "second");
    let outcomes = f.outcomes(&ids, WITHIN).await;
    assert!(outcomes.values().all(|e| matches!(e, AnyEvent::TaskCompleted(_))));
    let second = f.drain_worker(0).await;
    assert_eq!(first.completed + second.completed, 30, "every task ran exactly once: {first:?} {second:?}");
    let mut runs = journal.started_ids();
    runs.sort();
    runs.dedup();
    assert_eq!(runs.len(), journal.started_ids().len(), "no task ran twice");

    let lifecycle: Vec<String> = f
        .all_events(&f.topics.agent_events(), Duration::from_secs(2))
        .await
        .into_iter()
        .filter_map(|e| match e {
            AnyEvent::AgentRegistered(r) if r.agent_id == "first" => Some("registered".to_string()),
            AnyEvent::AgentStateChanged(c) if c.agent_id == "first" => Some(format!("{:?}", c.to_state)),
            AnyEvent::AgentDeregistered(d) if d.agent_id == "first" => Some("deregistered".to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(lifecycle, ["registered", "Running", "Draining", "Stopped", "deregistered"]);
    f.stop().await;
}

/// Heartbeats carry load; a worker that dies without deregistering is declared AgentLost by
/// the supervisor after the missed heartbeats, one that drains is not.
pub async fn a_silent_agent_is_declared_lost(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("mortal", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    let (_, runtime) = scripted();
    // Four missed heartbeats of 200 ms: short for the test, long enough that a busy 2-core
    // machine does not make a live agent look dead.
    f.start_supervisor(4);
    f.start_worker(&ty, &agent, runtime.clone(), "doomed");
    f.start_worker(&ty, &agent, runtime, "orderly");
    tokio::time::sleep(f.heartbeat * 4).await;
    f.abort_worker(0);
    let killed = Instant::now();
    let mut stream = f.reader(&f.topics.agent_events()).await;
    let lost = loop {
        match stream.next(Duration::from_secs(10)).await {
            Some(AnyEvent::AgentLost(lost)) => break lost,
            Some(_) => {}
            None => panic!("no AgentLost within 10 s of the kill"),
        }
    };
    assert_eq!(lost.agent_id, "doomed");
    assert!(lost.missed_heartbeats >= 4, "{lost:?}");
    let detect = killed.elapsed();
    // 4 missed heartbeats of 200 ms, checked every 100 ms: well under 2 s.
    assert!(detect < Duration::from_secs(2), "lost after {detect:?}");
    let beats = f.all_events(&f.topics.heartbeats(), Duration::from_secs(3)).await;
    let orderly: Vec<_> =
        beats.iter().filter_map(|e| if let AnyEvent::AgentHeartbeat(b) = e { (b.agent_id == "orderly").then_some(b) } else { None }).collect();
    assert!(orderly.len() >= 3, "heartbeats every interval");
    assert!(orderly.windows(2).all(|w| w[1].sequence == w[0].sequence + 1), "heartbeat sequence has no gaps");
    assert!(orderly.iter().all(|b| b.capacity == 4 && b.memory_bytes > 0));
    f.drain_worker(0).await;
    tokio::time::sleep(f.heartbeat * 6).await;
    let states = f.all_events(&f.topics.agent_events(), Duration::from_secs(3)).await;
    assert!(!states.iter().any(|e| matches!(e, AnyEvent::AgentLost(l) if l.agent_id == "orderly")), "a drained agent is not lost");
    assert!(states.iter().any(|e| matches!(e, AnyEvent::AgentStateChanged(c) if c.agent_id == "orderly" && c.to_state == AgentState::Stopped)));
    f.stop().await;
}

/// A delayed task waits on a durable timer and starts no earlier than its not_before; a job's
/// tasks complete and the supervisor appends JobCompleted with the counts.
pub async fn delayed_tasks_and_jobs(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("later", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    let (journal, runtime) = scripted();
    f.start_supervisor(3);
    f.start_worker(&ty, &agent, runtime, "w1");
    let mut delayed = f.task(&ty, Lane::Normal, r#"{}"#);
    let due = TimestampMicros(TimestampMicros::now().0 + 1_500_000);
    delayed.not_before = Some(due);
    let submitted = f.client.submit(&delayed).await.expect("submit");
    assert!(submitted.delayed && submitted.topic == f.topics.timers());
    let job_tasks =
        vec![f.task(&ty, Lane::Normal, r#"{}"#), f.task(&ty, Lane::High, r#"{}"#), f.task(&ty, Lane::Normal, r#"{"fail_until": 9, "fail_kind": "rejected"}"#)];
    let job_ids: Vec<String> = job_tasks.iter().map(|t| t.task_id.clone()).collect();
    f.client.submit_job("job-1", "tenant-a", job_tasks).await.expect("job");
    let outcomes = f.outcomes(&[delayed.task_id.clone()], WITHIN).await;
    assert!(matches!(outcomes[&delayed.task_id], AnyEvent::TaskCompleted(_)));
    assert_eq!(journal.attempts_of(&delayed.task_id), vec![1]);
    let events = f.all_events(&f.topics.events(), Duration::from_secs(3)).await;
    let started_at = events
        .iter()
        .find_map(|e| if let AnyEvent::TaskStarted(s) = e { (s.task_id == delayed.task_id).then_some(s.meta.occurred_at) } else { None })
        .expect("TaskStarted");
    assert!(started_at >= due, "started {} µs before its not_before", due.0 - started_at.0);

    f.outcomes(&job_ids, WITHIN).await;
    let mut stream = f.reader(&f.topics.events()).await;
    let completed = loop {
        match stream.next(Duration::from_secs(10)).await {
            Some(AnyEvent::JobCompleted(j)) => break j,
            Some(_) => {}
            None => panic!("no JobCompleted"),
        }
    };
    assert_eq!((completed.job_id.as_str(), completed.completed, completed.failed), ("job-1", 2, 1));
    f.stop().await;
}

/// A schema registry that cannot be reached while the supervisor reads a timer, and still
/// past the timer's due time, delays the task but never dead-letters it: it runs, once, when
/// the registry is back. Before, a timer was decoded again when it fell due and an
/// unreachable registry moved it to the dead-letter topic, so the task never ran. A second
/// timer, read while the registry is up, falls due during an outage: firing waits it out.
pub async fn a_registry_outage_never_dead_letters_a_timer(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("outage", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    let (journal, runtime) = scripted();
    f.start_worker(&ty, &agent, runtime, "w1");
    // The supervisor reaches the registry through a switch, down from the start; the client
    // and the worker use it directly.
    let switch = f.registry_switch(false).await;
    let mut delayed = f.task(&ty, Lane::Normal, "{}");
    delayed.not_before = Some(TimestampMicros(TimestampMicros::now().0 + 1_000_000));
    f.submit(&delayed).await;
    f.start_supervisor_with(3, switch.codec());
    // Well past the due time, registry still away.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(dead_letters(&f).await, 0, "a registry outage dead-lettered the timer");
    assert!(journal.attempts_of(&delayed.task_id).is_empty(), "the task ran without its command decoded");
    switch.set_up(true);
    let outcomes = f.outcomes(&[delayed.task_id.clone()], WITHIN).await;
    assert!(matches!(outcomes[&delayed.task_id], AnyEvent::TaskCompleted(_)), "{:?}", outcomes[&delayed.task_id]);
    assert_eq!(journal.attempts_of(&delayed.task_id), vec![1]);

    // Read while the registry is up, due while it is down: on a lane the supervisor has not
    // written to yet, so firing must ask the registry.
    let mut later = f.task(&ty, Lane::High, "{}");
    later.not_before = Some(TimestampMicros(TimestampMicros::now().0 + 2_000_000));
    f.submit(&later).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    switch.set_up(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(journal.attempts_of(&later.task_id).is_empty(), "fired without the registry");
    switch.set_up(true);
    let outcomes = f.outcomes(&[later.task_id.clone()], WITHIN).await;
    assert!(matches!(outcomes[&later.task_id], AnyEvent::TaskCompleted(_)), "{:?}", outcomes[&later.task_id]);
    assert_eq!(journal.attempts_of(&later.task_id), vec![1]);
    assert_eq!(dead_letters(&f).await, 0, "nothing was dead-lettered");
    f.stop().await;
}

/// A schema registry the projector cannot reach holds the projection back (issue 14, item 3:
/// an outage means wait and retry everywhere): a task whose records it cannot decode yet
/// appears once the registry is back, and meanwhile `trouble` (what `/readyz` shows) names
/// the registry. Before, the projector skipped such records and stored its offsets past
/// them: the task never appeared.
pub async fn a_registry_outage_holds_the_projection_back(h: &mut Harness) {
    let f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("projected", "runtime = { kind = \"builtin\", name = \"echo\" }\n").await;
    // The client registers and writes directly; the projector reads through the switch.
    let switch = f.registry_switch(false).await;
    let task = f.task(&ty, Lane::Normal, "{}");
    f.submit(&task).await;
    let mut agents = BTreeMap::new();
    agents.insert(ty.clone(), agent);
    let dir = tempfile::tempdir().expect("projection dir");
    let projection = Projection::new(ProjectionStore::open(dir.path()).expect("projection store"), sources(&f.topics, &agents)).expect("projection");
    let stop = CancellationToken::new();
    let projector = tokio::spawn(agentlog::projection::run(f.log.clone(), switch.codec(), projection.clone(), stop.clone()));
    let tenant = task.meta.tenant.clone();
    let shown = || projection.store().task(&tenant, &task.task_id).expect("store read").is_some();

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!shown(), "projected without its writer schema");
    let trouble = projection.trouble().unwrap_or_default();
    assert!(trouble.contains("registry"), "the projection says what it waits for: {trouble:?}");

    switch.set_up(true);
    let deadline = Instant::now() + WITHIN;
    while !shown() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shown(), "the task appears once the registry is back");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), projector).await;
    f.stop().await;
}

/// A cancel the worker reads while its registry is away is applied once the registry is
/// back (issue 14, item 3): the running task ends cancelled. Before, the worker skipped the
/// cancel it could not decode and the task ran to completion.
pub async fn a_registry_outage_never_loses_a_cancel(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("cancel-outage", "runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 1\nlanes = [\"normal\"]\n").await;
    let (journal, runtime) = scripted();
    let switch = f.registry_switch(true).await;
    f.start_worker_via(switch.codec(), &ty, &agent, runtime, "w1");
    // One task through first: the worker knows the command and outcome schemas, not yet
    // the cancel request's.
    let warm = f.task(&ty, Lane::Normal, "{}");
    f.submit(&warm).await;
    let outcomes = f.outcomes(std::slice::from_ref(&warm.task_id), WITHIN).await;
    assert!(matches!(outcomes[&warm.task_id], AnyEvent::TaskCompleted(_)), "{:?}", outcomes[&warm.task_id]);

    let running = f.task(&ty, Lane::Normal, r#"{"sleep_ms": 30000}"#);
    f.submit(&running).await;
    wait_started(&journal, &running.task_id).await;
    switch.set_up(false);
    f.client.cancel(&running.task_id, "tenant-a", None).await.expect("cancel");
    tokio::time::sleep(Duration::from_secs(2)).await;
    switch.set_up(true);
    let outcomes = f.outcomes(std::slice::from_ref(&running.task_id), WITHIN).await;
    assert!(matches!(outcomes[&running.task_id], AnyEvent::TaskCancelled(_)), "the cancel was lost: {:?}", outcomes[&running.task_id]);
    f.stop().await;
}

async fn dead_letters(f: &Fixture) -> usize {
    f.all_events(&f.topics.dlq(), Duration::from_millis(500)).await.len()
}

/// With exactly_once, outcomes and offset commits are one transaction: every task has exactly
/// one outcome on task.results (read_committed), retries included.
pub async fn exactly_once_outcomes(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let toml_text = RETRYING.replace("[retry]", "exactly_once = true\n[retry]");
    let (ty, agent) = f.agent_type("once", &toml_text).await;
    assert!(agent.exactly_once);
    let (_, runtime) = scripted();
    f.start_supervisor(3);
    f.start_worker(&ty, &agent, runtime, "w1");
    let mut ids = Vec::new();
    for i in 0..30 {
        let input = if i % 10 == 0 { r#"{"fail_until": 2, "sleep_ms": 5}"# } else { r#"{"sleep_ms": 5}"# };
        let task = f.task(&ty, Lane::Normal, input);
        f.submit(&task).await;
        ids.push(task.task_id);
    }
    let outcomes = f.outcomes(&ids, WITHIN).await;
    assert!(outcomes.values().all(|e| matches!(e, AnyEvent::TaskCompleted(_))));
    let all = f.all_events(&f.topics.results(), Duration::from_secs(2)).await;
    assert_eq!(all.len(), 30, "exactly one outcome per task on task.results");
    let reports = f.stop().await;
    assert_eq!(reports[0].completed, 30);
    assert_eq!(reports[0].retried, 3);
}

/// A transaction that never ends (a commit stuck while a broker was killed) is abandoned at
/// the worker's transaction deadline: the worker leaves the group, rejoins and runs the
/// tasks again, and each still has exactly one outcome. Before, the worker waited forever
/// without reading, holding its partitions.
pub async fn exactly_once_abandons_a_stuck_transaction(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let toml_text = "runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 4\ntimeout_ms = 10000\nexactly_once = true\n";
    let (ty, agent) = f.agent_type("stuck", toml_text).await;
    let (_, runtime) = scripted();
    let hanging: std::sync::Arc<dyn agentlog::log::EventLog> = std::sync::Arc::new(FirstTransactionHangs(f.log.clone()));
    let codec = f.codec.clone();
    f.start_worker_on(hanging, codec, &ty, &agent, runtime, "stuck-1", Duration::from_secs(2));
    let mut ids = Vec::new();
    for _ in 0..5 {
        let task = f.task(&ty, Lane::Normal, r#"{"sleep_ms": 1}"#);
        f.submit(&task).await;
        ids.push(task.task_id);
    }
    let outcomes = f.outcomes(&ids, WITHIN).await;
    assert!(outcomes.values().all(|e| matches!(e, AnyEvent::TaskCompleted(_))), "{outcomes:?}");
    // Drained, so no transaction is left open and read-committed reading sees everything.
    f.drain_worker(0).await;
    let mut per_task: HashMap<String, usize> = HashMap::new();
    for event in f.all_events(&f.topics.results(), Duration::from_secs(2)).await {
        if let AnyEvent::TaskCompleted(done) = event {
            *per_task.entry(done.task_id).or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(per_task.get(id), Some(&1), "exactly one committed outcome for {id}: {per_task:?}");
    }
    f.stop().await;
}

/// Exactly-once while partitions move: a worker whose tasks finish out of order holds
/// ("stashes") outcomes until their offsets are contiguous; two more workers join mid-run, so
/// partitions move away from workers holding such outcomes. Every task still has exactly one
/// outcome on `task.results` (read committed), whoever ran it and however often.
pub async fn exactly_once_survives_partitions_moving(h: &mut Harness) {
    const TASKS: u64 = 150;
    let mut f = Fixture::new(h).await;
    let toml_text = "runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 8\ntimeout_ms = 10000\nexactly_once = true\n";
    let (ty, agent) = f.agent_type("moving", toml_text).await;
    let (journal, runtime) = scripted();
    let mut ids = Vec::new();
    for i in 0..TASKS {
        // Every third task is slow, so the tasks after it on its partition finish first and
        // their outcomes wait in the stash.
        let sleep_ms = if i % 3 == 0 { 120 } else { 5 };
        let task = f.task(&ty, Lane::Normal, &format!(r#"{{"sleep_ms": {sleep_ms}}}"#));
        f.submit(&task).await;
        ids.push(task.task_id);
    }
    f.start_worker(&ty, &agent, runtime.clone(), "mover-1");
    for (joiner, after) in [("mover-2", 20), ("mover-3", 60), ("mover-4", 100)] {
        let deadline = Instant::now() + WITHIN;
        while journal.started_ids().len() < after {
            assert!(Instant::now() < deadline, "only {} of {after} tasks started", journal.started_ids().len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        f.start_worker(&ty, &agent, runtime.clone(), joiner);
    }
    let outcomes = f.outcomes(&ids, WITHIN).await;
    assert!(outcomes.values().all(|e| matches!(e, AnyEvent::TaskCompleted(_))), "{outcomes:?}");
    // Drained, so no transaction is left open and read-committed reading sees everything.
    let mut completed = 0;
    for _ in 0..4 {
        completed += f.drain_worker(0).await.completed;
    }
    assert!(completed >= TASKS, "every task completed at least once (re-runs after a move are fine): {completed}");
    let mut per_task: HashMap<String, usize> = HashMap::new();
    for event in f.all_events(&f.topics.results(), Duration::from_secs(2)).await {
        if let AnyEvent::TaskCompleted(done) = event {
            *per_task.entry(done.task_id).or_default() += 1;
        }
    }
    let twice: Vec<_> = per_task.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks with more than one committed outcome: {twice:?}");
    assert_eq!(per_task.len(), TASKS as usize, "one committed outcome for each task");
    f.stop().await;
}

/// Exactly-once never takes committed work again, even where the client resumes a newly
/// assigned partition at its start (as librdkafka once did while the previous owner's
/// transaction, holding the group's offsets, was still open: 193 tasks of a fault-suite run
/// got two outcomes) and the group's committed offsets cannot be looked up at first: the
/// worker reads such a partition only once it knows them.
pub async fn exactly_once_never_reruns_committed_work(h: &mut Harness) {
    const DONE: usize = 30;
    const LATER: usize = 10;
    let mut f = Fixture::new(h).await;
    let toml_text = "runtime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 4\ntimeout_ms = 10000\nexactly_once = true\n";
    let (ty, agent) = f.agent_type("floor", toml_text).await;
    let (journal, runtime) = scripted();
    f.start_worker(&ty, &agent, runtime.clone(), "first");
    let mut done = Vec::new();
    for _ in 0..DONE {
        let task = f.task(&ty, Lane::Normal, r#"{"sleep_ms": 1}"#);
        f.submit(&task).await;
        done.push(task.task_id);
    }
    f.outcomes(&done, WITHIN).await;
    // Drained: its outcomes and offsets are committed.
    f.drain_worker(0).await;

    let mut later = Vec::new();
    for _ in 0..LATER {
        let task = f.task(&ty, Lane::Normal, r#"{"sleep_ms": 1}"#);
        f.submit(&task).await;
        later.push(task.task_id);
    }
    let (forgetful, counts) = ResumesAtStart::wrap(f.log.clone(), 3);
    let codec = f.codec.clone();
    f.start_worker_on(forgetful, codec, &ty, &agent, runtime, "second", agentlog::agent::worker::TRANSACTION_DEADLINE);
    let outcomes = f.outcomes(&later, WITHIN).await;
    assert!(outcomes.values().all(|e| matches!(e, AnyEvent::TaskCompleted(_))), "{outcomes:?}");
    f.drain_worker(0).await;

    assert!(counts.rewound.load(Ordering::SeqCst) > 0, "the second worker's partitions were sent back to their start");
    assert_eq!(counts.failed.load(Ordering::SeqCst), 3, "its first committed-offset lookups failed");
    let ran_again: Vec<&String> = done.iter().filter(|id| journal.attempts_of(id).len() != 1).collect();
    assert!(ran_again.is_empty(), "tasks committed by the first worker ran again: {ran_again:?}");
    let mut per_task: HashMap<String, usize> = HashMap::new();
    for event in f.all_events(&f.topics.results(), Duration::from_secs(2)).await {
        if let AnyEvent::TaskCompleted(done) = event {
            *per_task.entry(done.task_id).or_default() += 1;
        }
    }
    for id in done.iter().chain(&later) {
        assert_eq!(per_task.get(id), Some(&1), "exactly one committed outcome for {id}");
    }
    f.stop().await;
}

/// With exactly_once, a dead letter is written inside the worker's transaction, so on Kafka
/// the dead-letter partition ends with the transaction's commit marker, an offset no reader
/// is ever handed. Listing the dead letters must still end, with the letter, and the letter
/// must re-submit; the listing read until it saw a record at the high watermark − 1 and
/// failed after 30 s of waiting for one.
pub async fn exactly_once_dead_letters_are_listed_and_resubmitted(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let toml_text = RETRYING.replace("[retry]", "exactly_once = true\n[retry]");
    let (ty, agent) = f.agent_type("parked", &toml_text).await;
    let (journal, runtime) = scripted();
    f.start_supervisor(3);
    f.start_worker(&ty, &agent, runtime, "w1");
    let poison = f.task(&ty, Lane::Normal, r#"{"fail_until": 4}"#);
    f.submit(&poison).await;
    let outcomes = f.outcomes(std::slice::from_ref(&poison.task_id), WITHIN).await;
    assert!(matches!(outcomes[&poison.task_id], AnyEvent::TaskDeadLettered(_)), "{outcomes:?}");

    // Well inside the listing's own 30 s wait: the letter is there as soon as it is committed.
    let letters = tokio::time::timeout(Duration::from_secs(15), dlq::list(&f.log, &f.client)).await.expect("the dead-letter listing ends").expect("dlq list");
    let letter = dlq::find(&letters, &poison.meta.tenant, &poison.task_id).expect("the task is on the dlq");
    assert_eq!(letter.attempts, Some(3));
    dlq::resubmit(&f.client, letter).await.expect("resubmit");
    let deadline = Instant::now() + WITHIN;
    while journal.attempts_of(&poison.task_id).len() < 6 {
        assert!(Instant::now() < deadline, "re-submitted task did not run: {:?}", journal.attempts_of(&poison.task_id));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Parked twice now: the second listing ends too, with both letters.
    let letters = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let letters = dlq::list(&f.log, &f.client).await.expect("dlq list");
            if letters.iter().filter(|l| l.task.as_ref().is_some_and(|t| t.task_id == poison.task_id)).count() == 2 {
                return letters;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("both dead letters are listed");
    assert!(letters.len() >= 2);
    f.stop().await;
}

/// Delegation: the coordinator agent fans out to echo, textstats and sleep through its
/// delegate and aggregates their outcomes; the children carry the parent's id.
pub async fn a_coordinator_delegates_and_aggregates(h: &mut Harness) {
    let mut f = Fixture::new(h).await;
    let mut types = Vec::new();
    for (name, extra) in [("coordinator", "delegates = true\n"), ("echo", ""), ("textstats", ""), ("sleep", "")] {
        let (ty, agent) = f.agent_type_named(name, &format!("runtime = {{ kind = \"builtin\", name = \"{name}\" }}\n{extra}")).await;
        types.push((ty, agent));
    }
    for (ty, agent) in &types {
        let runtime = build(&agent.runtime, Duration::from_secs(10)).expect("builtin");
        f.start_worker(ty, agent, runtime, &format!("{ty}-1"));
    }
    let parent = f.task("coordinator", Lane::High, r#"{"text": "hello big world", "sleep_ms": 50}"#);
    f.submit(&parent).await;
    let outcomes = f.outcomes(std::slice::from_ref(&parent.task_id), WITHIN).await;
    let AnyEvent::TaskCompleted(done) = &outcomes[&parent.task_id] else { panic!("coordinator: {:?}", outcomes[&parent.task_id]) };
    let answer: serde_json::Value = serde_json::from_slice(&done.output).expect("json");
    assert_eq!(answer["textstats"], serde_json::json!({"chars": 15, "words": 3, "lines": 1}));
    assert_eq!(answer["echo"], serde_json::json!({"text": "hello big world"}));
    assert_eq!(answer["sleep"], serde_json::json!({"slept_ms": 50}));
    let children: Vec<String> = (0..3).map(|n| format!("{}.{n}", parent.task_id)).collect();
    assert_eq!(answer["children"], serde_json::json!(children));
    let child_outcomes = f.outcomes(&children, WITHIN).await;
    assert!(child_outcomes.values().all(|e| matches!(e, AnyEvent::TaskCompleted(_))));
    let stream = f.all_events(&f.topics.lane("echo", Lane::High), Duration::from_secs(3)).await;
    assert!(
        stream.iter().any(|e| matches!(e, AnyEvent::TaskSubmitted(t) if t.parent_task_id.as_deref() == Some(parent.task_id.as_str()))),
        "the child command names its parent"
    );
    // Progress is what an attempt streams: on `task.stream`, beside its chunks.
    let events = f.all_events(&f.topics.stream(), Duration::from_secs(3)).await;
    let sleep_child = format!("{}.2", parent.task_id);
    let progress: Vec<_> =
        events.iter().filter_map(|e| if let AnyEvent::TaskProgress(p) = e { (p.task_id == sleep_child).then_some(p) } else { None }).collect();
    assert_eq!(progress.len(), 1, "the sleep agent reported progress once");
    assert_eq!((progress[0].percent, progress[0].attempt), (Some(50.0), 1));
    f.stop().await;
}

/// A worker that fails to start after its background readers are running stops them. An
/// exactly-once worker whose transactional producer could not be created returned its error
/// with the control-topic reader still running, for the life of the process.
pub async fn a_worker_that_fails_to_start_stops_its_readers(h: &mut Harness) {
    let f = Fixture::new(h).await;
    let (ty, agent) = f.agent_type("refused", "runtime = { kind = \"builtin\", name = \"echo\" }\nexactly_once = true\n").await;
    let (refusing, counts) = ResumesAtStart::wrap(f.log.clone(), 0);
    counts.refuse_transactions.store(true, Ordering::SeqCst);
    let runtime = build(&agent.runtime, Duration::from_secs(5)).expect("echo");
    let settings = f.worker_settings(&ty, &agent, "refused-1", agentlog::agent::worker::TRANSACTION_DEADLINE);
    let started = tokio::time::timeout(WITHIN, run_worker(refusing, f.codec.clone(), runtime, settings, CancellationToken::new())).await;
    assert!(matches!(started, Ok(Err(_))), "the worker fails to start: {:?}", started.map(|r| r.map(|_| "a report")));
    let deadline = Instant::now() + Duration::from_secs(5);
    while counts.live_consumers.load(Ordering::SeqCst) > 0 {
        assert!(Instant::now() < deadline, "{} reader(s) still open after the worker failed", counts.live_consumers.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.stop().await;
}
