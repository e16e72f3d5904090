//! Every event type with its `.avsc` text and catalog topic: what the CLI registers with the
//! schema registry and what producers route by.
//!
//! The texts are compiled in (`include_str!`) so a deployed binary registers exactly the
//! schemas its types were tested against, whatever is on disk next to it.

use super::Event;
use super::{agent, job, task};

/// One event type of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// Full Avro name, e.g. `io.agentlog.v1.TaskSubmitted`.
    pub name: &'static str,
    /// File name under `schemas/`, e.g. `TaskSubmitted.avsc`.
    pub file: &'static str,
    /// The schema text (self-contained: `Meta` is inlined).
    pub avsc: &'static str,
    /// Catalog topic without prefix; `tasks.<type>.<lane>` for `TaskSubmitted`.
    pub topic: &'static str,
}

/// `schemas/Meta.avsc`: the single definition of the envelope every event inlines.
pub const META_AVSC: &str = include_str!("../../../../schemas/Meta.avsc");

/// Something run once per event type (tests).
#[cfg(test)]
pub(crate) trait EventTypeVisitor {
    fn visit<T: Event + super::tests::Sample>(&mut self);
}

macro_rules! event_types {
    ($($module:ident :: $ty:ident),* $(,)?) => {
        /// Every event type, in a stable order (tasks, agents, jobs).
        const EVENT_TYPES: &[EventType] = &[$(EventType {
            name: <$module::$ty as Event>::NAME,
            file: concat!(stringify!($ty), ".avsc"),
            avsc: include_str!(concat!("../../../../schemas/", stringify!($ty), ".avsc")),
            topic: <$module::$ty as Event>::TOPIC,
        }),*];

        /// Calls `visitor` once per event type; lets tests cover every type from the same
        /// list the catalog is built from, so none can be forgotten.
        #[cfg(test)]
        pub(crate) fn visit_event_types(visitor: &mut impl EventTypeVisitor) {
            $( visitor.visit::<$module::$ty>(); )*
        }
    };
}

event_types!(
    task::TaskSubmitted,
    task::TaskStarted,
    task::TaskProgress,
    task::TaskChunk,
    task::TaskCheckpointed,
    task::TaskSuspended,
    task::TaskSignalled,
    task::TaskRetryScheduled,
    task::TaskCompleted,
    task::TaskFailed,
    task::TaskDeadLettered,
    task::TaskCancelRequested,
    task::TaskCancelled,
    task::TaskExpired,
    agent::AgentRegistered,
    agent::AgentHeartbeat,
    agent::AgentStateChanged,
    agent::AgentLost,
    agent::AgentDeregistered,
    job::JobSubmitted,
    job::JobCompleted,
);

/// Every event type of the contract.
pub fn event_types() -> &'static [EventType] {
    EVENT_TYPES
}

/// `(full name, .avsc text)` of every event type, for registering them with a registry.
pub fn all_schemas() -> Vec<(&'static str, &'static str)> {
    EVENT_TYPES.iter().map(|t| (t.name, t.avsc)).collect()
}

/// Catalog topic (without the configurable prefix) an event type is written to, by full
/// name; `None` for a name that is not an agentlog event. `TaskSubmitted` yields the template
/// `tasks.<type>.<lane>`: its real topic depends on the value (`Event::topic`).
pub fn topic_of(full_name: &str) -> Option<&'static str> {
    EVENT_TYPES.iter().find(|t| t.name == full_name).map(|t| t.topic)
}
