//! `agentlog bench`, a crate of its own: it drives the layers below (log, events, tasks,
//! projection) and not the API crate, so a change to an API handler does not rebuild it, and
//! the library crates carry no benchmark code. The root package re-exports it as
//! `agentlog::bench`.

pub mod bench;

/// The layers below, under the names the modules of this crate use (`crate::log`, …).
pub(crate) use agentlog_events::{events, registry};
pub(crate) use agentlog_log as log;
pub(crate) use agentlog_projection as projection;
pub(crate) use agentlog_tasks::{agent, supervisor};
