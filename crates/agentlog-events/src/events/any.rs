//! Decoding records of topics that carry several event types (`task.events`, `task.results`,
//! `agent.events`, `control`): the writer schema's name, looked up by the id in the frame,
//! says which type to decode into. No header is needed, so records written by any
//! Confluent-compatible producer decode too.

use tokio_util::sync::CancellationToken;

use super::wire::{WireCodec, WireError};
use super::*;
use crate::backoff::Backoff;

/// Any agentlog event.
// A command is the largest event and the most common one decoded: boxing it would cost an
// allocation per decoded task, while `AnyEvent`s are held one at a time or in a projector's
// decoded batch (a few thousand at most: a few hundred KB more, not per task).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AnyEvent {
    TaskSubmitted(TaskSubmitted),
    TaskStarted(TaskStarted),
    TaskProgress(TaskProgress),
    TaskChunk(TaskChunk),
    TaskCheckpointed(TaskCheckpointed),
    TaskSuspended(TaskSuspended),
    TaskSignalled(TaskSignalled),
    TaskRetryScheduled(TaskRetryScheduled),
    TaskCompleted(TaskCompleted),
    TaskFailed(TaskFailed),
    TaskDeadLettered(TaskDeadLettered),
    TaskCancelRequested(TaskCancelRequested),
    TaskCancelled(TaskCancelled),
    TaskExpired(TaskExpired),
    AgentRegistered(AgentRegistered),
    AgentHeartbeat(AgentHeartbeat),
    AgentStateChanged(AgentStateChanged),
    AgentLost(AgentLost),
    AgentDeregistered(AgentDeregistered),
    JobSubmitted(JobSubmitted),
    JobCompleted(JobCompleted),
    /// A schema this build does not know (a newer event type): skipped by readers, not an error.
    Unknown {
        name: String,
    },
}

impl AnyEvent {
    /// The task this event is about, for task events.
    pub fn task_id(&self) -> Option<&str> {
        Some(match self {
            AnyEvent::TaskSubmitted(e) => &e.task_id,
            AnyEvent::TaskStarted(e) => &e.task_id,
            AnyEvent::TaskProgress(e) => &e.task_id,
            AnyEvent::TaskChunk(e) => &e.task_id,
            AnyEvent::TaskCheckpointed(e) => &e.task_id,
            AnyEvent::TaskSuspended(e) => &e.task_id,
            AnyEvent::TaskSignalled(e) => &e.task_id,
            AnyEvent::TaskRetryScheduled(e) => &e.task_id,
            AnyEvent::TaskCompleted(e) => &e.task_id,
            AnyEvent::TaskFailed(e) => &e.task_id,
            AnyEvent::TaskDeadLettered(e) => &e.task_id,
            AnyEvent::TaskCancelRequested(e) => &e.task_id,
            AnyEvent::TaskCancelled(e) => &e.task_id,
            AnyEvent::TaskExpired(e) => &e.task_id,
            _ => return None,
        })
    }

    /// The task this event is about as its identity, (tenant, task id): two tenants may use
    /// one task id, and each has its own task.
    pub fn task_ref(&self) -> Option<(&str, &str)> {
        let task_id = self.task_id()?;
        let tenant = match self {
            AnyEvent::TaskSubmitted(e) => &e.meta.tenant,
            AnyEvent::TaskStarted(e) => &e.meta.tenant,
            AnyEvent::TaskProgress(e) => &e.meta.tenant,
            AnyEvent::TaskChunk(e) => &e.meta.tenant,
            AnyEvent::TaskCheckpointed(e) => &e.meta.tenant,
            AnyEvent::TaskSuspended(e) => &e.meta.tenant,
            AnyEvent::TaskSignalled(e) => &e.meta.tenant,
            AnyEvent::TaskRetryScheduled(e) => &e.meta.tenant,
            AnyEvent::TaskCompleted(e) => &e.meta.tenant,
            AnyEvent::TaskFailed(e) => &e.meta.tenant,
            AnyEvent::TaskDeadLettered(e) => &e.meta.tenant,
            AnyEvent::TaskCancelRequested(e) => &e.meta.tenant,
            AnyEvent::TaskCancelled(e) => &e.meta.tenant,
            AnyEvent::TaskExpired(e) => &e.meta.tenant,
            _ => return None,
        };
        Some((tenant, task_id))
    }

    /// Whether this is a terminal task outcome (what `task.results` holds).
    pub fn is_terminal(&self) -> bool {
        super::OutcomeKind::of(self).is_some()
    }

    /// Short name of the variant (`TaskCompleted`), for logs and tests.
    pub fn name(&self) -> &str {
        match self {
            AnyEvent::Unknown { name } => name,
            known => known.known_name().unwrap_or_default(),
        }
    }

    /// The short name of a known variant, borrowed from nothing (so it outlives the event,
    /// which the projection moves apart while applying it); `None` for [`AnyEvent::Unknown`].
    pub fn known_name(&self) -> Option<&'static str> {
        Some(match self {
            AnyEvent::TaskSubmitted(_) => "TaskSubmitted",
            AnyEvent::TaskStarted(_) => "TaskStarted",
            AnyEvent::TaskProgress(_) => "TaskProgress",
            AnyEvent::TaskChunk(_) => "TaskChunk",
            AnyEvent::TaskCheckpointed(_) => "TaskCheckpointed",
            AnyEvent::TaskSuspended(_) => "TaskSuspended",
            AnyEvent::TaskSignalled(_) => "TaskSignalled",
            AnyEvent::TaskRetryScheduled(_) => "TaskRetryScheduled",
            AnyEvent::TaskCompleted(_) => "TaskCompleted",
            AnyEvent::TaskFailed(_) => "TaskFailed",
            AnyEvent::TaskDeadLettered(_) => "TaskDeadLettered",
            AnyEvent::TaskCancelRequested(_) => "TaskCancelRequested",
            AnyEvent::TaskCancelled(_) => "TaskCancelled",
            AnyEvent::TaskExpired(_) => "TaskExpired",
            AnyEvent::AgentRegistered(_) => "AgentRegistered",
            AnyEvent::AgentHeartbeat(_) => "AgentHeartbeat",
            AnyEvent::AgentStateChanged(_) => "AgentStateChanged",
            AnyEvent::AgentLost(_) => "AgentLost",
            AnyEvent::AgentDeregistered(_) => "AgentDeregistered",
            AnyEvent::JobSubmitted(_) => "JobSubmitted",
            AnyEvent::JobCompleted(_) => "JobCompleted",
            AnyEvent::Unknown { .. } => return None,
        })
    }
}

/// Decodes a Confluent-framed payload into whichever event type wrote it.
/// Decodes like [`decode_any`], but waits out a schema registry that cannot be asked
/// (retrying with back-off, logging now and then) instead of failing: a follower that skipped
/// the record would act as if it never happened (a cancel never applied, an outcome never
/// seen). Errors of the record itself come back at once. `None` when `stop` came first.
pub async fn decode_any_waiting(codec: &WireCodec, bytes: &[u8], stop: &CancellationToken) -> Option<Result<AnyEvent, WireError>> {
    let mut backoff = Backoff::default();
    loop {
        match decode_any(codec, bytes).await {
            Err(error) if error.is_passing() => {
                if backoff.failures() % WAITING_LOGGED_EVERY == 0 {
                    tracing::warn!(%error, retries = backoff.failures(), "waiting for the schema registry to read a record");
                }
                if !backoff.wait(stop).await {
                    return None;
                }
            }
            other => return Some(other),
        }
    }
}

/// Every how many retries [`decode_any_waiting`] says again that it waits.
const WAITING_LOGGED_EVERY: u32 = 10;

pub async fn decode_any(codec: &WireCodec, bytes: &[u8]) -> Result<AnyEvent, WireError> {
    let name = codec.writer_name(bytes).await?;
    macro_rules! pick {
        ($($ty:ident),*) => {
            match &*name {
                $(concat!("io.agentlog.v1.", stringify!($ty)) => AnyEvent::$ty(codec.decode::<$ty>(bytes).await?.1),)*
                _ => AnyEvent::Unknown { name: name.to_string() },
            }
        };
    }
    Ok(pick!(
        TaskSubmitted,
        TaskStarted,
        TaskProgress,
        TaskChunk,
        TaskCheckpointed,
        TaskSuspended,
        TaskSignalled,
        TaskRetryScheduled,
        TaskCompleted,
        TaskFailed,
        TaskDeadLettered,
        TaskCancelRequested,
        TaskCancelled,
        TaskExpired,
        AgentRegistered,
        AgentHeartbeat,
        AgentStateChanged,
        AgentLost,
        AgentDeregistered,
        JobSubmitted,
        JobCompleted
    ))
}
