//! A span per API request of a sampled trace, continuing the caller's `traceparent` (W3C), so
//! the events a request writes (a submit's TaskSubmitted) carry its trace onto the log. With
//! tracing off, or for an unsampled trace, no span is made; the trace context is still passed
//! through to those events.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::trace::{self, Context};

/// Middleware over the matched routes (the route template names the span).
pub async fn trace_request(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let incoming = Context::from_headers(header(trace::TRACEPARENT), header(trace::TRACESTATE));
    if !trace::enabled() {
        return match incoming {
            Some(context) => trace::with_incoming(context, next.run(request)).await,
            None => next.run(request).await,
        };
    }
    // An unsampled trace gets no span (making one costs, exported or not); what the request
    // writes carries the trace on.
    match trace::decide(incoming.as_ref()) {
        trace::Decision::Sampled => {}
        trace::Decision::Unsampled(Some(context)) => return trace::with_incoming(context, next.run(request)).await,
        trace::Decision::Unsampled(None) => return next.run(request).await,
    }
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let method = request.method().as_str().to_string();
    let span = tracing::info_span!(
        target: trace::TARGET,
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    trace::set_parent(&span, incoming.as_ref());
    // The request's log lines carry its trace and span ids.
    trace::record_ids(&span);
    let response = next.run(request).instrument(span.clone()).await;
    // As i64: the bridge exports an unsigned number as a string.
    span.record("http.response.status_code", i64::from(response.status().as_u16()));
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}
