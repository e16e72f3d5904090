//! Errors of the event-log contract, shared by both backends.

use std::time::Duration;

/// What went wrong while talking to the event log. Both backends map their failures onto
/// these variants so callers (and the conformance suite) can match on the kind of failure
/// without knowing which backend produced it.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown topic `{topic}`: create it first (`agentlog topics apply`)")]
    UnknownTopic { topic: String },

    #[error("topic `{topic}` has no partition {partition}")]
    UnknownPartition { topic: String, partition: i32 },

    #[error("topic `{topic}` already exists")]
    TopicExists { topic: String },

    #[error("record of {size} bytes for topic `{topic}` exceeds the limit of {max} bytes (log.max_record_bytes)")]
    RecordTooLarge { topic: String, size: usize, max: usize },

    #[error("event log unavailable at {endpoint}: {reason}")]
    Unavailable { endpoint: String, reason: String },

    #[error("{operation} timed out after {after:?}")]
    Timeout { operation: &'static str, after: Duration },

    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    #[error("commit rejected for {topic}/{partition}: this member no longer owns the partition (group `{group}` rebalanced)")]
    NotAssigned { group: String, topic: String, partition: i32 },

    #[error("transaction `{transactional_id}` failed during {operation}: {reason}")]
    Transaction { transactional_id: String, operation: &'static str, reason: String, abortable: bool },

    #[error("embedded log storage error during {operation}: {source}")]
    Storage { operation: &'static str, #[source] source: rocksdb::Error },

    #[error("embedded log data is corrupt: {0}")]
    Corrupt(String),

    #[error("kafka error during {operation}: {source}")]
    Kafka { operation: &'static str, #[source] source: rdkafka::error::KafkaError },

    #[error("the event log is shutting down")]
    Shutdown,
}

impl LogError {
    /// Whether retrying the same call later may succeed (broker down, timeout, rebalance).
    pub fn retryable(&self) -> bool {
        match self {
            LogError::Unavailable { .. } | LogError::Timeout { .. } | LogError::NotAssigned { .. } => true,
            LogError::Transaction { abortable, .. } => *abortable,
            LogError::Kafka { source, .. } => source
                .rdkafka_error_code()
                .is_some_and(|code| matches!(code,
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                    | rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                    | rdkafka::types::RDKafkaErrorCode::RequestTimedOut
                    | rdkafka::types::RDKafkaErrorCode::MessageTimedOut
                    | rdkafka::types::RDKafkaErrorCode::OperationTimedOut
                    | rdkafka::types::RDKafkaErrorCode::QueueFull
                    | rdkafka::types::RDKafkaErrorCode::NotEnoughReplicas
                    | rdkafka::types::RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                    | rdkafka::types::RDKafkaErrorCode::LeaderNotAvailable
                    | rdkafka::types::RDKafkaErrorCode::NotLeaderForPartition)),
            _ => false,
        }
    }
}

pub type LogResult<T> = Result<T, LogError>;
