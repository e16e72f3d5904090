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
    /// No span; the work carries this context on (the caller's, or a new unsampled trace), so
    /// what it causes downstream is not sampled afresh as a trace of its own.
    Unsampled(Context),
}

pub fn decide(parent: Option<&Context>) -> Decision {
    match parent {
        Some(parent) if parent.sampled() => Decision::Sampled,
        Some(parent) => Decision::Unsampled(parent.clone()),
        None if rand::random::<f64>() < f64::from_bits(RATIO.load(Ordering::Relaxed)) => Decision::Sampled,
        None => Decision::Unsampled(Context::unsampled()),
    }
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
        let trace = rand::random::<u128>().max(1);
        let span = rand::random::<u64>().max(1);
        Context { parent: format!("00-{trace:032x}-{span:016x}-00"), state: None }
    }

    /// The context an event carries, if any.
    pub fn of(meta: &Meta) -> Option<Self> {
        meta.trace_parent.as_ref().map(|parent| Context { parent: parent.clone(), state: meta.trace_state.clone() })
    }

    /// Whether the sampled flag is set (`…-01`): an unsampled trace gets no spans downstream.
    pub fn sampled(&self) -> bool {
        self.parent.rsplit('-').next().and_then(|flags| u8::from_str_radix(flags, 16).ok()).is_some_and(|f| f & 1 == 1)
    }

    /// The trace id (32 hex digits), when `parent` is well formed.
    pub fn trace_id(&self) -> Option<&str> {
        let mut parts = self.parent.split('-');
        let (_version, id) = (parts.next()?, parts.next()?);
        (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }
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

/// `record` with `context` as W3C headers (see [`with_headers`]).
pub fn with_context_headers(record: Record, context: Option<Context>) -> Record {
    let Some(context) = context.filter(Context::sampled) else { return record };
    let record = record.with_header(TRACEPARENT, bytes::Bytes::from(context.parent));
    match context.state {
        Some(state) => record.with_header(TRACESTATE, bytes::Bytes::from(state)),
        None => record,
    }
}

/// `record` with its event's trace context as W3C headers, for consumers that read headers
/// rather than decode the payload (another Kafka client's instrumentation).
pub fn with_headers(record: Record, meta: &Meta) -> Record {
    let Some(parent) = meta.trace_parent.as_ref().filter(|_| Context::of(meta).is_some_and(|c| c.sampled())) else { return record };
    let record = record.with_header(TRACEPARENT, bytes::Bytes::from(parent.clone()));
    match &meta.trace_state {
        Some(state) => record.with_header(TRACESTATE, bytes::Bytes::from(state.clone())),
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
        assert_eq!(decide(Some(&unsampled)), Decision::Unsampled(unsampled));
        let fresh = Context::unsampled();
        assert!(!fresh.sampled());
        assert_eq!(Context::from_headers(Some(&fresh.parent), None), Some(fresh), "a well-formed traceparent");
    }

    #[test]
    fn sampled_flag_and_trace_id_are_read_from_traceparent() {
        let c = Context { parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(), state: None };
        assert!(c.sampled());
        assert_eq!(c.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let unsampled = Context { parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(), state: None };
        assert!(!unsampled.sampled());
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
