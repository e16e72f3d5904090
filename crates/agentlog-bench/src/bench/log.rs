//! `agentlog bench log`: throughput and produce-to-consume latency of a backend.
//!
//! Throughput: produce `records` records of `size` bytes as fast as the producer accepts them
//! (every delivery awaited), then consume them all from the start. Latency: a consumer reads
//! while a producer offers `rate` records/s for `seconds`; each payload carries its send time
//! and the consumer records now − send time in an hdrhistogram.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::log::{ConsumerEvent, ConsumerOptions, Delivery, EventLog, LogError, Record, SeekTo, TopicPartition, TopicSpec};

#[derive(Debug, Clone)]
pub struct LogBenchOptions {
    pub records: u64,
    pub size: usize,
    pub partitions: i32,
    pub rate: u64,
    pub seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("consumer saw {seen} of {expected} records before the {timeout:?} deadline")]
    Incomplete { seen: u64, expected: u64, timeout: Duration },
    #[error("histogram: {0}")]
    Histogram(String),
    #[error("setting up the benchmark: {0}")]
    Setup(String),
    #[error(transparent)]
    Wire(#[from] crate::events::wire::WireError),
}

#[derive(Debug, Serialize)]
pub struct LogBenchReport {
    pub backend: &'static str,
    pub records: u64,
    pub size: usize,
    pub partitions: i32,
    pub produce_records_per_s: f64,
    pub consume_records_per_s: f64,
    pub latency_rate_per_s: u64,
    pub latency_records: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
}

impl std::fmt::Display for LogBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backend={} records={} size={}B partitions={}", self.backend, self.records, self.size, self.partitions)?;
        writeln!(f, "produce: {:.0} records/s", self.produce_records_per_s)?;
        writeln!(f, "consume: {:.0} records/s", self.consume_records_per_s)?;
        write!(
            f,
            "produce->consume latency at {} records/s ({} records): p50={}us p99={}us p999={}us max={}us",
            self.latency_rate_per_s, self.latency_records, self.latency_p50_us, self.latency_p99_us, self.latency_p999_us, self.latency_max_us
        )
    }
}

/// Deliveries kept in flight before the oldest is awaited: bounds memory, keeps batches full.
const WINDOW: usize = 50_000;

/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn run_log_bench<'a>(log: Arc<dyn EventLog>, options: &'a LogBenchOptions) -> BoxFuture<'a, Result<LogBenchReport, BenchError>> {
    Box::pin(measure_log_bench(log, options))
}

async fn measure_log_bench(log: Arc<dyn EventLog>, options: &LogBenchOptions) -> Result<LogBenchReport, BenchError> {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let admin = log.admin();
    let throughput_topic = format!("bench.log.{suffix}");
    admin.create_topic(&TopicSpec::new(&throughput_topic, options.partitions)).await?;
    let payload = Bytes::from(vec![b'x'; options.size]);
    let producer = log.producer()?;

    // Throughput: produce.
    let started = Instant::now();
    let mut inflight: VecDeque<Delivery> = VecDeque::with_capacity(WINDOW);
    for i in 0..options.records {
        let record = Record::new(&throughput_topic, payload.clone()).with_key(Bytes::from((i % 10_000).to_string()));
        inflight.push_back(producer.send(record).await?);
        if inflight.len() >= WINDOW
            && let Some(oldest) = inflight.pop_front()
        {
            oldest.await?;
        }
    }
    for delivery in inflight {
        delivery.await?;
    }
    let produce_secs = started.elapsed().as_secs_f64();

    // Throughput: consume everything from the start.
    let mut consumer = log.consumer(ConsumerOptions::default())?;
    let parts: Vec<(TopicPartition, SeekTo)> = (0..options.partitions).map(|p| (TopicPartition::new(&throughput_topic, p), SeekTo::Earliest)).collect();
    consumer.assign(&parts).await?;
    let started = Instant::now();
    let timeout = Duration::from_secs(300);
    let mut seen = 0;
    while seen < options.records {
        match tokio::time::timeout_at(tokio::time::Instant::from_std(started + timeout), consumer.next_event()).await {
            Ok(Ok(ConsumerEvent::Record(_))) => seen += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(BenchError::Incomplete { seen, expected: options.records, timeout }),
        }
    }
    let consume_secs = started.elapsed().as_secs_f64();
    consumer.close().await?;

    let latency = latency_run(&log, options, &suffix).await?;
    admin.delete_topic(&throughput_topic).await?;
    Ok(LogBenchReport {
        backend: log.backend(),
        records: options.records,
        size: options.size,
        partitions: options.partitions,
        produce_records_per_s: options.records as f64 / produce_secs,
        consume_records_per_s: options.records as f64 / consume_secs,
        latency_rate_per_s: options.rate,
        latency_records: latency.len(),
        latency_p50_us: latency.value_at_quantile(0.50),
        latency_p99_us: latency.value_at_quantile(0.99),
        latency_p999_us: latency.value_at_quantile(0.999),
        latency_max_us: latency.max(),
    })
}

/// Offers `rate` records/s for `seconds` while a consumer reads them; returns latencies in µs.
async fn latency_run(log: &Arc<dyn EventLog>, options: &LogBenchOptions, suffix: &str) -> Result<Histogram<u64>, BenchError> {
    let topic = format!("bench.latency.{suffix}");
    log.admin().create_topic(&TopicSpec::new(&topic, options.partitions)).await?;
    let total = options.rate * options.seconds;
    let origin = Instant::now();

    let mut consumer = log.consumer(ConsumerOptions::default())?;
    let parts: Vec<(TopicPartition, SeekTo)> = (0..options.partitions).map(|p| (TopicPartition::new(&topic, p), SeekTo::Earliest)).collect();
    consumer.assign(&parts).await?;
    // Warm-up: one record per partition read back before timing starts, so the figures are
    // steady state rather than the consumer's first fetch.
    let producer = log.producer()?;
    for p in 0..options.partitions {
        producer.send(Record::new(&topic, vec![0u8; 8]).with_partition(p)).await?.await?;
    }
    let mut warm = 0;
    while warm < options.partitions {
        match tokio::time::timeout(Duration::from_secs(60), consumer.next_event()).await {
            Ok(Ok(ConsumerEvent::Record(_))) => warm += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(BenchError::Incomplete { seen: warm as u64, expected: options.partitions as u64, timeout: Duration::from_secs(60) }),
        }
    }
    let reader = tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| BenchError::Histogram(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(options_deadline(total));
        let mut seen = 0;
        while seen < total {
            match tokio::time::timeout_at(deadline, consumer.next_event()).await {
                Ok(Ok(ConsumerEvent::Record(r))) => {
                    let sent = r.payload.get(..8).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
                    let now = origin.elapsed().as_micros() as u64;
                    histogram.saturating_record(now.saturating_sub(sent).max(1));
                    seen += 1;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(BenchError::Log(e)),
                Err(_) => return Err(BenchError::Incomplete { seen, expected: total, timeout: Duration::from_secs(options_deadline(total)) }),
            }
        }
        consumer.close().await?;
        Ok::<_, BenchError>(histogram)
    });

    let offered = offer(producer.as_ref(), &topic, options, total, origin).await;
    if offered.is_err() {
        // The reader would wait for records that never come: stop it rather than orphan it.
        reader.abort();
    }
    let outcome = reader.await;
    offered?;
    let histogram = outcome.map_err(|_| LogError::Shutdown)??;
    log.admin().delete_topic(&topic).await?;
    Ok(histogram)
}

/// Sends `total` records at `options.rate` per second (open loop: on schedule, never waiting
/// for earlier deliveries), each carrying its send time in µs since `origin`.
async fn offer(producer: &dyn crate::log::Producer, topic: &str, options: &LogBenchOptions, total: u64, origin: Instant) -> Result<(), BenchError> {
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(1) as f64);
    let mut inflight: VecDeque<Delivery> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(options.size.max(8) * 1024);
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        buf.put_u64(origin.elapsed().as_micros() as u64);
        buf.put_bytes(b'x', options.size.saturating_sub(8));
        let record = Record::new(topic, buf.split().freeze()).with_key(Bytes::from((i % 10_000).to_string()));
        inflight.push_back(producer.send(record).await?);
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

fn options_deadline(total: u64) -> u64 {
    60 + total / 1_000
}
