//! Topic metadata lookups with a cache, shared by producers, transactions and admin.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::client::map_error;
use crate::log::{LogError, LogResult};

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
        let count = self.fetch(topic).await?;
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
        let mut names: Vec<String> =
            metadata.topics().iter().map(|t| t.name().to_string()).filter(|n| !n.starts_with("__")).collect();
        names.sort();
        Ok(names)
    }
}
