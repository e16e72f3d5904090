//! Topic administration and offset inspection on a Kafka cluster.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::client::{committed_in, map_error};
use super::metadata::TopicCache;
use super::offset_readers::OffsetReaders;
use crate::{Admin, CleanupPolicy, LogError, LogResult, TopicDescription, TopicPartition, TopicSpec, Watermarks};

pub(crate) struct KafkaAdmin {
    pub(crate) admin: AdminClient<DefaultClientContext>,
    pub(crate) client: Arc<BaseConsumer>,
    pub(crate) topics: Arc<TopicCache>,
    /// Readers of other groups' committed offsets, one per group.
    pub(crate) offset_readers: OffsetReaders,
    pub(crate) endpoint: String,
    pub(crate) timeout: Duration,
    /// Reads one record's timestamp ([`Admin::timestamp_at`]): an assign-only consumer made on
    /// first use (most processes never ask), one call at a time (an assignment is its state).
    pub(crate) peeker: Peeker,
}

pub(crate) struct Peeker {
    config: rdkafka::ClientConfig,
    consumer: std::sync::OnceLock<Arc<std::sync::Mutex<BaseConsumer>>>,
}

impl Peeker {
    pub(crate) fn new(mut config: rdkafka::ClientConfig) -> Self {
        // The end of a partition answers at once instead of waiting out the poll.
        config.set("enable.partition.eof", "true");
        Peeker { config, consumer: std::sync::OnceLock::new() }
    }

    fn consumer(&self) -> LogResult<Arc<std::sync::Mutex<BaseConsumer>>> {
        if let Some(consumer) = self.consumer.get() {
            return Ok(consumer.clone());
        }
        let created: BaseConsumer = self.config.create().map_err(|e| super::client::kafka_error("create peek consumer", e))?;
        Ok(self.consumer.get_or_init(|| Arc::new(std::sync::Mutex::new(created))).clone())
    }
}

/// The longest a peek waits for its record (a scrape of `/metrics` bounds its lookups too).
const PEEK_WAIT: Duration = Duration::from_secs(2);

impl KafkaAdmin {
    fn options(&self) -> AdminOptions {
        AdminOptions::new().request_timeout(Some(self.timeout)).operation_timeout(Some(self.timeout))
    }

    async fn blocking<T: Send + 'static>(&self, call: impl FnOnce(&BaseConsumer) -> T + Send + 'static) -> LogResult<T> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || call(&client)).await.map_err(|_| LogError::Shutdown)
    }

    /// Runs a blocking per-partition call, retrying while the partition's leader is being
    /// elected or loaded: a partition created a moment ago fails with NotLeaderForPartition,
    /// LeaderNotAvailable or UnknownTopicOrPartition for a few hundred ms (seconds when three
    /// brokers share two cores), so this waits up to 5 s.
    async fn electing<T: Send + 'static>(
        &self,
        operation: &'static str,
        topic: &str,
        call: impl Fn(&BaseConsumer) -> KafkaResult<T> + Clone + Send + 'static,
    ) -> LogResult<T> {
        const ELECTION_RETRIES: u32 = 50;
        let mut attempt = 0;
        loop {
            let once = call.clone();
            match self.blocking(move |c| once(c)).await? {
                Ok(value) => return Ok(value),
                Err(e) if attempt < ELECTION_RETRIES && leader_pending(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(map_error(operation, &self.endpoint, Some(topic), e)),
            }
        }
    }

    async fn check_partition(&self, tp: &TopicPartition) -> LogResult<()> {
        let count = self.topics.partitions(&tp.topic).await?;
        if tp.partition < 0 || tp.partition >= count {
            return Err(LogError::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition });
        }
        Ok(())
    }
}

fn parse_retention(value: Option<&str>) -> Option<i64> {
    value.and_then(|v| v.parse::<i64>().ok()).filter(|v| *v >= 0)
}

#[async_trait]
impl Admin for KafkaAdmin {
    async fn create_topic(&self, spec: &TopicSpec) -> LogResult<()> {
        if spec.partitions < 1 {
            return Err(LogError::Invalid { what: "partitions", reason: format!("topic `{}` needs at least 1", spec.name) });
        }
        let retention_ms = spec.retention_ms.unwrap_or(-1).to_string();
        let retention_bytes = spec.retention_bytes.unwrap_or(-1).to_string();
        let mut topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(i32::from(spec.replication_factor)))
            .set("cleanup.policy", spec.cleanup_policy.as_str())
            .set("retention.ms", &retention_ms)
            .set("retention.bytes", &retention_bytes);
        for (key, value) in &spec.configs {
            topic = topic.set(key, value);
        }
        let results = self.admin.create_topics([&topic], &self.options()).await.map_err(|e| map_error("create topic", &self.endpoint, Some(&spec.name), e))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => return Err(LogError::TopicExists { topic: name }),
                Err((name, code)) => {
                    return Err(LogError::Invalid { what: "topic", reason: format!("creating `{name}` failed: {code}") });
                }
            }
        }
        // A freshly created topic takes a moment to show up in every broker's metadata.
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            match self.topics.fetch(&spec.name).await {
                Ok(_) => return Ok(()),
                Err(LogError::UnknownTopic { .. }) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn describe_topic(&self, name: &str) -> LogResult<TopicDescription> {
        let client = self.client.clone();
        let topic_name = name.to_string();
        let timeout = self.timeout;
        let metadata = tokio::task::spawn_blocking(move || client.fetch_metadata(Some(&topic_name), timeout))
            .await
            .map_err(|_| LogError::Shutdown)?
            .map_err(|e| map_error("describe topic", &self.endpoint, Some(name), e))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| LogError::UnknownTopic { topic: name.to_string() })?;
        let partitions = topic.partitions().len() as i32;
        let replication_factor = topic.partitions().iter().map(|p| p.replicas().len()).max().unwrap_or(0) as i16;
        let configs = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(name)], &self.options())
            .await
            .map_err(|e| map_error("describe topic configs", &self.endpoint, Some(name), e))?;
        let resource = configs.into_iter().next().ok_or_else(|| LogError::UnknownTopic { topic: name.to_string() })?.map_err(|code| match code {
            RDKafkaErrorCode::UnknownTopicOrPartition => LogError::UnknownTopic { topic: name.to_string() },
            other => LogError::Invalid { what: "topic", reason: format!("describing `{name}` failed: {other}") },
        })?;
        let get = |key: &str| resource.get(key).and_then(|entry| entry.value.as_deref());
        let cleanup_policy = match get("cleanup.policy") {
            Some(policy) if policy.contains("compact") => CleanupPolicy::Compact,
            _ => CleanupPolicy::Delete,
        };
        Ok(TopicDescription {
            name: name.to_string(),
            partitions,
            replication_factor,
            cleanup_policy,
            retention_ms: parse_retention(get("retention.ms")),
            retention_bytes: parse_retention(get("retention.bytes")),
        })
    }

    async fn delete_topic(&self, name: &str) -> LogResult<()> {
        let results = self.admin.delete_topics(&[name], &self.options()).await.map_err(|e| map_error("delete topic", &self.endpoint, Some(name), e))?;
        self.topics.forget(name);
        for result in results {
            match result {
                Ok(_) => {}
                Err((topic, RDKafkaErrorCode::UnknownTopicOrPartition)) => return Err(LogError::UnknownTopic { topic }),
                Err((topic, code)) => {
                    return Err(LogError::Invalid { what: "topic", reason: format!("deleting `{topic}` failed: {code}") });
                }
            }
        }
        Ok(())
    }

    async fn list_topics(&self) -> LogResult<Vec<String>> {
        self.topics.list().await
    }

    async fn watermarks(&self, tp: &TopicPartition) -> LogResult<Watermarks> {
        self.check_partition(tp).await?;
        let (topic, partition, timeout) = (tp.topic.clone(), tp.partition, self.timeout);
        let (low, high) = self.electing("watermarks", &tp.topic, move |c| c.fetch_watermarks(&topic, partition, timeout)).await?;
        Ok(Watermarks { low, high })
    }

    async fn offset_for_timestamp(&self, tp: &TopicPartition, timestamp_ms: i64) -> LogResult<Option<i64>> {
        self.check_partition(tp).await?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(timestamp_ms))
            .map_err(|e| LogError::Invalid { what: "timestamp", reason: e.to_string() })?;
        let timeout = self.timeout;
        let offset = self
            .electing("offsets for times", &tp.topic, move |c| {
                let found = c.offsets_for_times(tpl.clone(), timeout)?;
                // A partition's own error comes inside the answer, not as the call's: read as
                // "no offset" it would send a reader to the end of the partition.
                let Some(element) = found.elements().first().map(|e| (e.error(), e.offset())) else { return Ok(None) };
                element.0?;
                Ok(match element.1 {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
            })
            .await?;
        Ok(offset)
    }

    async fn timestamp_at(&self, tp: &TopicPartition, offset: i64) -> LogResult<Option<i64>> {
        self.check_partition(tp).await?;
        let consumer = self.peeker.consumer()?;
        let (topic, partition) = (tp.topic.clone(), tp.partition);
        let wait = self.timeout.min(PEEK_WAIT);
        let found = tokio::task::spawn_blocking(move || -> KafkaResult<Option<i64>> {
            // A panic while peeking leaves nothing half done: the next call assigns afresh.
            let consumer = consumer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset.max(0)))?;
            consumer.assign(&tpl)?;
            let deadline = std::time::Instant::now() + wait;
            let found = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break Ok(None);
                }
                match consumer.poll(left) {
                    Some(Ok(message)) if message.topic() == topic && message.partition() == partition => break Ok(message.timestamp().to_millis()),
                    Some(Ok(_)) => {}
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break Ok(None),
                    Some(Err(e)) => break Err(e),
                    None => break Ok(None),
                }
            };
            let _ = consumer.unassign();
            found
        })
        .await
        .map_err(|_| LogError::Shutdown)?;
        found.map_err(|e| map_error("timestamp at offset", &self.endpoint, Some(&tp.topic), e))
    }

    async fn committed_offsets(&self, group: &str, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>> {
        let reader = self.offset_readers.get(group)?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&p.topic, p.partition);
        }
        let timeout = self.timeout;
        let found = tokio::task::spawn_blocking(move || reader.committed_offsets(tpl, timeout))
            .await
            .map_err(|_| LogError::Shutdown)?
            .map_err(|e| map_error("committed offsets", &self.endpoint, None, e))?;
        Ok(committed_in(&found, partitions))
    }
}

/// Whether `e` says the partition's leader is being elected (it will pass on its own).
/// Whether a partition's leader is not (yet) there to answer. Callers checked the partition
/// against the cluster's metadata first, so "unknown topic or partition" from its leader means
/// the leader has not loaded a just-created topic yet (seen on three brokers right after
/// `topics apply`), not that the topic is missing.
fn leader_pending(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::LeaderNotAvailable | RDKafkaErrorCode::UnknownTopicOrPartition)
    )
}
