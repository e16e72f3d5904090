//! librdkafka client settings and the mapping of rdkafka errors onto [`LogError`].

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::{GroupProtocol, KafkaConfig};
use crate::{LogError, TopicPartition};

/// Settings every client gets: bootstrap, timeouts, then the user's pass-through properties
/// (TLS, SASL, tuning), which win over ours.
pub(crate) fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("socket.timeout.ms", config.request_timeout_ms.max(10).to_string())
        // An unreachable broker should surface as an error quickly instead of being retried
        // silently forever; reconnect back-off stays short so recovery is fast too.
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "4");
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// Producer settings: acks from all in-sync replicas and idempotence, and Kafka's Java
/// partitioner so keys land where other clients put them.
pub(crate) fn producer_config(config: &KafkaConfig, max_record_bytes: usize) -> ClientConfig {
    let mut client = base_config(config);
    client
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("message.max.bytes", (max_record_bytes + 4096).to_string())
        .set("message.timeout.ms", (config.request_timeout_ms * 6).to_string());
    for (key, value) in config.properties.iter().chain(&config.producer_properties) {
        client.set(key, value);
    }
    client
}

/// The longest a group member may go without reading, and (KIP-848) its rebalance timeout:
/// the time the coordinator gives it to give up partitions it moves elsewhere before fencing
/// it. librdkafka's default is 5 minutes. In the fault suite a member kept partitions it
/// had been asked to give up for minutes after a broker outage, heartbeating normally but
/// never revoking them (librdkafka handed the application no revocation) while the new
/// owner waited and their tasks with it (FAULTS.md, api_kill_during_broker_outage); only
/// its fencing ended that. The stall recurs whenever a starved member is fenced and rejoins
/// (librdkafka 2.12; 2.15 fixes KIP-848 reconciliation stalls but no rdkafka-sys ships it
/// yet): a CI run waited the whole minute, 49 s past the heal. A worker reads at least every
/// transaction deadline (20 s) and hands back a revoked partition within one, and drains in
/// 20 s by default, so 25 s bounds such a stall without fencing healthy members.
/// `log.kafka.consumer_properties` may set another value (with a longer `--drain-timeout-s`).
pub(crate) const MAX_POLL_INTERVAL_MS: u64 = 25_000;

/// Consumer settings: manual commits of offsets we choose, read_committed so aborted and
/// open transactions stay invisible, and the KIP-848 protocol when configured.
pub(crate) fn consumer_config(config: &KafkaConfig, group: Option<&str>, client_id: Option<&str>) -> ClientConfig {
    let mut client = base_config(config);
    client
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    match group {
        Some(group) => {
            // Statistics carry each partition's fetch state, which finds assigned
            // partitions librdkafka never starts (see `fetch_states`).
            client
                .set("group.id", group)
                .set("statistics.interval.ms", super::fetch_states::STATISTICS_INTERVAL_MS.to_string())
                .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS.to_string());
            match config.group_protocol {
                // Session timeout and heartbeats are the broker's business under KIP-848;
                // librdkafka refuses the classic settings with it.
                // The broker's `range` assignor splits each topic's partitions over the
                // members subscribed to it, so every lane (a topic) is spread evenly over a
                // type's workers; the default `uniform` balances only the total, and one
                // worker could get all of a busy lane while another got idle ones.
                GroupProtocol::Consumer => client.set("group.protocol", "consumer").set("group.remote.assignor", "range"),
                GroupProtocol::Classic => client
                    .set("group.protocol", "classic")
                    .set("partition.assignment.strategy", "cooperative-sticky")
                    .set("session.timeout.ms", "6000")
                    .set("heartbeat.interval.ms", "1000"),
            };
        }
        // librdkafka needs a group id even for assign-only consumers; it never joins it.
        None => {
            client.set("group.id", format!("agentlog-assign-{}", std::process::id()));
        }
    }
    if let Some(id) = client_id {
        client.set("client.id", id);
    }
    for (key, value) in config.properties.iter().chain(&config.consumer_properties) {
        client.set(key, value);
    }
    if group.is_some() && config.group_protocol == GroupProtocol::Consumer {
        // Under KIP-848 the broker owns session timeout, heartbeats and assignment, and
        // librdkafka refuses to create a consumer that sets them. They stay valid for the
        // assign-only and classic consumers that share the same pass-through properties.
        for key in ["session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"] {
            if client.get(key).is_some() {
                tracing::debug!(key, "ignored for group.protocol=consumer: the broker decides it");
                client.remove(key);
            }
        }
    }
    client
}

/// Maps an rdkafka error to the contract's error, keeping the broker-down and timeout cases
/// recognisable for callers and tests.
pub(crate) fn map_error(operation: &'static str, endpoint: &str, topic: Option<&str>, error: KafkaError) -> LogError {
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::TimedOutQueue,
        ) => LogError::Unavailable { endpoint: endpoint.to_string(), reason: format!("{operation}: {error}") },
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => LogError::UnknownTopic { topic: topic.unwrap_or("?").to_string() },
        Some(RDKafkaErrorCode::TopicAlreadyExists) => LogError::TopicExists { topic: topic.unwrap_or("?").to_string() },
        _ => kafka_error(operation, error),
    }
}

/// Wraps an rdkafka error the contract has no variant for, classified the way librdkafka
/// does: broker and timeout failures pass (retryable), a client that cannot be created from
/// the configuration never will be (fatal).
pub(crate) fn kafka_error(operation: &'static str, error: KafkaError) -> LogError {
    let retryable = error.rdkafka_error_code().is_some_and(|code| {
        matches!(
            code,
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::NotEnoughReplicas
                | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
        )
    });
    let fatal = matches!(error, KafkaError::ClientCreation(_));
    LogError::Backend { backend: "kafka", operation, retryable, fatal, source: Box::new(error) }
}

/// The committed next offset of each partition in `found` (librdkafka's answer to a
/// committed-offsets request), `None` where the group never committed.
pub(crate) fn committed_in(found: &TopicPartitionList, partitions: &[TopicPartition]) -> Vec<Option<i64>> {
    partitions
        .iter()
        .map(|p| match found.find_partition(&p.topic, p.partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What callers decide on (retry, or stop the process) survives wrapping the rdkafka
    /// error into the backend-neutral contract error.
    #[test]
    fn wrapped_errors_keep_librdkafkas_classification() {
        let config = kafka_error("create transactional producer", KafkaError::ClientCreation("bad setting".into()));
        assert!(config.is_fatal() && !config.retryable(), "a client that cannot be created from the configuration never will be");
        assert_eq!(config.to_string(), "kafka error during create transactional producer: Client creation error: bad setting");
        let down = kafka_error("flush", KafkaError::Flush(RDKafkaErrorCode::NotEnoughReplicas));
        assert!(down.retryable() && !down.is_fatal(), "too few in-sync replicas come back");
        let refused = kafka_error("produce", KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord));
        assert!(!refused.retryable() && !refused.is_fatal(), "{refused}");
    }
}
