//! `agentlog bench held`: how much a worker holding many slow `http` attempts at once costs,
//! against a running API (`agentlog dev` with `config/bench-held.toml`).
//!
//! The benchmark serves the `http` agent itself on `--agent-listen`: every attempt is held
//! `--hold-seconds` before it answers, as an agent waiting on a slow model would. It submits
//! `--attempts` tasks at once and watches how many requests the agent holds at a time and the
//! server's memory (`/proc/<pid>/status` of `--pid`: VmRSS while they are held, VmHWM, the
//! peak, at the end), until every task has its outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value, json};

use super::log::BenchError;

#[derive(Debug, Clone)]
pub struct HeldBenchOptions {
    pub url: String,
    pub agent_type: String,
    pub agent_listen: String,
    pub attempts: u64,
    pub hold_seconds: u64,
    /// The server process whose memory is read.
    pub pid: u32,
}

#[derive(Debug, Serialize)]
pub struct HeldBenchReport {
    pub attempts: u64,
    pub hold_seconds: u64,
    /// Most agent requests open at one time.
    pub peak_held: u64,
    /// From the first submit until `peak_held` was first reached.
    pub all_held_after_ms: u64,
    pub completed: u64,
    pub elapsed_ms: u64,
    /// The server's resident memory before the submits, at the peak of held attempts, and
    /// its high-water mark at the end.
    pub rss_before_mb: f64,
    pub rss_held_mb: f64,
    pub rss_peak_mb: f64,
}

impl std::fmt::Display for HeldBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} attempts held {} s each: {} held at once (all after {} ms), {} completed in {} ms\nserver RSS: {:.0} MB before, {:.0} MB while held, {:.0} MB peak (VmHWM)",
            self.attempts,
            self.hold_seconds,
            self.peak_held,
            self.all_held_after_ms,
            self.completed,
            self.elapsed_ms,
            self.rss_before_mb,
            self.rss_held_mb,
            self.rss_peak_mb
        )
    }
}

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// A `/proc/<pid>/status` field in MB (`VmRSS`, `VmHWM`).
fn memory_mb(pid: u32, field: &str) -> Result<f64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| setup(format!("reading the memory of pid {pid}: {e}")))?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .ok_or_else(|| setup(format!("/proc/{pid}/status has no {field}")))?;
    Ok(kb / 1024.0)
}

/// Boxed here so a crate that runs it compiles a pointer, not this async body again.
pub fn run_held_bench<'a>(options: &'a HeldBenchOptions) -> BoxFuture<'a, Result<HeldBenchReport, BenchError>> {
    Box::pin(measure(options))
}

#[derive(Default)]
struct Counts {
    held: AtomicU64,
    answered: AtomicU64,
}

async fn measure(options: &HeldBenchOptions) -> Result<HeldBenchReport, BenchError> {
    let counts = Arc::new(Counts::default());
    let hold = Duration::from_secs(options.hold_seconds);
    let listener = tokio::net::TcpListener::bind(&options.agent_listen).await.map_err(|e| setup(format!("--agent-listen {}: {e}", options.agent_listen)))?;
    let agent_counts = counts.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move || {
            let counts = agent_counts.clone();
            async move {
                counts.held.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(hold).await;
                counts.held.fetch_sub(1, Ordering::Relaxed);
                counts.answered.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({"held_ms": hold.as_millis() as u64}))
            }
        }),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = stop.clone();
    let agent = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(serving.cancelled_owned()).await });
    let result = load(options, &counts).await;
    stop.cancel();
    let _ = agent.await;
    result
}

async fn load(options: &HeldBenchOptions, counts: &Counts) -> Result<HeldBenchReport, BenchError> {
    let http = reqwest::Client::new();
    let rss_before_mb = memory_mb(options.pid, "VmRSS")?;
    let started = Instant::now();
    let mut last = None;
    let mut submitted = 0;
    while submitted < options.attempts {
        let n = (options.attempts - submitted).min(500);
        let tasks: Vec<Value> = (0..n).map(|i| json!({"agent_type": options.agent_type, "input": {"n": submitted + i}})).collect();
        let answer = http.post(format!("{}/v1/tasks/batch", options.url)).json(&json!({"tasks": tasks})).send().await.map_err(setup)?;
        if !answer.status().is_success() {
            return Err(setup(format!("submitting: {} {}", answer.status(), answer.text().await.unwrap_or_default())));
        }
        let body: Value = answer.json().await.map_err(setup)?;
        last = body["tasks"].as_array().and_then(|t| t.last()).and_then(|t| t["task_id"].as_str()).map(str::to_string).or(last);
        submitted += n;
    }
    let (mut peak_held, mut all_held_after_ms, mut rss_held_mb) = (0, 0, 0.0);
    let deadline = started + Duration::from_secs(options.hold_seconds * 4 + 120);
    while counts.answered.load(Ordering::Relaxed) < options.attempts && Instant::now() < deadline {
        let held = counts.held.load(Ordering::Relaxed);
        if held > peak_held {
            peak_held = held;
            all_held_after_ms = started.elapsed().as_millis() as u64;
            rss_held_mb = memory_mb(options.pid, "VmRSS")?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The outcomes: the last task submitted finishes among the last.
    let last = last.ok_or_else(|| setup("no task was submitted"))?;
    let answer = http.get(format!("{}/v1/tasks/{last}/outcome?wait_ms=30000", options.url)).send().await.map_err(setup)?;
    if !answer.status().is_success() {
        return Err(setup(format!("the last task has no outcome: {}", answer.status())));
    }
    Ok(HeldBenchReport {
        attempts: options.attempts,
        hold_seconds: options.hold_seconds,
        peak_held,
        all_held_after_ms,
        completed: counts.answered.load(Ordering::Relaxed),
        elapsed_ms: started.elapsed().as_millis() as u64,
        rss_before_mb,
        rss_held_mb,
        rss_peak_mb: memory_mb(options.pid, "VmHWM")?,
    })
}
