//! `agentlog bench projection`: how fast a projection is rebuilt from the log, and how much
//! faster a restore from a snapshot plus the tail is than a full rebuild.
//!
//! Writes `events` task events (per task: TaskSubmitted on a lane, TaskStarted and
//! TaskProgress on `task.events`, TaskCompleted on `task.results`) to bench topics, rebuilds
//! a fresh projection from them (events/s), checkpoints it, writes `tail` more events, then
//! restores the checkpoint into a new generation and applies the tail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use serde::Serialize;

use super::log::BenchError;
use crate::agent::{AgentTypeConfig, RuntimeConfig, TaskTopics};
use crate::events::wire::WireCodec;
use crate::events::{Lane, Meta, TaskCompleted, TaskProgress, TaskStarted, TaskSubmitted, TimestampMicros};
use crate::log::{EventLog, Record, TopicSpec};
use crate::projection::{Generations, catch_up, sources};
use crate::registry::RegistryServer;

#[derive(Debug, Clone)]
pub struct ProjectionBenchOptions {
    pub events: u64,
    pub tail: u64,
    pub partitions: i32,
}

#[derive(Debug, Serialize)]
pub struct ProjectionBenchReport {
    pub backend: &'static str,
    pub partitions: i32,
    pub events: u64,
    pub write_s: f64,
    pub rebuild_events: usize,
    pub rebuild_s: f64,
    pub rebuild_events_per_s: f64,
    pub tail_events: usize,
    pub restore_s: f64,
    pub restore_speedup: f64,
}

impl std::fmt::Display for ProjectionBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backend={} partitions={} (4 events per task: submitted, started, progress, completed)", self.backend, self.partitions)?;
        writeln!(f, "wrote {} events in {:.2} s", self.events, self.write_s)?;
        writeln!(f, "full rebuild: {} events in {:.2} s = {:.0} events/s", self.rebuild_events, self.rebuild_s, self.rebuild_events_per_s)?;
        write!(
            f,
            "restore: snapshot copy + {} tail events in {:.3} s = {:.1}x faster than the full rebuild",
            self.tail_events, self.restore_s, self.restore_speedup
        )
    }
}

const AGENT_TYPE: &str = "bench_projection";
const WINDOW: usize = 50_000;

fn meta(producer: &str, at: i64, id: u64, kind: &str) -> Meta {
    let mut meta = Meta::new(format!("{kind}-{id}"), "bench", producer);
    meta.occurred_at = TimestampMicros(at);
    meta
}

/// Writes the events of tasks `first..first + count` (pipelined deliveries).
async fn write_tasks(log: &Arc<dyn EventLog>, codec: &WireCodec, topics: &TaskTopics, first: u64, count: u64) -> Result<(), BenchError> {
    let producer = log.producer()?;
    let lane = topics.lane(AGENT_TYPE, Lane::Normal);
    let mut pending = FuturesUnordered::new();
    let start = TimestampMicros::now().0;
    for n in first..first + count {
        let task_id = format!("t{n}");
        let at = start + n as i64;
        let key = Bytes::from(task_id.clone());
        let submitted = TaskSubmitted::new(meta("bench", at, n, "s"), &task_id, AGENT_TYPE, Lane::Normal, b"{\"n\":1}".to_vec());
        let started = TaskStarted { meta: meta("bench", at + 10, n, "b"), task_id: task_id.clone(), agent_id: "bench-agent".into(), attempt: 1 };
        let progress =
            TaskProgress { meta: meta("bench", at + 20, n, "p"), task_id: task_id.clone(), attempt: 1, percent: Some(50.0), message: None, detail: None };
        let completed = TaskCompleted {
            meta: meta("bench", at + 30, n, "c"),
            task_id: task_id.clone(),
            attempt: 1,
            output: b"{\"ok\":true}".to_vec(),
            content_type: "application/json".into(),
            duration_ms: 1,
            usage: None,
        };
        let records = [
            Record::new(lane.clone(), codec.encode(&lane, &submitted).await?).with_key(key.clone()),
            Record::new(topics.events(), codec.encode(&topics.events(), &started).await?).with_key(key.clone()),
            Record::new(topics.events(), codec.encode(&topics.events(), &progress).await?).with_key(key.clone()),
            Record::new(topics.results(), codec.encode(&topics.results(), &completed).await?).with_key(key),
        ];
        for record in records {
            pending.push(producer.send(record).await?);
            while pending.len() >= WINDOW {
                if let Some(delivery) = pending.next().await {
                    delivery?;
                }
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
pub fn run_projection_bench<'a>(log: Arc<dyn EventLog>, options: &'a ProjectionBenchOptions) -> LocalBoxFuture<'a, Result<ProjectionBenchReport, BenchError>> {
    Box::pin(measure_projection_bench(log, options))
}

async fn measure_projection_bench(log: Arc<dyn EventLog>, options: &ProjectionBenchOptions) -> Result<ProjectionBenchReport, BenchError> {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let topics = TaskTopics::new(format!("bench.{suffix}."));
    let admin = log.admin();
    let lane = topics.lane(AGENT_TYPE, Lane::Normal);
    let all = [topics.events(), topics.results(), topics.stream(), topics.timers(), topics.dlq(), topics.agent_events(), topics.heartbeats(), lane.clone()];
    for topic in &all {
        admin.create_topic(&TopicSpec::new(topic.clone(), options.partitions)).await?;
    }
    let registry = RegistryServer::on_loopback(log.clone(), &format!("{}schemas", topics.prefix())).await.map_err(|e| BenchError::Setup(e.to_string()))?;
    let codec = Arc::new(WireCodec::new(registry.url()).map_err(|e| BenchError::Setup(e.to_string()))?);
    let dir = std::env::temp_dir().join(format!("agentlog-bench-projection-{suffix}"));

    let result = async {
        let tasks = options.events / 4;
        let tail_tasks = options.tail / 4;
        let started = Instant::now();
        write_tasks(&log, &codec, &topics, 0, tasks).await?;
        let write_s = started.elapsed().as_secs_f64();
        let mut agents = std::collections::BTreeMap::new();
        agents.insert(
            AGENT_TYPE.to_string(),
            AgentTypeConfig {
                description: String::new(),
                runtime: RuntimeConfig::Builtin { name: "echo".into() },
                concurrency: 1,
                timeout_ms: 1000,
                retry: Default::default(),
                lanes: vec![Lane::Normal],
                partitions: options.partitions,
                input_schema: None,
                exactly_once: false,
                delegates: false,
                on_signal_timeout: Default::default(),
            },
        );
        let sources = sources(&topics, &agents);
        let generations = Generations::new(&dir).map_err(|e| BenchError::Setup(e.to_string()))?;
        let store = generations.open_current().map_err(|e| BenchError::Setup(e.to_string()))?;
        let full = catch_up(&log, codec.clone(), &sources, &store, None).await.map_err(|e| BenchError::Setup(e.to_string()))?;
        let snapshot = dir.join("snapshots").join("bench");
        std::fs::create_dir_all(dir.join("snapshots")).map_err(|e| BenchError::Setup(e.to_string()))?;
        store.checkpoint(&snapshot).map_err(|e| BenchError::Setup(e.to_string()))?;
        drop(store);
        write_tasks(&log, &codec, &topics, tasks, tail_tasks).await?;
        let restore_started = Instant::now();
        generations.restore(&snapshot).map_err(|e| BenchError::Setup(e.to_string()))?;
        let restored = generations.open_current().map_err(|e| BenchError::Setup(e.to_string()))?;
        let tail = catch_up(&log, codec.clone(), &sources, &restored, None).await.map_err(|e| BenchError::Setup(e.to_string()))?;
        let restore = restore_started.elapsed();
        // The idle wait that ends a catch-up with nothing left to read is not work.
        let rebuild = full.elapsed;
        Ok::<_, BenchError>(ProjectionBenchReport {
            backend: log.backend(),
            partitions: options.partitions,
            events: tasks * 4,
            write_s,
            rebuild_events: full.events,
            rebuild_s: rebuild.as_secs_f64(),
            rebuild_events_per_s: full.events as f64 / rebuild.as_secs_f64().max(1e-9),
            tail_events: tail.events,
            restore_s: restore.as_secs_f64(),
            restore_speedup: rebuild.as_secs_f64() / restore.max(Duration::from_micros(1)).as_secs_f64(),
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
