//! agentlog: AI agents (and any other worker) as consumer-group workers on an event log.
//!
//! Components and how data flows between them:
//! - [`log`]: the event-log contract (produce, consumer groups, seek, watermarks, transactions,
//!   admin) with three backends: `embedded` (RocksDB in this process, the default), `kafka`
//!   (rdkafka) and `memory`. Everything else talks to `Arc<dyn EventLog>` only. It is a crate
//!   of its own (`crates/agentlog-log`), so nothing in it can import what sits above it.
//! - [`topics`]: the topic catalog (`topics/*.toml`), applied to either backend, with drift
//!   between the catalog and the cluster reported per topic.
//! - [`config`]: layered configuration (defaults, file, `AGENTLOG__` environment).
//! - [`events`]: Avro event types, their schemas and Confluent's wire format; [`registry`]: the
//!   built-in Confluent-compatible schema registry on the `schemas` topic.
//! - [`agent`]: agent types from config, retry policy, and the worker's offset tracker.
//! - [`bench`]: the log benchmark behind `agentlog bench log`.
//! - [`components`]: supervision of the components one process runs (`agentlog dev`): a
//!   component that stops is logged and started again after a back-off, its state on `/readyz`.
//! - [`redact`]: credentials in URLs masked before they reach an error, a log line, an outcome
//!   or an API answer.
//!
//! Producers append records; the backend assigns partition and offset (murmur2 of the key);
//! consumers in a group split the partitions and commit the next offset to read.

/// Retry back-off, shared by every layer (it lives in the bottom one).
pub use agentlog_log::backoff;
pub mod bench;
pub mod config;
pub use agentlog_api as api;
pub use agentlog_api::components;
pub use agentlog_events::{events, http, redact, registry};
pub use agentlog_log as log;
pub use agentlog_projection as projection;
pub use agentlog_tasks::{agent, supervisor};
pub mod open;
pub mod topics;

#[cfg(test)]
mod layering;
