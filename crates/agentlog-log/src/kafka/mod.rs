//! The Kafka backend: Apache Kafka (or any Kafka-compatible cluster) through rdkafka.
//!
//! Producers are idempotent with acks=all and Kafka's murmur2 partitioner; consumers commit
//! offsets by hand, read committed data only, and use the KIP-848 group protocol unless the
//! config says `classic`. Every librdkafka setting can be passed through from the config.

mod admin;
mod client;
mod confirm;
mod consumer;
mod fetch_states;
mod metadata;
mod offset_readers;
mod producer;
mod transaction;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer as _};

use crate::config::KafkaConfig;
use crate::{Admin, Consumer, ConsumerOptions, EventLog, LogError, LogResult, Producer, TransactionalProducer};

/// Default `transaction.timeout.ms` of transactional producers (see `transactional_producer`).
const TRANSACTION_TIMEOUT_MS: u64 = 10_000;

pub struct KafkaLog {
    config: KafkaConfig,
    max_record_bytes: usize,
    topics: Arc<metadata::TopicCache>,
    admin: Arc<admin::KafkaAdmin>,
    producer: OnceLock<Arc<producer::KafkaProducer>>,
    timeout: Duration,
}

impl KafkaLog {
    /// Creates the clients. Nothing is contacted yet: an unreachable cluster shows up as
    /// [`LogError::Unavailable`] on the first call, within `request_timeout_ms`.
    pub fn connect(config: &KafkaConfig, max_record_bytes: usize) -> LogResult<Arc<KafkaLog>> {
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let endpoint = config.bootstrap_servers.clone();
        let client: BaseConsumer =
            client::consumer_config(config, None, Some("agentlog-metadata")).create().map_err(|e| client::kafka_error("create metadata client", e))?;
        let client = Arc::new(client);
        let topics = Arc::new(metadata::TopicCache::new(client.clone(), endpoint.clone(), timeout));
        let admin_client = client::base_config(config).create().map_err(|e| client::kafka_error("create admin client", e))?;
        let admin = Arc::new(admin::KafkaAdmin {
            admin: admin_client,
            client,
            topics: topics.clone(),
            offset_readers: offset_readers::OffsetReaders::new(client::consumer_config(config, None, Some("agentlog-offsets"))),
            endpoint,
            timeout,
            peeker: admin::Peeker::new(client::consumer_config(config, None, Some("agentlog-peek"))),
        });
        Ok(Arc::new(KafkaLog { config: config.clone(), max_record_bytes, topics, admin, producer: OnceLock::new(), timeout }))
    }

    fn shared_producer(&self) -> LogResult<Arc<producer::KafkaProducer>> {
        if let Some(p) = self.producer.get() {
            return Ok(p.clone());
        }
        let created: FutureProducer =
            client::producer_config(&self.config, self.max_record_bytes).create().map_err(|e| client::kafka_error("create producer", e))?;
        let producer = Arc::new(producer::KafkaProducer {
            topics: self.topics.clone(),
            max_record_bytes: self.max_record_bytes,
            sender: Arc::new(producer::Sender {
                producer: created,
                endpoint: self.config.bootstrap_servers.clone(),
                confirmer: confirm::Confirmer::new(client::consumer_config(&self.config, None, None), self.config.bootstrap_servers.clone(), self.timeout),
                request_timeout: self.timeout,
            }),
        });
        // Two racing callers may both create one; the loser's is dropped unused.
        Ok(self.producer.get_or_init(|| producer).clone())
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    fn location(&self) -> String {
        self.config.bootstrap_servers.clone()
    }

    fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    fn producer(&self) -> LogResult<Arc<dyn Producer>> {
        Ok(self.shared_producer()?)
    }

    fn consumer(&self, options: ConsumerOptions) -> LogResult<Box<dyn Consumer>> {
        let created: StreamConsumer<consumer::RebalanceEvents> = client::consumer_config(&self.config, options.group.as_deref(), options.client_id.as_deref())
            .create_with_context(consumer::RebalanceEvents::default())
            .map_err(|e| client::kafka_error("create consumer", e))?;
        Ok(Box::new(consumer::KafkaConsumer::new(created, options.group, self.topics.clone(), self.config.bootstrap_servers.clone(), self.timeout)))
    }

    fn transactional_producer(&self, transactional_id: &str) -> LogResult<Arc<dyn TransactionalProducer>> {
        let mut config = client::producer_config(&self.config, self.max_record_bytes);
        config.set("transactional.id", transactional_id);
        // The coordinator aborts a transaction left open this long. A worker killed mid-commit
        // leaves one open, and until it ends every read_committed reader of the partitions it
        // wrote (task.results) stalls behind it: a restarted worker has a new transactional id
        // and cannot fence it. Transactions here commit every few tens of ms, so 10 s is long.
        if config.get("transaction.timeout.ms").is_none() {
            // librdkafka also refuses one shorter than a request may take (socket.timeout.ms).
            let socket_ms: u64 = config.get("socket.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            config.set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS.max(socket_ms).to_string());
        }
        // librdkafka refuses a delivery timeout longer than the transaction's.
        let transaction_ms: u64 = config.get("transaction.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(TRANSACTION_TIMEOUT_MS);
        let message_ms: u64 = config.get("message.timeout.ms").and_then(|v| v.parse().ok()).unwrap_or(transaction_ms);
        config.set("message.timeout.ms", message_ms.min(transaction_ms).to_string());
        Ok(Arc::new(transaction::KafkaTransactionalProducer::new(
            config,
            transactional_id.to_string(),
            self.topics.clone(),
            self.max_record_bytes,
            self.timeout,
            Duration::from_millis(transaction_ms),
        )))
    }

    fn admin(&self) -> Arc<dyn Admin> {
        self.admin.clone()
    }

    async fn shutdown(&self, timeout: Duration) -> LogResult<()> {
        let Some(producer) = self.producer.get().cloned() else {
            return Ok(());
        };
        let endpoint = self.config.bootstrap_servers.clone();
        tokio::task::spawn_blocking(move || producer.sender.producer.flush(timeout))
            .await
            .map_err(|_| LogError::Shutdown)?
            .map_err(|e| client::map_error("flush", &endpoint, None, e))
    }
}
