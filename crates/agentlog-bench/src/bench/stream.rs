//! `agentlog bench stream`: chunk latency of the agent protocol, from the moment an agent
//! emits a chunk to the moment an SSE client of `GET /v1/tasks/{id}/stream` receives it,
//! against a running API (`agentlog dev` with `config/bench-stream.toml`).
//!
//! The benchmark is both ends: it serves an `http` agent on `--agent-listen` (the agent type
//! `--agent-type` must point there) that answers one task with `rate × seconds` chunks on a
//! fixed schedule, each chunk's text the wall-clock time it was emitted (µs), and it reads the
//! task's stream, recording receive time − emit time per chunk. One process, one clock.
//! Everything between is what a user's chunk goes through: the worker reading the framed
//! answer, `task.stream` on the log, the projection, and the SSE handler.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use super::log::BenchError;

#[derive(Debug, Clone)]
pub struct StreamBenchOptions {
    pub url: String,
    pub agent_type: String,
    pub agent_listen: String,
    pub rate: u64,
    pub seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct StreamBenchReport {
    pub offered_per_s: u64,
    pub emitted: u64,
    pub received: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// From the time the worker read the chunk (the event's `at_ms`, whole milliseconds, so
    /// up to 1 ms early) to its receipt: the log, the projection and the SSE handler.
    pub from_worker_p50_us: u64,
    pub from_worker_p99_us: u64,
}

impl std::fmt::Display for StreamBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} chunks/s offered: {} emitted, {} received\nchunk latency, agent emits → SSE client receives: p50={}us p99={}us p999={}us max={}us\nof which worker reads → client receives (ms clock): p50={}us p99={}us",
            self.offered_per_s,
            self.emitted,
            self.received,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.from_worker_p50_us,
            self.from_worker_p99_us
        )
    }
}

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or_default()
}

/// Boxed here so a crate that runs it compiles a pointer, not this async body again.
pub fn run_stream_bench<'a>(options: &'a StreamBenchOptions) -> BoxFuture<'a, Result<StreamBenchReport, BenchError>> {
    Box::pin(measure(options))
}

/// The agent's answer: `total` chunks on schedule, then a result.
fn framed_answer(total: u64, interval: Duration) -> axum::body::Body {
    let started = tokio::time::Instant::now();
    let chunks = futures::stream::iter(0..total).then(move |i| async move {
        tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        Ok::<_, std::convert::Infallible>(format!("{}\n", json!({"type": "chunk", "text": now_us().to_string()})))
    });
    let end = futures::stream::once(async move { Ok(format!("{}\n", json!({"type": "result", "output": {"chunks": total}}))) });
    axum::body::Body::from_stream(chunks.chain(end))
}

async fn measure(options: &StreamBenchOptions) -> Result<StreamBenchReport, BenchError> {
    let total = options.rate * options.seconds;
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(1) as f64);
    let listener = tokio::net::TcpListener::bind(&options.agent_listen).await.map_err(|e| setup(format!("--agent-listen {}: {e}", options.agent_listen)))?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move || async move {
            axum::response::Response::builder().header("content-type", "application/x-ndjson").body(framed_answer(total, interval)).unwrap_or_default()
        }),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = stop.clone();
    let agent = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(serving.cancelled_owned()).await });
    let result = read_stream(options, total).await;
    stop.cancel();
    let _ = agent.await;
    result
}

async fn read_stream(options: &StreamBenchOptions, total: u64) -> Result<StreamBenchReport, BenchError> {
    let http = reqwest::Client::new();
    let answer = http.post(format!("{}/v1/tasks", options.url)).json(&json!({"agent_type": options.agent_type, "input": {}})).send().await.map_err(setup)?;
    if !answer.status().is_success() {
        return Err(setup(format!("submitting: {} {}", answer.status(), answer.text().await.unwrap_or_default())));
    }
    let submitted: Value = answer.json().await.map_err(setup)?;
    let task_id = submitted["task_id"].as_str().ok_or_else(|| setup("the submit answer has no task_id"))?.to_string();
    let mut stream = http.get(format!("{}/v1/tasks/{task_id}/stream", options.url)).send().await.map_err(setup)?;
    if !stream.status().is_success() {
        return Err(setup(format!("opening the stream: {}", stream.status())));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(setup)?;
    let mut from_worker = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(setup)?;
    let mut buffer = String::new();
    let deadline = Instant::now() + Duration::from_secs(options.seconds + 60);
    'read: while Instant::now() < deadline {
        let Some(bytes) =
            tokio::time::timeout(Duration::from_secs(30), stream.chunk()).await.map_err(|_| setup("the stream stalled for 30 s"))?.map_err(setup)?
        else {
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let received = now_us();
            let event = frame.lines().find_map(|l| l.strip_prefix("event:")).map(str::trim);
            let data = frame.lines().find_map(|l| l.strip_prefix("data:")).map(str::trim).unwrap_or_default();
            match event {
                Some("chunk") => {
                    let data: Value = serde_json::from_str(data).map_err(setup)?;
                    if let Some(emitted) = data["text"].as_str().and_then(|t| t.parse::<u64>().ok()) {
                        histogram.saturating_record(received.saturating_sub(emitted).max(1));
                    }
                    if let Some(read_ms) = data["at_ms"].as_u64() {
                        from_worker.saturating_record(received.saturating_sub(read_ms * 1000).max(1));
                    }
                }
                Some("outcome") => break 'read,
                _ => {}
            }
        }
    }
    Ok(StreamBenchReport {
        offered_per_s: options.rate,
        emitted: total,
        received: histogram.len(),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        from_worker_p50_us: from_worker.value_at_quantile(0.5),
        from_worker_p99_us: from_worker.value_at_quantile(0.99),
    })
}
