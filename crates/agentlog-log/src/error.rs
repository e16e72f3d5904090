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

    #[error("embedded log data is corrupt: {0}")]
    Corrupt(String),

    /// A failure of a backend's own client or storage (RocksDB, librdkafka), classified by
    /// the backend when it wraps it: the contract names no backend type.
    #[error("{backend} error during {operation}: {source}")]
    Backend {
        /// `embedded log storage` or `kafka`.
        backend: &'static str,
        operation: &'static str,
        /// Retrying the same call later may succeed.
        retryable: bool,
        /// No retry can help (a client that cannot be created from the configuration, a
        /// storage failure).
        fatal: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error(
        "partition {topic}/{partition} has been assigned for {after:?} but the Kafka client never started fetching it (fetch state `{state}`); leaving the group so that it is assigned again"
    )]
    Stalled { topic: String, partition: i32, state: String, after: Duration },

    #[error("the event log is shutting down")]
    Shutdown,
}

impl LogError {
    /// Whether retrying the same call later may succeed (broker down, timeout, rebalance).
    pub fn retryable(&self) -> bool {
        match self {
            LogError::Unavailable { .. } | LogError::Timeout { .. } | LogError::NotAssigned { .. } | LogError::Stalled { .. } => true,
            LogError::Transaction { abortable, .. } => *abortable,
            LogError::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

impl LogError {
    /// Whether the log refused this record for what it is (too large, an invalid or unknown
    /// partition): written again it is refused again, while other records go through. The
    /// writer replaces or drops the record; the log itself is fine.
    pub fn rejects_record(&self) -> bool {
        matches!(self, LogError::RecordTooLarge { .. } | LogError::UnknownPartition { .. } | LogError::Invalid { .. })
    }

    /// Whether no retry can help: the log is closing, its data is corrupt or its storage
    /// fails, or a client cannot even be created from the configuration. Long-running loops
    /// retry everything else.
    pub fn is_fatal(&self) -> bool {
        match self {
            LogError::Corrupt(_) | LogError::Shutdown => true,
            LogError::Backend { fatal, .. } => *fatal,
            _ => false,
        }
    }
}

pub type LogResult<T> = Result<T, LogError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_no_retry_can_help_are_fatal() {
        assert!(LogError::Corrupt("x".into()).is_fatal());
        let down = LogError::Unavailable { endpoint: "b:9092".into(), reason: "consume: BrokerTransportFailure".into() };
        assert!(!down.is_fatal() && down.retryable(), "a broker that is down comes back");
        let fenced = LogError::Transaction { transactional_id: "t".into(), operation: "send offsets", reason: "Unknown member".into(), abortable: true };
        assert!(!fenced.is_fatal(), "a fenced member rejoins");
        let large = LogError::RecordTooLarge { topic: "t".into(), size: 11, max: 10 };
        assert!(large.rejects_record() && !large.retryable() && !large.is_fatal(), "the record is at fault, not the log");
        assert!(!down.rejects_record());
    }
}
