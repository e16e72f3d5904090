//! From a parsed command line to the command's module: commands that work while another
//! process owns the embedded log (offline), and those that open the log (online).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::log::{EventLog, lag};
use crate::registry::RegistryConfig;
use crate::topics::Applied;

use super::args::{Command, DlqAction, EventsAction, Offline, Online, ProjectionAction, SchemasAction, SnapshotAction, TopicsAction};
use super::{api, bench, dev, events, projection, records, tasks, topics, worker};

/// Runs `command` to its end: an online one opens the log first and shuts it down after.
pub async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    match command {
        Command::Offline(command) => offline(command, config).await,
        Command::Online(command) => {
            let log = crate::open::open_log(&config.log).context("opening the event log")?;
            let result = online(command, &config, &log).await;
            log.shutdown(Duration::from_secs(10)).await.context("shutting down the event log")?;
            result
        }
    }
}

/// Commands that must work while another process owns the embedded log.
async fn offline(command: Offline, config: Config) -> anyhow::Result<()> {
    match command {
        Offline::Projection { action: ProjectionAction::Dump } => projection::dump(&config),
        Offline::Snapshot { action: SnapshotAction::Create { out } } => projection::snapshot_create(&config, out),
        Offline::Snapshot { action: SnapshotAction::Restore { from } } => projection::snapshot_restore(&config, &from),
        Offline::Schemas { action: SchemasAction::Check { working, released } } => events::check_schemas(&working, &released),
        Offline::Schemas { action: SchemasAction::Register { registry } } => {
            events::register_schemas(&registry_at(&config, registry), &config.log.topic_prefix, &config.agents).await
        }
        Offline::Bench { what } => bench::run(what, config).await,
    }
}

async fn online(command: Online, config: &Config, log: &Arc<dyn EventLog>) -> anyhow::Result<()> {
    if log.backend() == "memory" && !matches!(command, Online::Dev) {
        anyhow::bail!("the memory log lives and dies with one process: only `agentlog dev` (and `agentlog bench`) can use it; use the embedded log or Kafka");
    }
    match command {
        Online::Dev => {
            let applied = topics::apply(log, config).await?;
            println!("agentlog dev: {} event log at {}", log.backend(), log.location());
            for a in &applied {
                match a {
                    Applied::Created(name) => println!("  topic {name} (created)"),
                    Applied::Unchanged(name) => println!("  topic {name}"),
                }
            }
            // The embedded log belongs to one process, so dev runs everything itself.
            dev::run(log, config).await?;
            println!("stopped");
            Ok(())
        }
        Online::Topics { action: TopicsAction::Apply } => topics::apply_and_print(log, config).await,
        Online::Topics { action: TopicsAction::Describe } => topics::describe(log, config).await,
        Online::Topics { action: TopicsAction::Create { name, partitions, replication_factor } } => {
            events::create_topic(log, &name, partitions, replication_factor).await
        }
        Online::Produce { topic, key, value, count, headers } => records::produce(log, records::Produce { topic, key, value, count, headers }).await,
        Online::Consume { topic, group, max, commit, idle_timeout_ms } => {
            records::consume(log, records::Consume { topic, group, max, commit, idle: Duration::from_millis(idle_timeout_ms) }).await
        }
        Online::Worker { agent_type, concurrency, drain_timeout_s } => {
            worker::run(log, config, &agent_type, concurrency, Duration::from_secs(drain_timeout_s)).await
        }
        Online::Supervisor => worker::run_supervisor_command(log, config).await,
        Online::Replay { into, as_of_ms } => projection::replay(log, config, into, as_of_ms).await,
        Online::Api => {
            // A log inside this process is set up by it; on Kafka that is `agentlog topics
            // apply`'s job.
            if log.in_process() {
                topics::apply(log, config).await?;
            }
            api::run(log, config).await
        }
        Online::Submit { agent_type, input, lane, tenant, key, task_id, delay_ms, deadline_ms, max_attempts, wait_s } => {
            let wait = wait_s.map(Duration::from_secs);
            let args = tasks::SubmitArgs { agent_type, input, lane, tenant, ordering_key: key, task_id, delay_ms, deadline_ms, max_attempts, wait };
            tasks::submit(log, config, args).await
        }
        Online::Cancel { task_id, tenant, reason } => tasks::cancel(log, config, &task_id, &tenant, reason).await,
        Online::Dlq { action: DlqAction::List } => tasks::dlq_list(log, config).await,
        Online::Dlq { action: DlqAction::Resubmit { task, tenant, all } } => tasks::dlq_resubmit(log, config, task, &tenant, all).await,
        Online::Registry { listen } => events::run_registry(log, config, &listen.unwrap_or_else(|| config.registry.listen.clone())).await,
        Online::Events { action: EventsAction::EmitSample { topic, registry, count } } => {
            events::emit_sample(log, &topic, &registry_at(config, registry), count).await
        }
        Online::Events { action: EventsAction::Read { topic, registry, max, dlq, idle_timeout_ms } } => {
            let dlq = dlq.unwrap_or_else(|| format!("{}dlq", config.log.topic_prefix));
            events::read_events(log, &topic, &registry_at(config, registry), &dlq, max, Duration::from_millis(idle_timeout_ms)).await
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
