//! Plain data that crosses the log contract: records, positions, topic specs.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A topic and one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A header: a name and opaque bytes, order preserved, names may repeat (as in Kafka).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
}

/// A record to append. `partition: None` lets the partitioner choose: murmur2 of the key
/// (Kafka's default), or round-robin-ish for records without a key.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    /// Milliseconds since the Unix epoch; `None` stamps the append time.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self { topic: topic.into(), payload: payload.into(), ..Default::default() }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header { name: name.into(), value: value.into() });
        self
    }

    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Bytes the record occupies for the size limit: key, payload and headers.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len()) + self.payload.len() + self.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>()
    }
}

/// A record read back from the log, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    pub timestamp_ms: i64,
}

impl ConsumedRecord {
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.partition)
    }

    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|h| h.name == name).map(|h| &h.value)
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// Where a consumer starts or moves to within a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    Earliest,
    Latest,
    /// The record at this offset is the next one read.
    Offset(i64),
    /// The first record whose timestamp is at or after this many ms since the epoch
    /// (the end of the partition when there is none).
    Timestamp(i64),
}

/// Low watermark: the first offset still stored. High watermark: the offset the next append
/// gets (for Kafka: the last stable offset readable under read_committed is at most this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// Consumer lag of one partition for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// The next offset the group will read; `None` when it never committed.
    pub committed: Option<i64>,
    pub high: i64,
    pub lag: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    #[default]
    Delete,
    Compact,
}

impl CleanupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// What a topic should look like. Retention `None` keeps records forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i16,
    #[serde(default)]
    pub retention_ms: Option<i64>,
    #[serde(default)]
    pub retention_bytes: Option<i64>,
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,
    /// Further backend-specific topic configs (Kafka topic configs, passed through).
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

fn default_replication() -> i16 {
    1
}

impl TopicDescription {
    /// What a topic created from `spec` is.
    pub fn of(spec: &TopicSpec) -> Self {
        TopicDescription {
            name: spec.name.clone(),
            partitions: spec.partitions,
            replication_factor: spec.replication_factor,
            cleanup_policy: spec.cleanup_policy,
            retention_ms: spec.retention_ms,
            retention_bytes: spec.retention_bytes,
        }
    }
}

/// Kafka's limit on topic names.
const MAX_TOPIC_NAME: usize = 249;

impl TopicSpec {
    /// What every in-process backend accepts (Kafka's broker checks its own rules).
    pub fn validate(&self) -> crate::LogResult<()> {
        let invalid = |reason: String| Err(crate::LogError::Invalid { what: "topic spec", reason });
        if self.name.is_empty() || self.name.len() > MAX_TOPIC_NAME {
            return invalid(format!("topic name must have 1 to {MAX_TOPIC_NAME} bytes"));
        }
        // The embedded log's offsets key separates group, topic and partition with NUL bytes.
        if self.name.contains('\0') {
            return invalid("topic name must not contain NUL".into());
        }
        if self.partitions < 1 {
            return invalid(format!("topic `{}`: partitions must be at least 1, got {}", self.name, self.partitions));
        }
        if self.replication_factor < 1 {
            return invalid(format!("topic `{}`: replication_factor must be at least 1, got {}", self.name, self.replication_factor));
        }
        Ok(())
    }

    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor: 1,
            retention_ms: None,
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            configs: BTreeMap::new(),
        }
    }
}

/// What a backend reports about an existing topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub cleanup_policy: CleanupPolicy,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
}

/// Wall-clock time in ms since the epoch: what record timestamps and retention count in.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
