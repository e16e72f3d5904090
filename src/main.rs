//! The `agentlog` binary: parse the command line, load the config, call the library. The
//! commands themselves live in `cli/`, one module per area.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use agentlog::config::Config;
use agentlog::log::{EventLog, lag};
use agentlog::open::open_log;
use agentlog::registry::RegistryConfig;
use agentlog::topics::Applied;

mod cli;
use cli::args::{Cli, Command, DlqAction, EventsAction, Offline, Online, ProjectionAction, SchemasAction, SnapshotAction, TopicsAction};

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
    runtime.block_on(async move {
        match cli.command {
            Command::Offline(command) => offline(command, config).await,
            Command::Online(command) => {
                let log = open_log(&config.log).context("opening the event log")?;
                let result = online(command, &config, &log).await;
                log.shutdown(Duration::from_secs(10)).await.context("shutting down the event log")?;
                result
            }
        }
    })
}

/// Commands that must work while another process owns the embedded log.
async fn offline(command: Offline, config: Config) -> anyhow::Result<()> {
    match command {
        Offline::Projection { action: ProjectionAction::Dump } => cli::projection::dump(&config),
        Offline::Snapshot { action: SnapshotAction::Create { out } } => cli::projection::snapshot_create(&config, out),
        Offline::Snapshot { action: SnapshotAction::Restore { from } } => cli::projection::snapshot_restore(&config, &from),
        Offline::Schemas { action: SchemasAction::Check { working, released } } => cli::events::check_schemas(&working, &released),
        Offline::Schemas { action: SchemasAction::Register { registry } } => {
            cli::events::register_schemas(&registry_at(&config, registry), &config.log.topic_prefix, &config.agents).await
        }
        Offline::Bench { what } => cli::bench::run(what, config).await,
    }
}

async fn online(command: Online, config: &Config, log: &Arc<dyn EventLog>) -> anyhow::Result<()> {
    if log.backend() == "memory" && !matches!(command, Online::Dev) {
        anyhow::bail!("the memory log lives and dies with one process: only `agentlog dev` (and `agentlog bench`) can use it; use the embedded log or Kafka");
    }
    match command {
        Online::Dev => {
            let applied = cli::topics::apply(log, config).await?;
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
            Ok(())
        }
        Online::Topics { action: TopicsAction::Apply } => cli::topics::apply_and_print(log, config).await,
        Online::Topics { action: TopicsAction::Describe } => cli::topics::describe(log, config).await,
        Online::Topics { action: TopicsAction::Create { name, partitions, replication_factor } } => {
            cli::events::create_topic(log, &name, partitions, replication_factor).await
        }
        Online::Produce { topic, key, value, count, headers } => cli::records::produce(log, cli::records::Produce { topic, key, value, count, headers }).await,
        Online::Consume { topic, group, max, commit, idle_timeout_ms } => {
            cli::records::consume(log, cli::records::Consume { topic, group, max, commit, idle: Duration::from_millis(idle_timeout_ms) }).await
        }
        Online::Worker { agent_type, concurrency, drain_timeout_s } => {
            cli::worker::run(log, config, &agent_type, concurrency, Duration::from_secs(drain_timeout_s)).await
        }
        Online::Supervisor => cli::worker::run_supervisor_command(log, config).await,
        Online::Replay { into, as_of_ms } => cli::projection::replay(log, config, into, as_of_ms).await,
        Online::Api => {
            // A log inside this process is set up by it; on Kafka that is `agentlog topics
            // apply`'s job.
            if log.in_process() {
                cli::topics::apply(log, config).await?;
            }
            cli::api::run(log, config).await
        }
        Online::Submit { agent_type, input, lane, tenant, key, task_id, delay_ms, deadline_ms, max_attempts, wait_s } => {
            let wait = wait_s.map(Duration::from_secs);
            let args = cli::tasks::SubmitArgs { agent_type, input, lane, tenant, ordering_key: key, task_id, delay_ms, deadline_ms, max_attempts, wait };
            cli::tasks::submit(log, config, args).await
        }
        Online::Cancel { task_id, tenant, reason } => cli::tasks::cancel(log, config, &task_id, &tenant, reason).await,
        Online::Dlq { action: DlqAction::List } => cli::tasks::dlq_list(log, config).await,
        Online::Dlq { action: DlqAction::Resubmit { task, tenant, all } } => cli::tasks::dlq_resubmit(log, config, task, &tenant, all).await,
        Online::Registry { listen } => cli::events::run_registry(log, config, &listen.unwrap_or_else(|| config.registry.listen.clone())).await,
        Online::Events { action: EventsAction::EmitSample { topic, registry, count } } => {
            cli::events::emit_sample(log, &topic, &registry_at(config, registry), count).await
        }
        Online::Events { action: EventsAction::Read { topic, registry, max, dlq, idle_timeout_ms } } => {
            let dlq = dlq.unwrap_or_else(|| format!("{}dlq", config.log.topic_prefix));
            cli::events::read_events(log, &topic, &registry_at(config, registry), &dlq, max, Duration::from_millis(idle_timeout_ms)).await
        }
        Online::Lag { group, topic } => {
            for l in lag::group_lag(log.admin().as_ref(), &group, &topic).await? {
                println!("{}", serde_json::to_string(&l)?);
            }
            Ok(())
        }
    }
}

/// The configured registry, at `url` when a command names another.
fn registry_at(config: &Config, url: Option<String>) -> RegistryConfig {
    RegistryConfig { url: url.unwrap_or_else(|| config.registry.url.clone()), ..config.registry.clone() }
}
