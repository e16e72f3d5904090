//! The framed answer of the agent protocol v1 (`docs/agent-protocol.md`): one JSON object per
//! line (NDJSON) — `progress`, `chunk` and `checkpoint` frames while the agent works, then
//! exactly one `result`, `error` or `suspend`. The `http` runtime reads them from a response whose content type is
//! [`CONTENT_TYPE`], the `exec` runtime from the stdout of a program declared with
//! `frames = true`. Each frame is handled as its line completes, so a chunk reaches
//! `task.stream` while the agent generates the next one.
//!
//! Whatever an agent writes, the attempt ends with a typed failure naming what was wrong
//! (kind `protocol`, `chunk_too_large`, `output_too_large`) and the worker goes on.

use std::time::Duration;

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;

use super::{AgentFailure, MAX_OUTPUT_BYTES, MAX_SIGNAL_WAIT, TaskOutput, head_text, kind, valid_name};
use crate::agent::stream::{AttemptStream, Chunk};

/// The content type of a framed `http` answer.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// The longest `progress` or `chunk` line, newline excluded.
pub const MAX_CHUNK_FRAME_BYTES: usize = 64 * 1024;

/// The longest `checkpoint` line, newline excluded.
pub const MAX_CHECKPOINT_FRAME_BYTES: usize = 256 * 1024;

/// The most bytes a framed answer may hold in all: the output limit, with room for the JSON
/// or base64 that carries the output and for the frames before it.
pub const MAX_ANSWER_BYTES: usize = 2 * MAX_OUTPUT_BYTES;

/// How much of a bad frame a failure message quotes.
const EXCERPT_BYTES: usize = 200;

/// One frame as it travels. Unknown fields are ignored (a newer agent may send more); an
/// unknown `type` is an error naming it.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    Progress {
        #[serde(default)]
        percent: Option<f64>,
        #[serde(default)]
        message: Option<String>,
    },
    Chunk {
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        json: Option<serde_json::Value>,
    },
    Checkpoint {
        state: serde_json::Value,
    },
    Result {
        output: serde_json::Value,
        #[serde(default)]
        output_encoding: Option<String>,
        #[serde(default)]
        content_type: Option<String>,
        /// What the attempt consumed ([`super::usage`]).
        #[serde(default)]
        usage: serde_json::Value,
    },
    Error {
        kind: String,
        message: String,
        #[serde(default)]
        retryable: bool,
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    Suspend {
        signal: String,
        timeout_ms: u64,
    },
}

/// A frame, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Progress {
        percent: Option<f32>,
        message: Option<String>,
    },
    Chunk(Chunk),
    /// JSON text.
    Checkpoint(String),
    /// The attempt's outcome: a result, the agent's own typed error, or a suspension
    /// ([`AgentFailure::suspend`]).
    End(Result<TaskOutput, AgentFailure>),
}

/// Parses line `number` (1-based) of a framed answer.
pub fn parse(line: &[u8], number: usize) -> Result<Frame, AgentFailure> {
    let bad = |reason: &str| {
        let excerpt = head_text(line, EXCERPT_BYTES);
        let cut = if line.len() > EXCERPT_BYTES { "…" } else { "" };
        AgentFailure::new(kind::PROTOCOL, format!("frame {number} ({excerpt}{cut}): {reason}"), false)
    };
    let wire: Wire = serde_json::from_slice(line).map_err(|e| bad(&e.to_string()))?;
    if matches!(wire, Wire::Progress { .. } | Wire::Chunk { .. }) && line.len() > MAX_CHUNK_FRAME_BYTES {
        return Err(AgentFailure::new(
            kind::CHUNK_TOO_LARGE,
            format!("frame {number} is {} bytes, more than the {MAX_CHUNK_FRAME_BYTES} a progress or chunk frame may be; split it", line.len()),
            false,
        ));
    }
    if matches!(wire, Wire::Checkpoint { .. }) && line.len() > MAX_CHECKPOINT_FRAME_BYTES {
        return Err(AgentFailure::new(
            kind::CHECKPOINT_TOO_LARGE,
            format!("frame {number} is {} bytes, more than the {MAX_CHECKPOINT_FRAME_BYTES} a checkpoint frame may be; keep less state", line.len()),
            false,
        ));
    }
    Ok(match wire {
        Wire::Checkpoint { state } => Frame::Checkpoint(state.to_string()),
        Wire::Progress { percent, message } => {
            if percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                return Err(bad("percent must be between 0 and 100"));
            }
            Frame::Progress { percent: percent.map(|p| p as f32), message }
        }
        Wire::Chunk { text: Some(text), json: None } => Frame::Chunk(Chunk::Text(text)),
        Wire::Chunk { text: None, json: Some(json) } => Frame::Chunk(Chunk::Json(json.to_string())),
        Wire::Chunk { .. } => return Err(bad("a chunk has exactly one of `text` and `json`")),
        Wire::Result { output, output_encoding, content_type, usage } => {
            let usage = super::usage::parse(&usage).map_err(|e| bad(&e.to_string()))?;
            let (bytes, default_type) = match (output_encoding.as_deref().unwrap_or("json"), output) {
                ("json", output) => (serde_json::to_vec(&output).map_err(|e| bad(&e.to_string()))?, "application/json"),
                ("utf8", serde_json::Value::String(text)) => (text.into_bytes(), "text/plain; charset=utf-8"),
                ("base64", serde_json::Value::String(text)) => (
                    base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(|e| bad(&format!("output is not base64: {e}")))?,
                    "application/octet-stream",
                ),
                ("utf8" | "base64", _) => return Err(bad("output must be a string for output_encoding utf8 or base64")),
                (other, _) => return Err(bad(&format!("unknown output_encoding `{other}` (json, utf8 or base64)"))),
            };
            if bytes.len() > MAX_OUTPUT_BYTES {
                return Err(AgentFailure::new(kind::OUTPUT_TOO_LARGE, format!("the result of frame {number} is more than {MAX_OUTPUT_BYTES} bytes"), false));
            }
            let content_type = content_type.filter(|c| !c.trim().is_empty()).unwrap_or_else(|| default_type.to_string());
            Frame::End(Ok(TaskOutput { output: Bytes::from(bytes), content_type, usage }))
        }
        Wire::Error { kind, message, retryable, retry_after_ms } => {
            if !valid_name(&kind) {
                return Err(bad("an error's kind is 1 to 64 of a-z, 0-9, `_`, `.`, `-`"));
            }
            Frame::End(Err(AgentFailure::new(kind, message, retryable).retry_after(retry_after_ms.map(Duration::from_millis))))
        }
        Wire::Suspend { signal, timeout_ms } => {
            if !valid_name(&signal) {
                return Err(bad("a signal's name is 1 to 64 of a-z, 0-9, `_`, `.`, `-`"));
            }
            let timeout = Duration::from_millis(timeout_ms);
            if timeout.is_zero() || timeout > MAX_SIGNAL_WAIT {
                return Err(bad(&format!("timeout_ms must be from 1 to {} (6 days)", MAX_SIGNAL_WAIT.as_millis())));
            }
            Frame::End(Err(AgentFailure::suspend(signal, timeout)))
        }
    })
}

/// The failure of an answer that ended after `lines` lines without its last frame.
pub fn no_end(lines: usize) -> AgentFailure {
    AgentFailure::new(kind::PROTOCOL, format!("the answer ended after {lines} lines without a `result`, `error` or `suspend` frame"), false)
}

/// Reads a framed answer as its bytes arrive.
#[derive(Debug, Default)]
pub struct FrameReader {
    pending: BytesMut,
    /// How much of `pending` is known to hold no newline: a 16 MiB result line arriving in
    /// 64 KiB reads is scanned once, not once per read.
    scanned: usize,
    lines: usize,
    total: usize,
    end: Option<Result<TaskOutput, AgentFailure>>,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes of the answer and handles every line they complete: progress and
    /// chunks go to `stream` (dropped when the attempt has none). An error ends the attempt.
    pub async fn feed(&mut self, bytes: &[u8], stream: Option<&AttemptStream>) -> Result<(), AgentFailure> {
        self.total += bytes.len();
        if self.total > MAX_ANSWER_BYTES {
            return Err(AgentFailure::new(kind::OUTPUT_TOO_LARGE, format!("the answer holds more than {MAX_ANSWER_BYTES} bytes of frames"), false));
        }
        self.pending.extend_from_slice(bytes);
        while let Some(found) = self.pending[self.scanned..].iter().position(|b| *b == b'\n') {
            let newline = self.scanned + found;
            self.scanned = 0;
            let line = self.pending.split_to(newline + 1);
            self.line(&line[..newline], stream).await?;
        }
        self.scanned = self.pending.len();
        Ok(())
    }

    /// The answer ended: handles a last line without a newline, and returns the outcome.
    pub async fn finish(self, stream: Option<&AttemptStream>) -> Result<TaskOutput, AgentFailure> {
        let lines = self.lines;
        self.end(stream).await?.unwrap_or_else(|| Err(no_end(lines)))
    }

    /// Like [`FrameReader::finish`], `None` when the answer had no `result` or `error` frame
    /// (an `exec` program that died says more about why than "no result").
    pub async fn end(mut self, stream: Option<&AttemptStream>) -> Result<Option<Result<TaskOutput, AgentFailure>>, AgentFailure> {
        if self.pending.has_remaining() {
            let line = std::mem::take(&mut self.pending);
            self.line(&line, stream).await?;
        }
        Ok(self.end)
    }

    /// Lines read so far.
    pub fn lines(&self) -> usize {
        self.lines
    }

    async fn line(&mut self, line: &[u8], stream: Option<&AttemptStream>) -> Result<(), AgentFailure> {
        self.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Blank lines (a keep-alive some servers send) carry nothing.
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let frame = parse(line, self.lines)?;
        if self.end.is_some() {
            return Err(AgentFailure::new(kind::PROTOCOL, format!("frame {} came after the answer's `result` or `error` frame", self.lines), false));
        }
        match frame {
            Frame::Progress { percent, message } => {
                if let Some(stream) = stream {
                    stream.progress(percent, message).await;
                }
            }
            Frame::Chunk(chunk) => {
                if let Some(stream) = stream {
                    stream.chunk(chunk).await;
                }
            }
            Frame::Checkpoint(state) => {
                if let Some(stream) = stream {
                    stream.checkpoint(state).await;
                }
            }
            Frame::End(end) => self.end = Some(end),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::runtime::Suspension;

    fn end(line: &str) -> Result<TaskOutput, AgentFailure> {
        match parse(line.as_bytes(), 1) {
            Ok(Frame::End(end)) => end,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn results_carry_json_text_or_bytes() {
        let json = end(r#"{"type":"result","output":{"a":[1,2]}}"#).expect("result");
        assert_eq!((&json.output[..], json.content_type.as_str()), (&br#"{"a":[1,2]}"#[..], "application/json"));
        let text = end(r#"{"type":"result","output":"héllo","output_encoding":"utf8"}"#).expect("result");
        assert_eq!((&text.output[..], text.content_type.as_str()), ("héllo".as_bytes(), "text/plain; charset=utf-8"));
        let bytes = end(r#"{"type":"result","output":"/wA=","output_encoding":"base64","content_type":"image/png"}"#).expect("result");
        assert_eq!((&bytes.output[..], bytes.content_type.as_str()), (&[0xff, 0x00][..], "image/png"));
    }

    #[test]
    fn a_result_may_carry_usage() {
        let done = end(r#"{"type":"result","output":1,"usage":{"input_tokens":12,"output_tokens":3,"model":"m-1","cost_micros":42,"currency":"USD","counters":{"cached_input_tokens":8}}}"#)
            .expect("result");
        let usage = done.usage.expect("usage");
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.model.as_deref(), usage.cost_micros, usage.currency.as_deref()),
            (12, 3, Some("m-1"), Some(42), Some("USD"))
        );
        assert_eq!(usage.counters.get("cached_input_tokens"), Some(&8));
        assert_eq!(end(r#"{"type":"result","output":1}"#).expect("result").usage, None);
        assert_eq!(end(r#"{"type":"result","output":1,"usage":null}"#).expect("result").usage, None);
    }

    #[test]
    fn an_error_frame_is_the_agents_typed_failure() {
        let failure = end(r#"{"type":"error","kind":"rate_limited","message":"slow down","retryable":true,"retry_after_ms":1500}"#).expect_err("error");
        assert_eq!(failure.kind, "rate_limited");
        assert!(failure.retryable);
        assert_eq!(failure.retry_after, Some(Duration::from_millis(1500)));
        let plain = end(r#"{"type":"error","kind":"bad_input","message":"no text"}"#).expect_err("error");
        assert!(!plain.retryable && plain.retry_after.is_none());
    }

    #[test]
    fn chunks_are_text_or_json_and_progress_is_bounded() {
        assert_eq!(parse(br#"{"type":"chunk","text":"tok"}"#, 1).ok(), Some(Frame::Chunk(Chunk::Text("tok".into()))));
        assert_eq!(parse(br#"{"type":"chunk","json":{"d":1}}"#, 1).ok(), Some(Frame::Chunk(Chunk::Json(r#"{"d":1}"#.into()))));
        assert_eq!(
            parse(br#"{"type":"progress","percent":40,"message":"m"}"#, 1).ok(),
            Some(Frame::Progress { percent: Some(40.0), message: Some("m".into()) })
        );
        // Fields a newer agent sends are ignored.
        assert!(parse(br#"{"type":"progress","eta_ms":5}"#, 1).is_ok());
    }

    #[test]
    fn bad_frames_fail_with_protocol_naming_the_frame() {
        for (line, says) in [
            (r#"not json"#, "frame 7 (not json)"),
            (r#"{"type":"suspend","signal":"approval"}"#, "missing field `timeout_ms`"),
            (r#"{"type":"suspend","signal":"Approval!","timeout_ms":1000}"#, "a signal's name"),
            (r#"{"type":"suspend","signal":"approval","timeout_ms":0}"#, "timeout_ms must be from 1"),
            (r#"{"type":"suspend","signal":"approval","timeout_ms":518400001}"#, "timeout_ms must be from 1"),
            (r#"{"type":"delegate","agent_type":"x"}"#, "unknown variant `delegate`"),
            (r#"{"type":"checkpoint"}"#, "missing field `state`"),
            (r#"{"type":"chunk"}"#, "exactly one of `text` and `json`"),
            (r#"{"type":"chunk","text":"a","json":1}"#, "exactly one"),
            (r#"{"type":"progress","percent":140}"#, "between 0 and 100"),
            (r#"{"type":"result","output":1,"output_encoding":"utf8"}"#, "must be a string"),
            (r#"{"type":"result","output":"@@","output_encoding":"base64"}"#, "not base64"),
            (r#"{"type":"result","output":1,"output_encoding":"rot13"}"#, "unknown output_encoding `rot13`"),
            (r#"{"type":"error","kind":"Bad Kind","message":"m"}"#, "an error's kind"),
            (r#"{"type":"result"}"#, "missing field `output`"),
            (r#"{"type":"result","output":1,"usage":{"input_tokens":-3}}"#, "usage.input_tokens: must be an integer from 0"),
            (r#"{"type":"result","output":1,"usage":{"output_tokens":2.5}}"#, "usage.output_tokens: must be an integer"),
            (r#"{"type":"result","output":1,"usage":{"cost_micros":10,"currency":"dollars"}}"#, "usage.currency: must be an ISO 4217 code"),
            (r#"{"type":"result","output":1,"usage":{"cost_micros":10}}"#, "usage.currency: is required"),
            (r#"{"type":"result","output":1,"usage":{"counters":{"Bad Name":1}}}"#, "usage.counters: a counter's name"),
            (r#"{"type":"result","output":1,"usage":"lots"}"#, "usage: must be an object, not a string"),
        ] {
            let failure = parse(line.as_bytes(), 7).expect_err(line);
            assert_eq!(failure.kind, kind::PROTOCOL, "{line}");
            assert!(!failure.retryable);
            assert!(failure.message.contains(says), "{line}: {}", failure.message);
        }
    }

    #[test]
    fn a_suspend_frame_ends_the_attempt_waiting_for_its_signal() {
        let failure = end(r#"{"type":"suspend","signal":"approval.v2","timeout_ms":518400000}"#).expect_err("a suspension");
        assert_eq!(failure.suspend, Some(Suspension { signal: "approval.v2".into(), timeout: MAX_SIGNAL_WAIT }));
        assert_eq!(failure.kind, kind::SUSPENDED);
    }

    #[test]
    fn a_checkpoint_is_any_json_up_to_its_own_limit() {
        let Ok(Frame::Checkpoint(state)) = parse(br#"{"type":"checkpoint","state":{"step":2,"notes":["a"]}}"#, 1) else { panic!("a checkpoint") };
        assert_eq!(serde_json::from_str::<serde_json::Value>(&state).ok(), Some(serde_json::json!({"step": 2, "notes": ["a"]})));
        let line = format!(r#"{{"type":"checkpoint","state":"{}"}}"#, "x".repeat(MAX_CHECKPOINT_FRAME_BYTES));
        let failure = parse(line.as_bytes(), 4).expect_err("too large");
        assert_eq!(failure.kind, kind::CHECKPOINT_TOO_LARGE);
        // Larger than a chunk may be.
        let line = format!(r#"{{"type":"checkpoint","state":"{}"}}"#, "x".repeat(MAX_CHUNK_FRAME_BYTES * 2));
        assert!(parse(line.as_bytes(), 1).is_ok());
    }

    #[test]
    fn an_oversized_chunk_fails_with_its_own_kind() {
        let line = format!(r#"{{"type":"chunk","text":"{}"}}"#, "x".repeat(MAX_CHUNK_FRAME_BYTES));
        let failure = parse(line.as_bytes(), 3).expect_err("too large");
        assert_eq!(failure.kind, kind::CHUNK_TOO_LARGE);
        assert!(failure.message.contains("frame 3") && failure.message.contains("65536"), "{}", failure.message);
        // A result may be larger than a chunk.
        let big = format!(r#"{{"type":"result","output":"{}","output_encoding":"utf8"}}"#, "x".repeat(MAX_CHUNK_FRAME_BYTES * 2));
        assert!(parse(big.as_bytes(), 1).is_ok());
    }

    #[tokio::test]
    async fn the_reader_splits_lines_across_reads_and_wants_one_end() {
        let mut reader = FrameReader::new();
        reader.feed(b"{\"type\":\"chunk\",\"te", None).await.expect("partial");
        reader.feed(b"xt\":\"a\"}\r\n\n{\"type\":\"result\",", None).await.expect("lines");
        reader.feed(b"\"output\":true}", None).await.expect("tail");
        assert_eq!(reader.finish(None).await.expect("result").output, Bytes::from_static(b"true"));

        // One byte at a time: every line is still found once, whole.
        let mut bytewise = FrameReader::new();
        for byte in b"{\"type\":\"progress\"}\n{\"type\":\"result\",\"output\":[1]}\n" {
            bytewise.feed(std::slice::from_ref(byte), None).await.expect("byte");
        }
        assert_eq!(bytewise.lines(), 2);
        assert_eq!(bytewise.finish(None).await.expect("result").output, Bytes::from_static(b"[1]"));

        let mut after = FrameReader::new();
        let failure = after.feed(b"{\"type\":\"result\",\"output\":1}\n{\"type\":\"chunk\",\"text\":\"late\"}\n", None).await.expect_err("late");
        assert!(failure.kind == kind::PROTOCOL && failure.message.contains("frame 2 came after"), "{failure}");

        let mut none = FrameReader::new();
        none.feed(b"{\"type\":\"progress\"}\n", None).await.expect("progress");
        let failure = none.finish(None).await.expect_err("no end");
        assert!(failure.kind == kind::PROTOCOL && failure.message.contains("without a `result`, `error` or `suspend`"), "{failure}");
    }
}
