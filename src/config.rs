//! Layered configuration: embedded defaults (`config/default.toml`), then an optional file,
//! then `AGENTLOG__SECTION__KEY` environment variables. Unknown keys are errors that name the
//! key, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub topics: TopicsConfig,
    pub registry: RegistryConfig,
    /// Agent types by name (`[agents.<name>]`); none by default.
    #[serde(default)]
    pub agents: BTreeMap<String, crate::agent::AgentTypeConfig>,
    /// Heartbeat interval and how many missed ones make an agent lost.
    #[serde(default)]
    pub supervisor: crate::supervisor::SupervisorConfig,
    /// The HTTP API.
    #[serde(default)]
    pub api: crate::api::ApiConfig,
    /// Where the projection lives.
    #[serde(default)]
    pub projection: crate::projection::ProjectionConfig,
    /// What workers serve besides running tasks.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Traces over OTLP (`[telemetry]`).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// `[worker]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// `[worker.callback]`: the callback server of delegating `http`/`exec` agent types.
    #[serde(default)]
    pub callback: crate::agent::callback::CallbackConfig,
}

/// `[registry]`, owned by the registry module.
pub use crate::registry::RegistryConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    pub replication_factor: i16,
}

/// `[log]`, owned by the log module (which depends on nothing above it).
pub use crate::log::config::{Backend, EmbeddedConfig, FsyncPolicy, GroupProtocol, KafkaConfig, LogConfig};

impl Config {
    /// Defaults, then `file` (if given), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment passed in (tests).
    pub fn load_with_env(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile { path: path.to_path_buf() });
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only our prefix; `__` separates levels so keys may contain single underscores.
        let vars: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("AGENTLOG__")).collect();
        for (key, value) in vars {
            let lower = key["AGENTLOG__".len()..].to_ascii_lowercase();
            let parts: Vec<&str> = lower.split("__").collect();
            // librdkafka property names contain dots (`linger.ms`): everything after a
            // `*_properties` level is one map key, not more nesting.
            match parts.iter().position(|p| p.ends_with("properties")) {
                Some(i) if i + 1 < parts.len() => {
                    let mut entry = figment::value::Dict::new();
                    entry.insert(parts[i + 1..].join("__"), figment::value::Value::from(value));
                    figment = figment.merge((parts[..=i].join(".").as_str(), entry));
                }
                _ => {
                    let path = parts.join(".");
                    figment = figment.merge((path.as_str(), env_value(&value)));
                }
            }
        }
        let config: Config = figment.extract().map_err(|e| ConfigError::Invalid(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            return Err(ConfigError::Field { field: "telemetry.sampling_ratio", reason: format!("{} is not within 0.0..=1.0", self.telemetry.sampling_ratio) });
        }
        let log = &self.log;
        if log.max_record_bytes == 0 {
            return Err(ConfigError::Field { field: "log.max_record_bytes", reason: "must be greater than 0".into() });
        }
        if log.embedded.max_batch_records == 0 {
            return Err(ConfigError::Field { field: "log.embedded.max_batch_records", reason: "must be greater than 0".into() });
        }
        if log.backend == Backend::Kafka && log.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::Field {
                field: "log.kafka.bootstrap_servers",
                reason: "must name at least one host:port when log.backend = \"kafka\"".into(),
            });
        }
        let problems = self.registry.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems.join("; ")));
        }
        let problems: Vec<String> = self.agents.iter().flat_map(|(name, agent)| agent.problems(name)).collect();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems.join("; ")));
        }
        if self.topics.replication_factor < 1 {
            return Err(ConfigError::Field { field: "topics.replication_factor", reason: "must be at least 1".into() });
        }
        // The API checks these again when it starts (tests build it without a file); here a
        // bad `[api]` fails every command at load, naming the key.
        let problems = self.api.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems.join("; ")));
        }
        let problems = self.supervisor.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems.join("; ")));
        }
        if log.kafka.request_timeout_ms == 0 {
            return Err(ConfigError::Field { field: "log.kafka.request_timeout_ms", reason: "must be greater than 0".into() });
        }
        Ok(())
    }
}

/// Environment values are strings; numbers and booleans are parsed so that
/// `AGENTLOG__LOG__MAX_RECORD_BYTES=5` deserializes into a number.
fn env_value(value: &str) -> figment::value::Value {
    use figment::value::Value;
    if let Ok(n) = value.parse::<u64>() {
        return Value::from(n);
    }
    // A ratio (`telemetry.sampling_ratio`): only what has a decimal point, so a name such as
    // `inf` or `1e3` stays text.
    if value.contains('.')
        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && let Ok(x) = value.parse::<f64>()
    {
        return Value::from(x);
    }
    match value {
        "true" => Value::from(true),
        "false" => Value::from(false),
        _ => Value::from(value.to_string()),
    }
}

/// figment's errors say "unknown field `x`" and the path separately; join them so the
/// message names the full key, e.g. `log.embeded: unknown field ...`.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let source = e.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
            if path.is_empty() { format!("{}{source}", e.kind) } else { format!("{path}: {}{source}", e.kind) }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).expect("write config");
        Config::load_with_env(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn telemetry_is_off_by_default_and_its_ratio_is_set_by_the_environment_and_checked() {
        let defaults = Config::load_with_env(None, Vec::new()).expect("defaults load");
        assert!(!defaults.telemetry.enabled);
        let on = load_str("", &[("AGENTLOG__TELEMETRY__ENABLED", "true"), ("AGENTLOG__TELEMETRY__SAMPLING_RATIO", "0.01")]).expect("loads");
        assert!(on.telemetry.enabled);
        assert_eq!(on.telemetry.sampling_ratio, 0.01);
        let err = load_str("[telemetry]\nsampling_ratio = 1.5\n", &[]).expect_err("refused");
        assert!(err.to_string().contains("telemetry.sampling_ratio"), "{err}");
    }

    #[test]
    fn defaults_load_and_pick_the_embedded_backend() {
        let config = Config::load_with_env(None, Vec::new()).expect("defaults load");
        assert_eq!(config.log.backend, Backend::Embedded);
        assert_eq!(config.log.embedded.fsync, FsyncPolicy::Never);
        assert_eq!(config.log.kafka.group_protocol, GroupProtocol::Consumer);
    }

    #[test]
    fn file_then_environment_override_in_order() {
        let config = load_str(
            "[log]\nbackend = \"kafka\"\nmax_record_bytes = 10\n",
            &[
                ("AGENTLOG__LOG__MAX_RECORD_BYTES", "20"),
                ("AGENTLOG__LOG__KAFKA__PROPERTIES__SECURITY.PROTOCOL", "SSL"),
                ("AGENTLOG__LOG__KAFKA__PRODUCER_PROPERTIES__LINGER.MS", "1"),
            ],
        )
        .expect("loads");
        assert_eq!(config.log.backend, Backend::Kafka);
        assert_eq!(config.log.max_record_bytes, 20);
        assert_eq!(config.log.kafka.properties.get("security.protocol").map(String::as_str), Some("SSL"));
        // A property from the environment overrides the same property from the defaults.
        assert_eq!(config.log.kafka.producer_properties.get("linger.ms").map(String::as_str), Some("1"));
    }

    #[test]
    fn a_mistyped_key_is_an_error_naming_it() {
        let err = load_str("[log.embeded]\ndata_dir = \"x\"\n", &[]).expect_err("typo must fail");
        let message = err.to_string();
        assert!(message.contains("embeded"), "{message}");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn a_mistyped_environment_variable_is_an_error_naming_it() {
        let err = Config::load_with_env(None, vec![("AGENTLOG__LOG__BAKEND".into(), "kafka".into())]).expect_err("typo");
        assert!(err.to_string().contains("bakend"), "{err}");
    }

    #[test]
    fn a_bad_enum_value_names_the_field() {
        let err = load_str("[log]\nbackend = \"kafak\"\n", &[]).expect_err("bad value");
        let message = err.to_string();
        assert!(message.contains("log.backend") && message.contains("kafak"), "{message}");
    }

    #[test]
    fn a_registry_url_without_scheme_names_the_field() {
        let err = load_str("[registry]\nurl = \"schema-registry:8081\"\n", &[]).expect_err("no scheme");
        assert!(err.to_string().contains("registry.url"), "{err}");
    }

    #[test]
    fn agent_types_load_and_bad_ones_name_the_key() {
        let config = load_str("[agents.echo]\nruntime = { kind = \"builtin\", name = \"echo\" }\nconcurrency = 2\n", &[]).expect("agent type loads");
        assert_eq!(config.agents["echo"].concurrency, 2);
        let err = load_str("[agents.echo]\nruntime = { kind = \"builtin\", name = \"echo\" }\nlanes = [\"fast\"]\n", &[]).expect_err("unknown lane");
        assert!(err.to_string().contains("agents.echo.lanes: unknown lane `fast`"), "{err}");
    }

    #[test]
    fn a_missing_file_is_reported() {
        let err = Config::load_with_env(Some(Path::new("/nonexistent/agentlog.toml")), Vec::new()).expect_err("missing");
        assert!(matches!(err, ConfigError::MissingFile { .. }), "{err}");
    }

    #[test]
    fn api_limits_default_sensibly_and_bad_ones_name_the_keys() {
        let api = Config::load_with_env(None, Vec::new()).expect("defaults load").api;
        assert_eq!((api.max_connections, api.idle_timeout_ms, api.header_read_timeout_ms), (1024, 60_000, 10_000));
        assert_eq!((api.max_streams_per_tenant, api.auth_failure_delay_ms), (16, 250));
        let err = load_str(
            "[api]
header_read_timeout_ms = 5000
idle_timeout_ms = 1000
",
            &[],
        )
        .expect_err("head past idle");
        assert!(err.to_string().contains("api.header_read_timeout_ms (5000) must not exceed api.idle_timeout_ms (1000)"), "{err}");
        for (key, value) in [("MAX_CONNECTIONS", "0"), ("MAX_STREAMS_PER_TENANT", "0"), ("AUTH_FAILURE_DELAY_MS", "60000")] {
            let err = Config::load_with_env(None, vec![(format!("AGENTLOG__API__{key}"), value.into())]).expect_err(key);
            assert!(err.to_string().contains(&format!("api.{}", key.to_lowercase())), "{err}");
        }
    }

    #[test]
    fn zero_record_limit_is_rejected_naming_the_field() {
        let err = load_str("[log]\nmax_record_bytes = 0\n", &[]).expect_err("zero");
        assert!(err.to_string().contains("log.max_record_bytes"), "{err}");
    }

    /// A zero heartbeat interval loaded, and every worker then panicked at start.
    #[test]
    fn heartbeat_settings_out_of_range_are_rejected_naming_the_key() {
        for (toml, key) in [
            ("[supervisor]\nheartbeat_interval_ms = 0\n", "supervisor.heartbeat_interval_ms"),
            ("[supervisor]\nheartbeat_interval_ms = 9223372036854775807\n", "supervisor.heartbeat_interval_ms"),
            ("[supervisor]\nmissed_heartbeats = 0\n", "supervisor.missed_heartbeats"),
        ] {
            let err = load_str(toml, &[]).expect_err(toml);
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
        let err = Config::load_with_env(None, vec![("AGENTLOG__SUPERVISOR__HEARTBEAT_INTERVAL_MS".into(), "0".into())]).expect_err("env");
        assert!(err.to_string().contains("supervisor.heartbeat_interval_ms"), "{err}");
        load_str("[supervisor]\nheartbeat_interval_ms = 250\nmissed_heartbeats = 4\n", &[]).expect("in range");
    }
}
