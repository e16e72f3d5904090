//! Projections: state rebuilt from the log into RocksDB and queried over HTTP. The log is
//! the truth; a projection is derived, disposable and exact — the offsets it has consumed are
//! written in the same WriteBatch as the state they produced.

pub mod apply;
pub mod generations;
pub mod keys;
pub mod measure;
pub mod projector;
pub mod status;
pub mod store;
pub mod views;

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
