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
    /// The trace context of the attempt that delegates (its span's, taken when the attempt
    /// began): children submitted through the callback server are outside that span.
    pub(crate) trace: Option<crate::trace::Context>,
}

impl std::fmt::Debug for Delegate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegate").field("parent", &self.parent.task_id).finish()
    }
}

/// A sub-task as an agent asks for it.
#[derive(Debug, Clone)]
pub struct Child {
    pub n: usize,
    pub agent_type: String,
    pub input: Vec<u8>,
    pub content_type: String,
    pub labels: std::collections::HashMap<String, String>,
}

impl Delegate {
    /// The id of sub-task number `n`.
    pub fn child_id(&self, n: usize) -> String {
        format!("{}.{n}", self.parent.task_id)
    }

    /// Submits sub-task number `n` for `agent_type` (on the parent's lane) and returns its id.
    pub async fn submit(&self, n: usize, agent_type: &str, input: Vec<u8>) -> Result<String, DelegateError> {
        let child = Child { n, agent_type: agent_type.to_string(), input, content_type: "application/json".to_string(), labels: Default::default() };
        self.submit_child(child).await
    }

    /// Submits `child` (on the parent's lane, tenant and deadline) and returns its id. A child
    /// whose outcome is known is not submitted again.
    pub async fn submit_child(&self, child: Child) -> Result<String, DelegateError> {
        let parent = &self.parent;
        let child_id = self.child_id(child.n);
        // Children are the parent's tenant's tasks.
        if self.outcomes.get(&parent.meta.tenant, &child_id).is_some() {
            return Ok(child_id);
        }
        let mut meta = self.client.meta(&parent.meta.tenant);
        meta.correlation_id = parent.meta.correlation_id.clone();
        meta.causation_id = Some(parent.meta.event_id.clone());
        // An unsampled parent whose command had no context (its attempts decide by its id)
        // gives its children an unsampled one: each child would otherwise decide by its own
        // id and start a trace without its parent.
        let cause =
            self.trace.clone().or_else(|| crate::trace::Context::of(&parent.meta)).or_else(|| crate::trace::enabled().then(crate::trace::Context::unsampled));
        crate::trace::stamp(&mut meta, cause.as_ref());
        let mut command = TaskSubmitted::new(meta, &child_id, child.agent_type, parent.lane, child.input);
        command.content_type = child.content_type;
        command.labels = child.labels;
        command.parent_task_id = Some(parent.task_id.clone());
        command.deadline = parent.deadline;
        self.client.submit(&command).await?;
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
