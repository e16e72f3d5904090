//! The projection is a function of the set of events, not of how records of different
//! partitions interleave or how they are cut into batches, and applying an event again
//! changes nothing. Events are built by hand and applied with `Changes` into a store in a
//! temporary directory; `ProjectionStore::dump` is the state compared.

use std::collections::HashMap;

use agentlog::agent::dlq;
use agentlog::events::{
    AgentDeregistered, AgentHeartbeat, AgentLost, AgentRegistered, AgentState, AgentStateChanged, AnyEvent, JobCompleted, JobSubmitted, Lane, Meta,
    SignalDelivery, TaskCancelRequested, TaskCancelled, TaskCompleted, TaskDeadLettered, TaskExpired, TaskFailed, TaskProgress, TaskRetryScheduled,
    TaskSignalled, TaskStarted, TaskSubmitted, TaskSuspended, TimestampMicros, Usage,
};
use agentlog::log::ConsumedRecord;
use agentlog::projection::apply::{Changes, WrittenTasks};
use agentlog::projection::measure::Measure;
use agentlog::projection::{ProjectionStore, Source, TaskFilter};

const TENANT: &str = "acme";
const TYPE: &str = "echo";
/// 2023-11-14, in µs: every event time is this plus a few ms.
const T0: i64 = 1_700_000_000_000_000;

type Ev = (Source, AnyEvent);

fn meta(event_id: &str, at: i64) -> Meta {
    let mut meta = Meta::new(event_id, TENANT, "test");
    meta.occurred_at = TimestampMicros(at);
    meta
}

fn submitted(event_id: &str, task_id: &str, attempt: i32, at: i64) -> TaskSubmitted {
    let mut e = TaskSubmitted::new(meta(event_id, at), task_id, TYPE, Lane::Normal, br#"{"q":1}"#.to_vec());
    e.attempt = attempt;
    e.max_attempts = 3;
    e.job_id = Some("job-1".into());
    e.labels.insert("team".into(), "search".into());
    e
}

fn started(event_id: &str, task_id: &str, attempt: i32, agent_id: &str, at: i64) -> AnyEvent {
    AnyEvent::TaskStarted(TaskStarted { meta: meta(event_id, at), task_id: task_id.into(), agent_id: agent_id.into(), attempt })
}

fn progress(event_id: &str, task_id: &str, attempt: i32, percent: f32, at: i64) -> AnyEvent {
    AnyEvent::TaskProgress(TaskProgress {
        meta: meta(event_id, at),
        task_id: task_id.into(),
        attempt,
        percent: Some(percent),
        message: Some(format!("{percent}%")),
        detail: None,
    })
}

fn retry(event_id: &str, task_id: &str, attempt: i32, at: i64) -> AnyEvent {
    AnyEvent::TaskRetryScheduled(TaskRetryScheduled {
        meta: meta(event_id, at),
        task_id: task_id.into(),
        attempt,
        next_attempt_at: TimestampMicros(at + 100_000),
        backoff_ms: 100,
        last_error: "transient: flaky".into(),
    })
}

fn completed(event_id: &str, task_id: &str, attempt: i32, at: i64) -> AnyEvent {
    AnyEvent::TaskCompleted(TaskCompleted {
        meta: meta(event_id, at),
        task_id: task_id.into(),
        attempt,
        output: br#"{"answer":42}"#.to_vec(),
        content_type: "application/json".into(),
        duration_ms: 120,
        usage: None,
    })
}

fn failed(event_id: &str, task_id: &str, attempt: i32, at: i64) -> AnyEvent {
    AnyEvent::TaskFailed(TaskFailed {
        meta: meta(event_id, at),
        task_id: task_id.into(),
        attempt,
        error_kind: "fatal".into(),
        message: "no".into(),
        retryable: false,
    })
}

fn dead_lettered(event_id: &str, task_id: &str, attempts: i32, at: i64) -> AnyEvent {
    AnyEvent::TaskDeadLettered(TaskDeadLettered {
        meta: meta(event_id, at),
        task_id: task_id.into(),
        attempts,
        last_error: "transient: flaky".into(),
        reason: "max_attempts".into(),
        original_command: Vec::new(),
    })
}

fn cancelled(event_id: &str, task_id: &str, at: i64) -> AnyEvent {
    AnyEvent::TaskCancelled(TaskCancelled { meta: meta(event_id, at), task_id: task_id.into(), reason: Some("stop".into()) })
}

fn expired(event_id: &str, task_id: &str, at: i64) -> AnyEvent {
    AnyEvent::TaskExpired(TaskExpired { meta: meta(event_id, at), task_id: task_id.into(), deadline: TimestampMicros(at - 1) })
}

fn cancel_requested(event_id: &str, task_id: &str, at: i64) -> AnyEvent {
    AnyEvent::TaskCancelRequested(TaskCancelRequested {
        meta: meta(event_id, at),
        task_id: task_id.into(),
        reason: Some("stop".into()),
        requested_by: Some("api".into()),
    })
}

/// Applies `batches`, each as one `Changes`/WriteBatch, into `store`.
fn apply(store: &ProjectionStore, batches: &[Vec<Ev>]) {
    for (i, batch) in batches.iter().enumerate() {
        let mut changes = Changes::new(store);
        for (offset, (source, event)) in batch.iter().enumerate() {
            changes.consumed("source", 0, (i * 10_000 + offset) as i64);
            changes.apply(*source, event.clone()).expect("apply");
        }
        let (write, _) = changes.finish().expect("finish");
        store.write(write).expect("write");
    }
}

fn dump(store: &ProjectionStore) -> String {
    let mut out = Vec::new();
    store.dump(&mut out).expect("dump");
    String::from_utf8(out).expect("dump is text")
}

/// A fresh store in a temporary directory (kept alive with it).
fn fresh() -> (tempfile::TempDir, ProjectionStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ProjectionStore::open(&dir.path().join("p")).expect("open store");
    (dir, store)
}

/// The dump after applying `events` cut into batches of `batch` (0: one batch).
fn project(events: &[Ev], batch: usize) -> String {
    let (_dir, store) = fresh();
    let batches: Vec<Vec<Ev>> = if batch == 0 { vec![events.to_vec()] } else { events.chunks(batch).map(<[Ev]>::to_vec).collect() };
    apply(&store, &batches);
    dump(&store)
}

/// Every merge of `streams` that keeps each stream's order (each stream is one partition).
fn interleavings(streams: &[Vec<Ev>]) -> Vec<Vec<Ev>> {
    fn go(streams: &[Vec<Ev>], at: &mut Vec<usize>, current: &mut Vec<Ev>, out: &mut Vec<Vec<Ev>>) {
        let mut done = true;
        for s in 0..streams.len() {
            if at[s] < streams[s].len() {
                done = false;
                current.push(streams[s][at[s]].clone());
                at[s] += 1;
                go(streams, at, current, out);
                at[s] -= 1;
                current.pop();
            }
        }
        if done {
            out.push(current.clone());
        }
    }
    let mut out = Vec::new();
    go(streams, &mut vec![0; streams.len()], &mut Vec::new(), &mut out);
    out
}

/// A small deterministic generator (tests must not depend on luck).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % below.max(1)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.next(i + 1));
        }
    }
}

/// The sampled trace a lifecycle's task is recorded in, an unsampled one (never kept), and
/// another sampled one (tracing turned on between attempts: the smaller id is kept).
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const UNSAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
const LATER_TRACE: &str = "00-fbf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traced(mut event: AnyEvent, parent: &str) -> AnyEvent {
    let meta = match &mut event {
        AnyEvent::TaskSubmitted(e) => &mut e.meta,
        AnyEvent::TaskStarted(e) => &mut e.meta,
        AnyEvent::TaskRetryScheduled(e) => &mut e.meta,
        AnyEvent::TaskCompleted(e) => &mut e.meta,
        _ => return event,
    };
    meta.trace_parent = Some(parent.to_string());
    event
}

/// One task's whole life, per partition: attempt 1 fails and is retried through `timers`,
/// attempt 2 completes. The submit's trace is unsampled; its first attempt was sampled (a
/// task without context is, by its id) and its events carry that trace on.
fn lifecycle(task: &str) -> Vec<Vec<Ev>> {
    let sampled = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let first = traced(AnyEvent::TaskSubmitted(submitted(&format!("{task}-s1"), task, 1, T0)), UNSAMPLED);
    let mut second = submitted(&format!("{task}-s2"), task, 2, T0 + 3_001);
    second.not_before = Some(TimestampMicros(T0 + 103_001));
    let second = traced(AnyEvent::TaskSubmitted(second), &sampled);
    let lane = vec![(Source::Lane, first), (Source::Lane, second.clone())];
    let timers = vec![(Source::Timers, second)];
    let events = vec![
        (Source::Other, traced(started(&format!("{task}-st1"), task, 1, "worker-a", T0 + 1_000), &sampled)),
        (Source::Other, progress(&format!("{task}-p1"), task, 1, 50.0, T0 + 2_000)),
        (Source::Other, traced(retry(&format!("{task}-r1"), task, 1, T0 + 3_000), &sampled)),
        (Source::Other, traced(started(&format!("{task}-st2"), task, 2, "worker-b", T0 + 500_000), LATER_TRACE)),
    ];
    let results = vec![(Source::Other, traced(completed(&format!("{task}-c2"), task, 2, T0 + 600_000), &sampled))];
    vec![lane, timers, events, results]
}

fn natural(streams: &[Vec<Ev>]) -> Vec<Ev> {
    // The order things happen in: by time, lane before timers at equal times.
    let mut all: Vec<Ev> = streams.iter().flatten().cloned().collect();
    all.sort_by_key(|(source, event)| (at_of(event), matches!(source, Source::Lane)));
    all
}

fn at_of(event: &AnyEvent) -> i64 {
    match event {
        AnyEvent::TaskSubmitted(e) => e.meta.occurred_at.0,
        AnyEvent::TaskStarted(e) => e.meta.occurred_at.0,
        AnyEvent::TaskProgress(e) => e.meta.occurred_at.0,
        AnyEvent::TaskRetryScheduled(e) => e.meta.occurred_at.0,
        AnyEvent::TaskCompleted(e) => e.meta.occurred_at.0,
        AnyEvent::TaskFailed(e) => e.meta.occurred_at.0,
        AnyEvent::TaskDeadLettered(e) => e.meta.occurred_at.0,
        AnyEvent::TaskCancelRequested(e) => e.meta.occurred_at.0,
        AnyEvent::TaskCancelled(e) => e.meta.occurred_at.0,
        AnyEvent::TaskExpired(e) => e.meta.occurred_at.0,
        _ => 0,
    }
}

#[test]
fn a_lifecycle_projects_the_same_in_every_interleaving_and_batching() {
    let streams = lifecycle("t1");
    let expected = project(&natural(&streams), 0);

    // What the reference state says.
    let (_dir, store) = fresh();
    apply(&store, &[natural(&streams)]);
    let view = store.task(TENANT, "t1").expect("read").expect("task");
    assert_eq!(view.status.as_str(), "completed");
    assert_eq!(view.attempts, 2);
    assert_eq!(view.agent_id.as_deref(), Some("worker-b"));
    assert_eq!(view.tenant, TENANT);
    assert_eq!(view.agent_type.as_deref(), Some(TYPE));
    assert_eq!(view.created_at_us, T0);
    assert_eq!(view.submitted_at_us, Some(T0));
    assert_eq!(view.updated_at_us, T0 + 600_000);
    assert_eq!(view.max_attempts, Some(3));
    assert_eq!(view.job_id.as_deref(), Some("job-1"));
    assert_eq!(view.trace_id.as_deref(), Some(TRACE), "the sampled trace; an unsampled context is not one to look up");
    assert_eq!(
        view.outcome.as_ref().and_then(|o| o.output.as_deref()).map(|t| serde_json::from_str::<serde_json::Value>(t).expect("json output")),
        Some(serde_json::json!({"answer": 42}))
    );
    assert_eq!(view.progress.as_ref().map(|p| p.percent), Some(Some(50.0)));
    let timeline: Vec<&str> = view.timeline.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        timeline,
        ["TaskSubmitted", "TaskStarted", "TaskProgress", "TaskRetryScheduled", "TaskScheduled", "TaskSubmitted", "TaskStarted", "TaskCompleted"],
        "one entry per event, oldest first; the timer's copy of attempt 2 shows as scheduled"
    );
    let counters: HashMap<String, _> = store.type_counters().expect("counters").into_iter().collect();
    assert_eq!((counters[TYPE].submitted, counters[TYPE].completed, counters[TYPE].terminal()), (1, 1, 1));
    assert_eq!(counters[TYPE].retries, 1, "one retry, counted once in every order (the dumps compared below hold the counters)");
    let latency = store.histogram(Measure::Latency, TYPE).expect("read").expect("latency histogram");
    assert_eq!((latency.len(), latency.max()), (1, 600), "submit→outcome latency counted once, in ms");
    let duration = store.histogram(Measure::Duration, TYPE).expect("read").expect("duration histogram");
    assert_eq!((duration.len(), duration.max()), (1, 120));
    let tenant = store.tenant_counters(TENANT).expect("tenant");
    assert_eq!((tenant.submitted, tenant.terminal, tenant.open()), (1, 1, 0));

    // Every interleaving that keeps each partition's order: 8!/(2!·1!·4!·1!) = 840 of them.
    let all = interleavings(&streams);
    assert_eq!(all.len(), 840);
    let outcome_first = all.iter().position(|order| order[0].1.is_terminal()).expect("an order with the outcome first");
    let mut rng = Lcg(7);
    let mut checked = 0;
    for (i, order) in all.iter().enumerate() {
        // Every 9th order (and the outcome-first one), in one batch, one event per batch,
        // and batches of a varying size.
        if i % 9 != 0 && i != outcome_first && i != all.len() - 1 {
            continue;
        }
        for batch in [0, 1, 1 + rng.next(4)] {
            assert_eq!(project(order, batch), expected, "order #{i} in batches of {batch}: {:?}", names(order));
            checked += 1;
        }
    }
    assert!(checked >= 280, "checked {checked} projections");
}

fn names(order: &[Ev]) -> Vec<String> {
    order.iter().map(|(source, e)| format!("{}@{source:?}", e.name())).collect()
}

#[test]
fn applying_events_again_changes_nothing() {
    let streams = lifecycle("t1");
    let once = natural(&streams);
    let expected = project(&once, 0);

    // Each event twice in a row, in one batch and one per batch.
    let twice: Vec<Ev> = once.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
    assert_eq!(project(&twice, 0), expected);
    assert_eq!(project(&twice, 1), expected);

    // The whole history redelivered in a later batch (a replay after a crash), and every
    // prefix of it redelivered.
    let (_dir, store) = fresh();
    apply(&store, &[once.clone(), once.clone()]);
    assert_eq!(dump(&store), expected);
    for cut in 1..once.len() {
        let (_dir, store) = fresh();
        apply(&store, &[once[..cut].to_vec(), once.to_vec()]);
        assert_eq!(dump(&store), expected, "redelivered from the start after {cut} events");
    }

    // Redelivered in reverse (another interleaving, everything seen before).
    let (_dir, store) = fresh();
    let mut reversed = once.clone();
    reversed.reverse();
    apply(&store, &[once.clone(), reversed]);
    assert_eq!(dump(&store), expected);
}

#[test]
fn derived_status_follows_the_life_of_a_task_across_batches() {
    let streams = lifecycle("t1");
    let order = natural(&streams);
    let expect = ["queued", "running", "running", "retrying", "scheduled", "queued", "running", "completed"];
    assert_eq!(order.len(), expect.len());
    let (_dir, store) = fresh();
    for (event, status) in order.iter().zip(expect) {
        apply(&store, &[vec![event.clone()]]);
        let view = store.task(TENANT, "t1").expect("read").expect("task");
        assert_eq!(view.status.as_str(), status, "after {}@{:?}", event.1.name(), event.0);
        // The status index holds the task under its current status only.
        for other in ["queued", "running", "retrying", "scheduled", "completed"] {
            let filter = TaskFilter { tenant: TENANT.into(), status: Some(other.parse().expect("a status")), ..TaskFilter::default() };
            let listed = store.list_tasks(&filter, None, 10).expect("list").tasks.len();
            assert_eq!(listed, usize::from(other == status), "status index `{other}` after {}", event.1.name());
        }
        let by_type = TaskFilter { tenant: TENANT.into(), agent_type: Some(TYPE.into()), ..TaskFilter::default() };
        assert_eq!(store.list_tasks(&by_type, None, 10).expect("list").tasks.len(), 1);
        let open = store.tenant_counters(TENANT).expect("tenant").open();
        assert_eq!(open, u64::from(status != "completed"), "open tasks after {}", event.1.name());
    }

    // A delayed task: scheduled on `timers`, queued once its timer fires.
    let mut delayed = submitted("d-s1", "d1", 1, T0);
    delayed.not_before = Some(TimestampMicros(T0 + 60_000_000));
    let (_dir, store) = fresh();
    apply(&store, &[vec![(Source::Timers, AnyEvent::TaskSubmitted(delayed.clone()))]]);
    let view = store.task(TENANT, "d1").expect("read").expect("task");
    assert_eq!((view.status.as_str(), view.not_before_us), ("scheduled", Some(T0 + 60_000_000)));
    apply(&store, &[vec![(Source::Lane, AnyEvent::TaskSubmitted(delayed))]]);
    assert_eq!(store.task(TENANT, "d1").expect("read").expect("task").status.as_str(), "queued");

    // Nothing but a cancel request: pending; a start seen before its submit: running.
    let (_dir, store) = fresh();
    apply(&store, &[vec![(Source::Other, cancel_requested("x-c", "x1", T0)), (Source::Other, started("y-st", "y1", 1, "w", T0))]]);
    let x = store.task(TENANT, "x1").expect("read").expect("task");
    assert_eq!((x.status.as_str(), x.cancel_requested), ("pending", true));
    assert_eq!(store.task(TENANT, "y1").expect("read").expect("task").status.as_str(), "running");

    // Each kind of outcome is the status, whatever came before.
    let outcomes = [
        ("completed", completed("o1", "k1", 1, T0 + 10)),
        ("failed", failed("o2", "k2", 1, T0 + 10)),
        ("dead_lettered", dead_lettered("o3", "k3", 3, T0 + 10)),
        ("cancelled", cancelled("o4", "k4", T0 + 10)),
        ("expired", expired("o5", "k5", T0 + 10)),
    ];
    let (_dir, store) = fresh();
    for (status, outcome) in outcomes {
        let task = outcome.task_id().expect("task event").to_string();
        apply(&store, &[vec![(Source::Lane, AnyEvent::TaskSubmitted(submitted(&format!("{task}-s"), &task, 1, T0))), (Source::Other, outcome)]]);
        assert_eq!(store.task(TENANT, &task).expect("read").expect("task").status.as_str(), status);
    }
    let counters: HashMap<String, _> = store.type_counters().expect("counters").into_iter().collect();
    let c = &counters[TYPE];
    assert_eq!((c.submitted, c.completed, c.failed, c.dead_lettered, c.cancelled, c.expired), (5, 1, 1, 1, 1, 1));
}

#[test]
fn a_suspended_task_waits_until_its_signal_resumes_it() {
    let (_dir, store) = fresh();
    let status = |store: &ProjectionStore| store.task(TENANT, "w1").expect("read").expect("task");
    let first = submitted("w-s1", "w1", 1, T0);
    let suspended = AnyEvent::TaskSuspended(TaskSuspended {
        meta: meta("w-su", T0 + 2),
        task_id: "w1".into(),
        attempt: 1,
        signal: "approval".into(),
        timeout_at: TimestampMicros(T0 + 60_000_000),
    });
    let mut waiting = submitted("w-s2", "w1", 2, T0 + 2);
    waiting.awaiting_signal = Some("approval".into());
    waiting.not_before = Some(TimestampMicros(T0 + 60_000_000));
    let signalled = |id: &str, at| {
        AnyEvent::TaskSignalled(TaskSignalled {
            meta: meta(&format!("w-sig-{id}"), at),
            task_id: "w1".into(),
            signal: "approval".into(),
            signal_id: id.into(),
            payload: None,
        })
    };
    apply(
        &store,
        &[vec![
            (Source::Lane, AnyEvent::TaskSubmitted(first)),
            (Source::Other, started("w-st1", "w1", 1, "w", T0 + 1)),
            (Source::Other, suspended),
            (Source::Timers, AnyEvent::TaskSubmitted(waiting.clone())),
        ]],
    );
    let view = status(&store);
    assert_eq!(view.status.as_str(), "waiting", "a waiting command on timers is not a scheduled one");
    let wait = view.waiting_for.expect("what it waits for");
    assert_eq!((wait.signal.as_str(), wait.timeout_at_us, wait.attempt), ("approval", T0 + 60_000_000, 2));
    let listed = store.list_tasks(&TaskFilter { tenant: TENANT.into(), status: Some("waiting".parse().expect("a status")), ..TaskFilter::default() }, None, 10);
    assert_eq!(listed.expect("list").tasks.len(), 1, "listed under waiting");

    // Signals are remembered once per id (a retry of the same signal is the same signal).
    apply(&store, &[vec![(Source::Timers, signalled("a", T0 + 3)), (Source::Timers, signalled("a", T0 + 3)), (Source::Timers, signalled("b", T0 + 4))]]);
    let ids: Vec<String> = status(&store).signals.iter().map(|s| s.signal_id.clone()).collect();
    assert_eq!(ids, ["a", "b"]);

    // The resumed command on its lane: queued, then running, then done.
    let mut resumed = waiting;
    resumed.meta = meta("w-s3", T0 + 5);
    resumed.awaiting_signal = None;
    resumed.not_before = None;
    resumed.signal = Some(SignalDelivery { name: "approval".into(), signal_id: Some("a".into()), payload: None, timed_out: false });
    apply(&store, &[vec![(Source::Lane, AnyEvent::TaskSubmitted(resumed))]]);
    assert_eq!(status(&store).status.as_str(), "queued");
    apply(&store, &[vec![(Source::Other, started("w-st2", "w1", 2, "w", T0 + 6))]]);
    assert_eq!(status(&store).status.as_str(), "running");
    apply(&store, &[vec![(Source::Other, completed("w-done", "w1", 2, T0 + 7))]]);
    let view = status(&store);
    assert_eq!(view.status.as_str(), "completed");
    let events: Vec<&str> = view.timeline.iter().map(|e| e.event.as_str()).collect();
    assert!(events.contains(&"TaskSuspended") && events.contains(&"TaskWaiting") && events.contains(&"TaskSignalled"), "{events:?}");
    let resumed_entry =
        view.timeline.iter().find(|e| e.detail.as_deref().is_some_and(|d| d.starts_with("resumed by signal"))).expect("the resume in the timeline");
    assert_eq!(resumed_entry.detail.as_deref(), Some("resumed by signal `approval` (a)"));
}

#[test]
fn the_first_terminal_outcome_wins() {
    let submit = (Source::Lane, AnyEvent::TaskSubmitted(submitted("s1", "t1", 1, T0)));
    // Both outcomes are on the one partition of task.results the task id hashes to, so
    // "first" is their order there; the submit may come anywhere.
    for (first, second, status) in [
        (completed("c1", "t1", 1, T0 + 10), failed("f1", "t1", 1, T0 + 20), "completed"),
        (failed("f1", "t1", 1, T0 + 20), completed("c1", "t1", 1, T0 + 10), "failed"),
        (cancelled("x1", "t1", T0 + 10), completed("c1", "t1", 1, T0 + 20), "cancelled"),
        (completed("c1", "t1", 1, T0 + 10), dead_lettered("d1", "t1", 1, T0 + 20), "completed"),
    ] {
        let streams = vec![vec![submit.clone()], vec![(Source::Other, first.clone()), (Source::Other, second.clone())]];
        let mut dumps = Vec::new();
        for order in interleavings(&streams) {
            let (_dir, store) = fresh();
            apply(&store, std::slice::from_ref(&order));
            let view = store.task(TENANT, "t1").expect("read").expect("task");
            assert_eq!(view.status.as_str(), status, "{:?}", names(&order));
            let counters: HashMap<String, _> = store.type_counters().expect("counters").into_iter().collect();
            assert_eq!(counters[TYPE].terminal(), 1, "one outcome counted: {:?}", names(&order));
            assert_eq!(store.tenant_counters(TENANT).expect("tenant").terminal, 1);
            dumps.push(dump(&store));
        }
        assert!(dumps.windows(2).all(|w| w[0] == w[1]), "{status}: every interleaving projects the same");
    }
}

#[test]
fn a_dead_lettered_task_resubmitted_later_ends_with_its_new_outcome_in_any_interleaving() {
    // Attempt 1 dead-letters; the task is resubmitted from the DLQ (attempt 1 again, a new
    // event) and completes. The stats count the task once, by its final outcome.
    let original = submitted("s1", "t1", 1, T0);
    let resubmitted = submitted("s1-again", "t1", 1, T0 + 1_000_000);
    let lane = vec![(Source::Lane, AnyEvent::TaskSubmitted(original)), (Source::Lane, AnyEvent::TaskSubmitted(resubmitted))];
    let events = vec![(Source::Other, started("st1", "t1", 1, "worker-a", T0 + 1_000)), (Source::Other, started("st2", "t1", 1, "worker-b", T0 + 1_001_000))];
    let results = vec![(Source::Other, dead_lettered("d1", "t1", 1, T0 + 2_000)), (Source::Other, completed("c2", "t1", 1, T0 + 1_500_000))];
    let streams = vec![lane, events, results];
    let all = interleavings(&streams);
    let (_dir, store) = fresh();
    apply(&store, &[all[0].clone()]);
    let expected = dump(&store);
    let view = store.task(TENANT, "t1").expect("read").expect("task");
    assert_eq!(view.status.as_str(), "completed");
    let counters: HashMap<String, _> = store.type_counters().expect("counters").into_iter().collect();
    assert_eq!((counters[TYPE].submitted, counters[TYPE].completed, counters[TYPE].dead_lettered), (1, 1, 0));
    let latency = store.histogram(Measure::Latency, TYPE).expect("read").expect("latency");
    assert_eq!((latency.len(), latency.max()), (1, 1_500), "latency of the final outcome, from the first submit");
    for (i, order) in all.iter().enumerate() {
        for batch in [0, 1] {
            assert_eq!(project(order, batch), expected, "order #{i} in batches of {batch}: {:?}", names(order));
        }
    }
    // And the dead letter seen again after the completion changes nothing.
    let (_dir, store) = fresh();
    apply(&store, &[all[0].clone(), vec![(Source::Other, dead_lettered("d1", "t1", 1, T0 + 2_000))]]);
    assert_eq!(dump(&store), expected);
}

#[test]
fn an_idempotency_key_names_the_earliest_task_whatever_the_order() {
    // Two submits raced with the same key (the API checks the projection, which had not seen
    // the first yet): both tasks exist; the key names the earlier one in every order.
    let mut a = submitted("sa", "task-a", 1, T0);
    a.idempotency_key = Some("k".into());
    let mut b = submitted("sb", "task-b", 1, T0 + 10);
    b.idempotency_key = Some("k".into());
    let a = (Source::Lane, AnyEvent::TaskSubmitted(a));
    let b = (Source::Lane, AnyEvent::TaskSubmitted(b));
    let mut dumps = Vec::new();
    for order in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
        for batch in [0, 1] {
            let (_dir, store) = fresh();
            let batches: Vec<Vec<Ev>> = if batch == 0 { vec![order.clone()] } else { order.iter().map(|e| vec![e.clone()]).collect() };
            apply(&store, &batches);
            assert_eq!(store.task_by_idempotency_key(TENANT, "k").expect("read").as_deref(), Some("task-a"), "{:?} in batches of {batch}", names(&order));
            dumps.push(dump(&store));
        }
    }
    assert!(dumps.windows(2).all(|w| w[0] == w[1]));
}

fn agent_meta(event_id: &str, at: i64) -> Meta {
    meta(event_id, at)
}

fn agent_events() -> (Vec<Ev>, Vec<Ev>) {
    let lifecycle = vec![
        (
            Source::Other,
            AnyEvent::AgentRegistered(AgentRegistered {
                meta: agent_meta("a-reg", 10),
                agent_id: "agent-1".into(),
                agent_type: TYPE.into(),
                capabilities: vec!["fast".into()],
                host: "h1".into(),
                version: "1.0".into(),
                concurrency: 4,
            }),
        ),
        (
            Source::Other,
            AnyEvent::AgentStateChanged(AgentStateChanged {
                meta: agent_meta("a-run", 20),
                agent_id: "agent-1".into(),
                from_state: AgentState::Starting,
                to_state: AgentState::Running,
                reason: None,
            }),
        ),
        (
            Source::Other,
            AnyEvent::AgentStateChanged(AgentStateChanged {
                meta: agent_meta("a-drain", 40),
                agent_id: "agent-1".into(),
                from_state: AgentState::Running,
                to_state: AgentState::Draining,
                reason: Some("sigterm".into()),
            }),
        ),
    ];
    let heartbeat = |seq: i64, at: i64, in_flight: i32| {
        (
            Source::Other,
            AnyEvent::AgentHeartbeat(AgentHeartbeat {
                meta: agent_meta(&format!("a-hb{seq}"), at),
                agent_id: "agent-1".into(),
                sequence: seq,
                in_flight,
                capacity: 4,
                completed_total: seq * 10,
                failed_total: seq,
                cpu_percent: 1.5 * seq as f64,
                memory_bytes: 1000 * seq,
            }),
        )
    };
    // Sequence 3 was stamped at an earlier time than 2 (a clock step): sequence decides.
    let heartbeats = vec![heartbeat(1, 15, 1), heartbeat(2, 35, 2), heartbeat(3, 30, 3)];
    (lifecycle, heartbeats)
}

#[test]
fn an_agent_takes_its_state_from_the_latest_lifecycle_event_and_its_load_from_the_highest_heartbeat() {
    let (lifecycle, heartbeats) = agent_events();
    let mut all: Vec<Ev> = lifecycle.iter().chain(&heartbeats).cloned().collect();
    let expected = project(&all, 0);
    let (_dir, store) = fresh();
    apply(&store, &[all.clone()]);
    let agent = store.agent("agent-1").expect("read").expect("agent");
    assert_eq!(agent.state.as_str(), "draining");
    assert_eq!(agent.agent_type.as_deref(), Some(TYPE));
    assert_eq!((agent.registered_at_us, agent.concurrency), (Some(10), Some(4)));
    assert_eq!((agent.heartbeat_sequence, agent.last_heartbeat_at_us, agent.in_flight, agent.completed_total), (3, Some(30), 3, 30));
    assert_eq!(agent.load(), 0.75);

    // Any order at all (even lifecycle events out of their partition's order), any batching.
    let mut rng = Lcg(11);
    for round in 0..40 {
        rng.shuffle(&mut all);
        let batch = round % 3;
        assert_eq!(project(&all, batch), expected, "round {round}: {:?}", names(&all));
    }
    // Again, and twice: nothing changes.
    let doubled: Vec<Ev> = all.iter().chain(&all).cloned().collect();
    assert_eq!(project(&doubled, 2), expected);

    // Lost and deregistered at the same instant: the larger event id wins, in both orders.
    let at = 50;
    let lost = (
        Source::Other,
        AnyEvent::AgentLost(AgentLost {
            meta: agent_meta("a-z-lost", at),
            agent_id: "agent-1".into(),
            last_heartbeat_at: TimestampMicros(35),
            missed_heartbeats: 3,
        }),
    );
    let gone = (
        Source::Other,
        AnyEvent::AgentDeregistered(AgentDeregistered { meta: agent_meta("a-dereg", at), agent_id: "agent-1".into(), reason: "drained".into() }),
    );
    for tail in [vec![lost.clone(), gone.clone()], vec![gone, lost]] {
        let (_dir, store) = fresh();
        apply(&store, &[all.clone(), tail]);
        assert_eq!(store.agent("agent-1").expect("read").expect("agent").state.as_str(), "lost");
    }
}

/// Three tasks of one job, their events spread over two partitions per topic as the log
/// would (task id → partition), agents alongside: one stream per partition.
fn job_streams() -> Vec<Vec<Ev>> {
    let mut streams: Vec<Vec<Ev>> = vec![Vec::new(); 8];
    for (n, task) in ["t1", "t2", "t3"].iter().enumerate() {
        let p = n % 2;
        let mut life = lifecycle(task);
        // Shift each task in time so the newest-first index has a real order.
        for stream in &mut life {
            for (_, event) in stream.iter_mut() {
                shift(event, n as i64 * 1_000_000);
            }
        }
        for (topic, stream) in life.into_iter().enumerate() {
            streams[topic * 2 + p].extend(stream);
        }
    }
    let job = AnyEvent::JobSubmitted(JobSubmitted {
        meta: meta("job-1", T0 - 1),
        job_id: "job-1".into(),
        task_ids: vec!["t1".into(), "t2".into(), "t3".into()],
        total: 3,
    });
    streams[4].insert(0, (Source::Other, job));
    let (lifecycle_events, heartbeats) = agent_events();
    streams.push(lifecycle_events);
    streams.push(heartbeats);
    streams
}

/// A random merge of `streams` that keeps every stream's order.
fn merge(streams: &[Vec<Ev>], rng: &mut Lcg) -> Vec<Ev> {
    let mut at = vec![0; streams.len()];
    let mut order = Vec::new();
    loop {
        let open: Vec<usize> = (0..streams.len()).filter(|s| at[*s] < streams[*s].len()).collect();
        if open.is_empty() {
            return order;
        }
        let s = open[rng.next(open.len())];
        order.push(streams[s][at[s]].clone());
        at[s] += 1;
    }
}

#[test]
fn many_tasks_and_a_job_count_the_same_in_any_interleaving() {
    let streams = job_streams();
    let reference: Vec<Ev> = streams.iter().flatten().cloned().collect();
    let expected = project(&reference, 0);
    let (_dir, store) = fresh();
    apply(&store, &[reference]);
    let counters: HashMap<String, _> = store.type_counters().expect("counters").into_iter().collect();
    assert_eq!((counters[TYPE].submitted, counters[TYPE].completed), (3, 3));
    assert_eq!(store.histogram(Measure::Latency, TYPE).expect("read").expect("latency").len(), 3);
    let listed: Vec<String> = store
        .list_tasks(&TaskFilter { tenant: TENANT.into(), ..TaskFilter::default() }, None, 10)
        .expect("list")
        .tasks
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(listed, ["t3", "t2", "t1"], "newest first");
    assert_eq!(store.job(TENANT, "job-1").expect("read").expect("job").total, 3);

    // Random merges that keep every partition's order, in random batch sizes.
    let mut rng = Lcg(2024);
    for round in 0..60 {
        let order = merge(&streams, &mut rng);
        let batch = [0, 1, 2, 5, 13][round % 5];
        assert_eq!(project(&order, batch), expected, "round {round}");
    }
}

/// The dump after applying `events` as a catch-up into a fresh store does: quiet changes
/// that do not look up tasks they have not written themselves, finished every `round`
/// records (a task's events land in several rounds, so later rounds must read it back).
fn catch_up_in_rounds(events: &[Ev], round: usize) -> String {
    let (_dir, store) = fresh();
    assert!(!store.holds_tasks().expect("read"));
    let mut changes = Changes::quiet_fresh(&store, WrittenTasks::default());
    for (offset, (source, event)) in events.iter().enumerate() {
        changes.consumed("source", 0, offset as i64);
        changes.apply(*source, event.clone()).expect("apply");
        if (offset + 1) % round == 0 {
            store.write_unlogged(changes.finish_round().expect("finish round")).expect("write");
        }
    }
    let (write, _) = changes.finish().expect("finish");
    store.write_unlogged(write).expect("write");
    dump(&store)
}

#[test]
fn a_catch_up_into_a_fresh_store_in_rounds_projects_the_same() {
    let streams = job_streams();
    let reference: Vec<Ev> = streams.iter().flatten().cloned().collect();
    let expected = project(&reference, 0);
    let mut rng = Lcg(99);
    for n in 0..20 {
        let order = merge(&streams, &mut rng);
        for round in [1, 2, 3, 7, order.len()] {
            assert_eq!(catch_up_in_rounds(&order, round), expected, "merge {n} in rounds of {round}");
        }
    }
}

fn shift(event: &mut AnyEvent, by: i64) {
    let meta = match event {
        AnyEvent::TaskSubmitted(e) => {
            e.not_before = e.not_before.map(|t| TimestampMicros(t.0 + by));
            &mut e.meta
        }
        AnyEvent::TaskStarted(e) => &mut e.meta,
        AnyEvent::TaskProgress(e) => &mut e.meta,
        AnyEvent::TaskRetryScheduled(e) => &mut e.meta,
        AnyEvent::TaskCompleted(e) => &mut e.meta,
        _ => return,
    };
    meta.occurred_at.0 += by;
}

/// A task is (tenant, task id): another tenant's events with the same id, interleaved with
/// the first tenant's, make a second task and leave the first as it was, in the views, the
/// listings and each tenant's counters.
#[test]
fn two_tenants_with_one_task_id_have_two_tasks() {
    let globex = |mut meta: Meta| {
        meta.tenant = "globex".into();
        meta
    };
    let mut theirs = submitted("g1", "t1", 1, T0 + 1_500);
    theirs.meta = globex(theirs.meta);
    theirs.input = br#"{"q":2}"#.to_vec();
    theirs.labels.insert("team".into(), "ads".into());
    let their_cancel =
        AnyEvent::TaskCancelRequested(TaskCancelRequested { meta: globex(meta("g2", T0 + 1_600)), task_id: "t1".into(), reason: None, requested_by: None });
    let their_outcome = AnyEvent::TaskCancelled(TaskCancelled { meta: globex(meta("g3", T0 + 1_700)), task_id: "t1".into(), reason: None });
    let events: Vec<Ev> = vec![
        (Source::Lane, AnyEvent::TaskSubmitted(submitted("a1", "t1", 1, T0 + 1_000))),
        (Source::Other, started("a2", "t1", 1, "w1", T0 + 1_200)),
        (Source::Lane, AnyEvent::TaskSubmitted(theirs)),
        (Source::Other, their_cancel),
        (Source::Other, their_outcome),
        (Source::Other, completed("a3", "t1", 1, T0 + 2_000)),
    ];
    for batch in [0, 1, 2] {
        let (_dir, store) = fresh();
        let batches: Vec<Vec<Ev>> = if batch == 0 { vec![events.clone()] } else { events.chunks(batch).map(<[Ev]>::to_vec).collect() };
        apply(&store, &batches);
        let ours = store.task(TENANT, "t1").expect("read").expect("acme's task");
        assert_eq!((ours.tenant.as_str(), ours.status.as_str(), ours.cancel_requested), (TENANT, "completed", false));
        assert_eq!(ours.input.as_deref(), Some(r#"{"q":1}"#));
        assert_eq!(ours.labels.get("team").map(String::as_str), Some("search"));
        let theirs = store.task("globex", "t1").expect("read").expect("globex's task");
        assert_eq!((theirs.tenant.as_str(), theirs.status.as_str(), theirs.cancel_requested), ("globex", "cancelled", true));
        assert_eq!(theirs.input.as_deref(), Some(r#"{"q":2}"#));
        assert!(store.task("initech", "t1").expect("read").is_none());
        for (tenant, status) in [(TENANT, "completed"), ("globex", "cancelled")] {
            let listed = store.list_tasks(&TaskFilter { tenant: tenant.into(), ..TaskFilter::default() }, None, 10).expect("list").tasks;
            assert_eq!(listed.iter().map(|t| (t.task_id.as_str(), t.status.as_str())).collect::<Vec<_>>(), [("t1", status)], "{tenant} lists its own task");
        }
        let counted =
            |tenant: &str| store.tenant_type_counters(tenant).expect("counters").into_iter().collect::<HashMap<_, _>>().remove(TYPE).expect("counted");
        let (acme, globex) = (counted(TENANT), counted("globex"));
        assert_eq!((acme.submitted, acme.completed, acme.cancelled), (1, 1, 0));
        assert_eq!((globex.submitted, globex.completed, globex.cancelled), (1, 0, 1));
        let all: HashMap<String, _> = store.type_counters().expect("counters").into_iter().collect();
        assert_eq!((all[TYPE].submitted, all[TYPE].completed, all[TYPE].cancelled), (2, 1, 1), "operators' totals count both");
        assert_eq!(store.tenant_histogram(Measure::Latency, "globex", TYPE).expect("read").expect("latency").len(), 1);
        assert_eq!(store.histogram(Measure::Latency, TYPE).expect("read").expect("latency").len(), 2);
    }
}

fn usage(input: i64, output: i64, model: Option<&str>, cost: Option<(i64, &str)>, counters: &[(&str, i64)]) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        model: model.map(str::to_string),
        cost_micros: cost.map(|c| c.0),
        currency: cost.map(|c| c.1.to_string()),
        counters: counters.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    }
}

fn completed_with(tenant: &str, event_id: &str, task_id: &str, at: i64, reported: Option<Usage>) -> AnyEvent {
    let mut done = match completed(event_id, task_id, 1, at) {
        AnyEvent::TaskCompleted(done) => done,
        _ => unreachable!("completed() builds a TaskCompleted"),
    };
    done.meta.tenant = tenant.into();
    done.usage = reported;
    AnyEvent::TaskCompleted(done)
}

fn submitted_by(tenant: &str, event_id: &str, task_id: &str, agent_type: &str, at: i64) -> AnyEvent {
    let mut e = submitted(event_id, task_id, 1, at);
    e.meta.tenant = tenant.into();
    e.agent_type = agent_type.into();
    AnyEvent::TaskSubmitted(e)
}

/// Usage streams of two tenants: the lane topic (submits) and `task.results` (outcomes), one
/// partition each. acme: two tasks on `gpt-x` (one also reporting a cached-token counter), one
/// on `claude-y` in EUR, one without a model, one completing without usage, and a task whose
/// attempt completed twice (a re-run after its worker died: the first completion counts).
/// globex: one task on `gpt-x`. A producer writing to the log directly sent a negative count.
fn usage_streams() -> Vec<Vec<Ev>> {
    let submits = vec![
        (Source::Lane, submitted_by(TENANT, "u-s1", "u1", "summarize", T0)),
        (Source::Lane, submitted_by(TENANT, "u-s2", "u2", "summarize", T0 + 1)),
        (Source::Lane, submitted_by(TENANT, "u-s3", "u3", "summarize", T0 + 2)),
        (Source::Lane, submitted_by(TENANT, "u-s4", "u4", "translate", T0 + 3)),
        (Source::Lane, submitted_by(TENANT, "u-s5", "u5", "translate", T0 + 4)),
        (Source::Lane, submitted_by(TENANT, "u-s6", "u6", "summarize", T0 + 5)),
        (Source::Lane, submitted_by("globex", "g-s1", "u1", "summarize", T0 + 6)),
    ];
    let results = vec![
        (
            Source::Other,
            completed_with(TENANT, "u-c1", "u1", T0 + 100, Some(usage(100, 20, Some("gpt-x"), Some((300, "USD")), &[("cached_input_tokens", 60)]))),
        ),
        (Source::Other, completed_with(TENANT, "u-c2", "u2", T0 + 101, Some(usage(50, 10, Some("gpt-x"), Some((150, "USD")), &[])))),
        (Source::Other, completed_with(TENANT, "u-c3", "u3", T0 + 102, Some(usage(7, 3, Some("claude-y"), Some((40, "EUR")), &[])))),
        (Source::Other, completed_with(TENANT, "u-c4", "u4", T0 + 103, Some(usage(-5, 9, None, None, &[("pages", 2)])))),
        (Source::Other, completed_with(TENANT, "u-c5", "u5", T0 + 104, None)),
        (Source::Other, completed_with(TENANT, "u-c6", "u6", T0 + 105, Some(usage(1, 1, Some("gpt-x"), Some((5, "USD")), &[])))),
        (Source::Other, completed_with(TENANT, "u-c6b", "u6", T0 + 106, Some(usage(1000, 1000, Some("gpt-x"), Some((9999, "USD")), &[])))),
        (Source::Other, completed_with("globex", "g-c1", "u1", T0 + 107, Some(usage(1000, 500, Some("gpt-x"), Some((7000, "USD")), &[])))),
    ];
    vec![submits, results]
}

/// Usage is aggregated per tenant, agent type and model, the same in every order and cut of
/// the records (an outcome before its submit counts once its type is known), and one tenant's
/// usage never shows in another's.
#[test]
fn usage_aggregates_per_tenant_agent_type_and_model_in_any_order() {
    let streams = usage_streams();
    let reference: Vec<Ev> = streams.iter().flatten().cloned().collect();
    let expected = project(&reference, 0);

    let (_dir, store) = fresh();
    apply(&store, std::slice::from_ref(&reference));
    let view = store.task(TENANT, "u1").expect("read").expect("task");
    let reported = view.outcome.as_ref().and_then(|o| o.usage.clone()).expect("the task's usage");
    assert_eq!((reported.input_tokens, reported.output_tokens, reported.model.as_deref()), (100, 20, Some("gpt-x")));
    assert_eq!((reported.cost_micros, reported.currency.as_deref(), reported.counters.get("cached_input_tokens")), (Some(300), Some("USD"), Some(&60)));
    let twice = store.task(TENANT, "u6").expect("read").expect("task");
    assert_eq!(twice.outcome.and_then(|o| o.usage).map(|u| u.input_tokens), Some(1), "the first completion's usage");
    let clamped = store.task(TENANT, "u4").expect("read").expect("task").outcome.and_then(|o| o.usage).expect("usage");
    assert_eq!((clamped.input_tokens, clamped.output_tokens), (0, 9), "a negative count from a producer reads as 0");

    let acme = store.usage(Some(TENANT)).expect("usage");
    let by: HashMap<(String, Option<String>), _> = acme.iter().map(|u| ((u.agent_type.clone(), u.model.clone()), u.clone())).collect();
    assert_eq!(by.len(), 3, "{acme:?}");
    let gpt = &by[&("summarize".to_string(), Some("gpt-x".to_string()))];
    assert_eq!((gpt.tasks, gpt.input_tokens, gpt.output_tokens), (3, 151, 31));
    assert_eq!((gpt.cost_micros.get("USD"), gpt.counters.get("cached_input_tokens")), (Some(&455), Some(&60)));
    let claude = &by[&("summarize".to_string(), Some("claude-y".to_string()))];
    assert_eq!((claude.tasks, claude.cost_micros.get("EUR"), claude.cost_micros.get("USD")), (1, Some(&40), None));
    let unnamed = &by[&("translate".to_string(), None)];
    assert_eq!((unnamed.tasks, unnamed.input_tokens, unnamed.output_tokens, unnamed.counters.get("pages")), (1, 0, 9, Some(&2)));
    assert!(unnamed.cost_micros.is_empty());

    let globex = store.usage(Some("globex")).expect("usage");
    assert_eq!(globex.len(), 1, "globex sees its own usage only: {globex:?}");
    assert_eq!((globex[0].tasks, globex[0].input_tokens, globex[0].cost_micros.get("USD")), (1, 1000, Some(&7000)));
    assert!(store.usage(Some("initech")).expect("usage").is_empty());
    assert!(store.usage(Some("acm")).expect("usage").is_empty(), "a tenant whose name starts another's sees none of it");

    let all = store.usage(None).expect("usage");
    let gpt_all = all.iter().find(|u| u.agent_type == "summarize" && u.model.as_deref() == Some("gpt-x")).expect("all tenants");
    assert_eq!((gpt_all.tasks, gpt_all.input_tokens, gpt_all.cost_micros.get("USD")), (4, 1151, Some(&7455)), "operators' totals hold both tenants");

    // Any merge of the two partitions, in any batching, and a catch-up in rounds (a rebuild).
    let mut rng = Lcg(17);
    for n in 0..30 {
        let order = merge(&streams, &mut rng);
        for batch in [0, 1, 3] {
            assert_eq!(project(&order, batch), expected, "merge {n} in batches of {batch}: {:?}", names(&order));
        }
        assert_eq!(catch_up_in_rounds(&order, 2), expected, "merge {n} caught up in rounds");
    }
    // Applying everything again changes nothing.
    let (_dir, again) = fresh();
    apply(&again, &[reference.clone(), reference]);
    assert_eq!(dump(&again), expected);
}

/// A producer writing straight to the log is not held to the workers' checks: the projection
/// still keeps at most 32 counters (the smallest names, whatever the order) per report and
/// per aggregate.
#[test]
fn usage_counters_are_capped_the_same_in_any_order() {
    let names: Vec<String> = (0..40).map(|i| format!("c{i:02}")).collect();
    let first: Vec<(&str, i64)> = names[..30].iter().map(|n| (n.as_str(), 1)).collect();
    let second: Vec<(&str, i64)> = names[10..].iter().map(|n| (n.as_str(), 1)).collect();
    let events = vec![
        (Source::Lane, submitted_by(TENANT, "k-s1", "k1", "summarize", T0)),
        (Source::Lane, submitted_by(TENANT, "k-s2", "k2", "summarize", T0 + 1)),
        (Source::Other, completed_with(TENANT, "k-c1", "k1", T0 + 10, Some(usage(1, 1, Some("m"), None, &first)))),
        (Source::Other, completed_with(TENANT, "k-c2", "k2", T0 + 11, Some(usage(1, 1, Some("m"), None, &second)))),
    ];
    let mut reversed = events.clone();
    reversed.reverse();
    assert_eq!(project(&events, 1), project(&reversed, 1));
    let (_dir, store) = fresh();
    apply(&store, &[reversed]);
    let kept = store.usage(Some(TENANT)).expect("usage").remove(0).counters;
    assert_eq!(kept.len(), 32);
    assert_eq!(kept.keys().next().map(String::as_str), Some("c00"));
    assert_eq!(kept.keys().last().map(String::as_str), Some("c31"));
    assert_eq!((kept["c05"], kept["c15"]), (1, 2));
    let second_view = store.task(TENANT, "k2").expect("read").expect("task").outcome.and_then(|o| o.usage).expect("usage");
    assert_eq!(second_view.counters.len(), 30, "a report of 30 counters is kept whole");
}

/// A projection directory written before tasks were keyed by tenant (no format marker, tasks
/// keyed by id alone) is not misread: opening it empties it, offsets included, so the
/// projector rebuilds it from the log. A store of the current layout opens as it was.
#[test]
fn a_store_of_an_older_layout_is_emptied_to_be_rebuilt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p");
    {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let old = rocksdb::DB::open_cf(&options, &path, ["tasks", "index", "agents", "jobs", "stats", "offsets"]).expect("old store");
        old.put_cf(old.cf_handle("tasks").expect("tasks"), b"t1", b"not a view of this layout").expect("put");
        old.put_cf(old.cf_handle("offsets").expect("offsets"), b"topic\0\0\0\0\0", 42i64.to_be_bytes()).expect("put");
    }
    let store = ProjectionStore::open(&path).expect("open");
    assert!(store.offsets().expect("offsets").is_empty(), "offsets are gone: the log is read from the start");
    assert!(!store.holds_tasks().expect("tasks"));
    apply(&store, &[vec![(Source::Lane, AnyEvent::TaskSubmitted(submitted("a1", "t1", 1, T0)))]]);
    drop(store);
    let store = ProjectionStore::open(&path).expect("reopen");
    assert!(store.task(TENANT, "t1").expect("read").is_some(), "a store of this layout keeps its state");
    assert!(!store.offsets().expect("offsets").is_empty());
}

/// A record of the `dlq` topic parking `tenant`'s task `task_id` (decoded: the applier gets
/// the record for its headers and the command it carries).
fn letter(tenant: &str, task_id: &str, partition: i32, offset: i64, timestamp_ms: i64) -> (ConsumedRecord, Option<AnyEvent>) {
    let mut meta = meta(&format!("{task_id}-{partition}-{offset}"), T0);
    meta.tenant = tenant.into();
    let task = TaskSubmitted::new(meta, task_id, TYPE, Lane::Normal, b"{}".to_vec());
    let source = ConsumedRecord { topic: "lane".into(), partition: 0, offset, key: None, headers: Vec::new(), payload: Default::default(), timestamp_ms };
    let long_reason = "x".repeat(5000);
    let record = dlq::task_dead_letter("dlq", &source, Default::default(), 3, "transient", &long_reason, None);
    let consumed = ConsumedRecord { topic: "dlq".into(), partition, offset, key: None, headers: record.headers, payload: Default::default(), timestamp_ms };
    (consumed, Some(AnyEvent::TaskSubmitted(task)))
}

fn apply_letters(store: &ProjectionStore, batches: &[&[(ConsumedRecord, Option<AnyEvent>)]]) {
    for batch in batches {
        let mut changes = Changes::new(store);
        for (record, event) in batch.iter() {
            changes.consumed(&record.topic, record.partition, record.offset);
            changes.dead_letter(record, event.clone()).expect("index letter");
        }
        let (write, _) = changes.finish().expect("finish");
        store.write(write).expect("write");
    }
}

/// The dead-letter index is a function of the letters, not of their order or batching: a
/// task's latest letter is the newest by position whichever arrives last; another tenant's
/// letter of the same task id is another task's; a letter naming no tenant is not indexed;
/// reasons are capped; pages follow their cursor.
#[test]
fn dead_letters_index_the_same_in_any_order_and_name_the_latest() {
    let acme = [letter("acme", "t1", 0, 0, 1_000), letter("acme", "t1", 1, 0, 2_000), letter("acme", "t1", 0, 5, 2_000)];
    let others = [
        letter("globex", "t1", 0, 6, 3_000),
        (
            ConsumedRecord { topic: "dlq".into(), partition: 2, offset: 0, key: None, headers: Vec::new(), payload: Default::default(), timestamp_ms: 4_000 },
            None,
        ),
    ];
    let orders: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    let mut expected = None;
    for order in orders {
        for split in [false, true] {
            let (_dir, store) = fresh();
            let mut all: Vec<_> = order.iter().map(|i| acme[*i].clone()).collect();
            all.extend(others.iter().cloned());
            if split {
                let (first, second) = all.split_at(2);
                apply_letters(&store, &[first, second]);
            } else {
                apply_letters(&store, &[&all]);
            }
            let latest = store.dead_letter("acme", "t1").expect("read").expect("acme's letter");
            assert_eq!((latest.partition, latest.offset, latest.timestamp_ms), (1, 0, 2_000), "the newest by (time, partition, offset), order {order:?}");
            assert!(latest.reason.len() <= 1024, "reason capped: {}", latest.reason.len());
            let theirs = store.dead_letter("globex", "t1").expect("read").expect("globex's letter");
            assert_eq!((theirs.partition, theirs.offset), (0, 6));
            let dump = dump(&store);
            assert_eq!(expected.get_or_insert_with(|| dump.clone()), &dump, "order {order:?}, split {split}");
        }
    }
    let (_dir, store) = fresh();
    let all: Vec<_> = acme.iter().chain(others.iter()).cloned().collect();
    apply_letters(&store, &[&all]);
    let first = store.dead_letters("acme", None, 2).expect("page");
    let positions: Vec<(i32, i64)> = first.letters.iter().map(|l| (l.partition, l.offset)).collect();
    assert_eq!(positions, [(1, 0), (0, 5)], "newest first");
    let cursor = agentlog::projection::store::unhex(first.next_cursor.as_deref().expect("more")).expect("hex");
    let cursor = agentlog::projection::store::LetterPosition::from_tail(&cursor).expect("a position");
    let second = store.dead_letters("acme", Some(&cursor), 2).expect("page");
    assert_eq!(second.letters.iter().map(|l| (l.partition, l.offset)).collect::<Vec<_>>(), [(0, 0)]);
    assert_eq!(second.next_cursor, None);
    assert_eq!(store.dead_letters("globex", None, 50).expect("page").letters.len(), 1);
    assert!(store.dead_letters("", None, 50).expect("page").letters.is_empty(), "the undecodable letter is indexed for nobody");
}

/// Jobs page newest first, each exactly once, a tenant's own only, also when a job's
/// completion was applied before its submit (its index entry moves when its time becomes known).
#[test]
fn jobs_page_newest_first_exactly_once() {
    let (_dir, store) = fresh();
    let job_meta = |tenant: &str, id: &str, at: i64| {
        let mut m = meta(id, at);
        m.tenant = tenant.into();
        m
    };
    let mut early = Vec::new();
    let mut submits = Vec::new();
    for i in 0..120i64 {
        let id = format!("job-{i:03}");
        if i % 3 == 0 {
            early.push((
                Source::Other,
                AnyEvent::JobCompleted(JobCompleted {
                    meta: job_meta("acme", &format!("{id}-c"), T0 + i * 1_000_000 + 1),
                    job_id: id.clone(),
                    completed: 1,
                    failed: 0,
                }),
            ));
        }
        submits.push((
            Source::Other,
            AnyEvent::JobSubmitted(JobSubmitted { meta: job_meta("acme", &id, T0 + i * 1_000), job_id: id, task_ids: vec!["t".into()], total: 1 }),
        ));
    }
    for i in 0..5i64 {
        let id = format!("job-{i:03}");
        submits.push((
            Source::Other,
            AnyEvent::JobSubmitted(JobSubmitted { meta: job_meta("globex", &format!("g{id}"), T0 + i), job_id: id, task_ids: vec![], total: 0 }),
        ));
    }
    apply(&store, &[early, submits]);
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store.jobs("acme", cursor.as_deref(), 50).expect("page");
        pages += 1;
        seen.extend(page.jobs.into_iter().map(|j| j.job_id));
        match page.next_cursor {
            Some(next) => cursor = Some(agentlog::projection::store::unhex(&next).expect("hex")),
            None => break,
        }
    }
    let expected: Vec<String> = (0..120).rev().map(|i| format!("job-{i:03}")).collect();
    assert_eq!(seen, expected, "each job once, newest first");
    assert_eq!(pages, 3);
    assert_eq!(store.jobs("globex", None, 50).expect("page").jobs.len(), 5);
}

/// The outcome notices (what SSE streams send) of `batches` applied live, one `Changes` each.
fn notices(store: &ProjectionStore, batches: &[Vec<Ev>]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        let mut changes = Changes::new(store);
        for (offset, (source, event)) in batch.iter().enumerate() {
            changes.consumed("source", 0, (i * 10_000 + offset) as i64);
            changes.apply(*source, event.clone()).expect("apply");
        }
        let (write, noticed) = changes.finish().expect("finish");
        store.write(write).expect("write");
        out.extend(noticed.into_iter().map(|n| (n.task_id, n.agent_type)));
    }
    out
}

/// A task's outcome is noticed once, naming its type, whichever of its submit and its outcome
/// the projection applies first and however they are batched: streams filtered by type
/// (`?agent_type=`) select by that name, and an outcome noticed before its submit was noticed
/// with no type and reached none of them.
#[test]
fn an_outcome_is_noticed_once_with_its_type_whatever_comes_first() {
    let submit = (Source::Lane, AnyEvent::TaskSubmitted(submitted("n-s1", "n", 1, T0)));
    let outcome = (Source::Other, completed("n-c1", "n", 1, T0 + 1_000));
    let started = (Source::Other, started("n-st1", "n", 1, "worker-a", T0 + 500));
    let cases: Vec<(&str, Vec<Vec<Ev>>)> = vec![
        ("submit, then outcome, one batch", vec![vec![submit.clone(), outcome.clone()]]),
        ("outcome, then submit, one batch", vec![vec![outcome.clone(), submit.clone()]]),
        ("submit, then outcome, two batches", vec![vec![submit.clone()], vec![outcome.clone()]]),
        ("outcome, then submit, two batches", vec![vec![outcome.clone()], vec![submit.clone()]]),
        ("outcome, start, submit, three batches", vec![vec![outcome.clone()], vec![started.clone()], vec![submit.clone()]]),
        ("everything again afterwards", vec![vec![submit.clone(), outcome.clone()], vec![outcome.clone(), submit.clone(), started.clone()]]),
    ];
    for (case, batches) in cases {
        let (_dir, store) = fresh();
        assert_eq!(notices(&store, &batches), vec![("n".to_string(), Some(TYPE.to_string()))], "{case}");
    }
}
