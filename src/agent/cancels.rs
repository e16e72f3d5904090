//! Cancellation requests as a worker sees them. Requests are broadcast on the single-partition
//! `control` topic; every worker reads all of it (no consumer group), first catching up on the
//! retained history so a task cancelled before this worker started never runs, then following
//! it live so a running attempt gets its cancel signal within milliseconds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::topics::TaskTopics;
use crate::events::AnyEvent;
use crate::events::decode_any;
use crate::events::wire::WireCodec;
use crate::log::{ConsumerEvent, ConsumerOptions, EventLog, LogError, SeekTo, TopicPartition};

/// Cancel requests remembered at most; the oldest are forgotten first. A day of `control`
/// retention rarely holds more, and a forgotten request only costs an attempt that runs.
const MAX_REMEMBERED: usize = 200_000;

/// Which tasks were asked to cancel, and the cancel tokens of those running here.
#[derive(Default)]
pub struct Cancels {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    requested: HashMap<String, Option<String>>,
    order: VecDeque<String>,
    running: HashMap<String, CancellationToken>,
    /// Requests not yet handed out by `take_new`, when tracked (the supervisor's timers).
    fresh: Option<Vec<String>>,
}

impl Cancels {
    /// Also queues each new request for [`Cancels::take_new`].
    pub fn tracking_new() -> Self {
        Self { inner: Mutex::new(Inner { fresh: Some(Vec::new()), ..Inner::default() }) }
    }

    /// Task ids requested since the last call (only with [`Cancels::tracking_new`]).
    pub fn take_new(&self) -> Vec<String> {
        self.lock().fresh.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request and signals the attempt if the task runs here.
    pub fn request(&self, task_id: &str, reason: Option<String>) {
        let mut inner = self.lock();
        if let Some(token) = inner.running.get(task_id) {
            token.cancel();
        }
        if inner.requested.insert(task_id.to_string(), reason).is_none() {
            inner.order.push_back(task_id.to_string());
            if let Some(fresh) = inner.fresh.as_mut()
                && fresh.len() < MAX_REMEMBERED
            {
                fresh.push(task_id.to_string());
            }
            while inner.order.len() > MAX_REMEMBERED {
                if let Some(old) = inner.order.pop_front() {
                    inner.requested.remove(&old);
                }
            }
        }
    }

    /// `Some(reason)` when the task was asked to cancel.
    pub fn requested(&self, task_id: &str) -> Option<Option<String>> {
        self.lock().requested.get(task_id).cloned()
    }

    /// A cancel token for an attempt about to run; already cancelled if a request came in.
    pub fn register(&self, task_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        let mut inner = self.lock();
        if inner.requested.contains_key(task_id) {
            token.cancel();
        }
        inner.running.insert(task_id.to_string(), token.clone());
        token
    }

    pub fn unregister(&self, task_id: &str) {
        self.lock().running.remove(task_id);
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
    let tp = TopicPartition::new(topics.control(), 0);
    let marks = log.admin().watermarks(&tp).await?;
    let mut consumer = log.consumer(ConsumerOptions::default())?;
    consumer.assign(&[(tp.clone(), SeekTo::Earliest)]).await?;
    let apply = |event: AnyEvent, cancels: &Cancels| {
        if let AnyEvent::TaskCancelRequested(request) = event {
            cancels.request(&request.task_id, request.reason);
        }
    };
    // Catch up on the history, bounded in time so a broken log fails the start instead of hanging.
    let mut next = marks.low;
    let catch_up = Duration::from_secs(30);
    while next < marks.high {
        match tokio::time::timeout(catch_up, consumer.next_event()).await {
            Err(_) => return Err(LogError::Timeout { operation: "reading the control topic history", after: catch_up }),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(ConsumerEvent::Record(record))) => {
                next = record.offset + 1;
                match decode_any(&codec, &record.payload).await {
                    Ok(event) => apply(event, &cancels),
                    Err(error) => tracing::warn!(offset = record.offset, %error, "skipping an undecodable control record"),
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = consumer.next_event() => event,
            };
            match event {
                Ok(ConsumerEvent::Record(record)) => match decode_any(&codec, &record.payload).await {
                    Ok(event) => apply(event, &cancels),
                    Err(error) => tracing::warn!(offset = record.offset, %error, "skipping an undecodable control record"),
                },
                Ok(_) => {}
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
        if let Err(error) = consumer.close().await {
            tracing::debug!(%error, "closing the control reader");
        }
    }))
}
