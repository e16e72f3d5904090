//! Opens the backend the configuration names.

use std::sync::Arc;

use crate::log::config::{Backend, LogConfig};
use crate::log::embedded::EmbeddedLog;
use crate::log::kafka::KafkaLog;
use crate::log::memory::MemoryLog;
use crate::log::{EventLog, LogResult};

/// The configured event log: the embedded RocksDB log (default), a Kafka cluster, or this
/// process's memory.
/// Must be called inside a tokio runtime (the embedded log starts its writer there).
pub fn open_log(config: &LogConfig) -> LogResult<Arc<dyn EventLog>> {
    Ok(match config.backend {
        Backend::Embedded => EmbeddedLog::open(&config.embedded, config.max_record_bytes)?,
        Backend::Kafka => KafkaLog::connect(&config.kafka, config.max_record_bytes)?,
        Backend::Memory => MemoryLog::new(config.max_record_bytes),
    })
}
