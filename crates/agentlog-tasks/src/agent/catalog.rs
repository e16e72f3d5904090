//! Agent types as declared in config (`[agents.<name>]`): what runs them, how many at once,
//! for how long, how failures retry, and which lanes they read. Each type owns one topic per
//! lane, `tasks.<type>.<lane>`, created by `agentlog topics apply` with the catalog.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::retry::RetryPolicy;
use crate::events::Lane;
use crate::events::lane::names as lane_names;
use crate::log::TopicSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTypeConfig {
    #[serde(default)]
    pub description: String,
    pub runtime: RuntimeConfig,
    /// Tasks one worker runs at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Per-attempt timeout; an attempt past it fails with kind `timeout`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Lanes this type reads, a subset of critical/high/normal/low (by name; an unknown name
    /// fails the config load, naming the key). A worker never starts a lower-lane task while
    /// a higher-lane one of its assignment waits.
    #[serde(default = "default_lanes", with = "lane_names")]
    pub lanes: Vec<Lane>,
    /// Partitions of each lane topic: the most workers that can share one lane.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Optional JSON Schema (inline JSON text) that inputs must satisfy.
    #[serde(default)]
    pub input_schema: Option<String>,
    /// Outcome and offset commit in one transaction, so each task has exactly one outcome on
    /// `task.results` even when a worker dies between writing and committing.
    #[serde(default)]
    pub exactly_once: bool,
    /// Its agents submit sub-tasks and await them: the worker follows `task.results` for
    /// their outcomes and hands each attempt a delegate.
    #[serde(default)]
    pub delegates: bool,
    /// What a suspended task's timeout does when its signal did not come (agent protocol
    /// `suspend`): fail the task (kind `signal_timeout`) or resume it with a timeout marker.
    #[serde(default)]
    pub on_signal_timeout: SignalTimeout,
}

/// What the timeout of a wait for a signal does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalTimeout {
    /// The task fails with kind `signal_timeout`.
    #[default]
    Fail,
    /// The next attempt runs with a signal marked `timed_out`.
    Resume,
}

/// How an agent type runs a task. Its `Debug` masks what may be secret (see [`Self::shown`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RuntimeConfig {
    /// A Rust agent compiled into agentlog, by name.
    Builtin { name: String },
    /// POST the task as JSON to an endpoint the agent's author runs. The URL may carry
    /// credentials; they are masked wherever it is shown.
    Http { url: String },
    /// A program: input on stdin, output on stdout; task data never reaches argv or a shell.
    Exec {
        program: String,
        #[serde(default)]
        args: Vec<String>,
        /// The program's environment, besides PATH, HOME and LANG (taken from the worker's)
        /// and the task's AGENTLOG_* metadata: nothing else of the worker's environment
        /// (which holds the log's and the registry's credentials) reaches the program.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Stdout is the agent protocol's NDJSON frames (`docs/agent-protocol.md`): progress
        /// and chunks streamed as written, then a `result` or `error` frame.
        #[serde(default)]
        frames: bool,
    },
}

impl RuntimeConfig {
    /// The configuration as operators may see it (`/v1/agent-types` for admin tenants, logs):
    /// an http URL with its credentials and query values masked, exec environment values
    /// masked (their names stay).
    pub fn shown(&self) -> serde_json::Value {
        match self {
            RuntimeConfig::Builtin { name } => serde_json::json!({"kind": "builtin", "name": name}),
            RuntimeConfig::Http { url } => serde_json::json!({"kind": "http", "url": crate::redact::url_text(url)}),
            RuntimeConfig::Exec { program, args, env, frames } => {
                let env: BTreeMap<&str, &str> = env.keys().map(|k| (k.as_str(), crate::redact::MASK)).collect();
                serde_json::json!({"kind": "exec", "program": program, "args": args, "env": env, "frames": frames})
            }
        }
    }
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.shown())
    }
}

fn default_concurrency() -> u32 {
    4
}
fn default_timeout_ms() -> u64 {
    300_000
}
fn default_lanes() -> Vec<Lane> {
    Lane::ALL.to_vec()
}
fn default_partitions() -> i32 {
    6
}

impl AgentTypeConfig {
    /// Problems with the declaration of agent type `name`, each naming the full key.
    pub fn problems(&self, name: &str) -> Vec<String> {
        let key = |field: &str| format!("agents.{name}.{field}");
        let mut out = Vec::new();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
            out.push(format!("agents.{name}: an agent type name is lowercase letters, digits, '-' and '_' (it becomes part of topic names)"));
        }
        if self.concurrency == 0 {
            out.push(format!("{} must be at least 1", key("concurrency")));
        }
        if self.timeout_ms == 0 {
            out.push(format!("{} must be greater than 0", key("timeout_ms")));
        }
        if self.partitions < 1 {
            out.push(format!("{} must be at least 1", key("partitions")));
        }
        if self.lanes.is_empty() {
            out.push(format!("{} must name at least one lane", key("lanes")));
        }
        for (i, lane) in self.lanes.iter().enumerate() {
            if self.lanes[..i].contains(lane) {
                out.push(format!("{}: lane `{lane}` is listed twice", key("lanes")));
            }
        }
        match &self.runtime {
            RuntimeConfig::Builtin { name: agent } if agent.is_empty() => out.push(format!("{} must not be empty", key("runtime.name"))),
            RuntimeConfig::Http { url } if !(url.starts_with("http://") || url.starts_with("https://")) => {
                out.push(format!("{}: `{}` must start with http:// or https://", key("runtime.url"), crate::redact::url_text(url)))
            }
            RuntimeConfig::Exec { program, .. } if program.is_empty() => out.push(format!("{} must not be empty", key("runtime.program"))),
            RuntimeConfig::Exec { env, .. } => {
                for (name, value) in env {
                    if name.is_empty() || name.contains(['=', '\0']) {
                        out.push(format!("{}: `{name}` is not an environment variable name (non-empty, no '=' or NUL)", key("runtime.env")));
                    }
                    if value.contains('\0') {
                        out.push(format!("{} must not contain NUL", key(&format!("runtime.env.{name}"))));
                    }
                }
            }
            _ => {}
        }
        if let Some(schema) = &self.input_schema
            && let Err(e) = serde_json::from_str::<serde_json::Value>(schema)
        {
            out.push(format!("{}: not valid JSON: {e}", key("input_schema")));
        }
        out.extend(self.retry.problems().into_iter().map(|p| format!("agents.{name}.{p}")));
        out
    }

    /// The lanes this type reads, highest priority first (whatever the config's order).
    pub fn lanes_by_priority(&self) -> impl Iterator<Item = Lane> + '_ {
        Lane::ALL.into_iter().filter(|lane| self.lanes.contains(lane))
    }

    /// Whether this type reads `lane`.
    pub fn reads(&self, lane: Lane) -> bool {
        self.lanes.contains(&lane)
    }

    /// The lanes this type reads, as a list for messages (`high, normal`).
    pub fn lane_list(&self) -> String {
        self.lanes_by_priority().map(Lane::as_str).collect::<Vec<_>>().join(", ")
    }

    /// The lane topics of agent type `name`, highest priority first, with the topic prefix.
    pub fn lane_topics(&self, name: &str, prefix: &str) -> Vec<String> {
        self.lanes_by_priority().map(|lane| format!("{prefix}{}", crate::events::lane_topic(name, lane))).collect()
    }
}

/// Topic specs of every declared agent type's lanes, for `topics apply`.
pub fn lane_topic_specs(agents: &BTreeMap<String, AgentTypeConfig>, prefix: &str, replication_factor: i16) -> Vec<TopicSpec> {
    let mut specs = Vec::new();
    for (name, agent) in agents {
        for topic in agent.lane_topics(name, prefix) {
            let mut spec = TopicSpec::new(topic, agent.partitions);
            spec.replication_factor = replication_factor;
            // Commands must outlive the longest backlog a team tolerates; a week by default.
            spec.retention_ms = Some(604_800_000);
            specs.push(spec);
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> AgentTypeConfig {
        toml::from_str("runtime = { kind = \"builtin\", name = \"echo\" }\n").expect("minimal agent type")
    }

    #[test]
    fn defaults_read_every_lane_in_priority_order() {
        let agent = echo();
        assert!(agent.problems("echo").is_empty(), "{:?}", agent.problems("echo"));
        assert_eq!(
            agent.lane_topics("echo", "agentlog."),
            vec!["agentlog.tasks.echo.critical", "agentlog.tasks.echo.high", "agentlog.tasks.echo.normal", "agentlog.tasks.echo.low"]
        );
    }

    #[test]
    fn lanes_keep_priority_order_whatever_the_config_order() {
        let agent = AgentTypeConfig { lanes: vec![Lane::Low, Lane::Critical], ..echo() };
        assert_eq!(agent.lane_topics("x", ""), vec!["tasks.x.critical", "tasks.x.low"]);
    }

    #[test]
    fn problems_name_the_full_key() {
        let agent = AgentTypeConfig {
            concurrency: 0,
            lanes: vec![Lane::High, Lane::High],
            runtime: RuntimeConfig::Http { url: "agent:8080".into() },
            retry: RetryPolicy { max_attempts: 0, ..RetryPolicy::default() },
            ..echo()
        };
        let problems = agent.problems("summarize").join("\n");
        for expected in [
            "agents.summarize.concurrency",
            "agents.summarize.lanes: lane `high` is listed twice",
            "agents.summarize.runtime.url",
            "agents.summarize.retry.max_attempts",
        ] {
            assert!(problems.contains(expected), "missing {expected} in:\n{problems}");
        }
        assert!(!echo().problems("Bad Name").is_empty());
    }

    #[test]
    fn exec_env_is_optional_and_its_values_are_never_shown() {
        let plain: AgentTypeConfig = toml::from_str("runtime = { kind = \"exec\", program = \"/bin/cat\" }\n").expect("exec without env, as before");
        assert!(matches!(&plain.runtime, RuntimeConfig::Exec { env, .. } if env.is_empty()));
        let with_env: AgentTypeConfig =
            toml::from_str("runtime = { kind = \"exec\", program = \"/bin/cat\", env = { API_KEY = \"sk-secret\" } }\n").expect("exec with env");
        assert!(with_env.problems("x").is_empty(), "{:?}", with_env.problems("x"));
        let shown = with_env.runtime.shown().to_string();
        assert!(shown.contains("API_KEY") && !shown.contains("sk-secret"), "{shown}");
        assert!(!format!("{with_env:?}").contains("sk-secret"));
        let bad = AgentTypeConfig {
            runtime: RuntimeConfig::Exec {
                program: "/bin/cat".into(),
                args: vec![],
                env: BTreeMap::from([("A=B".to_string(), "v".to_string())]),
                frames: false,
            },
            ..echo()
        };
        assert!(bad.problems("x").join("\n").contains("agents.x.runtime.env"), "{:?}", bad.problems("x"));
        let http = RuntimeConfig::Http { url: "https://u:p4ss@h/run?token=t0k".into() };
        assert_eq!(http.shown()["url"], "https://u:***@h/run?token=***");
        let problems = AgentTypeConfig { runtime: RuntimeConfig::Http { url: "u:p4ss@h/run".into() }, ..echo() }.problems("x").join("\n");
        assert!(problems.contains("runtime.url") && !problems.contains("p4ss"), "{problems}");
    }

    #[test]
    fn lanes_are_read_by_name_and_an_unknown_one_is_refused() {
        let agent: AgentTypeConfig = toml::from_str("runtime = { kind = \"builtin\", name = \"echo\" }\nlanes = [\"low\", \"high\"]\n").expect("two lanes");
        assert_eq!(agent.lanes, vec![Lane::Low, Lane::High]);
        assert_eq!(agent.lane_list(), "high, low");
        assert_eq!(toml::to_string(&agent).expect("serialize").lines().find(|l| l.starts_with("lanes")), Some(r#"lanes = ["low", "high"]"#));
        let err = toml::from_str::<AgentTypeConfig>("runtime = { kind = \"builtin\", name = \"echo\" }\nlanes = [\"urgent\"]\n").expect_err("not a lane");
        assert!(err.to_string().contains("unknown lane `urgent` (known: critical, high, normal, low)"), "{err}");
    }

    #[test]
    fn unknown_runtime_fields_are_rejected() {
        let err = toml::from_str::<AgentTypeConfig>("runtime = { kind = \"exec\", program = \"/bin/cat\", shell = true }\n").expect_err("shell is not a field");
        assert!(err.to_string().contains("shell"), "{err}");
    }
}
