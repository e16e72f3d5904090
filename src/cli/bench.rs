//! `agentlog bench`: each benchmark prints its report (JSON with --json). The API benchmark
//! loads a running server over HTTP and opens no log; the others open their own (see
//! [`private_bench_dir`]).

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::bench::{LogBenchOptions, run_log_bench};
use crate::config::{Backend, Config};
use crate::open::open_log;

use super::args::{BenchWhat, LogBench};

pub async fn run(what: BenchWhat, config: Config) -> anyhow::Result<()> {
    match what {
        BenchWhat::Api { url, op, agent_type, rate, seconds, tasks, json } => {
            let options = crate::bench::api::ApiBenchOptions { url, op, agent_type, rate, seconds, tasks };
            print(&crate::bench::api::run_api_bench(&options).await?, json)
        }
        BenchWhat::Stream { url, agent_type, agent_listen, rate, seconds, json } => {
            let options = crate::bench::stream::StreamBenchOptions { url, agent_type, agent_listen, rate, seconds };
            print(&crate::bench::stream::run_stream_bench(&options).await?, json)
        }
        BenchWhat::Held { url, agent_type, agent_listen, attempts, hold_seconds, pid, json } => {
            let options = crate::bench::held::HeldBenchOptions { url, agent_type, agent_listen, attempts, hold_seconds, pid };
            print(&crate::bench::held::run_held_bench(&options).await?, json)
        }
        BenchWhat::OnLog(bench) => on_log(bench, config).await,
    }
}

async fn on_log(bench: LogBench, mut config: Config) -> anyhow::Result<()> {
    let bench_dir = private_bench_dir(&mut config);
    let log = open_log(&config.log).context("opening the event log")?;
    let result = match bench {
        LogBench::Tasks { tasks, rate, seconds, partitions, concurrency, exactly_once, failover, json } => {
            if failover && log.backend() != "kafka" {
                bail!("--failover needs the Kafka backend (AGENTLOG__LOG__BACKEND=kafka): the embedded log lives in one process");
            }
            let options = crate::bench::tasks::TaskBenchOptions { tasks, rate, seconds, partitions, concurrency, exactly_once };
            print(&crate::bench::tasks::run_task_bench(log.clone(), &options).await?, json)?;
            if failover {
                print(&crate::bench::failover::run_failover_bench(log.clone(), &config.log).await?, json)?;
            }
            Ok(())
        }
        LogBench::Projection { events, tail, partitions, json } => {
            let options = crate::bench::projection::ProjectionBenchOptions { events, tail, partitions };
            print(&crate::bench::projection::run_projection_bench(log.clone(), &options).await?, json)
        }
        LogBench::Timers { timers, partitions, json } => {
            let options = crate::bench::timers::TimerBenchOptions { timers, partitions };
            print(&crate::bench::timers::run_timer_bench(log.clone(), &options).await?, json)
        }
        LogBench::Log { records, size, partitions, rate, seconds, json } => {
            print(&run_log_bench(log.clone(), &LogBenchOptions { records, size, partitions, rate, seconds }).await?, json)
        }
    };
    log.shutdown(Duration::from_secs(10)).await.context("shutting down the event log")?;
    drop(log);
    if let Some(dir) = bench_dir
        && let Err(error) = std::fs::remove_dir_all(&dir)
    {
        tracing::warn!(dir = %dir.display(), %error, "could not remove the benchmark's embedded log");
    }
    result
}

/// A report as text, or as one JSON line with `--json`.
fn print(report: &(impl Serialize + Display), json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Benchmarks on the embedded log write into a fresh directory next to the configured one
/// (`data/log` → `data/log-bench-<pid>`), removed afterwards. In the configured directory
/// two runs, or a run beside `agentlog dev`, would share one RocksDB ("wal_dir contains
/// existing log file"), and each run would first replay the previous run's write-ahead log.
fn private_bench_dir(config: &mut Config) -> Option<PathBuf> {
    if config.log.backend != Backend::Embedded {
        return None;
    }
    let configured = &config.log.embedded.data_dir;
    let name = configured.file_name().map_or_else(|| "log".into(), |n| n.to_string_lossy().into_owned());
    let dir = configured.with_file_name(format!("{name}-bench-{}", std::process::id()));
    config.log.embedded.data_dir = dir.clone();
    Some(dir)
}
