//! The statuses the projection derives, of a task and of an agent, as the API shows them
//! (`"dead_lettered"`, `"draining"`): parsed once where a name comes in (a `?status=`
//! filter), typed everywhere after.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::events::{AgentState, OutcomeKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Seen only through events that do not say it was submitted (yet).
    #[default]
    Pending,
    /// On its lane topic, waiting for a worker.
    Queued,
    /// Waiting on `timers` for its `not_before`.
    Scheduled,
    Running,
    /// Failed retryably; the next attempt waits on `timers`.
    Retrying,
    Completed,
    Failed,
    DeadLettered,
    Cancelled,
    Expired,
    /// Its last attempt suspended: it waits on `timers` for a signal or the wait's timeout.
    /// Last, so the stored index of every earlier status stays what it was.
    Waiting,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 11] = [
        TaskStatus::Pending,
        TaskStatus::Queued,
        TaskStatus::Scheduled,
        TaskStatus::Running,
        TaskStatus::Retrying,
        TaskStatus::Waiting,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::DeadLettered,
        TaskStatus::Cancelled,
        TaskStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Queued => "queued",
            TaskStatus::Scheduled => "scheduled",
            TaskStatus::Running => "running",
            TaskStatus::Retrying => "retrying",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::DeadLettered => "dead_lettered",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Expired => "expired",
            TaskStatus::Waiting => "waiting",
        }
    }

    /// An outcome: nothing more happens to the task unless it is re-submitted.
    pub fn is_terminal(self) -> bool {
        self.outcome().is_some()
    }

    /// The outcome this status is, if it is one.
    pub fn outcome(self) -> Option<OutcomeKind> {
        OutcomeKind::ALL.into_iter().find(|kind| TaskStatus::from(*kind) == self)
    }
}

impl From<OutcomeKind> for TaskStatus {
    fn from(kind: OutcomeKind) -> TaskStatus {
        match kind {
            OutcomeKind::Completed => TaskStatus::Completed,
            OutcomeKind::Failed => TaskStatus::Failed,
            OutcomeKind::DeadLettered => TaskStatus::DeadLettered,
            OutcomeKind::Cancelled => TaskStatus::Cancelled,
            OutcomeKind::Expired => TaskStatus::Expired,
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`TaskStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a status; statuses: pending, queued, scheduled, running, retrying, waiting, completed, failed, dead_lettered, cancelled, expired")]
pub struct UnknownStatus(pub String);

impl FromStr for TaskStatus {
    type Err = UnknownStatus;

    fn from_str(name: &str) -> Result<TaskStatus, UnknownStatus> {
        TaskStatus::ALL.into_iter().find(|status| status.as_str() == name).ok_or_else(|| UnknownStatus(name.to_string()))
    }
}

/// An agent's status: the state of its latest lifecycle event ([`AgentState`]), or
/// `Deregistered` once it said goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Known only from heartbeats or load reports (or a state added after this version).
    #[default]
    Unknown,
    Starting,
    Running,
    Paused,
    Draining,
    Stopped,
    /// The supervisor missed its heartbeats.
    Lost,
    Deregistered,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 8] = [
        AgentStatus::Unknown,
        AgentStatus::Starting,
        AgentStatus::Running,
        AgentStatus::Paused,
        AgentStatus::Draining,
        AgentStatus::Stopped,
        AgentStatus::Lost,
        AgentStatus::Deregistered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Unknown => "unknown",
            AgentStatus::Starting => "starting",
            AgentStatus::Running => "running",
            AgentStatus::Paused => "paused",
            AgentStatus::Draining => "draining",
            AgentStatus::Stopped => "stopped",
            AgentStatus::Lost => "lost",
            AgentStatus::Deregistered => "deregistered",
        }
    }
}

impl From<AgentState> for AgentStatus {
    fn from(state: AgentState) -> AgentStatus {
        match state {
            AgentState::Unknown => AgentStatus::Unknown,
            AgentState::Starting => AgentStatus::Starting,
            AgentState::Running => AgentStatus::Running,
            AgentState::Paused => AgentStatus::Paused,
            AgentState::Draining => AgentStatus::Draining,
            AgentState::Stopped => AgentStatus::Stopped,
            AgentState::Lost => AgentStatus::Lost,
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent status name that is not one of [`AgentStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an agent status; statuses: unknown, starting, running, paused, draining, stopped, lost, deregistered")]
pub struct UnknownAgentStatus(pub String);

impl FromStr for AgentStatus {
    type Err = UnknownAgentStatus;

    fn from_str(name: &str) -> Result<AgentStatus, UnknownAgentStatus> {
        AgentStatus::ALL.into_iter().find(|status| status.as_str() == name).ok_or_else(|| UnknownAgentStatus(name.to_string()))
    }
}

/// A string schema that takes one of `names`: how the API's OpenAPI document shows a status
/// (the names are the statuses' own, so the document cannot drift from them).
fn names(names: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)).into()
}

impl PartialSchema for TaskStatus {
    fn schema() -> RefOr<Schema> {
        names(TaskStatus::ALL.map(TaskStatus::as_str))
    }
}
impl ToSchema for TaskStatus {}

impl PartialSchema for AgentStatus {
    fn schema() -> RefOr<Schema> {
        names(AgentStatus::ALL.map(AgentStatus::as_str))
    }
}
impl ToSchema for AgentStatus {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_json() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
            assert_eq!(serde_json::to_value(status).expect("json"), serde_json::json!(status.as_str()), "the API shows the same name");
        }
        assert_eq!("done".parse::<TaskStatus>(), Err(UnknownStatus("done".into())));
        assert_eq!(TaskStatus::ALL.iter().filter(|s| s.is_terminal()).count(), 5);
    }

    #[test]
    fn every_outcome_is_a_terminal_status_of_the_same_name() {
        for kind in OutcomeKind::ALL {
            let status = TaskStatus::from(kind);
            assert!(status.is_terminal());
            assert_eq!(status.outcome(), Some(kind));
            assert_eq!(status.as_str(), kind.as_str(), "the API and the CLI show one name for an outcome");
        }
        assert_eq!(TaskStatus::Running.outcome(), None);
    }

    #[test]
    fn agent_statuses_name_every_event_state_and_round_trip() {
        for status in AgentStatus::ALL {
            assert_eq!(status.as_str().parse::<AgentStatus>(), Ok(status));
            assert_eq!(serde_json::to_value(status).expect("json"), serde_json::json!(status.as_str()));
        }
        assert_eq!(AgentStatus::from(AgentState::Draining), AgentStatus::Draining);
        assert!("busy".parse::<AgentStatus>().is_err());
    }
}
