//! What wakes the readers of a topic of an in-process log (embedded, memory): a counter bumped
//! after every append (and on deletion) that consumers wait on instead of polling, the flag
//! that tells them the topic is gone (a topic created again under its name is a new one), and
//! the wait itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::{BoxFuture, FutureExt, select_all};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::coordinator::Assignment;

pub(crate) struct TopicSignal {
    changed: watch::Sender<u64>,
    deleted: AtomicBool,
}

impl Default for TopicSignal {
    fn default() -> Self {
        Self { changed: watch::channel(0).0, deleted: AtomicBool::new(false) }
    }
}

impl TopicSignal {
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.notify();
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
}

/// What an in-process consumer waits on between reads: resolves when one of the topics it
/// reads changes (`topics`), its group assignment changes, or the log closes.
pub(crate) async fn wait_for_change<'a>(
    topics: impl Iterator<Item = &'a mut watch::Receiver<u64>>,
    assignment: Option<&'a mut watch::Receiver<Arc<Assignment>>>,
    closed: &CancellationToken,
) {
    let mut changes: Vec<BoxFuture<'a, ()>> = Vec::new();
    for rx in topics {
        changes.push(
            async move {
                // The sender lives as long as the topic the consumer holds; if it is ever gone
                // there is nothing more to wait for on it.
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            .boxed(),
        );
    }
    if let Some(assignment) = assignment {
        changes.push(
            async move {
                if assignment.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            .boxed(),
        );
    }
    if changes.is_empty() {
        closed.cancelled().await;
        return;
    }
    tokio::select! {
        _ = closed.cancelled() => {}
        _ = select_all(changes) => {}
    }
}
