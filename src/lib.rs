//! agentlog: AI agents (and any other worker) as consumer-group workers on an event log.
//!
//! This is the root package of a workspace whose crates are the layers, from the bottom (each
//! re-exported here under its old path):
//! - [`log`] (`crates/agentlog-log`): the event-log contract (produce, consumer groups, seek,
//!   watermarks, transactions, admin) with three backends: `embedded` (RocksDB in this
//!   process, the default), `kafka` (rdkafka) and `memory`. Everything else talks to
//!   `Arc<dyn EventLog>` only.
//! - [`events`], [`registry`], [`http`], [`redact`] (`crates/agentlog-events`): Avro event
//!   types, their schemas and Confluent's wire format; the built-in Confluent-compatible schema
//!   registry; the HTTP serving the registry and the API share; credentials masked in URLs.
//! - [`agent`], [`supervisor`] (`crates/agentlog-tasks`): agent types and runtimes, the
//!   worker, retries, dead letters; timers, presence and cancellations.
//! - [`projection`] (`crates/agentlog-projection`): state rebuilt from the log into RocksDB.
//! - [`api`], [`components`] (`crates/agentlog-api`): the HTTP API; the supervision of what
//!   one process runs (`agentlog dev`), shown on `/readyz`.
//! - [`bench`] (`crates/agentlog-bench`): `agentlog bench`.
//!
//! Here: [`config`] (layered configuration: defaults, file, `AGENTLOG__` environment),
//! [`topics`] (the topic catalog applied to either backend, drift reported per topic),
//! [`open`] (the configured log) and [`cli`] (the command line; the binary only calls it).
//!
//! Producers append records; the backend assigns partition and offset (murmur2 of the key);
//! consumers in a group split the partitions and commit the next offset to read.

/// Retry back-off, shared by every layer (it lives in the bottom one).
pub use agentlog_log::backoff;
pub mod cli;
pub mod config;
pub use agentlog_api as api;
pub use agentlog_api::components;
pub use agentlog_bench::bench;
pub use agentlog_events::{events, http, redact, registry, trace};
pub use agentlog_log as log;
pub use agentlog_projection as projection;
pub use agentlog_tasks::{agent, supervisor};
pub mod open;
pub mod telemetry;
pub mod topics;

#[cfg(test)]
mod layering;
