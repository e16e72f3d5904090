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
    /// `task.stream`: progress and output chunks of running attempts (the agent protocol).
    pub fn stream(&self) -> String {
        self.named("task.stream")
    }
    /// `task.checkpoints`: what running attempts saved for the task's next attempt.
    pub fn checkpoints(&self) -> String {
        self.named("task.checkpoints")
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

    /// `<prefix>agents.<type>`: the consumer group of an agent type's workers, whose lag per
    /// lane is what `GET /v1/agent-types` shows. Prefixed like the topics, so two deployments
    /// on one Kafka cluster (two prefixes) never share a group: a shared group would rebalance
    /// both deployments' workers together.
    pub fn worker_group(&self, agent_type: &str) -> String {
        self.named(&format!("agents.{agent_type}"))
    }

    /// The group this agent type's workers used before group names took the prefix
    /// (`agents.<type>`), when that is another name: a worker reads its committed offsets for a
    /// partition its own group never committed ([`crate::agent::floors`]), so an upgrade does
    /// not run retained tasks again.
    pub fn legacy_worker_group(&self, agent_type: &str) -> Option<String> {
        let legacy = format!("agents.{agent_type}");
        (self.worker_group(agent_type) != legacy).then_some(legacy)
    }

    /// `<prefix>supervisor`: the supervisors' election group; one member leads (timers,
    /// liveness, jobs), the others stand by. With the default prefix this is the name it always
    /// had (`agentlog.supervisor`); it commits no offsets, so a new name needs no migration.
    pub fn supervisor_group(&self) -> String {
        self.named("supervisor")
    }
}
