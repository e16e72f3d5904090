//! How a task ended: the one vocabulary for outcomes, decided by which event ended it.
//!
//! `task.results` holds exactly these five events; the worker, the supervisor, the CLI, the
//! projection and the API each ask [`OutcomeKind::of`] rather than listing the variants, so a
//! sixth outcome is added here once.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::any::AnyEvent;

/// A task's terminal outcome. Its name (`completed`, `dead_lettered`, ...) is the status the
/// API and the CLI show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// `TaskCompleted`: the agent returned a result.
    Completed,
    /// `TaskFailed`: the agent failed and no attempt is left to retry (or the error was final).
    Failed,
    /// `TaskDeadLettered`: the task was set aside on `dlq` (it can be re-submitted).
    DeadLettered,
    /// `TaskCancelled`: cancelled on request before it finished.
    Cancelled,
    /// `TaskExpired`: its deadline passed before it started.
    Expired,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 5] = [OutcomeKind::Completed, OutcomeKind::Failed, OutcomeKind::DeadLettered, OutcomeKind::Cancelled, OutcomeKind::Expired];

    /// The outcome `event` records, or `None` for an event that ends nothing.
    pub fn of(event: &AnyEvent) -> Option<OutcomeKind> {
        Some(match event {
            AnyEvent::TaskCompleted(_) => OutcomeKind::Completed,
            AnyEvent::TaskFailed(_) => OutcomeKind::Failed,
            AnyEvent::TaskDeadLettered(_) => OutcomeKind::DeadLettered,
            AnyEvent::TaskCancelled(_) => OutcomeKind::Cancelled,
            AnyEvent::TaskExpired(_) => OutcomeKind::Expired,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Completed => "completed",
            OutcomeKind::Failed => "failed",
            OutcomeKind::DeadLettered => "dead_lettered",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::Expired => "expired",
        }
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for kind in OutcomeKind::ALL {
            assert_eq!(serde_json::to_value(kind).expect("serializes"), serde_json::Value::String(kind.as_str().to_string()));
        }
    }
}
