//! Supervised components of one process: `agentlog dev` runs the schema registry's server, the
//! supervisor, one worker per agent type, the projector and the HTTP server side by side, and
//! none of them may take the others down or vanish unnoticed.
//!
//! A component is a factory of *runs*: given a cancellation token, it returns the future of
//! one run, which ends soon after the token is cancelled (draining what it holds). Each run is
//! its own task, so a panic ends that run only and comes back through its `JoinHandle`. A run
//! that ends while nobody asked it to stop — with an error, by a panic, or quietly — is logged
//! at once (one `error` line naming the component and the error) and started again after an
//! exponential back-off, which starts over once a run has lasted
//! [`RestartPolicy::healthy_after`].
//!
//! The [`ComponentBoard`] is what a reader sees: each component's state (running, restarting
//! since when and how often in a row, stopped), its restarts and its last error. `/readyz`
//! shows it and answers 503 while any component is restarting.
//!
//! A [`Components`] group stops as one: its token is cancelled, every run drains and is
//! awaited, a back-off in progress is cut short, and nothing starts again. A process stops its
//! groups in the order it needs (workers before the servers they write through).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// What a run ends with when it fails: any error (the components' own types vary).
pub type ComponentError = Box<dyn std::error::Error + Send + Sync>;

/// How quickly a failed component is started again.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// The back-off before the first restart; it doubles (with jitter) up to `max`.
    pub first: Duration,
    pub max: Duration,
    /// A run that lasted this long was healthy: the next failure starts from `first` again.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    /// 500 ms doubling to 30 s: a blip is over in a second, a component that cannot start
    /// (a port taken, a log it cannot open) costs two attempts a minute and an error line each.
    fn default() -> Self {
        Self { first: Duration::from_millis(500), max: Duration::from_secs(30), healthy_after: Duration::from_secs(60) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    /// Its last run failed; it starts again at `next_start_ms`.
    Restarting,
    /// Its group was stopped.
    Stopped,
}

/// One component's state, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentStatus {
    pub state: Phase,
    /// When it entered `state`, in ms since the epoch.
    pub since_ms: i64,
    /// Runs started after the first.
    pub restarts: u32,
    /// Failed runs in a row at its last failure (the count starts over when a failed run had
    /// lasted [`RestartPolicy::healthy_after`]).
    pub failures_in_a_row: u32,
    /// Why its last failed run ended.
    pub last_error: Option<String>,
    /// While restarting: when the next run starts, in ms since the epoch.
    pub next_start_ms: Option<i64>,
}

/// The states of a process's components, shared with whoever reports them (`/readyz`).
#[derive(Debug, Clone, Default)]
pub struct ComponentBoard {
    states: Arc<Mutex<BTreeMap<String, ComponentStatus>>>,
}

impl ComponentBoard {
    /// Every component's state, by name.
    pub fn snapshot(&self) -> BTreeMap<String, ComponentStatus> {
        self.lock().clone()
    }

    /// The components that are waiting out a back-off after a failure.
    pub fn restarting(&self) -> Vec<(String, ComponentStatus)> {
        self.lock().iter().filter(|(_, s)| s.state == Phase::Restarting).map(|(n, s)| (n.clone(), s.clone())).collect()
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut ComponentStatus)) {
        let mut states = self.lock();
        let status = states.entry(name.to_string()).or_insert_with(|| ComponentStatus {
            state: Phase::Running,
            since_ms: now_ms(),
            restarts: 0,
            failures_in_a_row: 0,
            last_error: None,
            next_start_ms: None,
        });
        let before = status.state;
        change(status);
        if status.state != before {
            status.since_ms = now_ms();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ComponentStatus>> {
        // A panic while holding the lock left a map that is still whole: keep using it.
        self.states.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A component whose run failed while its group was stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopFailure {
    pub component: String,
    pub error: String,
}

/// A group of supervised components that stop together.
pub struct Components {
    board: ComponentBoard,
    policy: RestartPolicy,
    stop: CancellationToken,
    supervisors: JoinSet<Option<StopFailure>>,
}

impl Components {
    pub fn new(board: ComponentBoard, policy: RestartPolicy) -> Self {
        Self { board, policy, stop: CancellationToken::new(), supervisors: JoinSet::new() }
    }

    /// Starts component `name`: `start` is called for each run with the run's token.
    pub fn spawn<F, Fut, E>(&mut self, name: impl Into<String>, mut start: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<ComponentError> + 'static,
    {
        self.spawn_boxed(name.into(), Box::new(move |token| Box::pin(start(token).map(|ended| ended.map_err(Into::into)))));
    }

    /// The supervision loop, compiled once here: the generic [`Components::spawn`] only boxes
    /// its component, so a crate that starts components does not compile this loop again.
    #[inline(never)]
    fn spawn_boxed(&mut self, name: String, start: Start) {
        self.board.update(&name, |s| s.state = Phase::Running);
        let supervision = Supervision { name, board: self.board.clone(), policy: self.policy.clone(), stop: self.stop.clone() };
        self.supervisors.spawn(supervision.run(start));
    }

    /// Stops every component (each run drains) and waits for them; the failures of runs that
    /// ended badly while stopping.
    pub async fn stop(mut self) -> Vec<StopFailure> {
        self.stop.cancel();
        let mut failures = Vec::new();
        while let Some(joined) = self.supervisors.join_next().await {
            match joined {
                Ok(None) => {}
                Ok(Some(failure)) => failures.push(failure),
                Err(error) => failures.push(StopFailure { component: "supervision".into(), error: ended(error) }),
            }
        }
        failures
    }
}

/// The loop that keeps one component running.
struct Supervision {
    name: String,
    board: ComponentBoard,
    policy: RestartPolicy,
    stop: CancellationToken,
}

/// A component's factory of runs, boxed.
type Start = Box<dyn FnMut(CancellationToken) -> BoxFuture<'static, Result<(), ComponentError>> + Send>;

impl Supervision {
    async fn run(self, mut start: Start) -> Option<StopFailure> {
        let mut backoff = Backoff::new(self.policy.first, self.policy.max);
        loop {
            let began = Instant::now();
            let token = self.stop.child_token();
            // Should this loop be dropped (its group dropped without `stop`), the run is
            // cancelled with it rather than left running unowned.
            let _cancel_run = token.clone().drop_guard();
            let run = start(token);
            let joined = tokio::spawn(run).await;
            let error = match joined {
                Ok(Ok(())) if self.stop.is_cancelled() => {
                    self.board.update(&self.name, |s| {
                        s.state = Phase::Stopped;
                        s.next_start_ms = None;
                    });
                    return None;
                }
                Ok(Ok(())) => "ended without being asked to stop".to_string(),
                Ok(Err(error)) => with_sources(error.as_ref()),
                Err(error) => ended(error),
            };
            if self.stop.is_cancelled() {
                tracing::error!(component = %self.name, %error, "component failed while stopping");
                self.board.update(&self.name, |s| {
                    s.state = Phase::Stopped;
                    s.last_error = Some(error.clone());
                    s.next_start_ms = None;
                });
                return Some(StopFailure { component: self.name, error });
            }
            if began.elapsed() >= self.policy.healthy_after {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            let failures = backoff.failures();
            tracing::error!(component = %self.name, %error, failures_in_a_row = failures, restart_in_ms = delay.as_millis() as u64, "component stopped; starting it again after a back-off");
            self.board.update(&self.name, |s| {
                s.state = Phase::Restarting;
                s.failures_in_a_row = failures;
                s.last_error = Some(error);
                s.next_start_ms = Some(now_ms() + delay.as_millis() as i64);
            });
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.board.update(&self.name, |s| {
                        s.state = Phase::Stopped;
                        s.next_start_ms = None;
                    });
                    return None;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            self.board.update(&self.name, |s| {
                s.state = Phase::Running;
                s.restarts += 1;
                s.next_start_ms = None;
            });
        }
    }
}

/// `error` and its sources, each once (many errors already print their source).
fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// Why a run's task ended without returning: a panic (with its message) or an abort.
fn ended(error: JoinError) -> String {
    if !error.is_panic() {
        return format!("its task was cancelled: {error}");
    }
    let panic = error.into_panic();
    let message =
        panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a non-text payload".into());
    format!("panicked: {message}")
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    fn quick() -> RestartPolicy {
        RestartPolicy { first: Duration::from_millis(20), max: Duration::from_millis(100), healthy_after: Duration::from_secs(60) }
    }

    /// Waits up to 10 s for `done`.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("boom {0}")]
    struct Boom(u32);

    #[tokio::test]
    async fn a_failing_component_is_restarted_and_its_state_shown() {
        let board = ComponentBoard::default();
        let mut group = Components::new(board.clone(), quick());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        group.spawn("flaky", move |stop: CancellationToken| {
            let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if run <= 2 {
                    return Err(Boom(run));
                }
                stop.cancelled().await;
                Ok(())
            }
        });
        until("the third run", || runs.load(Ordering::SeqCst) == 3).await;
        let status = board.snapshot()["flaky"].clone();
        assert_eq!((status.state, status.restarts, status.failures_in_a_row), (Phase::Running, 2, 2), "{status:?}");
        assert_eq!(status.last_error.as_deref(), Some("boom 2"));
        assert!(group.stop().await.is_empty());
        assert_eq!(runs.load(Ordering::SeqCst), 3, "nothing starts once stopped");
        assert_eq!(board.snapshot()["flaky"].state, Phase::Stopped);
    }

    #[tokio::test]
    async fn a_panic_and_a_quiet_exit_are_restarted_too() {
        let board = ComponentBoard::default();
        let mut group = Components::new(board.clone(), quick());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        group.spawn("panicky", move |stop: CancellationToken| {
            let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match run {
                    1 => panic!("lost my marbles"),
                    2 => Ok::<(), Boom>(()),
                    _ => {
                        stop.cancelled().await;
                        Ok(())
                    }
                }
            }
        });
        until("the second run", || runs.load(Ordering::SeqCst) >= 2).await;
        until("the third run", || runs.load(Ordering::SeqCst) == 3).await;
        let status = board.snapshot()["panicky"].clone();
        assert_eq!(status.restarts, 2, "{status:?}");
        assert_eq!(status.last_error.as_deref(), Some("ended without being asked to stop"));
        assert!(group.stop().await.is_empty());
    }

    #[tokio::test]
    async fn a_restarting_component_is_shown_and_stop_cuts_its_back_off_short() {
        let board = ComponentBoard::default();
        let policy = RestartPolicy { first: Duration::from_secs(30), ..quick() };
        let mut group = Components::new(board.clone(), policy);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        group.spawn("broken", move |_stop: CancellationToken| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(std::io::Error::other("port taken")) }
        });
        until("the back-off", || !board.restarting().is_empty()).await;
        let (name, status) = board.restarting().remove(0);
        assert_eq!(name, "broken");
        assert_eq!((status.failures_in_a_row, status.last_error.as_deref()), (1, Some("port taken")));
        assert!(status.next_start_ms.is_some_and(|at| at > status.since_ms));
        let began = Instant::now();
        assert!(group.stop().await.is_empty());
        assert!(began.elapsed() < Duration::from_secs(5), "stop waited out the back-off");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "no restart during shutdown");
        assert_eq!(board.snapshot()["broken"].state, Phase::Stopped);
    }

    #[tokio::test]
    async fn stop_waits_for_every_run_to_drain_and_reports_failed_drains() {
        let board = ComponentBoard::default();
        let mut group = Components::new(board.clone(), quick());
        let drained = Arc::new(AtomicBool::new(false));
        let flag = drained.clone();
        group.spawn("slow", move |stop: CancellationToken| {
            let flag = flag.clone();
            async move {
                stop.cancelled().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                flag.store(true, Ordering::SeqCst);
                Ok::<(), Boom>(())
            }
        });
        group.spawn("messy", |stop: CancellationToken| async move {
            stop.cancelled().await;
            Err(Boom(9))
        });
        let failures = group.stop().await;
        assert!(drained.load(Ordering::SeqCst), "stop returned before the run drained");
        assert_eq!(failures, vec![StopFailure { component: "messy".into(), error: "boom 9".into() }]);
    }
}
