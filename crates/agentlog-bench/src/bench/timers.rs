//! `agentlog bench timers`: what a supervisor holding many delayed tasks costs, in memory and
//! in rebuild time.
//!
//! Writes `timers` delayed tasks (due in an hour; a small JSON input, the size of a typical
//! API submit) to a fresh `timers` topic, then runs the supervisor's timers component over it
//! (the component a leading supervisor starts; without the election, heartbeats and jobs,
//! which hold nothing per timer) until the history is read. Reports the process's resident
//! memory (VmRSS) before the rebuild, once it is done, and the highest sampled meanwhile, and
//! how long the rebuild took. With the embedded log the process also holds the log itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::log::BenchError;
use crate::agent::TaskTopics;
use crate::agent::cancels::Cancels;
use crate::agent::client::{TaskClient, timer_record};
use crate::events::wire::WireCodec;
use crate::events::{Lane, Meta, TaskSubmitted, TimestampMicros};
use crate::log::{EventLog, TopicSpec};
use crate::registry::RegistryServer;
use crate::supervisor::timers::{TimerSettings, run_timers};

#[derive(Debug, Clone)]
pub struct TimerBenchOptions {
    pub timers: u64,
    pub partitions: i32,
}

#[derive(Debug, Serialize)]
pub struct TimerBenchReport {
    pub backend: &'static str,
    pub partitions: i32,
    pub timers: u64,
    pub write_s: f64,
    pub pending: u64,
    pub rebuild_s: f64,
    pub rebuild_timers_per_s: f64,
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
    pub rss_peak_mb: f64,
}

impl std::fmt::Display for TimerBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backend={} partitions={} timers={} (due in 1 h)", self.backend, self.partitions, self.timers)?;
        writeln!(f, "wrote {} timers in {:.2} s", self.timers, self.write_s)?;
        writeln!(f, "rebuild: {} pending in {:.2} s = {:.0} timers/s", self.pending, self.rebuild_s, self.rebuild_timers_per_s)?;
        write!(f, "RSS: {:.0} MB before the rebuild, {:.0} MB after, {:.0} MB peak during it", self.rss_before_mb, self.rss_after_mb, self.rss_peak_mb)
    }
}

const AGENT_TYPE: &str = "bench_timers";
const WINDOW: usize = 50_000;
/// An input the size of a typical submit through the API.
const INPUT: &[u8] = br#"{"prompt":"Summarize the attached report in three sentences.","url":"https://example.com/reports/q3.pdf"}"#;

/// VmRSS of this process, in MB (0 where /proc is not available).
pub fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).unwrap_or(0);
    kb as f64 / 1024.0
}

async fn write_timers(log: &Arc<dyn EventLog>, codec: &WireCodec, topics: &TaskTopics, count: u64) -> Result<(), BenchError> {
    let producer = log.producer()?;
    let mut pending = FuturesUnordered::new();
    let due = TimestampMicros(TimestampMicros::now().0 + 3_600_000_000);
    for n in 0..count {
        let mut meta = Meta::new(format!("ev-{n}"), "bench", "bench");
        meta.correlation_id = format!("corr-{n}");
        let mut task = TaskSubmitted::new(meta, format!("task-{n:010}"), AGENT_TYPE, Lane::Normal, INPUT.to_vec());
        task.not_before = Some(due);
        pending.push(producer.send(timer_record(codec, topics, &task).await?).await?);
        while pending.len() >= WINDOW {
            if let Some(delivery) = pending.next().await {
                delivery?;
            }
        }
    }
    while let Some(delivery) = pending.next().await {
        delivery?;
    }
    Ok(())
}

/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn run_timer_bench<'a>(log: Arc<dyn EventLog>, options: &'a TimerBenchOptions) -> LocalBoxFuture<'a, Result<TimerBenchReport, BenchError>> {
    Box::pin(measure_timer_bench(log, options))
}

async fn measure_timer_bench(log: Arc<dyn EventLog>, options: &TimerBenchOptions) -> Result<TimerBenchReport, BenchError> {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let topics = TaskTopics::new(format!("bench.{suffix}."));
    let admin = log.admin();
    let all = [topics.timers(), topics.results(), topics.dlq(), topics.lane(AGENT_TYPE, Lane::Normal)];
    for topic in &all {
        admin.create_topic(&TopicSpec::new(topic.clone(), options.partitions)).await?;
    }
    let setup = |e: &dyn std::fmt::Display| BenchError::Setup(e.to_string());
    let registry = RegistryServer::on_loopback(log.clone(), &format!("{}schemas", topics.prefix())).await.map_err(|e| setup(&e))?;
    let codec = Arc::new(WireCodec::new(registry.url()).map_err(|e| setup(&e))?);
    let dir = std::env::temp_dir().join(format!("agentlog-bench-timers-{suffix}"));

    let result = async {
        let started = Instant::now();
        write_timers(&log, &codec, &topics, options.timers).await?;
        let write_s = started.elapsed().as_secs_f64();
        let rss_before_mb = rss_mb();
        let peak = Arc::new(AtomicU64::new(0));
        let sampling = CancellationToken::new();
        let sampler = {
            let (peak, sampling) = (peak.clone(), sampling.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max((rss_mb() * 1024.0) as u64, Ordering::Relaxed);
                    tokio::select! {
                        _ = sampling.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            })
        };
        let client = TaskClient::new(&log, codec.clone(), topics.clone(), "bench-supervisor").map_err(|e| setup(&e))?;
        let (tell, rebuilt) = tokio::sync::oneshot::channel();
        let settings = TimerSettings { state_dir: dir.clone(), caught_up: Some(tell) };
        let timers_stop = CancellationToken::new();
        let timers = tokio::spawn(run_timers(log.clone(), client, Arc::new(Cancels::tracking_new()), settings, timers_stop.clone()));
        let rebuilt = rebuilt.await;
        let rss_after_mb = rss_mb();
        sampling.cancel();
        let _ = sampler.await;
        timers_stop.cancel();
        let stats = timers.await.map_err(|e| setup(&e))?.map_err(|e| setup(&e))?;
        let rebuilt = rebuilt.map_err(|_| BenchError::Setup("the timers component ended before reading its history".into()))?;
        if stats.fired + stats.dead_lettered > 0 {
            return Err(BenchError::Setup(format!("{} timers fired and {} were dead-lettered; none was due", stats.fired, stats.dead_lettered)));
        }
        let peak_mb = (peak.load(Ordering::Relaxed) as f64 / 1024.0).max(rss_after_mb);
        Ok::<_, BenchError>(TimerBenchReport {
            backend: log.backend(),
            partitions: options.partitions,
            timers: options.timers,
            write_s,
            pending: rebuilt.pending,
            rebuild_s: rebuilt.elapsed.as_secs_f64(),
            rebuild_timers_per_s: rebuilt.pending as f64 / rebuilt.elapsed.as_secs_f64().max(1e-9),
            rss_before_mb,
            rss_after_mb,
            rss_peak_mb: peak_mb,
        })
    }
    .await;

    let _ = registry.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    for topic in all.iter().cloned().chain([format!("{}schemas", topics.prefix())]) {
        let _ = admin.delete_topic(&topic).await;
    }
    result
}
