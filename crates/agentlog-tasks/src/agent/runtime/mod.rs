//! Agent runtimes: what actually runs one attempt of a task. An agent type's
//! [`RuntimeConfig`](crate::agent::RuntimeConfig) picks one of
//!
//! - [`builtin`]: Rust agents compiled into agentlog (the demo agents of `make dev`);
//! - [`http`]: POST the task as JSON to an endpoint the agent's author runs;
//! - [`exec`]: a configured program, input on stdin, output on stdout; task data never
//!   reaches argv or a shell.
//!
//! Every runtime honours [`TaskContext::cancel`]: a cancelled attempt ends with kind
//! `cancelled` promptly (well within 1 s). The worker enforces the per-attempt timeout itself
//! by dropping the attempt's future; runtimes never hang past cancellation or a drop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub mod builtin;
pub mod exec;
pub mod frames;
pub mod http;
pub mod usage;

/// The failure kinds the runtimes produce; retry policies match on these strings.
pub mod kind {
    /// The attempt ran past its timeout (HTTP request timeout, 408).
    pub const TIMEOUT: &str = "timeout";
    /// Worth retrying: a 5xx or 429 answer, a connection error.
    pub const TRANSIENT: &str = "transient";
    /// The agent refused the task (a 4xx answer, input a builtin cannot read); not retryable.
    pub const REJECTED: &str = "rejected";
    /// An exec program exited non-zero or was killed by a signal.
    pub const EXIT: &str = "exit";
    /// An exec program could not be started.
    pub const SPAWN: &str = "spawn";
    /// The attempt was cancelled through [`super::TaskContext::cancel`].
    pub const CANCELLED: &str = "cancelled";
    /// The agent answered with more than [`super::MAX_OUTPUT_BYTES`], or with an output whose
    /// TaskCompleted would not fit the log's record limit (`log.max_record_bytes`). Never
    /// retried: the agent would answer the same.
    pub const OUTPUT_TOO_LARGE: &str = "output_too_large";
    /// The agent broke the agent protocol (`docs/agent-protocol.md`): a frame that does not
    /// parse, a frame after the last, an answer without a result. Not retried.
    pub const PROTOCOL: &str = "protocol";
    /// A `progress` or `chunk` frame over [`super::frames::MAX_CHUNK_FRAME_BYTES`]; not retried.
    pub const CHUNK_TOO_LARGE: &str = "chunk_too_large";
    /// A `checkpoint` frame over [`super::frames::MAX_CHECKPOINT_FRAME_BYTES`]; not retried.
    pub const CHECKPOINT_TOO_LARGE: &str = "checkpoint_too_large";
    /// A record about the task (its outcome, retry timer or dead letter) could not be made to
    /// fit the log's record limit, or the log refused it for what it is; not retried.
    pub const RECORD_TOO_LARGE: &str = "record_too_large";
    /// The attempt ended waiting for a signal ([`super::Suspension`]): not a failure, the
    /// task waits; the kind only names it where a failure is logged.
    pub const SUSPENDED: &str = "suspended";
    /// A suspended task's signal did not come in time and its agent type says
    /// `on_signal_timeout = "fail"`; not retried.
    pub const SIGNAL_TIMEOUT: &str = "signal_timeout";
}

/// The longest a suspended task may wait for its signal: less than the `timers` topic keeps
/// its records (7 days), so the waiting command is still there when the wait ends.
pub const MAX_SIGNAL_WAIT: Duration = Duration::from_secs(6 * 24 * 3600);

/// An attempt's request to end and wait for a named signal (agent protocol `suspend`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    /// `[a-z0-9_.-]{1,64}`.
    pub signal: String,
    /// At most [`MAX_SIGNAL_WAIT`].
    pub timeout: Duration,
}

/// Whether `name` may name a signal (or an error kind): 1 to 64 of a-z, 0-9, `_`, `.`, `-`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// The longest wait an agent's retry-after is honoured for: an agent answering "retry in a
/// year" must not park a task for a year without anyone deciding so.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The most output (exec stdout, HTTP response body) an attempt may produce.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// What an agent gets for one attempt.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub task_id: String,
    pub agent_type: String,
    /// 1-based attempt number.
    pub attempt: u32,
    pub input: Bytes,
    pub content_type: String,
    pub labels: HashMap<String, String>,
    /// Idempotency key for side effects in the outside world: the same for every attempt of a
    /// task, so an agent can deduplicate what an earlier attempt already did.
    pub idempotency_key: String,
    /// Cancelled when the task is cancelled; the agent stops and returns kind `cancelled`.
    pub cancel: CancellationToken,
    /// Sub-task submission and awaiting, for agent types declared with `delegates = true`.
    pub delegate: Option<crate::agent::delegate::Delegate>,
    /// The task's latest checkpoint, saved by an earlier attempt (or an earlier run of this
    /// one): where a multi-step agent continues from.
    pub checkpoint: Option<crate::agent::checkpoints::Checkpoint>,
    /// Writes progress and output chunks to `task.stream`, checkpoints to `task.checkpoints`
    /// (absent when an agent runs outside a worker).
    pub stream: Option<crate::agent::stream::AttemptStream>,
    /// What resumed the task when the previous attempt suspended: a signal, or its timeout.
    pub signal: Option<crate::events::SignalDelivery>,
    /// For a delegating agent type run by `http` or `exec`: the URL of this attempt's
    /// callback, where it submits and awaits sub-tasks (`docs/agent-protocol.md` §6).
    pub callback_url: Option<String>,
}

/// A completed attempt's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutput {
    pub output: Bytes,
    pub content_type: String,
    /// What the attempt consumed (tokens, cost), when the agent reports it: written with the
    /// outcome as `TaskCompleted.usage`. Held to [`usage::check`] before it is.
    pub usage: Option<usage::Usage>,
}

impl TaskOutput {
    /// An output without usage.
    pub fn new(output: impl Into<Bytes>, content_type: impl Into<String>) -> Self {
        Self { output: output.into(), content_type: content_type.into(), usage: None }
    }

    /// The same output reporting `usage`.
    pub fn with_usage(mut self, usage: usage::Usage) -> Self {
        self.usage = Some(usage);
        self
    }
}

/// A failed attempt: `kind` is what retry policies match on ("timeout", "transient",
/// "rejected", "exit", "cancelled", ...; see [`kind`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct AgentFailure {
    pub kind: String,
    pub message: String,
    /// The runtime's own judgement; the agent type's retry policy (`retry_on`) decides.
    pub retryable: bool,
    /// The agent asked not to be called again before this long (an HTTP `Retry-After`, an
    /// `error` frame's `retry_after_ms`): a retry waits at least this, at most
    /// [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
    /// Not a failure but the end of the attempt to wait for a signal ([`AgentFailure::suspend`]).
    pub suspend: Option<Suspension>,
}

impl AgentFailure {
    pub fn new(kind: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self { kind: kind.into(), message: message.into(), retryable, retry_after: None, suspend: None }
    }

    /// The attempt ends and the task waits for `signal`, at most `timeout`.
    pub fn suspend(signal: impl Into<String>, timeout: Duration) -> Self {
        let signal = signal.into();
        let message = format!("waiting for signal `{signal}` for at most {timeout:?}");
        Self { suspend: Some(Suspension { signal, timeout }), ..Self::new(kind::SUSPENDED, message, false) }
    }

    /// The same failure, asking the retry to wait at least `after`.
    pub fn retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The attempt ended because its cancel token fired.
    pub fn cancelled() -> Self {
        Self::new(kind::CANCELLED, "the task was cancelled", false)
    }

    /// The agent refused the task; retrying would not help.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(kind::REJECTED, message, false)
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(kind::TRANSIENT, message, true)
    }
}

/// An agent: runs one attempt of a task.
#[async_trait::async_trait]
pub trait Agent: Send + Sync {
    async fn run(&self, ctx: TaskContext) -> Result<TaskOutput, AgentFailure>;
}

/// Why an agent type's runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `url` is masked ([`crate::redact`]): this error reaches logs.
    #[error("agent url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unknown builtin agent `{name}` (known: {})", known.join(", "))]
    UnknownBuiltin { name: String, known: Vec<String> },
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("exec runtime: {0}")]
    InvalidProgram(String),
}

/// Builds the agent for an agent type's runtime config. `timeout` is the per-attempt timeout;
/// the http runtime uses it as its request timeout (reported as kind `timeout`), the others
/// leave it to the worker.
pub fn build(runtime: &crate::agent::RuntimeConfig, timeout: Duration) -> Result<Arc<dyn Agent>, RuntimeError> {
    use crate::agent::RuntimeConfig;
    Ok(match runtime {
        RuntimeConfig::Builtin { name } => Arc::new(builtin::Builtin::by_name(name)?),
        RuntimeConfig::Http { url } => Arc::new(http::HttpAgent::new(url, timeout)?),
        RuntimeConfig::Exec { program, args, env, frames } => Arc::new(exec::ExecAgent::new(program, args.clone(), env.clone())?.with_frames(*frames)),
    })
}

/// The last `max` bytes of `bytes` as text (lossy), starting on a character boundary where
/// the cut falls inside one.
pub(crate) fn tail_text(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    let mut tail = &bytes[start..];
    // Skip UTF-8 continuation bytes a cut may have left at the front.
    while start > 0 && !tail.is_empty() && (tail[0] & 0b1100_0000) == 0b1000_0000 {
        tail = &tail[1..];
    }
    String::from_utf8_lossy(tail).into_owned()
}

/// The first `max` bytes of `bytes` as text (lossy), "…" appended when cut.
pub fn head_text(bytes: &[u8], max: usize) -> String {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut end = max;
    while end > 0 && (bytes[end] & 0b1100_0000) == 0b1000_0000 {
        end -= 1;
    }
    format!("{}…", String::from_utf8_lossy(&bytes[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::RuntimeConfig;

    #[test]
    fn tail_and_head_cut_on_character_boundaries() {
        let text = "ééééé".as_bytes(); // 10 bytes
        assert_eq!(tail_text(text, 3), "é");
        assert_eq!(tail_text(text, 4), "éé");
        assert_eq!(tail_text(b"abc", 10), "abc");
        assert_eq!(head_text(text, 3), "é…");
        assert_eq!(head_text(b"abc", 3), "abc");
    }

    #[test]
    fn build_picks_the_configured_runtime_and_names_bad_configs() {
        let t = Duration::from_secs(5);
        assert!(build(&RuntimeConfig::Builtin { name: "echo".into() }, t).is_ok());
        assert!(build(&RuntimeConfig::Http { url: "http://127.0.0.1:9/agent".into() }, t).is_ok());
        assert!(build(&RuntimeConfig::Exec { program: "/bin/cat".into(), args: vec![], env: Default::default(), frames: false }, t).is_ok());
        let err = build(&RuntimeConfig::Http { url: "ftp://example.com/".into() }, t).err().expect("ftp refused");
        assert!(matches!(err, RuntimeError::InvalidUrl { .. }), "{err}");
        let err = build(&RuntimeConfig::Http { url: "not a url".into() }, t).err().expect("garbage refused");
        assert!(matches!(err, RuntimeError::InvalidUrl { .. }), "{err}");
        let err = build(&RuntimeConfig::Exec { program: String::new(), args: vec![], env: Default::default(), frames: false }, t)
            .err()
            .expect("empty program refused");
        assert!(matches!(err, RuntimeError::InvalidProgram(_)), "{err}");
        let err = build(&RuntimeConfig::Builtin { name: "nope".into() }, t).err().expect("unknown builtin refused");
        assert_eq!(err.to_string(), "unknown builtin agent `nope` (known: echo, sleep, textstats, coordinator, tokens, approval)");
    }

    #[test]
    fn failure_displays_kind_then_message() {
        assert_eq!(AgentFailure::cancelled().to_string(), "cancelled: the task was cancelled");
        assert!(!AgentFailure::rejected("x").retryable);
        assert!(AgentFailure::transient("x").retryable);
    }
}
