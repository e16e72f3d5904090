//! A task following a topic in the background on behalf of a reader that owns it (the outcome
//! watch, the checkpoint index): cancelled when the owner stops it or is dropped, and
//! awaited on stop so its consumer closes before the owner reports itself stopped.

use std::sync::Mutex;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct FollowerTask {
    stop: CancellationToken,
    handle: Mutex<Option<JoinHandle<()>>>,
    /// What it follows, for the log line of a task that ended abnormally.
    what: &'static str,
}

impl FollowerTask {
    /// Spawns `follow`, which must end soon after `stop` is cancelled.
    pub fn spawn(what: &'static str, stop: CancellationToken, follow: impl Future<Output = ()> + Send + 'static) -> Self {
        Self { stop, handle: Mutex::new(Some(tokio::spawn(follow))), what }
    }

    /// Cancels the task and waits for it.
    pub async fn stop(&self) {
        self.stop.cancel();
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle
            && let Err(error) = handle.await
        {
            tracing::warn!(%error, follower = self.what, "a follower ended abnormally");
        }
    }
}

impl Drop for FollowerTask {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
