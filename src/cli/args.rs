//! The command line of the `agentlog` binary (clap). Commands are of two kinds, so that
//! `main` opens the event log only for those that read or write it: [`Offline`] ones work
//! while another process owns the embedded log (or none exists), [`Online`] ones get the log.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agentlog", version, about = "AI agents as consumer-group workers on an event log")]
pub struct Cli {
    /// A TOML file layered over the defaults (environment variables AGENTLOG__… win over it).
    #[arg(long, global = true, env = "AGENTLOG_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    #[command(flatten)]
    Online(Online),
    #[command(flatten)]
    Offline(Offline),
}

/// Commands that open the event log.
#[derive(Subcommand)]
pub enum Online {
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
    /// Rebuilds the projection from the log: into the next generation of projection.dir, or
    /// with --into into a new directory, optionally only with records up to --as-of-ms.
    Replay {
        #[arg(long)]
        into: Option<std::path::PathBuf>,
        #[arg(long)]
        as_of_ms: Option<i64>,
    },
    /// Submits a task and prints where it was written (and, with --wait-s, its outcome).
    Submit {
        #[arg(long)]
        agent_type: String,
        /// The task's input, JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long, default_value = "normal")]
        lane: crate::events::Lane,
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
}

/// Commands that need no event log (a benchmark that does opens its own).
#[derive(Subcommand)]
pub enum Offline {
    /// The projection directory, while no `agentlog api` has it open.
    Projection {
        #[command(subcommand)]
        action: ProjectionAction,
    },
    /// RocksDB checkpoints of the projection, with the offsets they were taken at.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// The Avro schemas in schemas/.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
pub enum ProjectionAction {
    /// Prints every key and value of the current generation in a stable text form.
    Dump,
}

#[derive(Subcommand)]
pub enum SnapshotAction {
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
pub enum DlqAction {
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
pub enum TopicsAction {
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
pub enum SchemasAction {
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
pub enum EventsAction {
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
pub enum BenchWhat {
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
    /// Chunk latency of the agent protocol (agent emits → SSE client receives) against a
    /// running API whose agent type `--agent-type` is an http agent at `--agent-listen`
    /// (config/bench-stream.toml); this process serves that agent and reads the stream.
    Stream {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value = "streamer")]
        agent_type: String,
        #[arg(long, default_value = "127.0.0.1:8091")]
        agent_listen: String,
        /// Chunks per second the agent emits.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long)]
        json: bool,
    },
    /// Many slow `http` attempts at once (agents that answer after --hold-seconds) against a
    /// running API whose agent type `--agent-type` is an http agent at `--agent-listen`
    /// (config/bench-held.toml); reports how many were held at once and the memory of the
    /// server process `--pid`.
    Held {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value = "holder")]
        agent_type: String,
        #[arg(long, default_value = "127.0.0.1:8092")]
        agent_listen: String,
        #[arg(long, default_value_t = 10_000)]
        attempts: u64,
        #[arg(long, default_value_t = 10)]
        hold_seconds: u64,
        /// The server process (agentlog dev) whose memory is read from /proc.
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    OnLog(LogBench),
}

/// The benchmarks that run on an event log (opened by the benchmark itself).
#[derive(Subcommand)]
pub enum LogBench {
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
