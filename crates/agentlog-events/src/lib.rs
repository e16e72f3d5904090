//! The layer above the event log: what travels on it and how others read it.
//!
//! - [`events`]: Avro event types, their schemas (`schemas/*.avsc` at the top of the
//!   repository, compiled in) and Confluent's wire format.
//! - [`registry`]: the built-in Confluent-compatible schema registry on the `schemas` topic.
//! - [`http`]: serving HTTP on a port (connection cap, loopback guard, API keys and rates,
//!   the JSON error shape), shared by the registry and the API above.
//! - [`redact`]: credentials in URLs masked before they reach an error, a log line or an answer.
//! - [`trace`]: W3C trace context between spans, events' `Meta` and records' headers.
//!
//! A crate of its own so nothing here can import tasks, agents, projections or the API.

pub mod events;
pub mod http;
pub mod redact;
pub mod registry;
pub mod trace;

/// The log below, under the names the modules of this crate use (`crate::log`, `crate::backoff`).
pub(crate) use agentlog_log as log;
pub(crate) use agentlog_log::backoff;
