//! The `http` runtime: POSTs each attempt as JSON to the agent type's URL, over one pooled
//! keep-alive client per agent type, with an `Idempotency-Key` header.
//!
//! Request body (`Content-Type: application/json`):
//!
//! ```json
//! {"task_id": "…", "agent_type": "…", "attempt": 1, "idempotency_key": "…",
//!  "content_type": "application/json", "input": {"any": "json"}, "input_encoding": "json",
//!  "labels": {"k": "v"}}
//! ```
//!
//! `input` is the input itself when `content_type` is JSON (`application/json` or `…+json`,
//! parameters ignored) and the input parses (`input_encoding: "json"`); otherwise a string:
//! the input as text when it is valid UTF-8 (`"utf8"`), else its standard base64 with padding
//! (`"base64"`). An agent reads `input_encoding` to know which.
//!
//! `protocol` is 1 (`docs/agent-protocol.md`); the request says
//! `Accept: application/x-ndjson, */*;q=0.5`.
//!
//! Answers:
//! - 2xx with `Content-Type: application/x-ndjson` → a framed answer ([`super::frames`]):
//!   progress and chunks go to `task.stream` as they arrive, the `result` or `error` frame
//!   ends the attempt;
//! - other 2xx → completed; output = the response body (at most [`MAX_OUTPUT_BYTES`], else kind
//!   `output_too_large`, not retryable) with the response's Content-Type
//!   (`application/octet-stream` when absent); an [`USAGE_HEADER`] header reports what the
//!   attempt consumed (the `usage` object of a `result` frame, as JSON; one that breaks its
//!   rules fails the attempt with kind `protocol`, naming the field);
//! - 408 → kind `timeout`, retryable; 429 → kind `transient`, retryable (the agent asked to
//!   slow down, not refused the task); on 429 and 503 a `Retry-After` (seconds or an HTTP
//!   date) sets the failure's `retry_after`, which the retry waits at least;
//! - other 4xx → kind `rejected`, not retryable; the message has the status and the first
//!   [`ERROR_BODY_EXCERPT_BYTES`] of the body;
//! - 5xx → kind `transient`, retryable, same message shape;
//! - 1xx/3xx (redirects are not followed: a POST with side effects is not re-sent elsewhere)
//!   → kind `rejected`, not retryable;
//! - connection and other transport errors → kind `transient`, retryable;
//! - request timeout (the agent type's per-attempt timeout) → kind `timeout`, retryable;
//! - cancel → the request is abandoned (its connection closed), kind `cancelled`.
//!
//! Failure messages name the URL with its credentials, query values and fragment masked
//! ([`crate::redact`]): they travel in outcomes and dead letters that tenants read.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use tracing::Instrument;

use super::frames::FrameReader;
use super::{Agent, AgentFailure, MAX_OUTPUT_BYTES, RuntimeError, TaskContext, TaskOutput, head_text, kind};

/// What an agent may answer: a framed answer preferred, any body accepted.
const ACCEPTS: &str = "application/x-ndjson, */*;q=0.5";

/// The header of a plain 2xx answer reporting the attempt's usage (tokens, cost) as the JSON
/// object a `result` frame's `usage` holds: a plain answer's body is its output, so the report
/// travels beside it.
pub const USAGE_HEADER: &str = "agentlog-usage";

/// How much of an error answer's body a failure message quotes.
pub const ERROR_BODY_EXCERPT_BYTES: usize = 1024;

/// The header carrying [`TaskContext::idempotency_key`].
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

#[derive(Debug, Clone)]
pub struct HttpAgent {
    url: reqwest::Url,
    /// `url` as messages show it, credentials masked.
    shown: String,
    client: reqwest::Client,
}

impl HttpAgent {
    /// An agent posting to `url`; `timeout` bounds each request, body included.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RuntimeError> {
        let invalid = |reason: String| RuntimeError::InvalidUrl { url: crate::redact::url_text(url), reason: crate::redact::urls_in(&reason) };
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(format!("scheme `{}` is not http or https", parsed.scheme())));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("agentlog/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RuntimeError::Client(describe_masked(&e)))?;
        Ok(Self { shown: crate::redact::url(&parsed), url: parsed, client })
    }

    async fn call(&self, ctx: &TaskContext) -> Result<TaskOutput, AgentFailure> {
        let request = self.request(ctx)?;
        let response = request.send().await.map_err(|e| transport_failure(&self.shown, &e))?;
        // Boxed: reading the answer is not part of the future held while the agent thinks
        // (a worker may hold thousands of requests to slow agents at once).
        Box::pin(self.answer(response, ctx)).await
    }

    /// The request for `ctx`, built apart so nothing of its making (the parsed input, the
    /// trace context) is kept by the future that waits for the answer.
    fn request(&self, ctx: &TaskContext) -> Result<reqwest::RequestBuilder, AgentFailure> {
        let key = HeaderValue::from_str(&ctx.idempotency_key).map_err(|_| AgentFailure::rejected("the idempotency key is not a valid HTTP header value"))?;
        // The call's span (see `run`): the agent continues it from `traceparent`.
        let trace = crate::trace::current();
        let mut body = RequestBody::of(ctx);
        body.traceparent = trace.as_ref().map(|c| c.parent.as_str());
        let mut request = self.client.post(self.url.clone()).header(IDEMPOTENCY_KEY_HEADER, key).header(ACCEPT, ACCEPTS).json(&body);
        if let Some(context) = &trace {
            request = request.header(crate::trace::TRACEPARENT, context.parent.as_str());
            if let Some(state) = &context.state {
                request = request.header(crate::trace::TRACESTATE, state.as_str());
            }
        }
        Ok(request)
    }

    /// The attempt's result from the agent's answer: its body, its frames, or its error.
    async fn answer(&self, mut response: reqwest::Response, ctx: &TaskContext) -> Result<TaskOutput, AgentFailure> {
        let status = response.status();
        if status.is_success() {
            let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/octet-stream").to_string();
            if essence(&content_type) == super::frames::CONTENT_TYPE {
                return self.framed(&mut response, ctx).await;
            }
            let usage = usage_header(response.headers())?;
            let output = match read_body(&mut response, MAX_OUTPUT_BYTES).await.map_err(|e| transport_failure(&self.shown, &e))? {
                (body, false) => body,
                (_, true) => {
                    return Err(AgentFailure::new(kind::OUTPUT_TOO_LARGE, format!("{} answered with more than {MAX_OUTPUT_BYTES} bytes", self.shown), false));
                }
            };
            return Ok(TaskOutput { output, content_type, usage });
        }
        // The excerpt is best effort: a body that fails to arrive leaves it empty.
        let excerpt = match read_body(&mut response, ERROR_BODY_EXCERPT_BYTES).await {
            Ok((body, cut)) => {
                let text = head_text(&body, ERROR_BODY_EXCERPT_BYTES);
                if cut && !text.ends_with('…') { format!("{text}…") } else { text }
            }
            Err(_) => String::new(),
        };
        let message = format!("{} answered HTTP {status}: {}", self.shown, excerpt.trim());
        let message = message.trim_end_matches([':', ' ']).to_string();
        Err(match status.as_u16() {
            408 => AgentFailure::new(kind::TIMEOUT, message, true),
            429 | 503 => AgentFailure::transient(message).retry_after(retry_after(response.headers(), std::time::SystemTime::now())),
            400..=499 => AgentFailure::rejected(message),
            500..=599 => AgentFailure::transient(message),
            _ => AgentFailure::rejected(message),
        })
    }

    /// Reads a framed answer as it arrives (see [`super::frames`]).
    async fn framed(&self, response: &mut reqwest::Response, ctx: &TaskContext) -> Result<TaskOutput, AgentFailure> {
        let mut reader = FrameReader::new();
        while let Some(bytes) = response.chunk().await.map_err(|e| transport_failure(&self.shown, &e))? {
            reader.feed(&bytes, ctx.stream.as_ref()).await?;
        }
        reader.finish(ctx.stream.as_ref()).await
    }
}

impl HttpAgent {
    /// The span of one request to the agent (a child of the attempt's); none while tracing
    /// is off or the attempt has no span (an unsampled trace).
    fn call_span(&self) -> tracing::Span {
        if !crate::trace::enabled() || tracing::Span::current().is_none() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            target: crate::trace::TARGET,
            "agent call",
            otel.name = "POST agent",
            otel.kind = "client",
            http.request.method = "POST",
            url.full = %self.shown,
            otel.status_code = tracing::field::Empty,
            agentlog.error_kind = tracing::field::Empty,
        )
    }
}

/// The usage a plain answer reports in its [`USAGE_HEADER`], checked like a `result` frame's.
fn usage_header(headers: &HeaderMap) -> Result<Option<super::usage::Usage>, AgentFailure> {
    let Some(value) = headers.get(USAGE_HEADER) else { return Ok(None) };
    let bad = |reason: String| AgentFailure::new(kind::PROTOCOL, format!("the {USAGE_HEADER} header ({}): {reason}", head_text(value.as_bytes(), 200)), false);
    let json: serde_json::Value = serde_json::from_slice(value.as_bytes()).map_err(|e| bad(format!("not JSON: {e}")))?;
    super::usage::parse(&json).map_err(|e| bad(e.to_string()))
}

/// A content type without its parameters, lower case.
fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP date (RFC 9110 §10.2.3);
/// `None` when absent, unreadable or already past.
fn retry_after(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    httpdate::parse_http_date(value).ok()?.duration_since(now).ok()
}

#[async_trait::async_trait]
impl Agent for HttpAgent {
    async fn run(&self, ctx: TaskContext) -> Result<TaskOutput, AgentFailure> {
        if ctx.cancel.is_cancelled() {
            return Err(AgentFailure::cancelled());
        }
        let span = self.call_span();
        let result = tokio::select! {
            _ = ctx.cancel.cancelled() => Err(AgentFailure::cancelled()),
            result = self.call(&ctx).instrument(span.clone()) => result,
        };
        if let Err(failure) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("agentlog.error_kind", failure.kind.as_str());
        }
        result
    }
}

/// The JSON an http agent receives.
#[derive(Debug, Serialize)]
pub struct RequestBody<'a> {
    /// The agent protocol's version (`docs/agent-protocol.md`).
    pub protocol: u32,
    pub task_id: &'a str,
    pub agent_type: &'a str,
    pub attempt: u32,
    pub idempotency_key: &'a str,
    pub content_type: &'a str,
    pub input: serde_json::Value,
    /// `json`, `utf8` or `base64`: how `input` carries the task's input.
    pub input_encoding: &'static str,
    pub labels: &'a HashMap<String, String>,
    /// The task's latest checkpoint (JSON), saved by an earlier attempt; `null` when none.
    pub checkpoint: Option<serde_json::Value>,
    /// The attempt that saved `checkpoint`.
    pub checkpoint_attempt: Option<i32>,
    /// What resumed the task after its previous attempt suspended; `null` otherwise.
    pub signal: Option<SignalBody>,
    /// Where a delegating attempt submits and awaits sub-tasks; `null` unless its agent type
    /// declares `delegates = true`.
    pub callback_url: Option<&'a str>,
    /// The W3C `traceparent` of this call (also sent as the header); `null` while agentlog's
    /// tracing is off and the task came with none.
    pub traceparent: Option<&'a str>,
}

/// The signal (or timeout marker) a resumed attempt receives.
#[derive(Debug, Serialize)]
pub struct SignalBody {
    pub name: String,
    pub id: Option<String>,
    /// The signal's JSON payload; `null` without one (or for a timeout).
    pub payload: serde_json::Value,
    pub timed_out: bool,
}

impl SignalBody {
    pub fn of(signal: &crate::events::SignalDelivery) -> Self {
        SignalBody {
            name: signal.name.clone(),
            id: signal.signal_id.clone(),
            // The API checked it is JSON; another producer's may not be (then it is a string).
            payload: signal.payload.as_deref().map(json_text).unwrap_or(serde_json::Value::Null),
            timed_out: signal.timed_out,
        }
    }
}

impl<'a> RequestBody<'a> {
    pub fn of(ctx: &'a TaskContext) -> Self {
        let (input, input_encoding) = encode_input(&ctx.input, &ctx.content_type);
        RequestBody {
            protocol: 1,
            task_id: &ctx.task_id,
            agent_type: &ctx.agent_type,
            attempt: ctx.attempt,
            idempotency_key: &ctx.idempotency_key,
            content_type: &ctx.content_type,
            input,
            input_encoding,
            labels: &ctx.labels,
            // Saved from a parsed frame, so it parses; a record another producer wrote may not
            // (then it travels as a JSON string).
            checkpoint: ctx.checkpoint.as_ref().map(|c| json_text(&c.state)),
            checkpoint_attempt: ctx.checkpoint.as_ref().map(|c| c.attempt),
            signal: ctx.signal.as_ref().map(SignalBody::of),
            callback_url: ctx.callback_url.as_deref(),
            traceparent: None,
        }
    }
}

/// JSON text from the log as a value: what agentlog wrote parses; what another producer wrote
/// may not, and then travels as a JSON string.
fn json_text(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// Whether a content type is JSON: `application/json` or `application/…+json`, any parameters.
pub fn is_json(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The input as a JSON value and the name of its encoding (`json`, `utf8`, `base64`).
pub fn encode_input(input: &[u8], content_type: &str) -> (serde_json::Value, &'static str) {
    if is_json(content_type)
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(input)
    {
        return (value, "json");
    }
    match std::str::from_utf8(input) {
        Ok(text) => (serde_json::Value::String(text.to_string()), "utf8"),
        Err(_) => (serde_json::Value::String(base64(input)), "base64"),
    }
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reads the body, at most `limit` bytes; the flag says whether more was there (and dropped).
async fn read_body(response: &mut reqwest::Response, limit: usize) -> Result<(Bytes, bool), reqwest::Error> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Ok((body.freeze(), true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body.freeze(), false))
}

/// `url` is the masked one; reqwest's own text embeds the URL whole, so it is masked too.
fn transport_failure(url: &str, e: &reqwest::Error) -> AgentFailure {
    if e.is_timeout() {
        AgentFailure::new(kind::TIMEOUT, format!("{url} did not answer in time: {}", describe_masked(e)), true)
    } else if e.is_connect() {
        AgentFailure::transient(format!("connecting to {url}: {}", describe_masked(e)))
    } else {
        AgentFailure::transient(format!("calling {url}: {}", describe_masked(e)))
    }
}

/// [`describe`] with every URL in the text masked.
fn describe_masked(e: &dyn std::error::Error) -> String {
    crate::redact::urls_in(&describe(e))
}

/// An error with its chain of sources, `: `-separated.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(input.as_bytes()), expected, "{input}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn input_is_json_text_or_base64() {
        assert_eq!(encode_input(br#"{"a":1}"#, "application/json"), (serde_json::json!({"a": 1}), "json"));
        assert_eq!(encode_input(br#"[1]"#, "Application/JSON; charset=utf-8"), (serde_json::json!([1]), "json"));
        assert_eq!(encode_input(br#"{"a":1}"#, "application/vnd.x+json"), (serde_json::json!({"a": 1}), "json"));
        // Declared JSON that does not parse travels as text.
        assert_eq!(encode_input(b"{nope", "application/json"), (serde_json::json!("{nope"), "utf8"));
        assert_eq!(encode_input(b"hello", "text/plain"), (serde_json::json!("hello"), "utf8"));
        assert_eq!(encode_input(&[0xff, 0x00], "application/octet-stream"), (serde_json::json!("/wA="), "base64"));
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_to_come() {
        let now = httpdate::parse_http_date("Sat, 05 Dec 2026 10:00:00 GMT").expect("date");
        let header = |v: &str| HeaderMap::from_iter([(RETRY_AFTER, HeaderValue::from_str(v).expect("value"))]);
        assert_eq!(retry_after(&header("120"), now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&header("Sat, 05 Dec 2026 10:00:30 GMT"), now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&header("Sat, 05 Dec 2026 09:00:00 GMT"), now), None);
        assert_eq!(retry_after(&header("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn a_plain_answer_reports_usage_in_a_header() {
        let header = |v: &str| HeaderMap::from_iter([(reqwest::header::HeaderName::from_static(USAGE_HEADER), HeaderValue::from_str(v).expect("value"))]);
        let usage =
            usage_header(&header(r#"{"input_tokens":5,"output_tokens":7,"model":"m","cost_micros":12,"currency":"USD"}"#)).expect("valid").expect("a report");
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.cost_micros), (5, 7, Some(12)));
        assert_eq!(usage_header(&HeaderMap::new()), Ok(None));
        for (value, says) in
            [("{nope", "not JSON"), (r#"{"input_tokens":-1}"#, "usage.input_tokens"), (r#"{"cost_micros":1,"currency":"usd"}"#, "usage.currency")]
        {
            let failure = usage_header(&header(value)).expect_err(value);
            assert_eq!(failure.kind, kind::PROTOCOL);
            assert!(failure.message.contains(USAGE_HEADER) && failure.message.contains(says), "{value}: {}", failure.message);
        }
    }

    #[test]
    fn bad_urls_are_refused_at_build() {
        let t = Duration::from_secs(1);
        assert!(HttpAgent::new("http://127.0.0.1:8080/run", t).is_ok());
        assert!(HttpAgent::new("https://agents.example.com/run", t).is_ok());
        for bad in ["", "localhost:8080", "ftp://h/", "http://"] {
            let err = HttpAgent::new(bad, t).err().unwrap_or_else(|| panic!("`{bad}` accepted"));
            assert!(matches!(err, RuntimeError::InvalidUrl { .. }), "{bad}: {err}");
        }
    }

    /// What a worker holds per request to a slow agent is this future (plus the connection):
    /// reading the answer is boxed and awaited only once it comes, so the held future stays
    /// small: 1.9 KB with its trace span, where it was 3.8 KB with the answer's states inline (BENCHMARKS.md, "many slow
    /// attempts at once").
    #[test]
    fn a_request_waiting_on_the_agent_holds_a_small_future() {
        let agent = HttpAgent::new("http://127.0.0.1:9/run", Duration::from_secs(1)).expect("valid url");
        let ctx = TaskContext {
            task_id: "t-1".into(),
            agent_type: "holder".into(),
            attempt: 1,
            input: Bytes::from_static(b"{}"),
            content_type: "application/json".into(),
            labels: HashMap::new(),
            idempotency_key: "t-1".into(),
            cancel: tokio_util::sync::CancellationToken::new(),
            delegate: None,
            checkpoint: None,
            stream: None,
            signal: None,
            callback_url: None,
        };
        let held = agent.run(ctx);
        let size = std::mem::size_of_val(&*held);
        assert!(size <= 2048, "an http attempt's future is {size} bytes");
    }
}
