//! Agents compiled into agentlog, picked by name (`runtime = { kind = "builtin", name = "…" }`):
//! the demo agents of `make dev` and the no-op agent of benchmarks.
//!
//! - `echo`: returns its input unchanged, with its content type.
//! - `sleep`: input `{"ms": N}`; sleeps N ms (ending early, as `cancelled`, when the task is
//!   cancelled), reporting 50% progress halfway, then answers `{"slept_ms": N}`.
//! - `textstats`: input `{"text": "…"}`; answers `{"chars": C, "words": W, "lines": L}`
//!   (Unicode scalar values, whitespace-separated words, lines as `str::lines` counts them).
//! - `coordinator`: input `{"text": "…", "sleep_ms": N}`; delegates to the agent types named
//!   `echo`, `textstats` and (when `sleep_ms` is given) `sleep`, awaits their outcomes and
//!   answers `{"echo": …, "textstats": …, "sleep": …}`. Its type needs `delegates = true`.
//! - `tokens`: input `{"text": "…", "delay_ms": N}`; streams the text word by word as output
//!   chunks (`GET /v1/tasks/{id}/stream`), N ms apart (default 50, at most 10,000), as an LLM
//!   streams tokens, then answers `{"text": …, "words": W}`. Cancellable between words. Like
//!   an LLM agent it reports usage: a word is a token (the input's words in, the words
//!   streamed out), model [`TOKENS_MODEL`], priced [`TOKENS_PRICE_MICROS`] micro-USD per
//!   token in and out, and a `chunks` counter.
//! - `approval`: input `{"text": "…", "timeout_ms": N}`; drafts `"Draft: <text>"`, saves it as
//!   its checkpoint and waits for the signal `approval` (at most N ms, default one hour):
//!   `POST /v1/tasks/{id}/signals/approval` with `{"payload": {"approved": true, "by": "…"}}`.
//!   Resumed, it answers `{"draft": …, "approved": …, "by": …}`; when the wait timed out (its
//!   type declaring `on_signal_timeout = "resume"`), `{"draft": …, "approved": false,
//!   "timed_out": true}`. The human-in-the-loop demo of `make dev`.
//!
//! Input a builtin cannot read fails with kind `rejected`, not retryable.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use super::{Agent, AgentFailure, RuntimeError, TaskContext, TaskOutput};

/// Names of the builtin agents, for error messages and `GET /v1/agent-types`.
pub const KNOWN: [&str; 6] = ["echo", "sleep", "textstats", "coordinator", "tokens", "approval"];

/// The model the `tokens` agent reports its usage for (it calls none: it is a fake LLM).
pub const TOKENS_MODEL: &str = "agentlog-fake-llm";

/// What the `tokens` agent charges per input and per output token, in micro-USD (a model
/// at 1 USD per million tokens in, 4 out).
pub const TOKENS_PRICE_MICROS: (i64, i64) = (1, 4);

/// One of the builtin agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Echo,
    Sleep,
    TextStats,
    Coordinator,
    Tokens,
    Approval,
}

impl Builtin {
    pub fn by_name(name: &str) -> Result<Self, RuntimeError> {
        match name {
            "echo" => Ok(Self::Echo),
            "sleep" => Ok(Self::Sleep),
            "textstats" => Ok(Self::TextStats),
            "coordinator" => Ok(Self::Coordinator),
            "tokens" => Ok(Self::Tokens),
            "approval" => Ok(Self::Approval),
            _ => Err(RuntimeError::UnknownBuiltin { name: name.to_string(), known: KNOWN.iter().map(|k| k.to_string()).collect() }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Sleep => "sleep",
            Self::TextStats => "textstats",
            Self::Coordinator => "coordinator",
            Self::Tokens => "tokens",
            Self::Approval => "approval",
        }
    }
}

#[derive(Deserialize)]
struct SleepInput {
    ms: u64,
}

#[derive(Deserialize)]
struct TextInput {
    text: String,
}

fn parse<'a, T: Deserialize<'a>>(agent: &str, input: &'a [u8], expected: &str) -> Result<T, AgentFailure> {
    serde_json::from_slice(input).map_err(|e| AgentFailure::rejected(format!("{agent}: input must be JSON {expected}: {e}")))
}

fn json(value: serde_json::Value) -> TaskOutput {
    TaskOutput::new(Bytes::from(value.to_string()), "application/json")
}

#[async_trait::async_trait]
impl Agent for Builtin {
    async fn run(&self, ctx: TaskContext) -> Result<TaskOutput, AgentFailure> {
        if ctx.cancel.is_cancelled() {
            return Err(AgentFailure::cancelled());
        }
        match self {
            Self::Echo => Ok(TaskOutput::new(ctx.input, ctx.content_type)),
            Self::Sleep => {
                let SleepInput { ms } = parse("sleep", &ctx.input, r#"{"ms": N}"#)?;
                let half = Duration::from_millis(ms / 2);
                let sleep = async {
                    tokio::time::sleep(half).await;
                    if let Some(stream) = &ctx.stream {
                        stream.progress(Some(50.0), Some(format!("slept {} of {ms} ms", half.as_millis()))).await;
                    }
                    tokio::time::sleep(Duration::from_millis(ms) - half).await;
                };
                tokio::select! {
                    _ = ctx.cancel.cancelled() => Err(AgentFailure::cancelled()),
                    _ = sleep => Ok(json(serde_json::json!({ "slept_ms": ms }))),
                }
            }
            Self::TextStats => {
                let TextInput { text } = parse("textstats", &ctx.input, r#"{"text": "..."}"#)?;
                Ok(json(serde_json::json!({
                    "chars": text.chars().count(),
                    "words": text.split_whitespace().count(),
                    "lines": text.lines().count(),
                })))
            }
            Self::Coordinator => coordinate(ctx).await,
            Self::Tokens => tokens(ctx).await,
            Self::Approval => approval(ctx).await,
        }
    }
}

#[derive(Deserialize)]
struct ApprovalInput {
    text: String,
    timeout_ms: Option<u64>,
}

/// Drafts, then waits for a person's approval; see the module doc.
async fn approval(ctx: TaskContext) -> Result<TaskOutput, AgentFailure> {
    let ApprovalInput { text, timeout_ms } = parse("approval", &ctx.input, r#"{"text": "...", "timeout_ms": N}"#)?;
    // The draft of an earlier attempt, if there was one: the step before the wait is done.
    let saved = ctx.checkpoint.as_ref().and_then(|c| serde_json::from_str::<serde_json::Value>(&c.state).ok());
    let draft = match saved.as_ref().and_then(|s| s["draft"].as_str()) {
        Some(draft) => draft.to_string(),
        None => format!("Draft: {text}"),
    };
    match &ctx.signal {
        Some(signal) if signal.name == "approval" && signal.timed_out => Ok(json(serde_json::json!({ "draft": draft, "approved": false, "timed_out": true }))),
        Some(signal) if signal.name == "approval" => {
            let payload: serde_json::Value = signal.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default();
            Ok(json(serde_json::json!({ "draft": draft, "approved": payload["approved"].as_bool().unwrap_or(false), "by": payload["by"] })))
        }
        _ => {
            if let Some(stream) = &ctx.stream {
                stream.checkpoint(serde_json::json!({ "draft": draft }).to_string()).await;
            }
            let timeout = Duration::from_millis(timeout_ms.unwrap_or(3_600_000).clamp(1, super::MAX_SIGNAL_WAIT.as_millis() as u64));
            Err(AgentFailure::suspend("approval", timeout))
        }
    }
}

#[derive(Deserialize)]
struct TokensInput {
    text: String,
    delay_ms: Option<u64>,
}

/// Streams the input's words as chunks, each with the space after it but the last.
async fn tokens(ctx: TaskContext) -> Result<TaskOutput, AgentFailure> {
    let TokensInput { text, delay_ms } = parse("tokens", &ctx.input, r#"{"text": "...", "delay_ms": N}"#)?;
    let delay = Duration::from_millis(delay_ms.unwrap_or(50).min(10_000));
    let words: Vec<&str> = text.split_whitespace().collect();
    for (i, word) in words.iter().enumerate() {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(AgentFailure::cancelled()),
            _ = tokio::time::sleep(delay) => {}
        }
        if let Some(stream) = &ctx.stream {
            let token = if i + 1 < words.len() { format!("{word} ") } else { (*word).to_string() };
            stream.chunk(crate::agent::stream::Chunk::Text(token)).await;
        }
    }
    let (tokens_in, tokens_out) = (words.len() as i64, words.len() as i64);
    let usage = super::usage::Usage {
        input_tokens: tokens_in,
        output_tokens: tokens_out,
        model: Some(TOKENS_MODEL.into()),
        cost_micros: Some(tokens_in * TOKENS_PRICE_MICROS.0 + tokens_out * TOKENS_PRICE_MICROS.1),
        currency: Some("USD".into()),
        counters: std::collections::HashMap::from([("chunks".to_string(), tokens_out)]),
    };
    Ok(json(serde_json::json!({ "text": words.join(" "), "words": words.len() })).with_usage(usage))
}

#[derive(Deserialize)]
struct CoordinatorInput {
    text: String,
    sleep_ms: Option<u64>,
}

/// How long the coordinator waits for each sub-task.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Fans out to echo, textstats and sleep, then fans in.
async fn coordinate(ctx: TaskContext) -> Result<TaskOutput, AgentFailure> {
    let input: CoordinatorInput = parse("coordinator", &ctx.input, r#"{"text": "...", "sleep_ms": N}"#)?;
    let Some(delegate) = ctx.delegate.clone() else {
        return Err(AgentFailure::rejected("coordinator: its agent type needs `delegates = true` to submit sub-tasks"));
    };
    let mut plan: Vec<(&str, serde_json::Value)> =
        vec![("echo", serde_json::json!({ "text": input.text })), ("textstats", serde_json::json!({ "text": input.text }))];
    if let Some(ms) = input.sleep_ms {
        plan.push(("sleep", serde_json::json!({ "ms": ms })));
    }
    let mut children = Vec::new();
    for (n, (agent_type, child_input)) in plan.iter().enumerate() {
        let id =
            delegate.submit(n, agent_type, child_input.to_string().into_bytes()).await.map_err(|e| AgentFailure::transient(format!("coordinator: {e}")))?;
        children.push((*agent_type, id));
    }
    let mut answer = serde_json::Map::new();
    for (agent_type, id) in &children {
        let outcome = tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(AgentFailure::cancelled()),
            outcome = delegate.outcome(id, CHILD_TIMEOUT) => outcome.map_err(|e| AgentFailure::transient(format!("coordinator: {e}")))?,
        };
        match outcome {
            crate::events::AnyEvent::TaskCompleted(done) => {
                let value =
                    serde_json::from_slice(&done.output).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&done.output).into_owned()));
                answer.insert(agent_type.to_string(), value);
            }
            other => return Err(AgentFailure::new("child_failed", format!("sub-task {id} ({agent_type}) ended {}", other.name()), false)),
        }
    }
    answer.insert("children".into(), serde_json::json!(children.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>()));
    Ok(json(serde_json::Value::Object(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn ctx(input: &str) -> TaskContext {
        TaskContext {
            task_id: "t1".into(),
            agent_type: "demo".into(),
            attempt: 1,
            input: Bytes::from(input.to_string()),
            content_type: "application/json".into(),
            labels: Default::default(),
            idempotency_key: "t1".into(),
            cancel: CancellationToken::new(),
            delegate: None,
            checkpoint: None,
            stream: None,
            signal: None,
            callback_url: None,
        }
    }

    #[tokio::test]
    async fn textstats_counts_chars_words_and_lines() {
        let out = Builtin::TextStats.run(ctx(r#"{"text": "héllo world\nsecond line\n"}"#)).await.expect("stats");
        let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
        assert_eq!(v, serde_json::json!({"chars": 24, "words": 4, "lines": 2}));
        assert_eq!(out.content_type, "application/json");
    }

    #[tokio::test]
    async fn unreadable_input_is_rejected_not_retryable() {
        let err = Builtin::Sleep.run(ctx(r#"{"seconds": 1}"#)).await.expect_err("bad input");
        assert_eq!(err.kind, "rejected");
        assert!(!err.retryable);
        assert!(err.message.contains(r#"{"ms": N}"#), "{err}");
        let err = Builtin::TextStats.run(ctx("not json")).await.expect_err("bad input");
        assert_eq!(err.kind, "rejected");
    }

    #[tokio::test]
    async fn tokens_reports_its_usage_like_an_llm_agent() {
        let out = Builtin::Tokens.run(ctx(r#"{"text": "one two three", "delay_ms": 0}"#)).await.expect("tokens");
        let usage = out.usage.expect("usage");
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.model.as_deref()), (3, 3, Some(TOKENS_MODEL)));
        assert_eq!((usage.cost_micros, usage.currency.as_deref()), (Some(3 + 12), Some("USD")));
        assert_eq!(usage.counters.get("chunks"), Some(&3));
        assert_eq!(crate::agent::runtime::usage::check(&usage), Ok(()));
        assert_eq!(Builtin::TextStats.run(ctx(r#"{"text": "a"}"#)).await.expect("stats").usage, None);
    }

    #[tokio::test]
    async fn a_cancelled_task_does_not_start() {
        let c = ctx("hi");
        c.cancel.cancel();
        assert_eq!(Builtin::Echo.run(c).await.expect_err("cancelled").kind, "cancelled");
    }

    #[test]
    fn names_round_trip() {
        for name in KNOWN {
            assert_eq!(Builtin::by_name(name).unwrap().name(), name);
        }
    }
}
