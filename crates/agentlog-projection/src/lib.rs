//! Projections: state rebuilt from the log into RocksDB and queried over HTTP. The log is
//! the truth; a projection is derived, disposable and exact — the offsets it has consumed are
//! written in the same WriteBatch as the state they produced.
//!
//! A crate of its own (above the events and the task lifecycle, below the API), so nothing
//! here can import the API or the binary; the root package re-exports it as
//! `agentlog::projection`.

pub mod apply;
pub mod generations;
pub mod keys;
pub mod measure;
pub mod projector;
pub mod status;
pub mod store;
pub mod views;

/// The layers below, under the names the modules of this crate use (`crate::log`, …).
pub(crate) use agentlog_events::{events, trace};
pub(crate) use agentlog_log as log;
pub(crate) use agentlog_log::backoff;
pub(crate) use agentlog_tasks::agent;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use apply::{OutcomeNotice, Source};
pub use generations::{GenerationError, Generations};
pub use projector::{Projection, ProjectorError, RebuildReport, ReplayError, catch_up, replay_and_swap, run, sources};
pub use store::{ProjectionStore, StoreError, TaskFilter};

/// `[projection]` in config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionConfig {
    /// Directory of the projection: generations of its RocksDB, `CURRENT`, and snapshots
    /// (created if missing).
    pub dir: PathBuf,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("data/projection") }
    }
}
