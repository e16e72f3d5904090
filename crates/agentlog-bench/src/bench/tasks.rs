//! `agentlog bench tasks`: tasks end to end — submit on a lane topic, a worker (no-op `echo`
//! agent) takes them, writes TaskStarted and the outcome, commits — measured where a user
//! sees them: when the outcome can be read from `task.results`.
//!
//! Throughput: `tasks` submitted as fast as the producer accepts them (deliveries pipelined),
//! timed from the first submit to the last outcome read. Latency: an open-loop submitter
//! offers `rate` tasks/s for `seconds` (on schedule, never waiting for earlier ones) and the
//! outcome reader records now − submit time of each in an hdrhistogram, so the figures hold
//! at a fixed offered load, not only at saturation.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::log::BenchError;
use crate::agent::runtime::builtin::Builtin;
use crate::agent::{AgentTypeConfig, RuntimeConfig, TaskTopics, WorkerSettings, run_worker};
use crate::events::wire::WireCodec;
use crate::events::{Lane, Meta, TaskSubmitted};
use crate::log::{ConsumerEvent, ConsumerOptions, Delivery, EventLog, LogError, Record, SeekTo, TopicPartition, TopicSpec};
use crate::registry::RegistryServer;

#[derive(Debug, Clone)]
pub struct TaskBenchOptions {
    pub tasks: u64,
    pub rate: u64,
    pub seconds: u64,
    pub partitions: i32,
    pub concurrency: u32,
    pub exactly_once: bool,
}

#[derive(Debug, Serialize)]
pub struct TaskBenchReport {
    pub backend: &'static str,
    pub partitions: i32,
    pub concurrency: u32,
    pub exactly_once: bool,
    pub tasks: u64,
    pub tasks_per_s: f64,
    pub latency_rate_per_s: u64,
    pub latency_tasks: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
}

impl std::fmt::Display for TaskBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "backend={} partitions={} concurrency={} exactly_once={} (no-op agent, one in-process worker)",
            self.backend, self.partitions, self.concurrency, self.exactly_once
        )?;
        writeln!(f, "throughput: {} tasks submitted → outcomes read at {:.0} tasks/s", self.tasks, self.tasks_per_s)?;
        write!(
            f,
            "submit->outcome latency at {} tasks/s ({} tasks): p50={}us p99={}us p999={}us max={}us",
            self.latency_rate_per_s, self.latency_tasks, self.latency_p50_us, self.latency_p99_us, self.latency_p999_us, self.latency_max_us
        )
    }
}

const WINDOW: usize = 20_000;
const AGENT_TYPE: &str = "bench_noop";

/// Submit times (µs since the origin) by task sequence number, shared with the reader.
struct Clock {
    origin: Instant,
    submitted: Vec<AtomicU64>,
}

/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn run_task_bench<'a>(log: Arc<dyn EventLog>, options: &'a TaskBenchOptions) -> BoxFuture<'a, Result<TaskBenchReport, BenchError>> {
    Box::pin(measure_task_bench(log, options))
}

async fn measure_task_bench(log: Arc<dyn EventLog>, options: &TaskBenchOptions) -> Result<TaskBenchReport, BenchError> {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let topics = TaskTopics::new(format!("bench.{suffix}."));
    let admin = log.admin();
    for name in ["task.events", "task.results", "task.stream", "task.checkpoints", "dlq", "timers", "agent.events", "agent.heartbeats"] {
        admin.create_topic(&TopicSpec::new(format!("{}{name}", topics.prefix()), options.partitions)).await?;
    }
    admin.create_topic(&TopicSpec::new(topics.control(), 1)).await?;
    let lane = topics.lane(AGENT_TYPE, Lane::Normal);
    admin.create_topic(&TopicSpec::new(&lane, options.partitions)).await?;

    // The built-in schema registry on a free port, as `agentlog dev` runs it.
    let registry = RegistryServer::on_loopback(log.clone(), &format!("{}schemas", topics.prefix())).await.map_err(|e| BenchError::Setup(e.to_string()))?;
    let codec = Arc::new(WireCodec::new(registry.url()).map_err(|e| BenchError::Setup(e.to_string()))?);

    let agent = AgentTypeConfig {
        description: "no-op".into(),
        runtime: RuntimeConfig::Builtin { name: "echo".into() },
        concurrency: options.concurrency,
        timeout_ms: 60_000,
        retry: Default::default(),
        lanes: vec![Lane::Normal],
        partitions: options.partitions,
        input_schema: None,
        exactly_once: options.exactly_once,
        delegates: false,
        on_signal_timeout: Default::default(),
    };
    let settings = WorkerSettings {
        agent_type: AGENT_TYPE.into(),
        agent,
        topic_prefix: topics.prefix().to_string(),
        worker_id: format!("bench-worker-{suffix}"),
        prefetch_per_lane: (options.concurrency as usize * 4).max(256),
        drain_timeout: Duration::from_secs(30),
        heartbeat_interval: Duration::from_secs(1),
        transaction_deadline: crate::agent::worker::TRANSACTION_DEADLINE,
        callback: Default::default(),
    };
    let runtime = Arc::new(Builtin::by_name("echo").map_err(|e| BenchError::Setup(e.to_string()))?);
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(run_worker(log.clone(), codec.clone(), runtime, settings, worker_stop.clone()));

    let result = async {
        let throughput = phase(&log, &codec, &topics, &lane, options.tasks, None, "t").await?;
        let latency = phase(&log, &codec, &topics, &lane, options.rate * options.seconds, Some(options.rate), "l").await?;
        Ok::<_, BenchError>((throughput, latency))
    }
    .await;

    worker_stop.cancel();
    let report = worker.await.map_err(|_| LogError::Shutdown)?;
    let _ = registry.stop().await;
    let ((elapsed, _), (_, histogram)) = result?;
    report.map_err(|e| BenchError::Setup(format!("worker: {e}")))?;
    for topic in [
        topics.events(),
        topics.results(),
        topics.dlq(),
        topics.timers(),
        topics.agent_events(),
        topics.heartbeats(),
        topics.control(),
        lane.clone(),
        format!("{}schemas", topics.prefix()),
    ] {
        let _ = admin.delete_topic(&topic).await;
    }
    Ok(TaskBenchReport {
        backend: log.backend(),
        partitions: options.partitions,
        concurrency: options.concurrency,
        exactly_once: options.exactly_once,
        tasks: options.tasks,
        tasks_per_s: options.tasks as f64 / elapsed.as_secs_f64(),
        latency_rate_per_s: options.rate,
        latency_tasks: histogram.len(),
        latency_p50_us: histogram.value_at_quantile(0.50),
        latency_p99_us: histogram.value_at_quantile(0.99),
        latency_p999_us: histogram.value_at_quantile(0.999),
        latency_max_us: histogram.max(),
    })
}

/// Submits `total` tasks (as fast as possible, or at `rate`/s) and reads their outcomes;
/// returns the time from the first submit to the last outcome and the latency histogram.
async fn phase(
    log: &Arc<dyn EventLog>,
    codec: &Arc<WireCodec>,
    topics: &TaskTopics,
    lane: &str,
    total: u64,
    rate: Option<u64>,
    tag: &'static str,
) -> Result<(Duration, Histogram<u64>), BenchError> {
    let results = topics.results();
    let partitions = log.admin().describe_topic(&results).await?.partitions;
    // Explicit end offsets: Kafka resolves `Latest` only at the first fetch, and outcomes
    // written before that would be skipped.
    let mut assignment = Vec::new();
    for p in 0..partitions {
        let tp = TopicPartition::new(&results, p);
        let high = log.admin().watermarks(&tp).await?.high;
        assignment.push((tp, SeekTo::Offset(high)));
    }
    let mut consumer = log.consumer(ConsumerOptions::default())?;
    consumer.assign(&assignment).await?;
    let clock = Arc::new(Clock { origin: Instant::now(), submitted: (0..total).map(|_| AtomicU64::new(0)).collect() });
    let prefix = format!("{tag}-");

    let reader_clock = clock.clone();
    let reader = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| BenchError::Histogram(e.to_string()))?;
        let timeout = Duration::from_secs(120 + total / 1_000);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = 0;
        while seen < total {
            match tokio::time::timeout_at(deadline, consumer.next_event()).await {
                Ok(Ok(ConsumerEvent::Record(record))) => {
                    let seq = record
                        .key
                        .as_deref()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .and_then(|k| k.strip_prefix(&prefix))
                        .and_then(|s| s.parse::<usize>().ok());
                    let Some(seq) = seq else { continue };
                    let sent = reader_clock.submitted.get(seq).map_or(0, |t| t.load(Ordering::Relaxed));
                    let now = reader_clock.origin.elapsed().as_micros() as u64;
                    histogram.saturating_record(now.saturating_sub(sent).max(1));
                    seen += 1;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(BenchError::Log(e)),
                Err(_) => return Err(BenchError::Incomplete { seen, expected: total, timeout }),
            }
        }
        let done = reader_clock.origin.elapsed();
        consumer.close().await?;
        Ok::<_, BenchError>((done, histogram))
    });

    let submitted = submit(log, codec, lane, total, rate, tag, &clock).await;
    if submitted.is_err() {
        reader.abort();
    }
    let read = reader.await;
    submitted?;
    let (done, histogram) = read.map_err(|_| LogError::Shutdown)??;
    Ok((done, histogram))
}

async fn submit(log: &Arc<dyn EventLog>, codec: &WireCodec, lane: &str, total: u64, rate: Option<u64>, tag: &str, clock: &Clock) -> Result<(), BenchError> {
    let producer = log.producer()?;
    let mut inflight: VecDeque<Delivery> = VecDeque::with_capacity(WINDOW);
    let start = tokio::time::Instant::now();
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1) as f64));
    for i in 0..total {
        if let Some(interval) = interval {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        }
        let id = format!("{tag}-{i}");
        clock.submitted[i as usize].store(clock.origin.elapsed().as_micros() as u64, Ordering::Relaxed);
        let task = TaskSubmitted::new(Meta::new(format!("e{tag}{i}"), "bench", "bench"), &id, AGENT_TYPE, Lane::Normal, b"{}".to_vec());
        let payload = codec.encode(lane, &task).await.map_err(|e| BenchError::Setup(e.to_string()))?;
        inflight.push_back(producer.send(Record::new(lane, payload).with_key(Bytes::from(id))).await?);
        while inflight.len() > WINDOW {
            if let Some(oldest) = inflight.pop_front() {
                oldest.await?;
            }
        }
    }
    for delivery in inflight {
        delivery.await?;
    }
    Ok(())
}
