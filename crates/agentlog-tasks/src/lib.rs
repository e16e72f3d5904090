//! The task lifecycle, above the events and below the projection and the API.
//!
//! - [`agent`]: agent types from config and their runtimes (builtin, `http`, `exec`), the
//!   worker (consumer-group member per agent type) with its scheduler, retry policy, dead
//!   letters, delegation and offset tracking.
//! - [`supervisor`]: durable timers (retries, timeouts, schedules), agent presence and the
//!   fleet view, cancellations.
//!
//! A crate of its own so nothing here can import the projection, the API or the binary.

pub mod agent;
pub mod supervisor;

/// The layers below, under the names the modules of this crate use (`crate::log`, …).
pub(crate) use agentlog_events::{events, redact, trace};
pub(crate) use agentlog_log as log;
pub(crate) use agentlog_log::backoff;
