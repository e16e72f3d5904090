//! Reading committed data: record fetches, timestamp lookups, committed offsets.
//!
//! Readers never go past a partition's published high watermark, which the writer advances
//! only after the write that made the records durable.

use std::collections::VecDeque;

use bytes::Bytes;
use rocksdb::ReadOptions;

use super::Shared;
use super::store::{self, decode_record, offset_of_key, offsets_key, partition_prefix, record_key, record_timestamp, timestamp_key};
use super::topic::TopicShared;
use crate::{ConsumedRecord, LogError, LogResult, SeekTo, TopicPartition};

/// Most records, and roughly most bytes, read from RocksDB per fetch.
const FETCH_RECORDS: i64 = 512;
const FETCH_BYTES: usize = 1 << 20;

fn unknown_partition(topic: &TopicShared, partition: u32) -> LogError {
    LogError::UnknownPartition { topic: topic.spec.name.clone(), partition: partition as i32 }
}

/// Reads records of one partition from `*position` (moved up to the low watermark if
/// retention passed it) into `out`, up to a fetch's worth. Skips compaction gaps: returns with
/// `out` empty only when the partition has nothing at or after `*position` below high.
/// `*position` ends one past the last record read (or at the end of the scanned range).
pub(crate) fn fetch(shared: &Shared, topic: &TopicShared, tp: &TopicPartition, position: &mut i64, out: &mut VecDeque<ConsumedRecord>) -> LogResult<()> {
    let partition = tp.partition as u32;
    let (low, high) = topic.watermarks(partition).ok_or_else(|| unknown_partition(topic, partition))?;
    *position = (*position).max(low);
    let cf = store::cf(&shared.db, store::CF_RECORDS)?;
    while *position < high && out.is_empty() {
        let end = high.min(*position + FETCH_RECORDS);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(record_key(topic.id, partition, end));
        let mut iter = shared.db.raw_iterator_cf_opt(cf, options);
        iter.seek(record_key(topic.id, partition, *position));
        // One buffer for the whole fetch: records are then zero-copy slices of it.
        let mut buf = Vec::new();
        let mut spans: Vec<(i64, usize, usize)> = Vec::new();
        while let Some((key, value)) = iter.item() {
            spans.push((offset_of_key(key)?, buf.len(), value.len()));
            buf.extend_from_slice(value);
            if buf.len() >= FETCH_BYTES {
                break;
            }
            iter.next();
        }
        iter.status().map_err(store::storage("fetch"))?;
        let all = Bytes::from(buf);
        for (offset, start, len) in spans.iter().copied() {
            let d = decode_record(&all.slice(start..start + len))?;
            out.push_back(ConsumedRecord {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset,
                key: d.key,
                headers: d.headers,
                payload: d.payload,
                timestamp_ms: d.timestamp_ms,
            });
        }
        // Nothing in [position, end): a compaction gap; continue after it.
        *position = spans.last().map_or(end, |(offset, _, _)| offset + 1);
    }
    Ok(())
}

/// The first offset whose timestamp is at or after `timestamp_ms`; `None` past the end.
///
/// The time index has an entry only where a partition's running maximum timestamp grew, so
/// its first entry at or after the target is the earliest offset that can qualify; records
/// before it are all older. Retention and compaction may have removed that record, so scan
/// forward from there (usually zero steps) to the first stored record that qualifies.
pub(crate) fn offset_for_timestamp(shared: &Shared, topic: &TopicShared, partition: u32, timestamp_ms: i64) -> LogResult<Option<i64>> {
    let (low, high) = topic.watermarks(partition).ok_or_else(|| unknown_partition(topic, partition))?;
    let index = store::cf(&shared.db, store::CF_TIMEINDEX)?;
    let mut options = ReadOptions::default();
    // Partitions are below 2^31, so `partition + 1` is the next partition's prefix.
    options.set_iterate_upper_bound(partition_prefix(topic.id, partition + 1).to_vec());
    let mut iter = shared.db.raw_iterator_cf_opt(index, options);
    iter.seek(timestamp_key(topic.id, partition, timestamp_ms));
    let Some(value) = iter.value() else {
        iter.status().map_err(store::storage("offset for timestamp"))?;
        return Ok(None);
    };
    let candidate = store::decode_i64(value, "time index entry")?;
    drop(iter);
    let start = candidate.max(low);
    if start >= high {
        return Ok(None);
    }
    let mut iter = records_from(shared, topic, partition, start, high)?;
    while let Some((key, value)) = iter.item() {
        if record_timestamp(value)? >= timestamp_ms {
            return Ok(Some(offset_of_key(key)?));
        }
        iter.next();
    }
    iter.status().map_err(store::storage("offset for timestamp"))?;
    Ok(None)
}

/// An iterator over a partition's stored records from offset `start`, ending before `high`.
fn records_from<'a>(shared: &'a Shared, topic: &TopicShared, partition: u32, start: i64, high: i64) -> LogResult<rocksdb::DBRawIterator<'a>> {
    let records = store::cf(&shared.db, store::CF_RECORDS)?;
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(record_key(topic.id, partition, high));
    let mut iter = shared.db.raw_iterator_cf_opt(records, options);
    iter.seek(record_key(topic.id, partition, start));
    Ok(iter)
}

/// The timestamp of the first record at or after `offset` below the high watermark.
pub(crate) fn timestamp_at(shared: &Shared, topic: &TopicShared, partition: u32, offset: i64) -> LogResult<Option<i64>> {
    let (low, high) = topic.watermarks(partition).ok_or_else(|| unknown_partition(topic, partition))?;
    let start = offset.max(low);
    if start >= high {
        return Ok(None);
    }
    let iter = records_from(shared, topic, partition, start, high)?;
    match iter.value() {
        Some(value) => Ok(Some(record_timestamp(value)?)),
        None => {
            iter.status().map_err(store::storage("timestamp at offset"))?;
            Ok(None)
        }
    }
}

/// Where a read position lands: within `[low, high]`.
pub(crate) fn resolve_seek(shared: &Shared, topic: &TopicShared, partition: u32, to: SeekTo) -> LogResult<i64> {
    let (low, high) = topic.watermarks(partition).ok_or_else(|| unknown_partition(topic, partition))?;
    Ok(match to {
        SeekTo::Earliest => low,
        SeekTo::Latest => high,
        SeekTo::Offset(offset) => offset.clamp(low, high),
        SeekTo::Timestamp(ts) => offset_for_timestamp(shared, topic, partition, ts)?.unwrap_or(high),
    })
}

pub(crate) fn committed(shared: &Shared, group: &str, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>> {
    let cf = store::cf(&shared.db, store::CF_OFFSETS)?;
    partitions
        .iter()
        .map(|tp| {
            let value = shared.db.get_cf(cf, offsets_key(group, &tp.topic, tp.partition)).map_err(store::storage("read committed offsets"))?;
            value.map(|v| store::decode_i64(&v, "committed offset")).transpose()
        })
        .collect()
}
