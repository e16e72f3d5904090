//! RocksDB layout of the embedded log: column families, key encodings and the record codec.
//!
//! Keys are big-endian so that RocksDB's bytewise order is the log order:
//! - `records`:   topic_id u32 ‖ partition u32 ‖ offset u64            → encoded record
//! - `timeindex`: topic_id u32 ‖ partition u32 ‖ timestamp (sign-flipped u64) → offset u64
//! - `meta`:      `t/` ‖ name → topic JSON; `p/` ‖ topic_id ‖ partition → low i64 ‖ bytes u64;
//!   `next_topic_id` → u32
//! - `offsets`:   group ‖ 0x00 ‖ topic ‖ 0x00 ‖ partition u32 → committed next offset i64

use std::path::Path;

use bytes::Bytes;
use rocksdb::{BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options};
use serde::{Deserialize, Serialize};

use crate::{Header, LogError, LogResult, TopicSpec};

pub(crate) const CF_RECORDS: &str = "records";
pub(crate) const CF_TIMEINDEX: &str = "timeindex";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_OFFSETS: &str = "offsets";

pub(crate) const META_TOPIC_PREFIX: &[u8] = b"t/";
pub(crate) const META_PARTITION_PREFIX: &[u8] = b"p/";
pub(crate) const META_NEXT_TOPIC_ID: &[u8] = b"next_topic_id";

/// Maps a RocksDB failure onto the contract's error, naming what we were doing.
pub(crate) fn storage(operation: &'static str) -> impl FnOnce(rocksdb::Error) -> LogError {
    move |source| storage_error(operation, source)
}

/// A RocksDB failure: fatal (the log stops accepting writes rather than corrupt anything).
pub(crate) fn storage_error(operation: &'static str, source: rocksdb::Error) -> LogError {
    LogError::Backend { backend: "embedded log storage", operation, retryable: false, fatal: true, source: Box::new(source) }
}

/// Opens (creating if needed) the database with the four column families, tuned for
/// sequential appends: large memtables, lz4 on records, two background jobs (2-core hosts).
pub(crate) fn open_db(path: &Path) -> LogResult<DB> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(2);
    // Small column families (offsets, meta) keep old WAL files alive until they are flushed;
    // cap the WAL so RocksDB flushes them instead of letting WAL files pile up.
    db_opts.set_max_total_wal_size(512 << 20);
    db_opts.set_bytes_per_sync(1 << 20);
    // One thread writes: skip the concurrent-memtable and write-thread coordination costs.
    db_opts.set_allow_concurrent_memtable_write(false);
    db_opts.set_enable_write_thread_adaptive_yield(false);

    let mut records = Options::default();
    records.set_write_buffer_size(64 << 20);
    records.set_max_write_buffer_number(4);
    records.set_target_file_size_base(64 << 20);
    records.set_compression_type(DBCompressionType::Lz4);
    let mut table = BlockBasedOptions::default();
    // Records are read in offset order; bigger blocks mean fewer block lookups per fetch.
    table.set_block_size(32 << 10);
    // XXH3 is several times cheaper than crc32c without hardware CRC (portable builds).
    table.set_checksum_type(rocksdb::ChecksumType::XXH3);
    records.set_block_based_table_factory(&table);

    let mut small = Options::default();
    small.set_write_buffer_size(8 << 20);

    let cfs = vec![
        ColumnFamilyDescriptor::new(CF_RECORDS, records),
        ColumnFamilyDescriptor::new(CF_TIMEINDEX, small.clone()),
        ColumnFamilyDescriptor::new(CF_META, small.clone()),
        ColumnFamilyDescriptor::new(CF_OFFSETS, small),
    ];
    DB::open_cf_descriptors(&db_opts, path, cfs).map_err(storage("open"))
}

/// A column family handle that must exist because `open_db` created it.
pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> LogResult<&'a ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| LogError::Corrupt(format!("column family `{name}` is missing")))
}

pub(crate) fn partition_prefix(topic_id: u32, partition: u32) -> [u8; 8] {
    let mut key = [0u8; 8];
    key[..4].copy_from_slice(&topic_id.to_be_bytes());
    key[4..].copy_from_slice(&partition.to_be_bytes());
    key
}

pub(crate) fn record_key(topic_id: u32, partition: u32, offset: i64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&partition_prefix(topic_id, partition));
    key[8..].copy_from_slice(&(offset as u64).to_be_bytes());
    key
}

/// The offset stored in a `records` key (its last eight bytes).
pub(crate) fn offset_of_key(key: &[u8]) -> LogResult<i64> {
    let tail: [u8; 8] = key.get(8..16).and_then(|s| s.try_into().ok()).ok_or_else(|| LogError::Corrupt(format!("record key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(tail) as i64)
}

/// Flipping the sign bit makes negative timestamps sort before positive ones bytewise.
pub(crate) fn timestamp_key(topic_id: u32, partition: u32, timestamp_ms: i64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&partition_prefix(topic_id, partition));
    key[8..].copy_from_slice(&((timestamp_ms as u64) ^ (1 << 63)).to_be_bytes());
    key
}

pub(crate) fn timestamp_of_key(key: &[u8]) -> LogResult<i64> {
    let tail: [u8; 8] = key.get(8..16).and_then(|s| s.try_into().ok()).ok_or_else(|| LogError::Corrupt(format!("time index key of {} bytes", key.len())))?;
    Ok((u64::from_be_bytes(tail) ^ (1 << 63)) as i64)
}

pub(crate) fn decode_i64(value: &[u8], what: &str) -> LogResult<i64> {
    let bytes: [u8; 8] = value.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(|| LogError::Corrupt(format!("{what} of {} bytes", value.len())))?;
    Ok(i64::from_be_bytes(bytes))
}

/// The first key after every key of `topic_id` (exclusive upper bound of its ranges).
/// Topic ids are allocated from 1 upwards and never reach `u32::MAX` in practice.
pub(crate) fn topic_end(topic_id: u32) -> [u8; 4] {
    topic_id.saturating_add(1).to_be_bytes()
}

pub(crate) fn offsets_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + topic.len() + 6);
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&(partition as u32).to_be_bytes());
    key
}

/// The topic named in an `offsets` key, if the key is well formed.
pub(crate) fn topic_of_offsets_key(key: &[u8]) -> Option<&[u8]> {
    let rest = &key[key.iter().position(|b| *b == 0)? + 1..];
    rest.get(..rest.len().checked_sub(5)?)
}

pub(crate) fn meta_topic_key(name: &str) -> Vec<u8> {
    [META_TOPIC_PREFIX, name.as_bytes()].concat()
}

pub(crate) fn meta_partition_key(topic_id: u32, partition: u32) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(META_PARTITION_PREFIX);
    key[2..].copy_from_slice(&partition_prefix(topic_id, partition));
    key
}

pub(crate) fn encode_partition_meta(low: i64, bytes: u64) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&low.to_be_bytes());
    value[8..].copy_from_slice(&bytes.to_be_bytes());
    value
}

pub(crate) fn decode_partition_meta(value: &[u8]) -> LogResult<(i64, u64)> {
    if value.len() != 16 {
        return Err(LogError::Corrupt(format!("partition meta of {} bytes", value.len())));
    }
    Ok((decode_i64(&value[..8], "low watermark")?, decode_i64(&value[8..], "partition size")? as u64))
}

/// A topic as persisted in `meta`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredTopic {
    pub id: u32,
    pub spec: TopicSpec,
}

/// Appends the stored form of a record to `out`:
/// timestamp i64 ‖ key flag u8 [‖ key len u32 ‖ key] ‖ header count u32 ‖ (name len u32 ‖ name ‖
/// value len u32 ‖ value)* ‖ payload (the rest).
pub(crate) fn encode_record(out: &mut Vec<u8>, timestamp_ms: i64, key: Option<&[u8]>, headers: &[Header], payload: &[u8]) {
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    match key {
        Some(key) => {
            out.push(1);
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for header in headers {
        out.extend_from_slice(&(header.name.len() as u32).to_be_bytes());
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(&(header.value.len() as u32).to_be_bytes());
        out.extend_from_slice(&header.value);
    }
    out.extend_from_slice(payload);
}

/// A decoded record; key, header values and payload are zero-copy slices of `value`.
pub(crate) struct DecodedRecord {
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub headers: Vec<Header>,
    pub payload: Bytes,
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> LogResult<std::ops::Range<usize>> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.buf.len());
        let end = end.ok_or_else(|| LogError::Corrupt(format!("record truncated at byte {}", self.at)))?;
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }

    fn u32(&mut self) -> LogResult<usize> {
        let range = self.take(4)?;
        let bytes: [u8; 4] = self.buf[range].try_into().map_err(|_| LogError::Corrupt("length prefix".into()))?;
        Ok(u32::from_be_bytes(bytes) as usize)
    }
}

/// Only the timestamp, for retention and timestamp scans that do not need the rest.
pub(crate) fn record_timestamp(value: &[u8]) -> LogResult<i64> {
    decode_i64(value, "record")
}

/// Only the key (borrowed), for compaction.
pub(crate) fn record_key_bytes(value: &[u8]) -> LogResult<Option<&[u8]>> {
    let mut c = Cursor { buf: value, at: 8 };
    let flag = c.take(1)?;
    if value[flag.start] == 0 {
        return Ok(None);
    }
    let len = c.u32()?;
    let range = c.take(len)?;
    Ok(Some(&value[range]))
}

pub(crate) fn decode_record(value: &Bytes) -> LogResult<DecodedRecord> {
    let timestamp_ms = decode_i64(value, "record")?;
    let mut c = Cursor { buf: value, at: 8 };
    let flag = c.take(1)?;
    let key = if value[flag.start] == 0 {
        None
    } else {
        let len = c.u32()?;
        Some(value.slice(c.take(len)?))
    };
    let count = c.u32()?;
    // Cap the pre-allocation: a corrupt count must not allocate gigabytes.
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = c.u32()?;
        let name = std::str::from_utf8(&value[c.take(len)?]).map_err(|_| LogError::Corrupt("header name is not UTF-8".into()))?.to_owned();
        let len = c.u32()?;
        headers.push(Header { name, value: value.slice(c.take(len)?) });
    }
    let payload = value.slice(c.at..);
    Ok(DecodedRecord { timestamp_ms, key, headers, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_codec_round_trips() {
        let headers = vec![Header { name: "a".into(), value: Bytes::from_static(b"1") }, Header { name: "a".into(), value: Bytes::new() }];
        let mut out = Vec::new();
        encode_record(&mut out, -5, Some(b"key"), &headers, b"payload");
        let value = Bytes::from(out);
        let decoded = decode_record(&value).expect("decodes");
        assert_eq!(decoded.timestamp_ms, -5);
        assert_eq!(decoded.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(decoded.headers, headers);
        assert_eq!(&decoded.payload[..], b"payload");
        assert_eq!(record_key_bytes(&value).expect("key"), Some(&b"key"[..]));
        assert!(decode_record(&value.slice(..12)).is_err());
    }

    #[test]
    fn timestamps_sort_bytewise() {
        let keys: Vec<_> = [-10i64, -1, 0, 1, i64::MAX].iter().map(|t| timestamp_key(1, 0, *t)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(timestamp_of_key(&keys[0]).expect("ts"), -10);
    }

    #[test]
    fn offsets_key_names_its_topic() {
        let key = offsets_key("g", "topic.a", 3);
        assert_eq!(topic_of_offsets_key(&key), Some(&b"topic.a"[..]));
    }
}
