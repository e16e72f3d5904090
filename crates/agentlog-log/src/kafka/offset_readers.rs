//! One client per consumer group for reading that group's committed offsets.
//!
//! librdkafka reads a group's committed offsets only through a consumer whose `group.id` is
//! that group (the admin API's ListConsumerGroupOffsets is not exposed by the rdkafka crate).
//! Such a consumer never subscribes, so it never joins the group; it only asks the group's
//! coordinator. Creating one per call cost a client (threads, a connection to every broker)
//! for each lag read of `/v1/agent-types` (one per type and lane) and for each retry of a
//! worker's floor lookup while a transaction holds the offsets; one per group is kept instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;

use crate::LogResult;

/// Groups are named by the configuration (`agents.<type>`, the projector's), so a handful
/// are read; the bound only keeps a caller with invented names from growing the map.
const MAX_READERS: usize = 64;

pub(crate) struct OffsetReaders {
    /// The consumer settings every reader shares; its `group.id` is replaced per group.
    config: ClientConfig,
    readers: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl OffsetReaders {
    pub(crate) fn new(config: ClientConfig) -> Self {
        Self { config, readers: Mutex::new(HashMap::new()) }
    }

    /// The reader of `group`, created on first use.
    pub(crate) fn get(&self, group: &str) -> LogResult<Arc<BaseConsumer>> {
        // The map is only touched between awaits; a panic while holding it left it whole.
        let mut readers = self.readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(reader) = readers.get(group) {
            return Ok(reader.clone());
        }
        let mut config = self.config.clone();
        config.set("group.id", group);
        let reader: BaseConsumer = config.create().map_err(|e| super::client::kafka_error("create offsets reader", e))?;
        if readers.len() >= MAX_READERS {
            // Any one goes: a reader still in use by a caller lives on in its Arc until done.
            if let Some(evicted) = readers.keys().next().cloned() {
                readers.remove(&evicted);
            }
        }
        let reader = Arc::new(reader);
        readers.insert(group.to_string(), reader.clone());
        Ok(reader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creating a client contacts nobody, so these run without a broker.
    fn readers() -> OffsetReaders {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        OffsetReaders::new(config)
    }

    #[test]
    fn a_group_keeps_its_reader() {
        let readers = readers();
        let first = readers.get("agents.echo").expect("reader");
        let again = readers.get("agents.echo").expect("reader");
        assert!(Arc::ptr_eq(&first, &again), "a second read of the same group created another client");
        let other = readers.get("agents.http").expect("reader");
        assert!(!Arc::ptr_eq(&first, &other), "two groups share a reader: it would read one group's offsets for both");
    }

    #[test]
    fn invented_group_names_do_not_grow_the_readers() {
        let readers = readers();
        for n in 0..MAX_READERS + 10 {
            readers.get(&format!("group-{n}")).expect("reader");
        }
        assert_eq!(readers.readers.lock().expect("lock").len(), MAX_READERS);
    }
}
