//! The projection's RocksDB layout and reads.
//!
//! Column families (keys are bytes; `‖` is concatenation, `0` a zero byte):
//! - `default`: `format` → [`FORMAT`], the version of this layout (see [`ProjectionStore::open`])
//! - `tasks`:   tenant 0 task id → [`TaskView`]: a task is the pair (tenant, task id), so two
//!   tenants using one id have two tasks
//! - `index`:   `T` tenant 0 created‖id, `S` tenant 0 status 0 created‖id,
//!   `A` tenant 0 agent type 0 created‖id → empty; `I` tenant 0 idempotency key → task id
//!   (of that tenant).
//!   `created` is `u64::MAX − created_at_us` big-endian so a forward scan is newest first.
//!   `J` tenant 0 created‖job id → empty, `created` from the job's `submitted_at_us` (0 when
//!   not known yet: such jobs list last), so jobs page newest first.
//! - `agents`:  agent id → [`AgentView`]
//! - `jobs`:    tenant 0 job id → [`JobView`]
//! - `dlq`:     `L` tenant 0 [`LetterPosition`] → [`DeadLetterView`] (a tenant's dead letters,
//!   newest first); `K` tenant 0 task id → the position of that task's latest dead letter
//!   (what a resubmit re-sends). Letters whose command does not decode name no tenant and
//!   are not indexed.
//! - `stats`:   `c` type → [`TypeCounters`]; `l` type → submit→outcome latency histogram,
//!   `d` type → run duration histogram (hdrhistogram V2, µs resolution in ms), all tenants
//!   together (for `/metrics`); `C`, `L`, `D` tenant 0 type → the same for one tenant (what
//!   `/v1/stats` shows it); `n` tenant → [`TenantCounters`]; `u` len‖type‖model →
//!   [`UsageCounters`] over all tenants (for `/metrics`), `U` tenant 0 len‖type‖model → one
//!   tenant's (for `/v1/stats`) (see [`super::keys::usage_key`])
//! - `stream`:  tenant 0 task id 0 partition u32‖offset u64 (big-endian) → [`StreamEntry`]:
//!   a task's progress reports and output chunks (`task.stream`) in log order, dropped by
//!   compaction [`STREAM_RETENTION`] after they were written (an agent may stream up to 32 MiB
//!   per attempt: kept forever, the projection would only grow)
//! - `offsets`: topic 0 partition u32 → next offset i64, written in the same WriteBatch as
//!   the state those records produced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use super::keys::{stat_key, task_key, tenant_stat_key, usage_key, usage_prefix};
use super::measure::Measure;
use super::views::{AgentView, DeadLetterView, JobView, StreamEntry, TaskStatus, TaskView, TenantCounters, TypeCounters, UsageCounters};

pub const CF_TASKS: &str = "tasks";
pub const CF_INDEX: &str = "index";
pub const CF_AGENTS: &str = "agents";
pub const CF_JOBS: &str = "jobs";
pub const CF_STATS: &str = "stats";
pub const CF_OFFSETS: &str = "offsets";
pub const CF_DLQ: &str = "dlq";
pub const CF_STREAM: &str = "stream";

/// How long the projection keeps a task's stream records: the default retention of the
/// `task.stream` topic (`topics/catalog.toml`), after which the log no longer has them either.
pub const STREAM_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether a `stream` record is past [`STREAM_RETENTION`] at `now_us`. A value that does not
/// decode is kept (a reader reports it; compaction must not hide it).
fn stream_expired(value: &[u8], now_us: i64) -> bool {
    decode::<StreamEntry>(b"stream", value).is_ok_and(|entry| entry.at_us < now_us - STREAM_RETENTION.as_micros() as i64)
}

/// The version of the key layout above, kept under [`FORMAT_KEY`] in the default column
/// family. A store of another version (or of none: before tenants scoped task keys, tasks
/// were keyed by id alone) is not read with this layout but emptied, and the projector
/// rebuilds it from the log from the start: a projection is derived and disposable.
/// Version 3 added the `dlq` family and the `J` job index: a store of version 2 has neither
/// (and no offsets of the `dlq` topic), so it is rebuilt. Version 4 stores a task's status as
/// a [`TaskStatus`] (postcard writes an enum as its index, not its name). Version 5 adds a
/// task's wait for a signal and the signals sent to it to [`TaskView`]. Version 6 adds a
/// completed task's usage to its outcome and the `u`/`U` usage counters: a store of version
/// 5 holds neither for the tasks it has, so it is rebuilt and every usage is counted. Version
/// 7 adds a task's trace id to [`TaskView`] (postcard's fields are positional: a view of
/// version 6 does not decode).
pub const FORMAT: &str = "7";
const FORMAT_KEY: &[u8] = b"format";
// `stream` came after version 4 without a new version: a store without it gets the family
// empty, and no offsets of `task.stream`, so the projector reads that topic from its start.
const ALL_CFS: [&str; 8] = [CF_TASKS, CF_INDEX, CF_AGENTS, CF_JOBS, CF_STATS, CF_DLQ, CF_STREAM, CF_OFFSETS];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("projection store at {path}: {source}")]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error("projection store: {operation}: {source}")]
    Rocks { operation: &'static str, source: rocksdb::Error },
    #[error("projection store: column family `{0}` is missing")]
    MissingFamily(&'static str),
    #[error("projection store: {what} is not valid: {reason}")]
    Corrupt { what: String, reason: String },
}

fn rocks(operation: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |source| StoreError::Rocks { operation, source }
}

/// Largest latency a histogram records (ms); larger values are clamped.
const HIST_MAX_MS: u64 = 7 * 24 * 3_600_000;

pub fn new_histogram() -> Histogram<u64> {
    // Three significant digits up to a week; `new_with_bounds` only fails for bad bounds.
    Histogram::new_with_bounds(1, HIST_MAX_MS, 3).unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits are valid"))
}

pub struct ProjectionStore {
    db: DB,
    path: PathBuf,
}

/// Filters of a task listing.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub tenant: String,
    pub status: Option<TaskStatus>,
    pub agent_type: Option<String>,
    /// Only tasks created at or after this time (µs).
    pub created_after_us: Option<i64>,
}

pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    /// Opaque cursor of the next page, when there may be one.
    pub next_cursor: Option<String>,
}

pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Opaque cursor of the next page, when there may be one.
    pub next_cursor: Option<String>,
}

pub struct DeadLetterPage {
    pub letters: Vec<DeadLetterView>,
    /// Opaque cursor of the next page, when there may be one.
    pub next_cursor: Option<String>,
}

/// Where a dead letter sits in its tenant's listing: by log timestamp, then partition and
/// offset (letters of one millisecond keep one order in every replay). Its key form
/// ([`LetterPosition::tail`]) reverses that order, so a forward scan is newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LetterPosition {
    pub timestamp_ms: i64,
    pub partition: i32,
    pub offset: i64,
}

impl LetterPosition {
    /// Bytes of [`LetterPosition::tail`].
    pub const LEN: usize = 20;

    pub fn tail(&self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[..8].copy_from_slice(&(u64::MAX - self.timestamp_ms.max(0) as u64).to_be_bytes());
        out[8..12].copy_from_slice(&(u32::MAX - self.partition.max(0) as u32).to_be_bytes());
        out[12..].copy_from_slice(&(u64::MAX - self.offset.max(0) as u64).to_be_bytes());
        out
    }

    /// The position of a tail, if it is one (a cursor comes from a client).
    pub fn from_tail(tail: &[u8]) -> Option<LetterPosition> {
        if tail.len() != Self::LEN {
            return None;
        }
        let ts = u64::MAX - u64::from_be_bytes(tail[..8].try_into().ok()?);
        let partition = u32::MAX - u32::from_be_bytes(tail[8..12].try_into().ok()?);
        let offset = u64::MAX - u64::from_be_bytes(tail[12..].try_into().ok()?);
        Some(LetterPosition { timestamp_ms: i64::try_from(ts).ok()?, partition: i32::try_from(partition).ok()?, offset: i64::try_from(offset).ok()? })
    }
}

fn tenant_prefix(tag: u8, tenant: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + tenant.len());
    key.push(tag);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key
}

/// The `dlq` key of `tenant`'s dead letter at `position`.
pub fn dead_letter_key(tenant: &str, position: &LetterPosition) -> Vec<u8> {
    let mut key = tenant_prefix(b'L', tenant);
    key.extend_from_slice(&position.tail());
    key
}

/// The `dlq` key naming the latest dead letter of `tenant`'s task `task_id`.
pub fn dead_letter_task_key(tenant: &str, task_id: &str) -> Vec<u8> {
    let mut key = tenant_prefix(b'K', tenant);
    key.extend_from_slice(task_id.as_bytes());
    key
}

/// The `index` key listing a job newest first.
pub fn job_index_key(view: &JobView) -> Vec<u8> {
    let mut key = tenant_prefix(b'J', &view.tenant);
    key.extend_from_slice(&created_key(view.submitted_at_us.unwrap_or(0)));
    key.extend_from_slice(view.job_id.as_bytes());
    key
}

/// Shortest tail of a job cursor: the 8 bytes of its time.
pub const JOB_CURSOR_MIN: usize = 8;

pub fn created_key(created_at_us: i64) -> [u8; 8] {
    (u64::MAX - created_at_us.max(0) as u64).to_be_bytes()
}

/// The index keys a task view has.
pub fn index_keys(view: &TaskView) -> Vec<Vec<u8>> {
    let created = created_key(view.created_at_us);
    // Each key allocated once at its final size: this runs for every task of every batch.
    let key = |tag: u8, part: Option<&str>| {
        let len = 2 + view.tenant.len() + part.map_or(0, |p| p.len() + 1) + created.len() + view.task_id.len();
        let mut key = Vec::with_capacity(len);
        key.push(tag);
        key.extend_from_slice(view.tenant.as_bytes());
        key.push(0);
        if let Some(part) = part {
            key.extend_from_slice(part.as_bytes());
            key.push(0);
        }
        key.extend_from_slice(&created);
        key.extend_from_slice(view.task_id.as_bytes());
        key
    };
    let mut keys = Vec::with_capacity(3);
    keys.push(key(b'T', None));
    keys.push(key(b'S', Some(view.status.as_str())));
    if let Some(agent_type) = &view.agent_type {
        keys.push(key(b'A', Some(agent_type)));
    }
    keys
}

pub fn idempotency_key(tenant: &str, key: &str) -> Vec<u8> {
    let mut k = vec![b'I'];
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The `stream` key of a task's record at `partition`/`offset`; with `None`, the prefix of all
/// of the task's records.
pub fn stream_key(tenant: &str, task_id: &str, position: Option<(i32, i64)>) -> Vec<u8> {
    let mut key = task_key(tenant, task_id);
    key.push(0);
    if let Some((partition, offset)) = position {
        key.extend_from_slice(&(partition as u32).to_be_bytes());
        key.extend_from_slice(&(offset as u64).to_be_bytes());
    }
    key
}

pub fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = topic.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&(partition as u32).to_be_bytes());
    key
}

fn parse_offset_key(key: &[u8]) -> Option<(String, i32)> {
    let zero = key.iter().position(|b| *b == 0)?;
    let topic = std::str::from_utf8(&key[..zero]).ok()?.to_string();
    let partition = u32::from_be_bytes(key.get(zero + 1..zero + 5)?.try_into().ok()?) as i32;
    Some((topic, partition))
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Views are plain data (strings, numbers, maps with string keys): serialising cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Postcard output appended to a borrowed Vec: single bytes are pushed inline (through
/// `io::Write` each varint byte was a `memcpy` call).
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes `value` into `buffer` (cleared first) and returns the bytes: one buffer reused for
/// every view of a batch instead of a new, repeatedly grown Vec per view. The bytes are the
/// same as [`encode`]'s.
pub fn encode_into<'b, T: Serialize>(value: &T, buffer: &'b mut Vec<u8>) -> &'b [u8] {
    buffer.clear();
    // Appending to a Vec cannot fail, and views are plain data (see [`encode`]).
    if postcard::serialize_with_flavor::<T, _, _>(value, AppendTo(&mut *buffer)).is_err() {
        buffer.clear();
    }
    buffer
}

pub fn decode<T: DeserializeOwned>(what: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { what: String::from_utf8_lossy(what).into_owned(), reason: e.to_string() })
}

pub fn encode_histogram(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    // Serialising into a Vec only fails for histograms too large for the format.
    let _ = V2Serializer::new().serialize(h, &mut out);
    out
}

pub fn decode_histogram(bytes: &[u8]) -> Result<Histogram<u64>, StoreError> {
    Deserializer::new().deserialize(&mut &bytes[..]).map_err(|e| StoreError::Corrupt { what: "latency histogram".into(), reason: format!("{e:?}") })
}

impl ProjectionStore {
    /// Opens (or creates) the store at `path`. A store written in another layout than
    /// [`FORMAT`] is emptied first (with a warning), so the projector rebuilds it from the log
    /// instead of misreading it.
    pub fn open(path: &Path) -> Result<ProjectionStore, StoreError> {
        let store = Self::open_as_is(path)?;
        match store.format()? {
            Some(format) if format == FORMAT => Ok(store),
            None if !store.holds_anything()? => {
                store.set_format()?;
                Ok(store)
            }
            found => {
                tracing::warn!(path = %path.display(), found = found.as_deref().unwrap_or("none"), expected = FORMAT, "projection store has another layout; emptying it to rebuild from the log");
                drop(store);
                rocksdb::DB::destroy(&Options::default(), path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
                let store = Self::open_as_is(path)?;
                store.set_format()?;
                Ok(store)
            }
        }
    }

    fn format(&self) -> Result<Option<String>, StoreError> {
        Ok(self.db.get(FORMAT_KEY).map_err(rocks("get format"))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn set_format(&self) -> Result<(), StoreError> {
        self.db.put(FORMAT_KEY, FORMAT.as_bytes()).map_err(rocks("put format"))
    }

    /// Whether anything was ever applied (state or offsets).
    fn holds_anything(&self) -> Result<bool, StoreError> {
        for cf in ALL_CFS {
            if let Some(item) = self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start).next() {
                item.map_err(rocks("scan"))?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn open_as_is(path: &Path) -> Result<ProjectionStore, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(2);
        options.set_max_total_wal_size(256 << 20);
        // Catch-up writes skip the WAL; atomic flushes keep state and offsets of all column
        // families consistent on disk without it.
        options.set_atomic_flush(true);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(if *name == CF_TASKS { 64 << 20 } else { 16 << 20 });
            // A catch-up writes hundreds of MB in minutes and flushes several L0 files; at
            // RocksDB's default of 4 a restored checkpoint starts compacting as it opens, and
            // on a small machine that compaction competed with applying the tail (restore
            // 0.19 s instead of 0.13 s for 50,000 events). Reads stay bloom-filtered per file.
            cf.set_level_zero_file_num_compaction_trigger(8);
            // Applying events looks tasks up by id, mostly ids not stored yet: bloom filters
            // answer those misses without reading blocks.
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            cf.set_block_based_table_factory(&table);
            if *name == CF_STREAM {
                cf.set_compaction_filter("agentlog-stream-retention", |_level: u32, _key: &[u8], value: &[u8]| {
                    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
                    if stream_expired(value, now_us) { rocksdb::compaction_filter::Decision::Remove } else { rocksdb::compaction_filter::Decision::Keep }
                });
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        Ok(ProjectionStore { db, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or(StoreError::MissingFamily(name))
    }

    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        // The WAL without fsync survives a process crash; the log is the truth for power loss
        // (a lost tail is re-applied from the offsets that were durable with it).
        self.db.write(batch).map_err(rocks("write batch"))
    }

    /// Writes without the WAL (catching up: a crash loses only memtables, and the flushed
    /// state with its offsets stays consistent through atomic flushes). Call [`Self::flush`]
    /// at the end.
    pub fn write_unlogged(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut options = rocksdb::WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(batch, &options).map_err(rocks("write batch"))
    }

    /// Flushes every column family's memtable together.
    pub fn flush(&self) -> Result<(), StoreError> {
        let cfs: Vec<&ColumnFamily> = ALL_CFS.iter().map(|name| self.cf(name)).collect::<Result<_, _>>()?;
        self.db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default()).map_err(rocks("flush"))
    }

    fn get_json<T: DeserializeOwned>(&self, cf: &'static str, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.db.get_cf(self.cf(cf)?, key).map_err(rocks("get"))? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Whether any task is stored (a catch-up into a store without any need not look up
    /// the tasks it has not written itself).
    pub fn holds_tasks(&self) -> Result<bool, StoreError> {
        match self.db.iterator_cf(self.cf(CF_TASKS)?, IteratorMode::Start).next() {
            Some(item) => item.map(|_| true).map_err(rocks("tasks scan")),
            None => Ok(false),
        }
    }

    /// The task `task_id` of `tenant` (another tenant's task of that id is another task).
    pub fn task(&self, tenant: &str, task_id: &str) -> Result<Option<TaskView>, StoreError> {
        self.get_json(CF_TASKS, &task_key(tenant, task_id))
    }

    /// Several tasks of one tenant in one call (missing ones are `None`).
    pub fn tasks(&self, tenant: &str, ids: &[&str]) -> Result<Vec<Option<TaskView>>, StoreError> {
        let cf = self.cf(CF_TASKS)?;
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| task_key(tenant, id)).collect();
        let found = self.db.batched_multi_get_cf(cf, keys.iter(), false);
        found
            .into_iter()
            .zip(&keys)
            .map(|(result, key)| match result.map_err(rocks("multi get"))? {
                Some(bytes) => decode(key, &bytes).map(Some),
                None => Ok(None),
            })
            .collect()
    }

    pub fn agent(&self, agent_id: &str) -> Result<Option<AgentView>, StoreError> {
        self.get_json(CF_AGENTS, agent_id.as_bytes())
    }

    /// The job `job_id` of `tenant`.
    pub fn job(&self, tenant: &str, job_id: &str) -> Result<Option<JobView>, StoreError> {
        self.get_json(CF_JOBS, &task_key(tenant, job_id))
    }

    pub fn task_by_idempotency_key(&self, tenant: &str, key: &str) -> Result<Option<String>, StoreError> {
        let found = self.db.get_cf(self.cf(CF_INDEX)?, idempotency_key(tenant, key)).map_err(rocks("get"))?;
        Ok(found.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Tasks newest first, through the narrowest index the filter allows.
    pub fn list_tasks(&self, filter: &TaskFilter, cursor: Option<&[u8]>, limit: usize) -> Result<TaskPage, StoreError> {
        let mut prefix = Vec::new();
        match (&filter.status, &filter.agent_type) {
            (Some(status), _) => {
                prefix.push(b'S');
                prefix.extend_from_slice(filter.tenant.as_bytes());
                prefix.push(0);
                prefix.extend_from_slice(status.as_str().as_bytes());
                prefix.push(0);
            }
            (None, Some(agent_type)) => {
                prefix.push(b'A');
                prefix.extend_from_slice(filter.tenant.as_bytes());
                prefix.push(0);
                prefix.extend_from_slice(agent_type.as_bytes());
                prefix.push(0);
            }
            (None, None) => {
                prefix.push(b'T');
                prefix.extend_from_slice(filter.tenant.as_bytes());
                prefix.push(0);
            }
        }
        let mut start = prefix.clone();
        if let Some(cursor) = cursor {
            start.extend_from_slice(cursor);
            // Strictly after the cursor's key.
            start.push(0);
        }
        let index = self.cf(CF_INDEX)?;
        let mut tasks = Vec::new();
        let mut last_tail = None;
        let mut more = false;
        for item in self.db.iterator_cf(index, IteratorMode::From(&start, Direction::Forward)) {
            let (key, _) = item.map_err(rocks("index scan"))?;
            if !key.starts_with(&prefix) {
                break;
            }
            if tasks.len() >= limit {
                more = true;
                break;
            }
            let tail = &key[prefix.len()..];
            if tail.len() < 8 {
                continue;
            }
            let created = i64::try_from(u64::MAX - u64::from_be_bytes(tail[..8].try_into().unwrap_or([0; 8]))).unwrap_or(i64::MAX);
            if filter.created_after_us.is_some_and(|after| created < after) {
                // Newest first: everything further is older.
                break;
            }
            let id = String::from_utf8_lossy(&tail[8..]).into_owned();
            last_tail = Some(tail.to_vec());
            if let Some(view) = self.task(&filter.tenant, &id)? {
                if filter.agent_type.as_ref().is_some_and(|t| view.agent_type.as_ref() != Some(t)) {
                    continue;
                }
                tasks.push(view);
            }
        }
        let next_cursor = if more { last_tail.map(|t| hex(&t)) } else { None };
        Ok(TaskPage { tasks, next_cursor })
    }

    /// Up to `limit` of a task's stream records in log order, after `after` (a position
    /// `(partition, offset)` already seen) or from the first.
    pub fn stream(&self, tenant: &str, task_id: &str, after: Option<(i32, i64)>, limit: usize) -> Result<Vec<StreamEntry>, StoreError> {
        let prefix = stream_key(tenant, task_id, None);
        let from = match after {
            // The next key after `after`'s: its offset + 1 (offsets are never u64::MAX).
            Some((partition, offset)) => stream_key(tenant, task_id, Some((partition, offset.saturating_add(1)))),
            None => prefix.clone(),
        };
        let cf = self.cf(CF_STREAM)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) = item.map_err(rocks("scan stream"))?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(decode(&key, &value)?);
        }
        Ok(out)
    }

    pub fn agents(&self) -> Result<Vec<AgentView>, StoreError> {
        self.scan(CF_AGENTS)
    }

    /// A page of `tenant`'s jobs, newest first, after `cursor` (the tail of the last key of
    /// the previous page): one bounded scan of the `J` index.
    pub fn jobs(&self, tenant: &str, cursor: Option<&[u8]>, limit: usize) -> Result<JobPage, StoreError> {
        let prefix = tenant_prefix(b'J', tenant);
        let (jobs, next_cursor) = self.page(CF_INDEX, &prefix, cursor, limit, |tail, _| match tail.get(JOB_CURSOR_MIN..) {
            Some(id) => self.job(tenant, &String::from_utf8_lossy(id)),
            None => Ok(None),
        })?;
        Ok(JobPage { jobs, next_cursor })
    }

    /// A page of `tenant`'s dead letters, newest first, after `cursor`.
    pub fn dead_letters(&self, tenant: &str, cursor: Option<&LetterPosition>, limit: usize) -> Result<DeadLetterPage, StoreError> {
        let prefix = tenant_prefix(b'L', tenant);
        let cursor = cursor.map(LetterPosition::tail);
        let (letters, next_cursor) = self.page(CF_DLQ, &prefix, cursor.as_ref().map(|c| c.as_slice()), limit, |key, value| decode(key, value).map(Some))?;
        Ok(DeadLetterPage { letters, next_cursor })
    }

    /// The latest dead letter of `tenant`'s task `task_id`.
    pub fn dead_letter(&self, tenant: &str, task_id: &str) -> Result<Option<DeadLetterView>, StoreError> {
        let Some(tail) = self.raw(CF_DLQ, &dead_letter_task_key(tenant, task_id))? else { return Ok(None) };
        let position = LetterPosition::from_tail(&tail)
            .ok_or_else(|| StoreError::Corrupt { what: format!("dead letter position of task `{task_id}`"), reason: "not a position".into() })?;
        self.get_json(CF_DLQ, &dead_letter_key(tenant, &position))
    }

    /// Up to `limit` items under `prefix` of `cf`, strictly after `prefix‖cursor`, made by
    /// `item` from each key's tail after the prefix and its value (`None` skips one); with
    /// the cursor of the next page when one more key follows. Holds at most `limit` items.
    fn page<T>(
        &self,
        cf: &'static str,
        prefix: &[u8],
        cursor: Option<&[u8]>,
        limit: usize,
        mut item: impl FnMut(&[u8], &[u8]) -> Result<Option<T>, StoreError>,
    ) -> Result<(Vec<T>, Option<String>), StoreError> {
        let mut start = prefix.to_vec();
        if let Some(cursor) = cursor {
            start.extend_from_slice(cursor);
            // Strictly after the cursor's key.
            start.push(0);
        }
        let mut out = Vec::with_capacity(limit.min(512));
        let mut last_tail: Option<Vec<u8>> = None;
        for entry in self.db.iterator_cf(self.cf(cf)?, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = entry.map_err(rocks("page scan"))?;
            if !key.starts_with(prefix) {
                return Ok((out, None));
            }
            if out.len() >= limit {
                return Ok((out, last_tail.map(|t| hex(&t))));
            }
            let tail = &key[prefix.len()..];
            last_tail = Some(tail.to_vec());
            if let Some(found) = item(tail, &value)? {
                out.push(found);
            }
        }
        Ok((out, None))
    }

    fn scan<T: DeserializeOwned>(&self, cf: &'static str) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
            let (key, value) = item.map_err(rocks("scan"))?;
            out.push(decode(&key, &value)?);
        }
        Ok(out)
    }

    /// Counters per agent type over all tenants (for operators: `/metrics`).
    pub fn type_counters(&self) -> Result<Vec<(String, TypeCounters)>, StoreError> {
        self.prefixed_stats(b"c")
    }

    /// Counters per agent type of `tenant`'s tasks only.
    pub fn tenant_type_counters(&self, tenant: &str) -> Result<Vec<(String, TypeCounters)>, StoreError> {
        let mut prefix = vec![b'C'];
        prefix.extend_from_slice(tenant.as_bytes());
        prefix.push(0);
        self.prefixed_stats(&prefix)
    }

    pub fn tenant_counters(&self, tenant: &str) -> Result<TenantCounters, StoreError> {
        Ok(self.get_json(CF_STATS, &stat_key(b'n', tenant))?.unwrap_or_default())
    }

    /// Usage per agent type and model: `tenant`'s, or all tenants' (`None`, for operators),
    /// ordered by agent type, then model.
    pub fn usage(&self, tenant: Option<&str>) -> Result<Vec<UsageCounters>, StoreError> {
        let prefix = usage_prefix(tenant);
        let mut out: Vec<UsageCounters> = self.prefixed_stats(&prefix)?.into_iter().map(|(_, counters)| counters).collect();
        out.sort_by(|a, b| (&a.agent_type, &a.model).cmp(&(&b.agent_type, &b.model)));
        Ok(out)
    }

    /// Stats under `prefix`, by the rest of their key.
    fn prefixed_stats<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_STATS)?, IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = item.map_err(rocks("stats scan"))?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((String::from_utf8_lossy(&key[prefix.len()..]).into_owned(), decode(&key, &value)?));
        }
        Ok(out)
    }

    /// A histogram over all tenants.
    pub fn histogram(&self, measure: Measure, agent_type: &str) -> Result<Option<Histogram<u64>>, StoreError> {
        self.histogram_at(&measure.key(agent_type))
    }

    /// One tenant's histogram.
    pub fn tenant_histogram(&self, measure: Measure, tenant: &str, agent_type: &str) -> Result<Option<Histogram<u64>>, StoreError> {
        self.histogram_at(&measure.tenant_key(tenant, agent_type))
    }

    pub fn histogram_at(&self, key: &[u8]) -> Result<Option<Histogram<u64>>, StoreError> {
        match self.db.get_cf(self.cf(CF_STATS)?, key).map_err(rocks("get"))? {
            Some(bytes) => decode_histogram(&bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn raw(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf)?, key).map_err(rocks("get"))
    }

    /// The next offset to read per source partition.
    pub fn offsets(&self) -> Result<HashMap<(String, i32), i64>, StoreError> {
        let mut out = HashMap::new();
        for item in self.db.iterator_cf(self.cf(CF_OFFSETS)?, IteratorMode::Start) {
            let (key, value) = item.map_err(rocks("offsets scan"))?;
            let Some(tp) = parse_offset_key(&key) else { continue };
            let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| StoreError::Corrupt { what: "offset".into(), reason: "not 8 bytes".into() })?;
            out.insert(tp, i64::from_be_bytes(bytes));
        }
        Ok(out)
    }

    /// A RocksDB checkpoint (hard links where possible): state and offsets as of one instant.
    pub fn checkpoint(&self, into: &Path) -> Result<(), StoreError> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(rocks("checkpoint"))?;
        checkpoint.create_checkpoint(into).map_err(rocks("create checkpoint"))
    }

    /// Every key and value of the state (not the offsets), in a stable text form: two
    /// projections of the same events dump the same text.
    pub fn dump(&self, out: &mut dyn std::io::Write) -> Result<(), StoreError> {
        for cf in [CF_TASKS, CF_INDEX, CF_AGENTS, CF_JOBS, CF_STATS, CF_DLQ] {
            for item in self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
                let (key, value) = item.map_err(rocks("dump scan"))?;
                let json = |v: serde_json::Result<String>| v.unwrap_or_else(|e| format!("unprintable: {e}"));
                let value_text = match (cf, key.first()) {
                    (CF_STATS, Some(b'l' | b'd' | b'L' | b'D')) => {
                        let h = decode_histogram(&value)?;
                        format!("n={} p50={} p99={} max={}", h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
                    }
                    (CF_STATS, Some(b'c' | b'C')) => json(serde_json::to_string(&decode::<TypeCounters>(&key, &value)?)),
                    (CF_STATS, _) => json(serde_json::to_string(&decode::<TenantCounters>(&key, &value)?)),
                    (CF_TASKS, _) => json(serde_json::to_string(&decode::<TaskView>(&key, &value)?)),
                    (CF_AGENTS, _) => json(serde_json::to_string(&decode::<AgentView>(&key, &value)?)),
                    (CF_JOBS, _) => json(serde_json::to_string(&decode::<JobView>(&key, &value)?)),
                    (CF_DLQ, Some(b'L')) => json(serde_json::to_string(&decode::<DeadLetterView>(&key, &value)?)),
                    (CF_DLQ, _) => hex(&value),
                    _ => String::from_utf8_lossy(&value).into_owned(),
                };
                writeln!(out, "{cf}\t{}\t{value_text}", hex(&key)).map_err(|e| StoreError::Corrupt { what: "dump output".into(), reason: e.to_string() })?;
            }
        }
        Ok(())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::StreamBody;

    fn entry(offset: i64, at_us: i64) -> StreamEntry {
        StreamEntry { partition: 0, offset, at_us, attempt: 1, body: StreamBody::Chunk { seq: offset, text: Some("tok".into()), json: None } }
    }

    #[test]
    fn compaction_drops_stream_records_past_the_retention() {
        let dir = tempfile::tempdir().expect("dir");
        let store = ProjectionStore::open(dir.path()).expect("store");
        let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros() as i64;
        let old = now_us - STREAM_RETENTION.as_micros() as i64 - 1_000_000;
        let mut batch = WriteBatch::default();
        let cf = store.cf(CF_STREAM).expect("cf");
        for (offset, at_us) in [(0, old), (1, old), (2, now_us)] {
            batch.put_cf(cf, stream_key("a", "t", Some((0, offset))), encode(&entry(offset, at_us)));
        }
        store.write(batch).expect("write");
        assert_eq!(store.stream("a", "t", None, 10).expect("read").len(), 3);
        store.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        let kept: Vec<i64> = store.stream("a", "t", None, 10).expect("read").iter().map(|e| e.offset).collect();
        assert_eq!(kept, vec![2], "records past the retention are gone, the recent one stays");
        assert!(!stream_expired(b"not postcard", now_us), "an undecodable value is kept");
    }
}
