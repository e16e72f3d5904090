//! Cancellation requests as a worker sees them. Requests are broadcast on the single-partition
//! `control` topic; every worker reads all of it (no consumer group), first catching up on the
//! retained history so a task cancelled before this worker started never runs, then following
//! it live so a running attempt gets its cancel signal within milliseconds.
//!
//! A request names a task by (tenant, task id), its `Meta.tenant` and `task_id`: two tenants
//! may use one id, and a request of one never touches the other's task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::topics::TaskTopics;
use crate::events::AnyEvent;
use crate::events::decode_any_waiting;
use crate::events::wire::WireCodec;
use crate::log::follow::Follower;
use crate::log::{EventLog, LogError, SeekTo};

/// Cancel requests remembered at most; the oldest are forgotten first. A day of `control`
/// retention rarely holds more, and a forgotten request only costs an attempt that runs.
const MAX_REMEMBERED: usize = 200_000;

/// How long the control reader's catch-up may see no progress before the start fails (and
/// is retried).
const CATCH_UP_STALL: Duration = Duration::from_secs(30);

/// A task's identity: (tenant, task id).
pub type TaskRef = (String, String);

fn task_ref(tenant: &str, task_id: &str) -> TaskRef {
    (tenant.to_string(), task_id.to_string())
}

/// Which tasks were asked to cancel, and the cancel tokens of those running here.
#[derive(Default)]
pub struct Cancels {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    requested: HashMap<TaskRef, Option<String>>,
    order: VecDeque<TaskRef>,
    running: HashMap<TaskRef, CancellationToken>,
    /// Requests not yet handed out by `take_new`, when tracked (the supervisor's timers).
    fresh: Option<Vec<TaskRef>>,
}

impl Cancels {
    /// Also queues each new request for [`Cancels::take_new`].
    pub fn tracking_new() -> Self {
        Self { inner: Mutex::new(Inner { fresh: Some(Vec::new()), ..Inner::default() }) }
    }

    /// Tasks requested since the last call (only with [`Cancels::tracking_new`]).
    pub fn take_new(&self) -> Vec<TaskRef> {
        self.lock().fresh.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request for `tenant`'s task and signals its attempt if it runs here.
    pub fn request(&self, tenant: &str, task_id: &str, reason: Option<String>) {
        let key = task_ref(tenant, task_id);
        let mut inner = self.lock();
        if let Some(token) = inner.running.get(&key) {
            token.cancel();
        }
        if inner.requested.insert(key.clone(), reason).is_none() {
            inner.order.push_back(key.clone());
            if let Some(fresh) = inner.fresh.as_mut()
                && fresh.len() < MAX_REMEMBERED
            {
                fresh.push(key);
            }
            while inner.order.len() > MAX_REMEMBERED {
                if let Some(old) = inner.order.pop_front() {
                    inner.requested.remove(&old);
                }
            }
        }
    }

    /// `Some(reason)` when `tenant`'s task was asked to cancel.
    pub fn requested(&self, tenant: &str, task_id: &str) -> Option<Option<String>> {
        self.lock().requested.get(&task_ref(tenant, task_id)).cloned()
    }

    /// A cancel token for an attempt of `tenant`'s task about to run; already cancelled if a
    /// request came in.
    pub fn register(&self, tenant: &str, task_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        let key = task_ref(tenant, task_id);
        let mut inner = self.lock();
        if inner.requested.contains_key(&key) {
            token.cancel();
        }
        inner.running.insert(key, token.clone());
        token
    }

    pub fn unregister(&self, tenant: &str, task_id: &str) {
        self.lock().running.remove(&task_ref(tenant, task_id));
    }
}

/// Follows `control` into `cancels` until `stop` is cancelled. Returns once the history up to
/// now has been read (so callers can rely on it), with the task that keeps following.
pub async fn watch_control(
    log: &Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    topics: &TaskTopics,
    cancels: Arc<Cancels>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, LogError> {
    let mut follower = Follower::open(log, &[topics.control()], SeekTo::Earliest).await?;
    let apply = |event: AnyEvent, cancels: &Cancels| {
        if let AnyEvent::TaskCancelRequested(request) = event {
            cancels.request(&request.meta.tenant, &request.task_id, request.reason);
        }
    };
    // Catch up on the history before the worker takes a task, to its end even when its last
    // offsets are transaction markers; a log that stops answering fails the start (retried)
    // instead of hanging it.
    loop {
        let record = match follower.next_of_history(CATCH_UP_STALL).await {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(error) => {
                follower.close().await;
                return Err(error);
            }
        };
        // A cancel read while the registry is away is applied once it is back, never
        // skipped (the task would run although cancelled).
        match decode_any_waiting(&codec, &record.payload, &stop).await {
            Some(Ok(event)) => apply(event, &cancels),
            Some(Err(error)) => tracing::warn!(offset = record.offset, %error, "skipping an undecodable control record"),
            None => {
                follower.close().await;
                return Err(LogError::Shutdown);
            }
        }
    }
    Ok(tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = follower.next() => event,
            };
            match event {
                Ok(Some(record)) => match decode_any_waiting(&codec, &record.payload, &stop).await {
                    Some(Ok(event)) => apply(event, &cancels),
                    Some(Err(error)) => tracing::warn!(offset = record.offset, %error, "skipping an undecodable control record"),
                    None => break,
                },
                Ok(None) => {}
                Err(error) => {
                    // A broker hiccup: keep following once it is back; requests wait on the log.
                    tracing::warn!(%error, "reading the control topic failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
        follower.close().await;
    }))
}
