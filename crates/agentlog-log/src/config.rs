//! `[log]`: which backend, and each backend's settings. Owned here so the log depends on
//! nothing above it; agentlog's `config` re-exports these as the `[log]` section.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Embedded,
    Kafka,
    /// This process's memory: nothing is kept, and no other process sees it (tests, demos).
    Memory,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub backend: Backend,
    pub topic_prefix: String,
    pub max_record_bytes: usize,
    pub embedded: EmbeddedConfig,
    pub kafka: KafkaConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Write to RocksDB's WAL without fsync: survives a process crash, not a power loss.
    Never,
    /// fsync the WAL once per group commit before acknowledging.
    Always,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub max_batch_records: usize,
    pub retention_check_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    Consumer,
    Classic,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_protocol: GroupProtocol,
    pub request_timeout_ms: u64,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
}

#[cfg(test)]
impl LogConfig {
    /// The `[log]` section of the shipped defaults (`config/default.toml`), for tests.
    pub(crate) fn shipped_defaults() -> LogConfig {
        #[derive(Deserialize)]
        struct Defaults {
            log: LogConfig,
        }
        toml::from_str::<Defaults>(include_str!("../../../config/default.toml")).expect("the shipped [log] section").log
    }
}
