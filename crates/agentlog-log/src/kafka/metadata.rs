//! Topic metadata lookups with a cache, shared by producers, transactions and admin.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::client::map_error;
use crate::{LogError, LogResult};

/// How long a topic missing from the metadata is asked about again before it is unknown.
const UNKNOWN_TOPIC_GRACE: Duration = Duration::from_secs(5);
const UNKNOWN_TOPIC_RETRY: Duration = Duration::from_millis(250);

/// Knows how many partitions each topic has; asks the cluster on a miss.
pub(crate) struct TopicCache {
    client: Arc<BaseConsumer>,
    counts: RwLock<HashMap<String, i32>>,
    endpoint: String,
    timeout: Duration,
}

impl TopicCache {
    pub(crate) fn new(client: Arc<BaseConsumer>, endpoint: String, timeout: Duration) -> Self {
        Self { client, counts: RwLock::new(HashMap::new()), endpoint, timeout }
    }

    pub(crate) async fn partitions(&self, topic: &str) -> LogResult<i32> {
        if let Some(count) = self.counts.read().expect("topic cache lock poisoned").get(topic) {
            return Ok(*count);
        }
        // A topic created a moment ago by another process may be missing from the metadata of
        // the broker asked, for seconds when a broker is catching up after a restart (a
        // registry started right after `topics apply` exited on it in the fault suite). So an
        // unknown topic is asked about again for a while before it counts as unknown.
        let deadline = tokio::time::Instant::now() + UNKNOWN_TOPIC_GRACE;
        let count = loop {
            match self.fetch(topic).await {
                Err(LogError::UnknownTopic { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(UNKNOWN_TOPIC_RETRY).await;
                }
                other => break other?,
            }
        };
        self.counts.write().expect("topic cache lock poisoned").insert(topic.to_string(), count);
        Ok(count)
    }

    pub(crate) fn forget(&self, topic: &str) {
        self.counts.write().expect("topic cache lock poisoned").remove(topic);
    }

    /// Asks the cluster for one topic's partition count (`UnknownTopic` when it has none).
    pub(crate) async fn fetch(&self, topic: &str) -> LogResult<i32> {
        let client = self.client.clone();
        let name = topic.to_string();
        let timeout = self.timeout;
        let metadata = tokio::task::spawn_blocking(move || client.fetch_metadata(Some(&name), timeout))
            .await
            .map_err(|_| LogError::Shutdown)?
            .map_err(|e| map_error("fetch metadata", &self.endpoint, Some(topic), e))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(LogError::UnknownTopic { topic: topic.to_string() });
        };
        if found.error().is_some() || found.partitions().is_empty() {
            return Err(LogError::UnknownTopic { topic: topic.to_string() });
        }
        Ok(found.partitions().len() as i32)
    }

    /// Every topic name in the cluster, internal ones excluded.
    pub(crate) async fn list(&self) -> LogResult<Vec<String>> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let metadata = tokio::task::spawn_blocking(move || client.fetch_metadata(None, timeout))
            .await
            .map_err(|_| LogError::Shutdown)?
            .map_err(|e| map_error("list topics", &self.endpoint, None, e))?;
        let mut names: Vec<String> = metadata.topics().iter().map(|t| t.name().to_string()).filter(|n| !n.starts_with("__")).collect();
        names.sort();
        Ok(names)
    }
}
