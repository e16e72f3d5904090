//! The built-in Confluent-compatible schema registry, stored on the `schemas` topic.
//!
//! Why built in: producers in any language use Confluent's Avro serializers, which need a
//! registry; agentlog ships one so `agentlog dev` works with nothing else installed, and an
//! external Confluent registry can replace it (same REST API, same wire format).
//!
//! How it works:
//! - Every change is an event on a compacted single-partition topic ([`storage`]).
//! - A tail task reads that topic from the earliest offset into memory ([`state`]) and keeps
//!   reading, so a restart replays to the same state and several instances on one Kafka cluster
//!   see each other's writes.
//! - A write appends, waits until the record is durable, then waits until the tail has applied
//!   it before answering, so a client that got an id can immediately read it back here.
//!
//! **Single writer.** Writes are serialized within one instance (a mutex), and ids and versions
//! are computed from this instance's view. Two instances writing at the same moment could pick
//! the same id for different schemas; run one writing instance (the `api` process) and let the
//! others read, as Confluent does with its leader election.

pub mod answer;
pub mod compatibility;
pub mod config;
pub mod error;
mod extract;
pub mod http;
pub mod limits;
pub mod params;
pub mod server;
pub mod state;
pub mod storage;
pub mod stored_event;

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use compatibility::CompatibilityLevel;
pub use config::RegistryConfig;
pub use error::RegistryError;
pub use http::{bind, router, serve};
pub use limits::{SchemaLimits, SchemaRefused};
pub use server::RegistryServer;
pub use state::{SubjectVersion, VersionSelector};

use state::{State, parse_schema};
use storage::Tail;
use stored_event::StoredEvent;

use crate::log::{EventLog, Producer, TopicPartition};

/// How long startup waits for the replay of the schemas topic, and a write for the tail to
/// apply it. Generous: both are normally milliseconds; hitting them means the log is stuck.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry: its state, rebuilt from the log, and the handles to write to it.
pub struct Registry {
    topic: String,
    producer: Arc<dyn Producer>,
    state: Arc<RwLock<State>>,
    /// Next offset of the schemas partition the tail has applied.
    applied: watch::Receiver<i64>,
    /// Serializes writes of this instance (see "Single writer" above).
    write_lock: tokio::sync::Mutex<()>,
    /// What a schema must stay within, checked before it is parsed.
    limits: SchemaLimits,
    /// How long one compatibility check may take.
    compatibility_timeout: Duration,
    cancel: CancellationToken,
    tail: Mutex<Option<JoinHandle<()>>>,
}

impl Registry {
    /// [`Registry::open_with`] the default `[registry]` limits.
    pub async fn open(log: Arc<dyn EventLog>, topic: &str, shutdown: CancellationToken) -> Result<Arc<Registry>, RegistryError> {
        Self::open_with(log, topic, &RegistryConfig::default(), shutdown).await
    }

    /// Opens the registry on `topic` (created with 1 partition, compacted, if missing), replays
    /// it, and keeps tailing it until `shutdown` is cancelled or [`Registry::close`] is called.
    /// Schemas are held to the limits of `config`.
    pub async fn open_with(log: Arc<dyn EventLog>, topic: &str, config: &RegistryConfig, shutdown: CancellationToken) -> Result<Arc<Registry>, RegistryError> {
        let limits = SchemaLimits::of(config);
        storage::ensure_topic(log.as_ref(), topic).await?;
        let producer = log.producer().map_err(|source| RegistryError::Storage { operation: "open producer", source })?;
        let partition = TopicPartition::new(topic, storage::PARTITION);
        let high = log.admin().watermarks(&partition).await.map_err(|source| RegistryError::Storage { operation: "read schemas watermarks", source })?.high;
        let consumer = Tail::start(log.as_ref(), topic).await?;

        let state = Arc::new(RwLock::new(State::with_limits(limits)));
        let (applied_tx, applied) = watch::channel(0_i64);
        let cancel = shutdown.child_token();
        let tail = Tail { consumer, topic: topic.to_owned(), state: Arc::clone(&state), applied: applied_tx, cancel: cancel.clone() };
        let handle = tokio::spawn(tail.run());
        let registry = Arc::new(Registry {
            topic: topic.to_owned(),
            producer,
            state,
            applied,
            write_lock: tokio::sync::Mutex::new(()),
            limits,
            compatibility_timeout: Duration::from_millis(config.compatibility_timeout_ms),
            cancel,
            tail: Mutex::new(Some(handle)),
        });

        if let Err(e) = registry.wait_applied(high, "replay of the schemas topic").await {
            registry.close().await;
            return Err(e);
        }
        let (subjects, next_id) = {
            let state = registry.read();
            (state.subjects(true).len(), state.next_id())
        };
        tracing::info!(topic, backend = log.backend(), records = high, subjects, next_id, "schema registry ready");
        Ok(registry)
    }

    /// Stops the tail task and waits for it. Idempotent. The HTTP server is stopped separately
    /// (by the token given to [`serve`]).
    pub async fn close(&self) {
        self.cancel.cancel();
        let handle = self.tail.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle
            && let Err(e) = handle.await
        {
            tracing::error!(error = %e, "schema registry tail task panicked");
        }
    }

    /// The topic the registry is stored on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // State is only mutated by whole-event `apply` calls; a panic mid-apply cannot leave a
        // torn invariant that matters more than availability, so poisoning is ignored.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the tail has applied every offset below `next`.
    async fn wait_applied(&self, next: i64, operation: &'static str) -> Result<(), RegistryError> {
        let mut applied = self.applied.clone();
        match tokio::time::timeout(APPLY_TIMEOUT, applied.wait_for(|n| *n >= next)).await {
            Ok(Ok(_)) => Ok(()),
            // The sender is gone: the tail stopped (shutdown).
            Ok(Err(_)) => Err(RegistryError::Storage { operation, source: crate::log::LogError::Shutdown }),
            Err(_) => Err(RegistryError::Timeout { operation, after_ms: APPLY_TIMEOUT.as_millis() as u64 }),
        }
    }

    /// Appends `event`, waits for durability, then for the tail to apply it.
    async fn write(&self, event: StoredEvent) -> Result<(), RegistryError> {
        let offset = storage::append(self.producer.as_ref(), &self.topic, &event).await?;
        self.wait_applied(offset + 1, "apply of a registry write").await
    }

    /// Parses `raw` if it is within the limits (checked first: hostile schemas crash or hang
    /// the parser).
    fn parse(&self, raw: &str) -> Result<(apache_avro::Schema, String), RegistryError> {
        self.limits.check(raw).map_err(|refused| RegistryError::InvalidSchema { reason: refused.to_string() })?;
        parse_schema(raw)
    }

    /// [`Registry::parse`] on the blocking pool: a schema near the size limit takes
    /// milliseconds to check and parse, which the async threads serving other requests should
    /// not spend.
    async fn parse_blocking(&self, raw: &str) -> Result<(apache_avro::Schema, String), RegistryError> {
        let (limits, raw) = (self.limits, raw.to_owned());
        let parsed = tokio::task::spawn_blocking(move || {
            limits.check(&raw).map_err(|refused| RegistryError::InvalidSchema { reason: refused.to_string() })?;
            parse_schema(&raw)
        });
        parsed.await.map_err(|failed| RegistryError::InvalidSchema { reason: format!("parsing the schema failed: {failed}") })?
    }

    /// Why `candidate` is incompatible with `previous` at `level`, computed on the blocking
    /// pool (the check is CPU-bound, quadratic in enum symbols) within the time budget. Past
    /// the budget the check keeps its blocking thread until it ends, but nobody waits for it;
    /// the enum-symbol limit bounds how long that is.
    async fn incompatibilities(
        &self,
        level: CompatibilityLevel,
        candidate: apache_avro::Schema,
        previous: Vec<(u32, Arc<apache_avro::Schema>)>,
    ) -> Result<Vec<String>, RegistryError> {
        if previous.is_empty() || level == CompatibilityLevel::None {
            return Ok(Vec::new());
        }
        let check = tokio::task::spawn_blocking(move || {
            let previous: Vec<(u32, &apache_avro::Schema)> = previous.iter().map(|(v, s)| (*v, s.as_ref())).collect();
            compatibility::check(level, &candidate, &previous)
        });
        match tokio::time::timeout(self.compatibility_timeout, check).await {
            Ok(Ok(reasons)) => Ok(reasons),
            Ok(Err(failed)) => Err(RegistryError::InvalidSchema { reason: format!("the compatibility check failed on this schema: {failed}") }),
            Err(_) => Err(RegistryError::CompatibilityTimeout { budget_ms: self.compatibility_timeout.as_millis() as u64 }),
        }
    }

    /// The id of `schema` when it is already live in `subject`: what registering it again
    /// answers, without writing anything.
    pub fn registered_id(&self, subject: &str, schema: &str) -> Result<Option<u32>, RegistryError> {
        let (_, normalized) = self.parse(schema)?;
        Ok(self.read().find_in_subject(subject, &normalized, false).map(|existing| existing.id))
    }

    /// Registers `schema` under `subject` and returns its global id. An identical schema
    /// already live in the subject returns its id without a write; a schema known under another
    /// subject reuses that id (as Confluent does). Fails with `Incompatible` when the subject's
    /// compatibility level rejects it, and with `InvalidSchema` when it is over the limits.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let (parsed, normalized) = self.parse_blocking(schema).await?;
        let _writer = self.write_lock.lock().await;
        let (level, previous) = {
            let state = self.read();
            if let Some(existing) = state.find_in_subject(subject, &normalized, false) {
                return Ok(existing.id);
            }
            (state.level(Some(subject)), state.live_schemas(subject))
        };
        let reasons = self.incompatibilities(level, parsed, previous).await?;
        if !reasons.is_empty() {
            return Err(RegistryError::Incompatible { subject: subject.to_owned(), level: level.to_string(), reasons });
        }
        // The write lock is still held: nothing this instance writes came in between.
        let (id, version) = {
            let state = self.read();
            let id = state.id_for(&normalized).unwrap_or_else(|| state.next_id());
            (id, state.max_version(subject) + 1)
        };
        self.write(StoredEvent::Schema { subject: subject.to_owned(), version, id, schema: schema.to_owned(), deleted: false }).await?;
        tracing::info!(subject, version, id, "schema registered");
        Ok(id)
    }

    /// The schema text of a global id (ids survive soft deletes).
    pub fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        self.read().schema(id).map(|s| s.raw.clone()).ok_or(RegistryError::SchemaNotFound)
    }

    /// The highest global id ever given (0 before the first registration).
    pub fn max_id(&self) -> u32 {
        self.read().next_id() - 1
    }

    /// The subjects using a global id.
    pub fn subjects_of_id(&self, id: u32, include_deleted: bool) -> Result<Vec<(String, u32)>, RegistryError> {
        let state = self.read();
        state.schema(id).ok_or(RegistryError::SchemaNotFound)?;
        Ok(state.usages(id, include_deleted))
    }

    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.read().subjects(include_deleted)
    }

    pub fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<u32>, RegistryError> {
        Ok(self.read().versions(subject, include_deleted)?.into_iter().map(|(n, _)| n).collect())
    }

    pub fn version(&self, subject: &str, which: VersionSelector, include_deleted: bool) -> Result<SubjectVersion, RegistryError> {
        self.read().version(subject, which, include_deleted)
    }

    /// The version of `subject` holding a schema identical to `schema` (`POST /subjects/{s}`).
    pub fn lookup(&self, subject: &str, schema: &str, include_deleted: bool) -> Result<SubjectVersion, RegistryError> {
        let (_, normalized) = self.parse(schema)?;
        let state = self.read();
        state.versions(subject, include_deleted)?;
        state.find_in_subject(subject, &normalized, include_deleted).ok_or(RegistryError::SchemaNotFound)
    }

    /// Soft-deletes a version: it disappears from the subject (and from compatibility checks)
    /// while its id stays readable. Returns the deleted version number.
    pub async fn delete_version(&self, subject: &str, which: VersionSelector) -> Result<u32, RegistryError> {
        let _writer = self.write_lock.lock().await;
        let found = self.read().version(subject, which, false)?;
        let event = StoredEvent::Schema { subject: subject.to_owned(), version: found.version, id: found.id, schema: found.schema, deleted: true };
        self.write(event).await?;
        tracing::info!(subject, version = found.version, id = found.id, "schema version soft-deleted");
        Ok(found.version)
    }

    /// Why `schema` would be rejected against `which` version (latest: per the subject's level;
    /// a specific version: that version alone). Empty: compatible. A subject without versions
    /// accepts anything, as in Confluent.
    pub async fn check_compatibility(&self, subject: &str, which: VersionSelector, schema: &str) -> Result<Vec<String>, RegistryError> {
        let (parsed, _) = self.parse_blocking(schema).await?;
        let (level, previous) = {
            let state = self.read();
            let level = state.level(Some(subject));
            let mut live = state.live_schemas(subject);
            if let VersionSelector::Number(n) = which {
                live.retain(|(v, _)| *v == n);
                if live.is_empty() {
                    state.versions(subject, false)?;
                    return Err(RegistryError::VersionNotFound { subject: subject.to_owned(), version: n.to_string() });
                }
            }
            (level, live)
        };
        self.incompatibilities(level, parsed, previous).await
    }

    /// The compatibility level in force for `subject` (`None`: the global level).
    pub fn compatibility(&self, subject: Option<&str>) -> CompatibilityLevel {
        self.read().level(subject)
    }

    /// Sets the global level (`subject: None`) or a subject's level.
    pub async fn set_compatibility(&self, subject: Option<&str>, level: CompatibilityLevel) -> Result<CompatibilityLevel, RegistryError> {
        let _writer = self.write_lock.lock().await;
        self.write(StoredEvent::Config { subject: subject.map(str::to_owned), compatibility: level }).await?;
        tracing::info!(subject = subject.unwrap_or("(global)"), compatibility = %level, "compatibility level set");
        Ok(level)
    }
}

impl Drop for Registry {
    /// A registry dropped without `close` still stops its tail (it cannot await it here).
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
