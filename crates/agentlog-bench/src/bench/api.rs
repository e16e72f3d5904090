//! `agentlog bench api`: HTTP load against a running API from a separate process, at a fixed
//! offered rate (open loop: requests go out on schedule whether or not earlier ones have
//! answered, and latency counts from the scheduled time, so a stall is not hidden).
//!
//! - `get`: submits `--tasks` tasks first (batches), waits until the projection has them,
//!   then GETs random ones;
//! - `submit`: POSTs single tasks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use super::log::BenchError;

#[derive(Debug, Clone)]
pub struct ApiBenchOptions {
    pub url: String,
    pub op: String,
    pub agent_type: String,
    pub rate: u64,
    pub seconds: u64,
    pub tasks: u64,
}

#[derive(Debug, Serialize)]
pub struct ApiBenchReport {
    pub op: String,
    pub offered_per_s: u64,
    pub requests: u64,
    pub errors: u64,
    pub achieved_per_s: f64,
    /// From the scheduled send time (includes the client's own scheduling delay).
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// From the moment the request was actually sent until its answer.
    pub sent_p50_us: u64,
    pub sent_p99_us: u64,
    pub sent_p999_us: u64,
}

impl std::fmt::Display for ApiBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {} req/s offered: {} requests ({} errors), {:.0} req/s achieved\nlatency from schedule: p50={}us p99={}us p999={}us max={}us\nlatency from send:     p50={}us p99={}us p999={}us",
            self.op,
            self.offered_per_s,
            self.requests,
            self.errors,
            self.achieved_per_s,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.sent_p50_us,
            self.sent_p99_us,
            self.sent_p999_us
        )
    }
}

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// Submits `n` tasks in batches and waits until the projection serves the last of them.
async fn seed(http: &reqwest::Client, options: &ApiBenchOptions) -> Result<Vec<String>, BenchError> {
    let mut ids = Vec::new();
    let mut last_position = None;
    while (ids.len() as u64) < options.tasks {
        let n = (options.tasks - ids.len() as u64).min(500);
        let tasks: Vec<Value> = (0..n).map(|i| json!({"agent_type": options.agent_type, "input": {"seed": i}})).collect();
        let answer = http.post(format!("{}/v1/tasks/batch", options.url)).json(&json!({"tasks": tasks})).send().await.map_err(setup)?;
        if !answer.status().is_success() {
            return Err(setup(format!("seeding: {} {}", answer.status(), answer.text().await.unwrap_or_default())));
        }
        let body: Value = answer.json().await.map_err(setup)?;
        for task in body["tasks"].as_array().into_iter().flatten() {
            ids.push(task["task_id"].as_str().unwrap_or_default().to_string());
            last_position = task["position"].as_str().map(str::to_string).or(last_position);
        }
    }
    if let (Some(id), Some(position)) = (ids.last(), last_position) {
        let answer = http.get(format!("{}/v1/tasks/{id}?after={position}&wait_ms=30000", options.url)).send().await.map_err(setup)?;
        if !answer.status().is_success() {
            return Err(setup(format!("the projection did not serve the seeded tasks: {}", answer.status())));
        }
    }
    Ok(ids)
}

/// Runs the load on a single-threaded runtime of its own: the client shares the machine's
/// cores with the server it measures, and one client thread (plus the pacer) contends less
/// with the server's threads than a worker pool per core would.
/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn run_api_bench<'a>(options: &'a ApiBenchOptions) -> BoxFuture<'a, Result<ApiBenchReport, BenchError>> {
    Box::pin(measure_api_bench(options))
}

async fn measure_api_bench(options: &ApiBenchOptions) -> Result<ApiBenchReport, BenchError> {
    if !matches!(options.op.as_str(), "get" | "submit") {
        return Err(setup(format!("--op `{}`: get or submit", options.op)));
    }
    let options = options.clone();
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(setup)?;
        runtime.block_on(offer_load(&options))
    })
    .await
    .map_err(|e| setup(format!("the load thread failed: {e}")))?
}

/// Sends `(sequence, due time)` for each of `total` requests at its due time, from a thread
/// of its own (see `offer_load`).
fn start_pacer(
    total: u64,
    interval: Duration,
    started: Instant,
    due_tx: tokio::sync::mpsc::UnboundedSender<(u64, Instant)>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("bench-pacer".into()).spawn(move || {
        for i in 0..total {
            let due = started + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if due_tx.send((i, due)).is_err() {
                break;
            }
        }
    })
}

/// Request number `seq`: a read of a random seeded task, or a submit.
fn request_for(http: &reqwest::Client, options: &ApiBenchOptions, ids: &[String], seq: u64) -> reqwest::RequestBuilder {
    if options.op == "get" {
        let id = &ids[rand::random_range(0..ids.len().max(1)).min(ids.len().saturating_sub(1))];
        http.get(format!("{}/v1/tasks/{id}", options.url))
    } else {
        http.post(format!("{}/v1/tasks", options.url)).json(&json!({"agent_type": options.agent_type, "input": {"n": seq}}))
    }
}

async fn offer_load(options: &ApiBenchOptions) -> Result<ApiBenchReport, BenchError> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().map_err(setup)?;
    let ids = Arc::new(if options.op == "get" { seed(&http, options).await? } else { Vec::new() });
    let total = options.rate * options.seconds;
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(1) as f64);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(setup)?;
    let mut errors = 0u64;
    // Each request is its own task, so the client's runtime spreads them over its threads;
    // answers come back on a channel with their scheduled time.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Duration, bool)>();
    let mut sent_histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(setup)?;
    // The schedule is kept by a thread of its own: tokio's timers tick in whole milliseconds,
    // which would add up to 1 ms of the client's own making to every latency counted from
    // the schedule; a thread sleeping to each due time is accurate to tens of microseconds.
    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let started = Instant::now();
    let pacer = start_pacer(total, interval, started, due_tx).map_err(setup)?;
    let mut answered = 0u64;
    let mut pacing = true;
    while answered < total {
        tokio::select! {
            biased;
            Some((scheduled, service, ok)) = done_rx.recv() => {
                histogram.saturating_record(scheduled.elapsed().as_micros() as u64);
                sent_histogram.saturating_record(service.as_micros() as u64);
                answered += 1;
                if !ok {
                    errors += 1;
                }
            }
            due = due_rx.recv(), if pacing => {
                let Some((seq, scheduled)) = due else {
                    pacing = false;
                    continue;
                };
                let request = request_for(&http, options, &ids, seq);
                let done = done_tx.clone();
                tokio::spawn(async move {
                    let sent_at = Instant::now();
                    // The whole answer is read: that is what a user waits for, and an
                    // unread body would keep its connection out of the pool.
                    let ok = match request.send().await {
                        Ok(answer) => answer.status().is_success() && answer.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let _ = done.send((scheduled, sent_at.elapsed(), ok));
                });
            }
        }
    }
    if pacer.join().is_err() {
        return Err(setup("the pacing thread panicked"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(ApiBenchReport {
        op: options.op.clone(),
        offered_per_s: options.rate,
        requests: total,
        errors,
        achieved_per_s: total as f64 / elapsed.max(1e-9),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        sent_p50_us: sent_histogram.value_at_quantile(0.5),
        sent_p99_us: sent_histogram.value_at_quantile(0.99),
        sent_p999_us: sent_histogram.value_at_quantile(0.999),
    })
}
