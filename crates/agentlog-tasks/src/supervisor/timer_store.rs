//! The supervisor's index of pending timers, kept in RocksDB rather than in RAM.
//!
//! A million delayed tasks held in a map cost memory in proportion to their commands (the
//! in-memory wheel this replaces grew by hundreds of MB); on disk they cost what RocksDB is
//! allowed: a small write buffer and block cache set here, whatever the number of timers.
//!
//! The store is disposable. The `timers` topic is the source of truth: the store is wiped
//! and rebuilt from the topic every time a supervisor starts leading, so there is nothing to
//! migrate, no write-ahead log, and no durability to care about. Each open store holds its
//! own slot directory, `timers-<n>` under the state dir, claimed with an advisory lock on
//! `timers-<n>.lock` (removed when the store is dropped), so a leader and a standby on one
//! host never share one, and the slot of a supervisor that was killed (its lock went with its
//! process) is wiped and reused by the next instead of staying on disk for good.
//!
//! Layout (one column family; big-endian, sign-flipped integers so bytewise order is numeric):
//! - `d` ‖ due ms ‖ partition ‖ offset        → the timer (what firing does), postcard
//! - `i` ‖ partition ‖ offset                 → due ms ‖ its `t` key (empty without a task)
//! - `t` ‖ tenant length u32 ‖ tenant ‖ task id → partition ‖ offset (cancels by task)

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, DB, DBCompressionType, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::agent::cancels::TaskRef;
use crate::events::TaskSubmitted;

/// Memory the store may use for its memtables: two buffers of this size at most.
const WRITE_BUFFER_BYTES: usize = 8 << 20;
/// Memory for cached blocks, index and filter blocks included.
const BLOCK_CACHE_BYTES: usize = 8 << 20;

/// Slots tried before giving up: more supervisors than this sharing one state dir is a
/// misconfiguration, not a load to serve.
const MAX_SLOTS: usize = 64;

const DUE: u8 = b'd';
const ID: u8 = b'i';
const TASK: u8 = b't';

#[derive(Debug, thiserror::Error)]
pub enum TimerStoreError {
    #[error("preparing the timer index directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("all {MAX_SLOTS} timer index slots under {path} are held by other supervisors")]
    NoFreeSlot { path: PathBuf },
    #[error("opening the timer index at {path}: {source}")]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error("timer index {operation} failed: {source}")]
    Rocks { operation: &'static str, source: rocksdb::Error },
    #[error("timer index entry is corrupt: {0}")]
    Corrupt(String),
}

fn rocks(operation: &'static str) -> impl FnOnce(rocksdb::Error) -> TimerStoreError {
    move |source| TimerStoreError::Rocks { operation, source }
}

/// A timer is the record that carries it: `(partition, offset)` on the `timers` topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId {
    pub partition: i32,
    pub offset: i64,
}

/// What firing a timer does, settled when the timer was read (its command decoded once).
// Timers wait serialized on disk, and only the few firing now are held as values, so the
// size of the larger variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Submit the command to its lane (or cancel it, if cancellation was asked meanwhile).
    Submit(TaskSubmitted),
    /// The record can never be decoded: move it to the dead-letter topic with the reason.
    DeadLetter { payload: Vec<u8>, reason: String, kind: String },
}

/// A pending timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    /// The record's key (the task id), repeated on the fired marker and the dead letter.
    pub key: Option<Vec<u8>>,
    /// (tenant, task id) for cancels; `None` for a timer that is only dead-lettered.
    pub task: Option<TaskRef>,
    pub action: Action,
}

/// Pending timers by due time and by task, on disk. See the module doc.
pub struct TimerStore {
    db: DB,
    /// No live `d` key sorts below this one (every key below was deleted): the fire scan
    /// starts here instead of wading through the tombstones of everything fired.
    floor: Vec<u8>,
    /// The earliest due time, when known (`None` until the next scan).
    next_due: Option<Option<i64>>,
    pending: u64,
    // Declared after `db`: removes the directory once `db` is closed.
    dir: RemoveOnDrop,
    // Declared last: the slot stays claimed until its directory is gone.
    _slot: Option<File>,
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), %error, "could not remove the timer index");
        }
    }
}

/// Claims `lock` for this open file: `Ok(false)` when another holder has it. An flock is
/// per open file, so two stores of one process exclude each other too, and the kernel drops
/// it when its process dies, however it dies.
fn try_lock(lock: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor this `File` owns and keeps open.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    if error.kind() == std::io::ErrorKind::WouldBlock { Ok(false) } else { Err(error) }
}

impl TimerStore {
    /// Opens an empty store in the first free slot under `state_dir`, wiping what an earlier
    /// (perhaps killed) holder of that slot left there.
    pub fn open_in(state_dir: &Path) -> Result<TimerStore, TimerStoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TimerStoreError::Dir { path, source }
        };
        std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
        for slot in 0..MAX_SLOTS {
            let lock_path = state_dir.join(format!("timers-{slot}.lock"));
            let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
            if try_lock(&lock).map_err(io(&lock_path))? {
                let mut store = TimerStore::open_fresh(&state_dir.join(format!("timers-{slot}")))?;
                store._slot = Some(lock);
                return Ok(store);
            }
        }
        Err(TimerStoreError::NoFreeSlot { path: state_dir.to_path_buf() })
    }

    /// Opens an empty store at `dir`, deleting whatever an earlier run left there.
    pub fn open_fresh(dir: &Path) -> Result<TimerStore, TimerStoreError> {
        let io = |source| TimerStoreError::Dir { path: dir.to_path_buf(), source };
        if let Err(error) = std::fs::remove_dir_all(dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io(error));
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let guard = RemoveOnDrop(dir.to_path_buf());
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_max_background_jobs(2);
        options.set_write_buffer_size(WRITE_BUFFER_BYTES);
        options.set_max_write_buffer_number(2);
        options.set_compression_type(DBCompressionType::Lz4);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
        // Index and filter blocks count against the cache too, so they do not grow with the
        // number of timers outside it.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_bloom_filter(10.0, false);
        options.set_block_based_table_factory(&table);
        let db = DB::open(&options, dir).map_err(|source| TimerStoreError::Open { path: dir.to_path_buf(), source })?;
        Ok(TimerStore { db, floor: vec![DUE], next_due: Some(None), pending: 0, dir: guard, _slot: None })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// How many timers are pending (a record inserted twice counts twice).
    pub fn len(&self) -> u64 {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    pub fn insert(&mut self, id: TimerId, due_ms: i64, timer: &Timer) -> Result<(), TimerStoreError> {
        let due_key = due_key(due_ms, id);
        let task_key = timer.task.as_ref().map(|(tenant, task_id)| task_key(tenant, task_id)).unwrap_or_default();
        let value = postcard::to_stdvec(timer).map_err(|e| TimerStoreError::Corrupt(format!("encoding a timer: {e}")))?;
        let mut index = Vec::with_capacity(8 + task_key.len());
        index.extend_from_slice(&flip(due_ms).to_be_bytes());
        index.extend_from_slice(&task_key);
        // No lookup first (a point read per timer made the rebuild of a million timers seek
        // through files for keys that are never there): a record read twice carries the same
        // due time, so its entries are simply overwritten, and only `len` would count it twice.
        let mut batch = WriteBatch::default();
        batch.put(&due_key, value);
        batch.put(id_key(id), index);
        if !task_key.is_empty() {
            batch.put(&task_key, id_value(id));
        }
        self.write(batch)?;
        self.pending += 1;
        if due_key < self.floor {
            self.floor = due_key;
        }
        if let Some(known) = self.next_due {
            self.next_due = Some(Some(known.map_or(due_ms, |d| d.min(due_ms))));
        }
        Ok(())
    }

    /// Removes timer `id` (fired, or its fired marker read); `false` if it was not pending.
    pub fn remove(&mut self, id: TimerId) -> Result<bool, TimerStoreError> {
        let Some(index) = self.db.get(id_key(id)).map_err(rocks("get"))? else {
            return Ok(false);
        };
        let (due_raw, task_key) = split_index(&index)?;
        let mut batch = WriteBatch::default();
        batch.delete(due_key_raw(due_raw, id));
        batch.delete(id_key(id));
        if !task_key.is_empty() && self.db.get_pinned(task_key).map_err(rocks("get"))?.is_some_and(|v| *v == id_value(id)) {
            batch.delete(task_key);
        }
        self.write(batch)?;
        self.pending -= 1;
        if self.next_due == Some(Some(flip(due_raw))) {
            self.next_due = None;
        }
        Ok(true)
    }

    /// The pending timer of `tenant`'s task `task_id` (the latest, if it had several).
    pub fn find_task(&self, tenant: &str, task_id: &str) -> Result<Option<TimerId>, TimerStoreError> {
        match self.db.get_pinned(task_key(tenant, task_id)).map_err(rocks("get"))? {
            Some(value) => parse_id(&value).map(Some),
            None => Ok(None),
        }
    }

    /// Timer `id` with its due time, if pending.
    pub fn get(&self, id: TimerId) -> Result<Option<(i64, Timer)>, TimerStoreError> {
        let Some(index) = self.db.get_pinned(id_key(id)).map_err(rocks("get"))? else {
            return Ok(None);
        };
        let (due_raw, _) = split_index(&index)?;
        let value = self
            .db
            .get_pinned(due_key_raw(due_raw, id))
            .map_err(rocks("get"))?
            .ok_or_else(|| TimerStoreError::Corrupt(format!("timer {id:?} has no entry by due time")))?;
        Ok(Some((flip(due_raw), decode_timer(&value)?)))
    }

    /// The earliest due time of any pending timer.
    pub fn next_due(&mut self) -> Result<Option<i64>, TimerStoreError> {
        if let Some(known) = self.next_due {
            return Ok(known);
        }
        let first = self.first()?.map(|(due, _, _)| due);
        self.next_due = Some(first);
        Ok(first)
    }

    /// The pending timer due first, with its due time: the next to fire.
    pub fn first(&mut self) -> Result<Option<(i64, TimerId, Timer)>, TimerStoreError> {
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(self.floor.clone());
        read.set_iterate_upper_bound(vec![DUE + 1]);
        let mut iter = self.db.iterator_opt(IteratorMode::Start, read);
        let Some(item) = iter.next() else {
            self.next_due = Some(None);
            return Ok(None);
        };
        let (key, value) = item.map_err(rocks("scan"))?;
        let (due, id) = parse_due_key(&key)?;
        self.floor = key.to_vec();
        self.next_due = Some(Some(due));
        Ok(Some((due, id, decode_timer(&value)?)))
    }

    fn write(&self, batch: WriteBatch) -> Result<(), TimerStoreError> {
        // Rebuilt from the topic at every start: a write-ahead log would buy nothing.
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.db.write_opt(batch, &options).map_err(rocks("write"))
    }
}

fn flip(v: i64) -> i64 {
    // Applied to the two's-complement bits: sign-flipped, big-endian order is numeric order.
    ((v as u64) ^ (1 << 63)) as i64
}

fn due_key(due_ms: i64, id: TimerId) -> Vec<u8> {
    due_key_raw(flip(due_ms), id)
}

fn due_key_raw(due_raw: i64, id: TimerId) -> Vec<u8> {
    let mut key = Vec::with_capacity(21);
    key.push(DUE);
    key.extend_from_slice(&due_raw.to_be_bytes());
    key.extend_from_slice(&id_value(id));
    key
}

fn parse_due_key(key: &[u8]) -> Result<(i64, TimerId), TimerStoreError> {
    let corrupt = || TimerStoreError::Corrupt(format!("due key of {} bytes", key.len()));
    let due = i64::from_be_bytes(key.get(1..9).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?);
    Ok((flip(due), parse_id(key.get(9..).ok_or_else(corrupt)?)?))
}

fn id_key(id: TimerId) -> Vec<u8> {
    let mut key = Vec::with_capacity(13);
    key.push(ID);
    key.extend_from_slice(&id_value(id));
    key
}

fn id_value(id: TimerId) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&((id.partition as u32) ^ (1 << 31)).to_be_bytes());
    out[4..].copy_from_slice(&flip(id.offset).to_be_bytes());
    out
}

fn parse_id(bytes: &[u8]) -> Result<TimerId, TimerStoreError> {
    let corrupt = || TimerStoreError::Corrupt(format!("timer id of {} bytes", bytes.len()));
    if bytes.len() != 12 {
        return Err(corrupt());
    }
    let partition = (u32::from_be_bytes(bytes[..4].try_into().map_err(|_| corrupt())?) ^ (1 << 31)) as i32;
    let offset = flip(i64::from_be_bytes(bytes[4..].try_into().map_err(|_| corrupt())?));
    Ok(TimerId { partition, offset })
}

fn task_key(tenant: &str, task_id: &str) -> Vec<u8> {
    // Length-prefixed tenant: ("ab", "c") and ("a", "bc") are different keys.
    let mut key = Vec::with_capacity(5 + tenant.len() + task_id.len());
    key.push(TASK);
    key.extend_from_slice(&(tenant.len() as u32).to_be_bytes());
    key.extend_from_slice(tenant.as_bytes());
    key.extend_from_slice(task_id.as_bytes());
    key
}

/// An `i` value: the raw (flipped) due time and the timer's `t` key.
fn split_index(value: &[u8]) -> Result<(i64, &[u8]), TimerStoreError> {
    let due = value.get(..8).ok_or_else(|| TimerStoreError::Corrupt(format!("index value of {} bytes", value.len())))?;
    Ok((i64::from_be_bytes(due.try_into().map_err(|_| TimerStoreError::Corrupt("index value".into()))?), &value[8..]))
}

fn decode_timer(value: &[u8]) -> Result<Timer, TimerStoreError> {
    postcard::from_bytes(value).map_err(|e| TimerStoreError::Corrupt(format!("timer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Lane, Meta};

    fn timer(tenant: &str, task_id: &str) -> Timer {
        let task = TaskSubmitted::new(Meta::new("ev-1", tenant, "test"), task_id, "echo", Lane::High, br#"{"n":1}"#.to_vec());
        Timer { key: Some(task_id.as_bytes().to_vec()), task: Some((tenant.into(), task_id.into())), action: Action::Submit(task) }
    }

    fn id(partition: i32, offset: i64) -> TimerId {
        TimerId { partition, offset }
    }

    /// Fills a fresh store the way the supervisor does after a restart: inserts and fired
    /// markers in log order.
    fn rebuild(dir: &Path) -> TimerStore {
        let mut store = TimerStore::open_fresh(dir).expect("open");
        store.insert(id(1, 0), 3_000, &timer("a", "late")).expect("insert");
        store.insert(id(0, 0), 1_000, &timer("a", "first")).expect("insert");
        store.insert(id(0, 1), -5, &timer("a", "overdue")).expect("insert");
        store.insert(id(1, 1), 2_000, &timer("a", "fired")).expect("insert");
        store.insert(id(0, 2), 2_000, &timer("a", "second")).expect("insert");
        assert!(store.remove(id(1, 1)).expect("marker"), "a fired marker removes its timer");
        store
    }

    fn drain(store: &mut TimerStore) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        while let Some((due, id, timer)) = store.first().expect("first") {
            out.push((due, timer.task.expect("task").1));
            store.remove(id).expect("remove");
        }
        out
    }

    #[test]
    fn a_killed_supervisors_slot_is_wiped_and_reused_and_live_slots_are_never_shared() {
        let state = tempfile::tempdir().expect("tempdir");
        // What a supervisor killed with 9 leaves: its slot directory full of index files, and
        // a lock file nobody holds any more.
        std::fs::create_dir_all(state.path().join("timers-0")).expect("stale slot");
        std::fs::write(state.path().join("timers-0").join("000042.sst"), vec![0u8; 4096]).expect("stale file");
        std::fs::write(state.path().join("timers-0.lock"), b"").expect("stale lock");

        let mut first = TimerStore::open_in(state.path()).expect("open first");
        assert_eq!(first.dir(), state.path().join("timers-0"), "the dead holder's slot is taken over");
        assert!(!first.dir().join("000042.sst").exists(), "and wiped");
        first.insert(id(0, 0), 1_000, &timer("a", "kept")).expect("insert");
        let second = TimerStore::open_in(state.path()).expect("open second");
        assert_eq!(second.dir(), state.path().join("timers-1"), "a held slot is never shared");
        assert_eq!(first.find_task("a", "kept").expect("find"), Some(id(0, 0)), "the first store kept its timer");

        drop(first);
        drop(second);
        let left: Vec<String> = std::fs::read_dir(state.path())
            .expect("read state dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| !name.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "closed stores leave no index behind: {left:?}");
    }

    #[test]
    fn timers_come_out_in_due_order_across_a_reopen_and_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("timers");
        let expected = vec![(-5, "overdue".to_string()), (1_000, "first".into()), (2_000, "second".into()), (3_000, "late".into())];
        let mut store = rebuild(&path);
        assert_eq!(store.len(), 4);
        assert_eq!(store.next_due().expect("next"), Some(-5));
        // Half of it fires, then the process goes away with the rest pending.
        assert_eq!(store.first().expect("first").map(|(due, id, _)| (due, id)), Some((-5, id(0, 1))));
        store.remove(id(0, 1)).expect("fired");
        drop(store);
        assert!(!path.exists(), "the store removes its directory when dropped");
        // On disk, not in RAM: a reopen starts empty, and the rebuild from the log restores it.
        let store = TimerStore::open_fresh(&path).expect("reopen");
        assert!(store.is_empty());
        drop(store);
        let mut store = rebuild(&path);
        // Enough data to leave the memtable: the order must hold on disk files too.
        for n in 0..20_000 {
            store.insert(id(2, n), 10_000 + n, &timer("bulk", &format!("t{n}"))).expect("bulk");
        }
        store.db.flush().expect("flush");
        for n in 0..20_000 {
            assert!(store.remove(id(2, n)).expect("remove"));
        }
        assert_eq!(drain(&mut store), expected);
        assert_eq!(store.next_due().expect("next"), None);
        assert!(store.is_empty());
    }

    #[test]
    fn cancel_finds_the_timer_of_the_right_tenant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = TimerStore::open_fresh(&dir.path().join("timers")).expect("open");
        store.insert(id(0, 7), 5_000, &timer("tenant-a", "shared")).expect("insert");
        store.insert(id(1, 9), 6_000, &timer("tenant-b", "shared")).expect("insert");
        // A tenant that is a prefix of another plus the task id's first letters.
        store.insert(id(1, 10), 6_000, &timer("tenant-bs", "hared")).expect("insert");
        assert_eq!(store.find_task("tenant-b", "shared").expect("find"), Some(id(1, 9)));
        assert_eq!(store.find_task("tenant-a", "shared").expect("find"), Some(id(0, 7)));
        assert_eq!(store.find_task("tenant-c", "shared").expect("find"), None);
        let (due, found) = store.get(id(1, 9)).expect("get").expect("pending");
        assert_eq!((due, found.task), (6_000, Some(("tenant-b".to_string(), "shared".to_string()))));
        assert!(store.remove(id(1, 9)).expect("cancel"));
        assert_eq!(store.find_task("tenant-b", "shared").expect("find"), None);
        assert_eq!(store.find_task("tenant-a", "shared").expect("find"), Some(id(0, 7)), "the other tenant's timer stays");
        assert_eq!(store.find_task("tenant-bs", "hared").expect("find"), Some(id(1, 10)));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_decoded_command_survives_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = TimerStore::open_fresh(&dir.path().join("timers")).expect("open");
        let mut original = timer("t", "x");
        if let Action::Submit(task) = &mut original.action {
            task.labels.insert("k".into(), "v".into());
            task.not_before = Some(crate::events::TimestampMicros(42));
        }
        store.insert(id(0, 0), 1, &original).expect("insert");
        assert_eq!(store.get(id(0, 0)).expect("get"), Some((1, original)));
    }
}
