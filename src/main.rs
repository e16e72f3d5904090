//! The `agentlog` binary: parse the command line, load the config, call the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use serde_json::json;

use agentlog::agent::lane_topic_specs;
use agentlog::bench::{LogBenchOptions, run_log_bench};
use agentlog::config::Config;
use agentlog::log::{ConsumerEvent, ConsumerOptions, EventLog, Record, SeekTo, TopicPartition, lag};
use agentlog::open::open_log;
use agentlog::topics::{self, Applied, Catalog};

mod cli;
use cli::shutdown_signal;

#[derive(Parser)]
#[command(name = "agentlog", version, about = "AI agents as consumer-group workers on an event log")]
struct Cli {
    /// A TOML file layered over the defaults (environment variables AGENTLOG__… win over it).
    #[arg(long, global = true, env = "AGENTLOG_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Development mode: opens the embedded log, applies the topic catalog, runs until Ctrl-C.
    Dev,
    /// The topic catalog.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Appends records; prints one JSON line per durable record.
    Produce {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        key: Option<String>,
        /// The payload; `{i}` is replaced by the record's sequence number.
        #[arg(long, default_value = "record-{i}")]
        value: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Headers as name=value, repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Reads records; prints one JSON line per record.
    Consume {
        #[arg(long)]
        topic: String,
        /// Join this consumer group (resumes from its committed offsets).
        #[arg(long)]
        group: Option<String>,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<u64>,
        /// Commit the offsets of what was read before exiting (needs --group).
        #[arg(long)]
        commit: bool,
        /// Stop when no record arrives for this long.
        #[arg(long, default_value_t = 10_000)]
        idle_timeout_ms: u64,
    },
    /// Runs a worker for one agent type: a member of consumer group `agents.<type>`. On Ctrl-C
    /// or SIGTERM it drains: stops taking work, finishes in-flight tasks, commits, leaves.
    Worker {
        #[arg(long)]
        agent_type: String,
        /// Overrides the agent type's configured concurrency.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Seconds a drain waits for running tasks before leaving them to another worker. On
        /// Kafka keep it below the group's rebalance timeout (`max.poll.interval.ms`, 25 s):
        /// a draining worker does not read, and is fenced past it.
        #[arg(long, default_value_t = 20)]
        drain_timeout_s: u64,
    },
    /// Timers (delays, retry backoff), the heartbeat monitor and job aggregation; one
    /// instance leads at a time (elected through the log).
    Supervisor,
    /// The projector and the HTTP API over it (and, on the embedded log, the schema registry).
    Api,
    /// The projection directory, while no `agentlog api` has it open.
    Projection {
        #[command(subcommand)]
        action: ProjectionAction,
    },
    /// Rebuilds the projection from the log: into the next generation of projection.dir, or
    /// with --into into a new directory, optionally only with records up to --as-of-ms.
    Replay {
        #[arg(long)]
        into: Option<std::path::PathBuf>,
        #[arg(long)]
        as_of_ms: Option<i64>,
    },
    /// RocksDB checkpoints of the projection, with the offsets they were taken at.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Submits a task and prints where it was written (and, with --wait-s, its outcome).
    Submit {
        #[arg(long)]
        agent_type: String,
        /// The task's input, JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long, default_value = "normal")]
        lane: agentlog::events::Lane,
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Ordering key: tasks sharing it run one at a time, in order.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        task_id: Option<String>,
        /// Start no earlier than this many ms from now (a durable timer).
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Expire unless started within this many ms from now.
        #[arg(long)]
        deadline_ms: Option<u64>,
        #[arg(long)]
        max_attempts: Option<i32>,
        /// Wait up to this many seconds for the outcome and print it.
        #[arg(long)]
        wait_s: Option<u64>,
    },
    /// Asks for a task to be cancelled (before it starts: it never runs; running: it gets
    /// its cancel signal).
    Cancel {
        task_id: String,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Dead-lettered tasks: list them, re-submit them with a fresh attempt budget.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Serves the built-in Confluent-compatible schema registry (schemas on the `schemas` topic).
    Registry {
        /// Default: registry.listen from the config.
        #[arg(long)]
        listen: Option<String>,
    },
    /// The Avro schemas in schemas/.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
    /// Events in Confluent's wire format.
    Events {
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Consumer lag of a group on a topic.
    Lag {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum ProjectionAction {
    /// Prints every key and value of the current generation in a stable text form.
    Dump,
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// Checkpoints the current generation (default: into projection.dir/snapshots/).
    Create {
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Makes a checkpoint the current generation; the next start tails the log from it.
    Restore {
        #[arg(long)]
        from: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    List,
    Resubmit {
        /// The task to re-submit (its latest dead letter).
        #[arg(long)]
        task: Option<String>,
        /// The tenant of `--task`: a task is (tenant, task id), and two tenants may use one id.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Every dead-lettered task.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Creates missing catalog topics; fails naming every topic that drifted from the catalog.
    Apply,
    /// Shows every catalog topic next to what the backend has.
    Describe,
    /// Creates one topic outside the catalog.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication_factor: i16,
    },
}

#[derive(Subcommand)]
enum SchemasAction {
    /// Fails naming schema, field and rule when the working schemas break the released set.
    Check {
        #[arg(long, default_value = "schemas")]
        working: PathBuf,
        #[arg(long, default_value = "schemas/released")]
        released: PathBuf,
    },
    /// Registers every event schema in a schema registry (TopicRecordNameStrategy subjects),
    /// TaskSubmitted under every lane topic of every declared agent type.
    Register {
        /// Default: registry.url from the config.
        #[arg(long)]
        registry: Option<String>,
    },
}

#[derive(Subcommand)]
enum EventsAction {
    /// Writes sample TaskSubmitted events (`sample-0`, …) in Confluent's wire format.
    EmitSample {
        #[arg(long)]
        topic: String,
        /// Default: registry.url from the config.
        #[arg(long)]
        registry: Option<String>,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Decodes TaskSubmitted events from the start of a topic; undecodable records go to the DLQ.
    Read {
        #[arg(long)]
        topic: String,
        /// Default: registry.url from the config.
        #[arg(long)]
        registry: Option<String>,
        #[arg(long, default_value_t = 1)]
        max: u64,
        /// Dead-letter topic (default: the catalog's `dlq` with the configured prefix).
        #[arg(long)]
        dlq: Option<String>,
        #[arg(long, default_value_t = 30_000)]
        idle_timeout_ms: u64,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Produce and consume throughput, and produce-to-consume latency at a fixed rate.
    Log {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Offered load of the latency run, records/s.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Duration of the latency run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tasks end to end through a worker with a no-op agent: tasks/s and submit→outcome
    /// latency at a fixed offered load.
    Tasks {
        #[arg(long, default_value_t = 200_000)]
        tasks: u64,
        /// Offered load of the latency phase, tasks/s.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long, default_value_t = 64)]
        concurrency: u32,
        #[arg(long)]
        exactly_once: bool,
        /// Also measure kill -9 failover and a worker joining (Kafka; spawns worker processes).
        #[arg(long)]
        failover: bool,
        #[arg(long)]
        json: bool,
    },
    /// The supervisor with `timers` delayed tasks pending (due in an hour): its resident
    /// memory and how long it takes to rebuild its timers from the log.
    Timers {
        #[arg(long, default_value_t = 1_000_000)]
        timers: u64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long)]
        json: bool,
    },
    /// HTTP load against a running API (`agentlog dev` or `agentlog api`), from this
    /// separate process, at a fixed offered rate. Does not open the log.
    Api {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// get (a task by id) or submit (one task per request).
        #[arg(long, default_value = "get")]
        op: String,
        #[arg(long, default_value = "echo")]
        agent_type: String,
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Tasks submitted before a `get` run, to read back.
        #[arg(long, default_value_t = 10_000)]
        tasks: u64,
        #[arg(long)]
        json: bool,
    },
    /// Projection rebuild (events/s) and restore from a snapshot + tail vs a full rebuild.
    Projection {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 50_000)]
        tail: u64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long)]
        json: bool,
    },
}

/// mimalloc instead of glibc malloc: the task path allocates per event on several threads,
/// and glibc's arena locks showed in the profile (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Log lines are written by a thread of their own. Every thread logs through this
    // subscriber, librdkafka's included, so a write to stderr that blocks (a disk busy with
    // other writers, a pipe nobody reads) blocked them all: in a broker_kill run a worker's
    // transaction had committed, but its task sat 30 s in the debug line that says so while
    // the process wrote nothing, and the worker held its partitions meanwhile. Lines beyond
    // the writer's buffer are dropped rather than wait; the guard flushes the rest at exit.
    let (writer, _flush_at_exit) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(true).thread_name("agentlog-log").finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,librdkafka=warn".into()))
        .with_writer(writer)
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(run(cli.command, config))
}

async fn run(command: Command, mut config: Config) -> anyhow::Result<()> {
    // Commands that need no log: they must work while another process owns the embedded log.
    match command {
        Command::Bench { what: BenchWhat::Api { url, op, agent_type, rate, seconds, tasks, json } } => {
            let options = agentlog::bench::api::ApiBenchOptions { url, op, agent_type, rate, seconds, tasks };
            let report = agentlog::bench::api::run_api_bench(&options).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            return Ok(());
        }
        Command::Projection { action: ProjectionAction::Dump } => return cli::projection::dump(&config),
        Command::Snapshot { action: SnapshotAction::Create { out } } => return cli::projection::snapshot_create(&config, out),
        Command::Snapshot { action: SnapshotAction::Restore { from } } => return cli::projection::snapshot_restore(&config, &from),
        _ => {}
    }
    let bench_dir = private_bench_dir(&command, &mut config);
    let log = open_log(&config.log).context("opening the event log")?;
    let result = dispatch(command, &config, &log).await;
    log.shutdown(Duration::from_secs(10)).await.context("shutting down the event log")?;
    drop(log);
    if let Some(dir) = bench_dir
        && let Err(error) = std::fs::remove_dir_all(&dir)
    {
        tracing::warn!(dir = %dir.display(), %error, "could not remove the benchmark's embedded log");
    }
    result
}

/// Benchmarks on the embedded log write into a fresh directory next to the configured one
/// (`data/log` → `data/log-bench-<pid>`), removed afterwards. In the configured directory
/// two runs, or a run beside `agentlog dev`, would share one RocksDB ("wal_dir contains
/// existing log file"), and each run would first replay the previous run's write-ahead log.
fn private_bench_dir(command: &Command, config: &mut Config) -> Option<std::path::PathBuf> {
    let benchmark =
        matches!(command, Command::Bench { what: BenchWhat::Tasks { .. } | BenchWhat::Projection { .. } | BenchWhat::Log { .. } | BenchWhat::Timers { .. } });
    if !benchmark || config.log.backend != agentlog::config::Backend::Embedded {
        return None;
    }
    let configured = &config.log.embedded.data_dir;
    let name = configured.file_name().map_or_else(|| "log".into(), |n| n.to_string_lossy().into_owned());
    let dir = configured.with_file_name(format!("{name}-bench-{}", std::process::id()));
    config.log.embedded.data_dir = dir.clone();
    Some(dir)
}

async fn dispatch(command: Command, config: &Config, log: &std::sync::Arc<dyn EventLog>) -> anyhow::Result<()> {
    let catalog = || Catalog::builtin(&config.log.topic_prefix, config.topics.replication_factor);
    // The catalog's topics plus one topic per lane of every declared agent type.
    let all_specs = || -> anyhow::Result<Vec<agentlog::log::TopicSpec>> {
        let mut specs: Vec<agentlog::log::TopicSpec> = catalog()?.specs().cloned().collect();
        specs.extend(lane_topic_specs(&config.agents, &config.log.topic_prefix, config.topics.replication_factor));
        Ok(specs)
    };
    match command {
        Command::Dev => {
            let applied = topics::apply(log.admin().as_ref(), &all_specs()?).await?;
            println!("agentlog dev: {} event log at {}", log.backend(), log.location());
            for a in &applied {
                match a {
                    Applied::Created(name) => println!("  topic {name} (created)"),
                    Applied::Unchanged(name) => println!("  topic {name}"),
                }
            }
            // The embedded log belongs to one process, so dev runs everything itself.
            cli::dev::run(log, config).await?;
            println!("stopped");
        }
        Command::Topics { action: TopicsAction::Apply } => {
            for a in topics::apply(log.admin().as_ref(), &all_specs()?).await? {
                match a {
                    Applied::Created(name) => println!("created   {name}"),
                    Applied::Unchanged(name) => println!("ok        {name}"),
                }
            }
        }
        Command::Topics { action: TopicsAction::Describe } => {
            let admin = log.admin();
            let mut drifted = false;
            for (spec, entry) in &catalog()?.topics {
                match admin.describe_topic(&spec.name).await {
                    Ok(actual) => {
                        let drift = topics::compare(spec, &actual);
                        drifted |= !drift.is_empty();
                        println!(
                            "{:<28} partitions={:<3} rf={} cleanup={:<7} key={:<10} {}",
                            spec.name,
                            actual.partitions,
                            actual.replication_factor,
                            actual.cleanup_policy.as_str(),
                            entry.key,
                            if drift.is_empty() {
                                "ok".to_string()
                            } else {
                                format!("DRIFT: {}", drift.iter().map(|d| d.difference.clone()).collect::<Vec<_>>().join("; "))
                            }
                        );
                    }
                    Err(agentlog::log::LogError::UnknownTopic { .. }) => {
                        drifted = true;
                        println!("{:<28} MISSING (run `agentlog topics apply`)", spec.name);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if drifted {
                bail!("the backend differs from the topic catalog");
            }
        }
        Command::Produce { topic, key, value, count, headers } => {
            let producer = log.producer()?;
            for i in 0..count {
                let mut record = Record::new(&topic, Bytes::from(value.replace("{i}", &i.to_string())));
                if let Some(key) = &key {
                    record = record.with_key(Bytes::from(key.replace("{i}", &i.to_string())));
                }
                for header in &headers {
                    let (name, value) = header.split_once('=').with_context(|| format!("header `{header}` is not name=value"))?;
                    record = record.with_header(name, Bytes::from(value.to_string()));
                }
                let position = producer.send(record).await?.await?;
                // One line per durable record: a caller may kill us at any point and knows
                // exactly which appends were acknowledged.
                println!("{}", json!({"seq": i, "partition": position.partition, "offset": position.offset}));
            }
        }
        Command::Consume { topic, group, max, commit, idle_timeout_ms } => {
            consume(log, topic, group, max, commit, Duration::from_millis(idle_timeout_ms)).await?;
        }
        Command::Topics { action: TopicsAction::Create { name, partitions, replication_factor } } => {
            cli::events::create_topic(log, &name, partitions, replication_factor).await?;
        }
        Command::Worker { agent_type, concurrency, drain_timeout_s } => {
            cli::worker::run(log, config, &agent_type, concurrency, Duration::from_secs(drain_timeout_s)).await?;
        }
        Command::Supervisor => cli::worker::run_supervisor_command(log, config).await?,
        Command::Replay { into, as_of_ms } => cli::projection::replay(log, config, into, as_of_ms).await?,
        Command::Projection { .. } | Command::Snapshot { .. } | Command::Bench { what: BenchWhat::Api { .. } } => {
            unreachable!("handled before the log is opened")
        }
        Command::Api => {
            // The embedded log belongs to this process, so it sets up its topics; on Kafka
            // that is `agentlog topics apply`'s job.
            if log.backend() == "embedded" {
                topics::apply(log.admin().as_ref(), &all_specs()?).await?;
            }
            cli::api::run(log, config).await?;
        }
        Command::Submit { agent_type, input, lane, tenant, key, task_id, delay_ms, deadline_ms, max_attempts, wait_s } => {
            let args = cli::tasks::SubmitArgs {
                agent_type,
                input,
                lane,
                tenant,
                ordering_key: key,
                task_id,
                delay_ms,
                deadline_ms,
                max_attempts,
                wait: wait_s.map(Duration::from_secs),
            };
            cli::tasks::submit(log, config, args).await?;
        }
        Command::Cancel { task_id, tenant, reason } => cli::tasks::cancel(log, config, &task_id, &tenant, reason).await?,
        Command::Dlq { action: DlqAction::List } => cli::tasks::dlq_list(log, config).await?,
        Command::Dlq { action: DlqAction::Resubmit { task, tenant, all } } => cli::tasks::dlq_resubmit(log, config, task, &tenant, all).await?,
        Command::Registry { listen } => {
            let listen = listen.unwrap_or_else(|| config.registry.listen.clone());
            cli::events::run_registry(log, config, &listen).await?;
        }
        Command::Schemas { action: SchemasAction::Check { working, released } } => {
            cli::events::check_schemas(&working, &released)?;
        }
        Command::Schemas { action: SchemasAction::Register { registry } } => {
            let registry = agentlog::registry::RegistryConfig { url: registry.unwrap_or_else(|| config.registry.url.clone()), ..config.registry.clone() };
            cli::events::register_schemas(&registry, &config.log.topic_prefix, &config.agents).await?;
        }
        Command::Events { action: EventsAction::EmitSample { topic, registry, count } } => {
            let registry = agentlog::registry::RegistryConfig { url: registry.unwrap_or_else(|| config.registry.url.clone()), ..config.registry.clone() };
            cli::events::emit_sample(log, &topic, &registry, count).await?;
        }
        Command::Events { action: EventsAction::Read { topic, registry, max, dlq, idle_timeout_ms } } => {
            let dlq = dlq.unwrap_or_else(|| format!("{}dlq", config.log.topic_prefix));
            let registry = agentlog::registry::RegistryConfig { url: registry.unwrap_or_else(|| config.registry.url.clone()), ..config.registry.clone() };
            cli::events::read_events(log, &topic, &registry, &dlq, max, Duration::from_millis(idle_timeout_ms)).await?;
        }
        Command::Lag { group, topic } => {
            for l in lag::group_lag(log.admin().as_ref(), &group, &topic).await? {
                println!("{}", serde_json::to_string(&l)?);
            }
        }
        Command::Bench { what: BenchWhat::Tasks { tasks, rate, seconds, partitions, concurrency, exactly_once, failover, json } } => {
            if failover && log.backend() != "kafka" {
                bail!("--failover needs the Kafka backend (AGENTLOG__LOG__BACKEND=kafka): the embedded log lives in one process");
            }
            let options = agentlog::bench::tasks::TaskBenchOptions { tasks, rate, seconds, partitions, concurrency, exactly_once };
            let report = agentlog::bench::tasks::run_task_bench(log.clone(), &options).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            if failover {
                let report = agentlog::bench::failover::run_failover_bench(log.clone(), &config.log).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!("{report}");
                }
            }
        }
        Command::Bench { what: BenchWhat::Projection { events, tail, partitions, json } } => {
            let options = agentlog::bench::projection::ProjectionBenchOptions { events, tail, partitions };
            let report = agentlog::bench::projection::run_projection_bench(log.clone(), &options).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
        }
        Command::Bench { what: BenchWhat::Timers { timers, partitions, json } } => {
            let options = agentlog::bench::timers::TimerBenchOptions { timers, partitions };
            let report = agentlog::bench::timers::run_timer_bench(log.clone(), &options).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
        }
        Command::Bench { what: BenchWhat::Log { records, size, partitions, rate, seconds, json } } => {
            let report = run_log_bench(log.clone(), &LogBenchOptions { records, size, partitions, rate, seconds }).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
        }
    }
    Ok(())
}

async fn consume(
    log: &std::sync::Arc<dyn EventLog>,
    topic: String,
    group: Option<String>,
    max: Option<u64>,
    commit: bool,
    idle: Duration,
) -> anyhow::Result<()> {
    if commit && group.is_none() {
        bail!("--commit needs --group");
    }
    let mut consumer = log.consumer(ConsumerOptions { group: group.clone(), client_id: Some("agentlog-cli".into()), ..Default::default() })?;
    if group.is_some() {
        consumer.subscribe(std::slice::from_ref(&topic))?;
    } else {
        let partitions = log.admin().describe_topic(&topic).await?.partitions;
        let parts: Vec<(TopicPartition, SeekTo)> = (0..partitions).map(|p| (TopicPartition::new(&topic, p), SeekTo::Earliest)).collect();
        consumer.assign(&parts).await?;
    }
    let mut next: std::collections::BTreeMap<TopicPartition, i64> = Default::default();
    let mut seen = 0u64;
    while max.is_none_or(|m| seen < m) {
        let event = tokio::select! {
            event = tokio::time::timeout(idle, consumer.next_event()) => match event {
                Ok(event) => event?,
                Err(_) => break,
            },
            _ = shutdown_signal() => break,
        };
        if let ConsumerEvent::Record(r) = event {
            next.insert(r.topic_partition(), r.offset + 1);
            seen += 1;
            let headers: serde_json::Map<String, serde_json::Value> =
                r.headers.iter().map(|h| (h.name.clone(), json!(String::from_utf8_lossy(&h.value)))).collect();
            println!(
                "{}",
                json!({
                    "partition": r.partition,
                    "offset": r.offset,
                    "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                    "value": String::from_utf8_lossy(&r.payload),
                    "timestamp_ms": r.timestamp_ms,
                    "headers": headers,
                })
            );
        }
    }
    if commit && !next.is_empty() {
        let offsets: Vec<(TopicPartition, i64)> = next.into_iter().collect();
        consumer.commit(&offsets).await?;
    }
    consumer.close().await?;
    Ok(())
}
