//! The embedded backend: a durable partitioned log in one RocksDB database inside this
//! process, with in-process consumer groups.
//!
//! Moving parts, each in its own file:
//! - [`store`]: column families, key encodings, the record codec.
//! - `recovery`: rebuilds watermarks and writer state from the database on open.
//! - `writer`: the one thread that assigns offsets and group-commits appends and offset
//!   commits (one `WriteBatch`, one WAL write, per group).
//! - `producer` / `transaction`: validate and partition records, hand them to the writer.
//! - `reader` / `consumer`: fetch committed records; consumers wait on per-topic watch
//!   channels the writer bumps, never polling.
//! - `coordinator`: consumer-group membership and partition assignment.
//! - `admin` / `retention`: topics, and deleting old or superseded records.
//!
//! Ownership: [`EmbeddedLog`] owns the writer and retention threads and the only strong
//! reference to the database besides them; consumers and admins hold weak references, so
//! once the log is shut down and dropped the database closes even if handles linger.

mod admin;
mod consumer;
mod producer;
mod reader;
mod recovery;
mod retention;
mod store;
mod topic;
mod transaction;
mod writer;

#[cfg(test)]
mod tests;

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rocksdb::DB;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use producer::{BatchDelivery, EmbeddedProducer};

use self::producer::Ingress;
use self::retention::RetentionState;
use self::writer::{Command, WriterState};
use crate::config::EmbeddedConfig;
use crate::coordinator::Coordinator;
use crate::{Admin, Consumer, ConsumerOptions, EventLog, LogError, LogResult, Producer, Record, TransactionalProducer};

/// State shared by the writer, consumers, admin and retention.
pub(crate) struct Shared {
    pub db: DB,
    pub config: EmbeddedConfig,
    pub state: Mutex<WriterState>,
    pub ingress: Arc<Ingress>,
    pub coordinator: Coordinator,
    pub retention: Mutex<RetentionState>,
}

impl Shared {
    pub fn lock_state(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().expect("embedded log state lock poisoned: a writer panicked")
    }

    pub fn write_options(&self) -> rocksdb::WriteOptions {
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(self.config.fsync == crate::config::FsyncPolicy::Always);
        options
    }
}

/// Upgrades a handle's weak reference, or reports that the log is gone.
pub(crate) fn live(shared: &Weak<Shared>) -> LogResult<Arc<Shared>> {
    let shared = shared.upgrade().ok_or(LogError::Shutdown)?;
    shared.ingress.ensure_open()?;
    Ok(shared)
}

struct Threads {
    writer: JoinHandle<()>,
    writer_done: oneshot::Receiver<()>,
    retention: Option<(JoinHandle<()>, std_mpsc::Sender<()>, oneshot::Receiver<()>)>,
}

/// The embedded event log. See the module docs.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    threads: Mutex<Option<Threads>>,
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log in `config.data_dir`, rebuilds its in-memory state
    /// and starts the writer and retention threads. Works inside or outside a tokio runtime.
    pub fn open(config: &EmbeddedConfig, max_record_bytes: usize) -> LogResult<Arc<EmbeddedLog>> {
        let unavailable = |reason: String| LogError::Unavailable { endpoint: config.data_dir.display().to_string(), reason };
        std::fs::create_dir_all(&config.data_dir).map_err(|e| unavailable(format!("cannot create the data directory: {e}")))?;
        let db = store::open_db(&config.data_dir)?;
        let (state, topics) = recovery::load(&db)?;
        tracing::info!(data_dir = %config.data_dir.display(), topics = topics.len(), "embedded log opened");
        // Room for a few group commits' worth of commands before senders wait.
        let (tx, rx) = mpsc::channel(config.max_batch_records.max(256).saturating_mul(4));
        let ingress = Arc::new(Ingress { topics: RwLock::new(topics), tx, closed: CancellationToken::new(), max_record_bytes });
        let shared = Arc::new(Shared {
            db,
            config: config.clone(),
            state: Mutex::new(state),
            ingress,
            coordinator: Coordinator::default(),
            retention: Mutex::new(RetentionState::default()),
        });

        let (writer_done_tx, writer_done) = oneshot::channel();
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("agentlog-writer".into())
            .spawn(move || {
                writer::run(writer_shared, rx);
                let _ = writer_done_tx.send(());
            })
            .map_err(|e| unavailable(format!("cannot start the writer thread: {e}")))?;

        // 0 disables background retention (run_retention_now still works).
        let retention = if config.retention_check_interval_ms == 0 {
            None
        } else {
            let interval = Duration::from_millis(config.retention_check_interval_ms);
            let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
            let (done_tx, done_rx) = oneshot::channel();
            let weak = Arc::downgrade(&shared);
            let spawned = std::thread::Builder::new().name("agentlog-retention".into()).spawn(move || {
                retention::run_periodically(weak, interval, stop_rx);
                let _ = done_tx.send(());
            });
            match spawned {
                Ok(handle) => Some((handle, stop_tx, done_rx)),
                Err(e) => {
                    // Stop the writer we already started before failing.
                    shared.ingress.closed.cancel();
                    let _ = shared.ingress.tx.try_send(Command::Stop);
                    let _ = writer.join();
                    return Err(unavailable(format!("cannot start the retention thread: {e}")));
                }
            }
        };
        Ok(Arc::new(EmbeddedLog { shared, threads: Mutex::new(Some(Threads { writer, writer_done, retention })) }))
    }

    /// A concrete producer, for [`EmbeddedProducer::send_batch`].
    pub fn embedded_producer(&self) -> LogResult<EmbeddedProducer> {
        self.shared.ingress.ensure_open()?;
        Ok(EmbeddedProducer { ingress: Arc::clone(&self.shared.ingress) })
    }

    /// Appends `records` atomically in one write with one reply (bulk producers, benchmarks).
    pub async fn send_batch(&self, records: Vec<Record>) -> LogResult<BatchDelivery> {
        self.shared.ingress.send_batch(records).await
    }

    /// Applies retention and compaction as of `now_ms`, now (the background thread does the
    /// same every `retention_check_interval_ms`). Blocking: RocksDB scans and one write.
    pub fn run_retention_now(&self, now_ms: i64) -> LogResult<()> {
        self.shared.ingress.ensure_open()?;
        retention::run(&self.shared, now_ms)
    }

    fn take_threads(&self) -> Option<Threads> {
        self.threads.lock().expect("embedded log thread registry poisoned").take()
    }

    /// Refuses new work and asks every thread to stop; the writer first writes what is queued.
    fn signal_stop(&self, threads: &mut Threads) {
        self.shared.ingress.closed.cancel();
        // Only wakes an idle writer; a busy one (full queue) notices `closed` after its batch.
        let _ = self.shared.ingress.tx.try_send(Command::Stop);
        if let Some((_, stop, _)) = &threads.retention {
            let _ = stop.send(());
        }
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    fn orders_by_time(&self) -> bool {
        true
    }

    fn in_process(&self) -> bool {
        true
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn location(&self) -> String {
        self.shared.config.data_dir.display().to_string()
    }

    fn max_record_bytes(&self) -> usize {
        self.shared.ingress.max_record_bytes
    }

    fn producer(&self) -> LogResult<Arc<dyn Producer>> {
        Ok(Arc::new(self.embedded_producer()?))
    }

    fn consumer(&self, options: ConsumerOptions) -> LogResult<Box<dyn Consumer>> {
        self.shared.ingress.ensure_open()?;
        Ok(Box::new(consumer::EmbeddedConsumer::new(&self.shared, options)))
    }

    fn transactional_producer(&self, transactional_id: &str) -> LogResult<Arc<dyn TransactionalProducer>> {
        self.shared.ingress.ensure_open()?;
        if transactional_id.is_empty() {
            return Err(LogError::Invalid { what: "transactional id", reason: "must not be empty".into() });
        }
        Ok(Arc::new(transaction::EmbeddedTransactionalProducer::new(transactional_id, Arc::clone(&self.shared.ingress))))
    }

    fn admin(&self) -> Arc<dyn Admin> {
        Arc::new(admin::EmbeddedAdmin { shared: Arc::downgrade(&self.shared) })
    }

    async fn shutdown(&self, timeout: Duration) -> LogResult<()> {
        let Some(mut threads) = self.take_threads() else { return Ok(()) };
        self.signal_stop(&mut threads);
        let Threads { writer, mut writer_done, retention } = threads;
        let (retention_handle, mut retention_done) = match retention {
            Some((handle, _stop, done)) => (Some(handle), Some(done)),
            None => (None, None),
        };
        let finished = async {
            let _ = (&mut writer_done).await;
            if let Some(done) = retention_done.as_mut() {
                let _ = done.await;
            }
        };
        tokio::time::timeout(timeout, finished).await.map_err(|_| LogError::Timeout { operation: "embedded log shutdown", after: timeout })?;
        // Both threads signalled completion as their last act, so these joins return at once.
        let _ = writer.join();
        if let Some(handle) = retention_handle {
            let _ = handle.join();
        }
        // With fsync = never the WAL is only in the page cache; a clean shutdown syncs it.
        self.shared.db.flush_wal(true).map_err(store::storage("shutdown"))?;
        tracing::info!(data_dir = %self.shared.config.data_dir.display(), "embedded log shut down");
        Ok(())
    }
}

impl Drop for EmbeddedLog {
    /// Best effort without `shutdown`: stop the threads and wait for them (the writer only
    /// finishes the batch queued so far), so the database is closed when this returns.
    fn drop(&mut self) {
        let Some(mut threads) = self.take_threads() else { return };
        self.signal_stop(&mut threads);
        let _ = threads.writer.join();
        if let Some((handle, _, _)) = threads.retention {
            let _ = handle.join();
        }
    }
}
