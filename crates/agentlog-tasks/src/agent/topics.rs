//! Names of the topics the task lifecycle uses, under the configured prefix, in one place so
//! the worker, supervisor, client and tests cannot disagree about them.

use crate::events::Lane;

/// The fixed names are built once: workers ask for them several times per task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTopics {
    prefix: String,
    events: String,
    results: String,
}

impl TaskTopics {
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self { events: format!("{prefix}task.events"), results: format!("{prefix}task.results"), prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn named(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `tasks.<type>.<lane>`: submit commands.
    pub fn lane(&self, agent_type: &str, lane: Lane) -> String {
        self.named(&crate::events::lane_topic(agent_type, lane))
    }
    pub fn events(&self) -> String {
        self.events.clone()
    }
    pub fn results(&self) -> String {
        self.results.clone()
    }
    pub fn dlq(&self) -> String {
        self.named("dlq")
    }
    pub fn timers(&self) -> String {
        self.named("timers")
    }
    pub fn control(&self) -> String {
        self.named("control")
    }
    pub fn agent_events(&self) -> String {
        self.named("agent.events")
    }
    pub fn heartbeats(&self) -> String {
        self.named("agent.heartbeats")
    }
}

/// `agents.<type>`: the consumer group of an agent type's workers, whose lag per lane is
/// what `GET /v1/agent-types` shows.
///
/// Group names do not take the topic prefix, as DESIGN.md names them: the default prefix
/// (`agentlog.`) would rename every deployed group, and a renamed group starts without
/// committed offsets, so with `auto.offset.reset = earliest` its workers would run every
/// retained task again. Prefixing needs a migration that copies the committed offsets first.
pub fn worker_group(agent_type: &str) -> String {
    format!("agents.{agent_type}")
}

/// The supervisor's group: one member leads (timers, liveness, jobs), the others stand by.
pub const SUPERVISOR_GROUP: &str = "agentlog.supervisor";
