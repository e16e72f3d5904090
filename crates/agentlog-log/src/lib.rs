//! The event-log contract and its two backends.
//!
//! Everything in agentlog is a record on a partitioned topic. This module declares what a
//! backend must provide; `embedded` (RocksDB, in-process) and `kafka` (rdkafka) implement it,
//! and `tests/integration/conformance` proves they behave the same.
//!
//! # Semantics (Kafka's, on both backends)
//! - **Offsets** are per partition, start at 0, grow by one per record and are never reused.
//!   Retention and compaction remove records from the front or leave gaps; they never renumber.
//! - **Partitioning**: a record without an explicit partition goes to
//!   `murmur2(key) % partitions` ([`murmur2::partition_for_key`]), Kafka's Java default, so a
//!   key lands on the same partition whichever client produced it.
//! - **Append**: [`Producer::send`] returns as soon as the record is *accepted* (queued for the
//!   next batch); the returned [`Delivery`] resolves once it is *durable* (embedded: written to
//!   RocksDB's WAL in a group commit; Kafka: acknowledged by all in-sync replicas), with its
//!   partition and offset. Records of one producer to one partition keep their send order.
//! - **Reading** sees only durable, committed records: a reader never observes a record whose
//!   append has not been acknowledged, nor a record of an open or aborted transaction.
//! - **Committed offsets** name the *next* offset to read (Kafka's meaning): committing 10 for
//!   a partition means records 0..=9 are done.
//! - **Consumer groups**: members of one group split the partitions of the topics they
//!   subscribe to; when a member joins or leaves, partitions move and each member sees
//!   [`ConsumerEvent::Revoked`] then [`ConsumerEvent::Assigned`] in its event stream before
//!   any record of the new assignment. A member resumes a partition at the group's committed
//!   offset, or at the earliest offset when the group never committed.
//! - **Transactions** append records and commit consumed offsets as one atomic step: readers
//!   and the group see all of it or none of it.

pub mod backoff;
pub mod config;
pub(crate) mod coordinator;
pub mod embedded;
pub mod error;
pub mod follow;
pub mod kafka;
pub mod lag;
pub mod memory;
pub mod murmur2;
pub(crate) mod topic_signal;
pub mod types;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use error::{LogError, LogResult};
pub use types::*;

/// Resolves to where a record landed once it is durable.
pub type Delivery = Pin<Box<dyn Future<Output = LogResult<Position>> + Send>>;

/// Appends records. Cheap to share (`Arc<dyn Producer>`); sends from many tasks are batched.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Accepts `record` for the next batch and returns a handle that resolves once it is
    /// durable. Awaiting acceptance is the back-pressure point: it waits while the send queue
    /// is full. Fails (without appending) for an unknown topic, an oversized record, an
    /// unreachable log or a closed one. Records sent one after another by one task to one
    /// partition are appended in that order.
    async fn send(&self, record: Record) -> LogResult<Delivery>;
}

/// What a consumer reports, in order: rebalances interleave with records so a member always
/// knows which partitions it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerEvent {
    Record(ConsumedRecord),
    /// These partitions were added to this member.
    Assigned(Vec<TopicPartition>),
    /// These partitions were taken from this member; stop processing them. Offsets committed
    /// for them from now on are rejected with [`LogError::NotAssigned`].
    Revoked(Vec<TopicPartition>),
}

/// Opaque proof of group membership, handed to a transaction so it can commit offsets
/// on the group's behalf (Kafka: `ConsumerGroupMetadata`).
pub struct GroupMetadata(pub(crate) GroupMetadataInner);

pub(crate) enum GroupMetadataInner {
    /// A member of the in-process coordinator (the embedded and in-memory logs).
    InProcess {
        group: String,
        member: u64,
    },
    // Shared so a blocking librdkafka call can hold it off the async runtime.
    Kafka(Arc<rdkafka::consumer::ConsumerGroupMetadata>),
}

/// Reads records: either as a member of a consumer group (`subscribe`) or from partitions it
/// picks itself (`assign`, no group coordination: projections, replay, tail).
///
/// `next_event` is cancel-safe: drop the future (e.g. in `tokio::select!`) and nothing is lost.
#[async_trait]
pub trait Consumer: Send {
    /// Joins the consumer's group for these topics. Requires a group id.
    fn subscribe(&mut self, topics: &[String]) -> LogResult<()>;

    /// Reads these partitions from the given positions, outside any group's assignment.
    async fn assign(&mut self, partitions: &[(TopicPartition, SeekTo)]) -> LogResult<()>;

    /// The next record or rebalance. Waits (without polling loops on the embedded log) until
    /// one is available.
    async fn next_event(&mut self) -> LogResult<ConsumerEvent>;

    /// Moves the read position of a partition this consumer currently reads.
    async fn seek(&mut self, partition: &TopicPartition, to: SeekTo) -> LogResult<()>;

    /// Stops delivering records of these partitions (membership is kept), until `resume`.
    fn pause(&mut self, partitions: &[TopicPartition]) -> LogResult<()>;
    fn resume(&mut self, partitions: &[TopicPartition]) -> LogResult<()>;

    /// The partitions this consumer currently reads.
    fn assignment(&self) -> Vec<TopicPartition>;

    /// The next offset this consumer will read, per partition where it knows one. It moves
    /// past what the reader never sees (Kafka's transaction markers, aborted records), so a
    /// reader can tell it reached a partition's end even when the last offset is a marker.
    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        Vec::new()
    }

    /// Durably commits, for each partition, the next offset to read.
    async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> LogResult<()>;

    /// The group's committed next offsets for these partitions (`None`: never committed).
    async fn committed(&self, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>>;

    /// Membership proof for [`Transaction::commit_with_offsets`]; `None` outside a group.
    fn group_metadata(&self) -> Option<GroupMetadata>;

    /// Leaves the group at once (its partitions move to the other members) and releases
    /// resources. Dropping a consumer also leaves, but without waiting for it.
    async fn close(self: Box<Self>) -> LogResult<()>;
}

/// An open transaction. Dropping it without committing aborts it.
#[async_trait]
pub trait Transaction: Send {
    /// Adds a record; it becomes visible only when the transaction commits. Fails for an
    /// unknown topic or an oversized record like [`Producer::send`].
    async fn send(&mut self, record: Record) -> LogResult<()>;

    /// Commits every record sent and, atomically with them, these consumed offsets for the
    /// group `group` identifies. Returns the records' positions in send order.
    async fn commit_with_offsets(self: Box<Self>, offsets: &[(TopicPartition, i64)], group: Option<&GroupMetadata>) -> LogResult<Vec<Position>>;

    /// Discards every record sent.
    async fn abort(self: Box<Self>) -> LogResult<()>;
}

/// Creates transactions for one transactional id. One transaction at a time.
#[async_trait]
pub trait TransactionalProducer: Send + Sync {
    async fn begin(&self) -> LogResult<Box<dyn Transaction + '_>>;
}

/// Topic administration and offsets inspection.
#[async_trait]
pub trait Admin: Send + Sync {
    async fn create_topic(&self, spec: &TopicSpec) -> LogResult<()>;
    async fn describe_topic(&self, name: &str) -> LogResult<TopicDescription>;
    async fn delete_topic(&self, name: &str) -> LogResult<()>;
    async fn list_topics(&self) -> LogResult<Vec<String>>;
    async fn watermarks(&self, partition: &TopicPartition) -> LogResult<Watermarks>;
    /// The first offset whose timestamp is at or after `timestamp_ms`; `None` past the end.
    async fn offset_for_timestamp(&self, partition: &TopicPartition, timestamp_ms: i64) -> LogResult<Option<i64>>;
    /// The group's committed next offsets for these partitions.
    async fn committed_offsets(&self, group: &str, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>>;
    /// The timestamp (ms) of the first record at or after `offset` (a transaction's marker or
    /// a deleted record is passed over); `None` when there is none below the high watermark.
    /// How old the oldest task a worker group has not taken is (`/metrics`, backlog age).
    async fn timestamp_at(&self, partition: &TopicPartition, offset: i64) -> LogResult<Option<i64>>;
}

/// Options for a new consumer.
#[derive(Debug, Clone, Default)]
pub struct ConsumerOptions {
    /// The consumer group to join; `None` for assign-only consumers.
    pub group: Option<String>,
    /// A stable name for this member in logs (hostname, worker id).
    pub client_id: Option<String>,
    /// Deliver records of different partitions in timestamp order where the backend can
    /// (the embedded log; Kafka's interleaving is librdkafka's). A projection reading many
    /// topics sets it, so a task's events, written together on several topics, are read
    /// together.
    pub time_ordered: bool,
}

/// A backend: the factory for producers, consumers, transactions and admin.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// `embedded`, `kafka` or `memory`.
    fn backend(&self) -> &'static str;
    /// Where the log lives, for humans: a directory or bootstrap servers.
    fn location(&self) -> String;
    /// Whether the log lives inside this process (embedded, memory): no other process can
    /// serve its schema registry or set up its topics, so this one does.
    fn in_process(&self) -> bool {
        false
    }
    /// Whether consumers honour [`ConsumerOptions::time_ordered`].
    fn orders_by_time(&self) -> bool {
        false
    }
    /// The largest record (key + payload + headers) an append accepts (`log.max_record_bytes`);
    /// bigger ones fail with [`LogError::RecordTooLarge`]. Writers that build records from
    /// what tenants and agents send check against it first, so a record that cannot be
    /// written is replaced or refused instead of failing the write.
    fn max_record_bytes(&self) -> usize;
    fn producer(&self) -> LogResult<Arc<dyn Producer>>;
    fn consumer(&self, options: ConsumerOptions) -> LogResult<Box<dyn Consumer>>;
    fn transactional_producer(&self, transactional_id: &str) -> LogResult<Arc<dyn TransactionalProducer>>;
    fn admin(&self) -> Arc<dyn Admin>;
    /// Flushes outstanding appends and stops background work, waiting at most `timeout`.
    async fn shutdown(&self, timeout: Duration) -> LogResult<()>;
}
