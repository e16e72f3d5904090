//! Delegation: an agent submits sub-tasks to other agent types and awaits their outcomes
//! (fan-out / fan-in). A child's id is `<parent id>.<n>`, its `parent_task_id` the parent
//! and its causation id the parent's command, so the tree is on the log. If the parent's
//! attempt is re-run (a retry, a worker that died), a child whose outcome is already known is
//! not submitted again: the re-run picks up where the first one got.

use std::sync::Arc;
use std::time::Duration;

use super::client::{ClientError, TaskClient};
use super::outcomes::OutcomeWatch;
use crate::events::{AnyEvent, TaskSubmitted};

#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    #[error(transparent)]
    Submit(#[from] ClientError),
    #[error("sub-task {task_id} has no outcome after {after:?}")]
    NoOutcome { task_id: String, after: Duration },
}

/// What a delegating attempt gets in its [`TaskContext`](super::runtime::TaskContext).
#[derive(Clone)]
pub struct Delegate {
    pub(crate) client: TaskClient,
    pub(crate) outcomes: Arc<OutcomeWatch>,
    pub(crate) parent: Arc<TaskSubmitted>,
}

impl std::fmt::Debug for Delegate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegate").field("parent", &self.parent.task_id).finish()
    }
}

impl Delegate {
    /// Submits sub-task number `n` for `agent_type` (on the parent's lane) and returns its id.
    pub async fn submit(&self, n: usize, agent_type: &str, input: Vec<u8>) -> Result<String, DelegateError> {
        let parent = &self.parent;
        let child_id = format!("{}.{n}", parent.task_id);
        // Children are the parent's tenant's tasks.
        if self.outcomes.get(&parent.meta.tenant, &child_id).is_some() {
            return Ok(child_id);
        }
        let mut meta = self.client.meta(&parent.meta.tenant);
        meta.correlation_id = parent.meta.correlation_id.clone();
        meta.causation_id = Some(parent.meta.event_id.clone());
        meta.trace_parent = parent.meta.trace_parent.clone();
        let mut child = TaskSubmitted::new(meta, &child_id, agent_type, parent.lane, input);
        child.parent_task_id = Some(parent.task_id.clone());
        child.deadline = parent.deadline;
        self.client.submit(&child).await?;
        Ok(child_id)
    }

    /// The sub-task's terminal outcome, waiting up to `timeout`.
    pub async fn outcome(&self, child_id: &str, timeout: Duration) -> Result<AnyEvent, DelegateError> {
        self.outcomes
            .wait(&self.parent.meta.tenant, child_id, timeout)
            .await
            .ok_or_else(|| DelegateError::NoOutcome { task_id: child_id.to_string(), after: timeout })
    }
}
