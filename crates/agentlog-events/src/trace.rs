//! W3C trace context (`traceparent`, `tracestate`) between the spans of this process, the
//! `Meta` of the events it writes and the headers of their records, so one trace follows a task
//! from the HTTP submit through every hop of the log (issue 17; README, "Traces").
//!
//! Spans are `tracing` spans of target [`TARGET`]; the binary exports them over OTLP when
//! telemetry is on and calls [`enable`]. Off (the default), nothing here creates a span or
//! reads a span's context: an event keeps the trace context of what caused it (an incoming
//! `traceparent`, its task's), so a consumer with its own tracing can still continue it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::events::Meta;
use crate::log::Record;

/// The `tracing` target of the spans exported as traces (the export filters on it, so
/// `RUST_LOG` does not decide what a trace holds).
pub const TARGET: &str = "agentlog::trace";
/// The W3C header names, on HTTP requests and on records.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The share of new traces kept, as f64 bits.
static RATIO: AtomicU64 = AtomicU64::new(0);

tokio::task_local! {
    /// The trace context of work that has no span: an unsampled trace's, or, with tracing off,
    /// the `traceparent` of the HTTP request being served, passed through to what it writes.
    static INCOMING: Context;
}

/// Runs `work` (a request's handling, an unsampled attempt) with `incoming` as what
/// [`current`] answers when no span is current.
pub async fn with_incoming<F: std::future::Future>(incoming: Context, work: F) -> F::Output {
    INCOMING.scope(incoming, work).await
}

/// Turns span creation on, keeping `ratio` of new traces; called once by the binary after it
/// installed the exporting layer.
pub fn enable(ratio: f64) {
    RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether work continuing `parent` (`None`: the start of a trace) gets spans. Decided here,
/// before any span exists, because making a span costs even when the exporter then drops it
/// (at 1% sampling the tasks benchmark lost 45% of its throughput to spans never exported).
/// The caller's decision is followed; a new trace is kept at the configured ratio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Make spans (a child of `parent` when there is one).
    Sampled,
    /// No span. The work carries this context on (the caller's, or a new unsampled trace), so
    /// what it causes downstream is not sampled afresh as a trace of its own; `None`: nothing
    /// to carry (see [`decide_task`]).
    Unsampled(Option<Context>),
}

/// The decision for work that starts here: an HTTP request (see [`Decision`]). A new trace
/// that is not kept carries an unsampled context on, so the task it submits is not sampled
/// again by its worker.
pub fn decide(parent: Option<&Context>) -> Decision {
    match parent {
        Some(parent) if parent.sampled() => Decision::Sampled,
        Some(parent) => Decision::Unsampled(Some(parent.clone())),
        None if rand::random::<f64>() < ratio() => Decision::Sampled,
        None => Decision::Unsampled(Some(Context::unsampled())),
    }
}

/// The decision for an attempt of task `task_id`, whose command carries `parent`. A command
/// without trace context (a client in this process, a producer without tracing) starts its
/// trace at its attempt, kept when a hash of the task id falls under the ratio: every attempt
/// of the task (a retry, a resumed wait) decides the same without anything carried in its
/// events, which at 1% sampling was most of the cost of tracing (a 55-character unsampled
/// `traceparent` formatted per task and written into each of its events: +8% instructions
/// per task, BENCHMARKS.md "Traces").
pub fn decide_task(parent: Option<&Context>, task_id: &str) -> Decision {
    match parent {
        Some(_) => decide(parent),
        None if kept(task_id, ratio()) => Decision::Sampled,
        None => Decision::Unsampled(None),
    }
}

fn ratio() -> f64 {
    f64::from_bits(RATIO.load(Ordering::Relaxed))
}

/// Whether `id` falls in the kept share `ratio` of ids: FNV-1a of its bytes, mixed (the
/// splitmix64 finalizer) so that ids differing in their last characters spread evenly, as a
/// fraction of 2^64. The same on every process and build, so workers agree.
fn kept(id: &str, ratio: f64) -> bool {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in id.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    // 2^-64 steps; a ratio of 1 keeps all (the product saturates at u64::MAX).
    ratio >= 1.0 || (hash as f64) < ratio * 18_446_744_073_709_551_616.0
}

/// Whether spans are exported (a relaxed load: what the hot path pays when off).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A W3C trace context: `traceparent` and its optional `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context {
    pub parent: String,
    pub state: Option<String>,
}

impl Context {
    /// The context a `traceparent` header (and `tracestate`) gives, if it looks like one: the
    /// W3C form, 55 characters; a `tracestate` over 512 bytes is dropped (W3C's limit).
    pub fn from_headers(parent: Option<&str>, state: Option<&str>) -> Option<Self> {
        let parent = parent?.trim();
        let well_formed =
            parent.len() == 55 && parent.split('-').map(str::len).eq([2, 32, 16, 2]) && parent.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit());
        well_formed.then(|| Context {
            parent: parent.to_ascii_lowercase(),
            state: state.map(str::trim).filter(|s| !s.is_empty() && s.len() <= 512 && s.is_ascii()).map(str::to_string),
        })
    }

    /// A new trace, not sampled (flags 00): random ids, never all zero.
    pub fn unsampled() -> Self {
        let trace = rand::random::<u128>().max(1).to_be_bytes();
        let span = rand::random::<u64>().max(1).to_be_bytes();
        // Written out by hand: `format!` with hex widths cost ~900 instructions per task.
        let mut parent = String::with_capacity(55);
        parent.push_str("00-");
        push_hex(&mut parent, &trace);
        parent.push('-');
        push_hex(&mut parent, &span);
        parent.push_str("-00");
        Context { parent, state: None }
    }

    /// The context an event carries, if any.
    pub fn of(meta: &Meta) -> Option<Self> {
        meta.trace_parent.as_ref().map(|parent| Context { parent: parent.clone(), state: meta.trace_state.clone() })
    }

    /// Whether the sampled flag is set (`…-01`): an unsampled trace gets no spans downstream.
    pub fn sampled(&self) -> bool {
        sampled_flag(&self.parent)
    }

    /// The trace id (32 hex digits), when `parent` is well formed.
    pub fn trace_id(&self) -> Option<&str> {
        trace_id_in(&self.parent)
    }

    /// The parent span id (16 hex digits), when `parent` is well formed.
    pub fn span_id(&self) -> Option<&str> {
        let id = self.parent.split('-').nth(2)?;
        (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// The trace id of the context `meta` carries when that trace is sampled (recorded by a
/// backend, ours or the caller's); `None` for an unsampled or malformed one. Read in place,
/// without the copy [`Context::of`] makes (the projector asks for every event).
pub fn sampled_trace_id(meta: &Meta) -> Option<&str> {
    let parent = meta.trace_parent.as_deref()?;
    if sampled_flag(parent) { trace_id_in(parent) } else { None }
}

/// Whether a `traceparent`'s sampled flag is set: the low bit of its last hex digit (the
/// flags are its last two).
fn sampled_flag(parent: &str) -> bool {
    parent.as_bytes().last().and_then(|&digit| char::from(digit).to_digit(16)).is_some_and(|d| d & 1 == 1)
}

/// A `traceparent`'s trace id (32 hex digits), when it has one.
fn trace_id_in(parent: &str) -> Option<&str> {
    let id = parent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The trace context of the work under way: its span's, when tracing is on and a span is
/// current; else the one it carries without a span (see [`with_incoming`]): an unsampled
/// trace's, or, tracing off, the HTTP request's incoming `traceparent`.
pub fn current() -> Option<Context> {
    if enabled() {
        // Asking a span for its context costs; work without a span (an unsampled trace's) has
        // none to give.
        let span = tracing::Span::current();
        let cx = if span.is_none() { opentelemetry::Context::new() } else { span.context() };
        if cx.span().span_context().is_valid() {
            let mut carrier = HashMap::new();
            TraceContextPropagator::new().inject_context(&cx, &mut carrier);
            if let Some(parent) = carrier.remove(TRACEPARENT) {
                return Some(Context { parent, state: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()) });
            }
        }
    }
    INCOMING.try_with(Context::clone).ok()
}

/// Records `span`'s trace and span ids in its `trace_id` and `span_id` fields (declared
/// empty where it was made), so the log lines written inside it carry them.
pub fn record_ids(span: &tracing::Span) {
    if let Some(context) = span.in_scope(current) {
        if let Some(id) = context.trace_id() {
            span.record("trace_id", id);
        }
        if let Some(id) = context.span_id() {
            span.record("span_id", id);
        }
    }
}

/// Makes `span` a child of `context` (a remote parent: another process's span). Nothing when
/// tracing is off or the context does not parse (a producer's garbage is not our error).
pub fn set_parent(span: &tracing::Span, context: Option<&Context>) {
    let Some(context) = context.filter(|_| enabled()) else { return };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_string(), context.parent.clone());
    if let Some(state) = &context.state {
        carrier.insert(TRACESTATE.to_string(), state.clone());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only for a span already started; ours are set right after creation.
        let _ = span.set_parent(parent);
    }
}

/// The trace context an event written now carries: the current span's when tracing is on,
/// else `cause` (what the event descends from), passed through.
pub fn stamp(meta: &mut Meta, cause: Option<&Context>) {
    let context = current().or_else(|| cause.cloned());
    meta.trace_parent = context.as_ref().map(|c| c.parent.clone());
    meta.trace_state = context.and_then(|c| c.state);
}

/// `record` with its event's trace context as W3C headers, for consumers that read headers
/// rather than decode the payload (another Kafka client's instrumentation); none for an
/// unsampled trace, which nothing downstream records.
pub fn with_headers(record: Record, meta: &Meta) -> Record {
    let Some(context) = Context::of(meta).filter(Context::sampled) else { return record };
    let record = record.with_header(TRACEPARENT, bytes::Bytes::from(context.parent));
    match context.state {
        Some(state) => record.with_header(TRACESTATE, bytes::Bytes::from(state)),
        None => record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_is_taken_from_a_header() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(Context::from_headers(Some(good), Some("k=v")), Some(Context { parent: good.into(), state: Some("k=v".into()) }));
        for bad in [
            "",
            "00-4bf9-00f0-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
            &"0".repeat(55),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(Context::from_headers(Some(bad), None), None, "{bad}");
        }
        let long_state = "k=".to_string() + &"v".repeat(600);
        assert_eq!(Context::from_headers(Some(good), Some(&long_state)).and_then(|c| c.state), None);
    }

    #[tokio::test]
    async fn off_an_incoming_context_is_what_events_written_for_the_request_carry() {
        let incoming = Context::from_headers(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), None).expect("well formed");
        let meta = with_incoming(incoming.clone(), async {
            let mut meta = Meta::new("e-1", "t", "p");
            stamp(&mut meta, None);
            meta
        })
        .await;
        assert_eq!(Context::of(&meta), Some(incoming));
        assert_eq!(current(), None, "outside the request there is none");
    }

    #[test]
    fn a_callers_decision_is_followed_and_an_unsampled_trace_is_carried_on() {
        let sampled = Context { parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(), state: None };
        assert_eq!(decide(Some(&sampled)), Decision::Sampled);
        let unsampled = Context { parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(), state: None };
        assert_eq!(decide(Some(&unsampled)), Decision::Unsampled(Some(unsampled.clone())));
        assert_eq!(decide_task(Some(&unsampled), "task-1"), Decision::Unsampled(Some(unsampled)));
        let fresh = Context::unsampled();
        assert!(!fresh.sampled());
        assert_eq!(Context::from_headers(Some(&fresh.parent), None), Some(fresh), "a well-formed traceparent");
    }

    #[test]
    fn a_task_without_context_is_kept_by_its_id_the_same_on_every_attempt() {
        let ids: Vec<String> = (0..20_000).map(|n| format!("task-{n}")).collect();
        let kept_at = |ratio: f64| ids.iter().filter(|id| kept(id, ratio)).count();
        assert_eq!(kept_at(0.0), 0);
        assert_eq!(kept_at(1.0), ids.len());
        // 1% of 20,000 is 200; ids that differ only in their last digits spread evenly.
        assert!((150..=250).contains(&kept_at(0.01)), "{}", kept_at(0.01));
        assert!((9_500..=10_500).contains(&kept_at(0.5)), "{}", kept_at(0.5));
        // A pure function of the id: what a retry or another worker decides is the same.
        assert!(ids.iter().all(|id| kept(id, 0.3) == kept(id, 0.3)));
        assert!(ids.iter().filter(|id| kept(id, 0.01)).all(|id| kept(id, 0.5)), "a kept id stays kept at a larger ratio");
    }

    #[test]
    fn a_new_unsampled_context_is_well_formed_and_random() {
        let (a, b) = (Context::unsampled(), Context::unsampled());
        assert_ne!(a.trace_id(), b.trace_id());
        for c in [a, b] {
            assert_eq!(Context::from_headers(Some(&c.parent), None).as_ref(), Some(&c));
            assert!(c.parent.starts_with("00-") && c.parent.ends_with("-00"), "{}", c.parent);
            assert!(!c.sampled());
        }
    }

    #[test]
    fn sampled_flag_and_trace_id_are_read_from_traceparent() {
        let c = Context { parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(), state: None };
        assert!(c.sampled());
        assert_eq!(c.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(c.span_id(), Some("00f067aa0ba902b7"));
        let unsampled = Context { parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(), state: None };
        assert!(!unsampled.sampled());
        let other_flags = Context { parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03".into(), state: None };
        assert!(other_flags.sampled(), "flags 03: the sampled bit and another");
        assert!(!Context { parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g".into(), state: None }.sampled());
        assert_eq!(Context { parent: "garbage".into(), state: None }.trace_id(), None);
    }

    #[test]
    fn off_an_event_keeps_its_causes_context_and_its_record_carries_it_as_headers() {
        let cause = Context { parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(), state: Some("k=v".into()) };
        let mut meta = Meta::new("e-1", "t", "p");
        stamp(&mut meta, Some(&cause));
        assert_eq!(Context::of(&meta), Some(cause.clone()));
        let record = with_headers(Record::new("topic", vec![1u8]), &meta);
        assert_eq!(
            record.headers.iter().map(|h| (h.name.as_str(), h.value.as_ref())).collect::<Vec<_>>(),
            vec![(TRACEPARENT, cause.parent.as_bytes()), (TRACESTATE, b"k=v".as_slice())]
        );
        let mut bare = Meta::new("e-2", "t", "p");
        stamp(&mut bare, None);
        assert!(with_headers(Record::new("topic", vec![1u8]), &bare).headers.is_empty());
    }
}
