//! `agentlog worker --agent-type T` and `agentlog supervisor`: wire config, codec and runtime
//! into the library's long-running loops, and stop them on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::agent::runtime::build;
use crate::agent::{WorkerReport, WorkerSettings, run_worker};
use crate::config::Config;
use crate::events::wire::WireCodec;
use crate::log::EventLog;
use crate::supervisor::{SupervisorSettings, run_supervisor};

/// The declared agent type, or an error listing the declared ones.
pub fn declared(config: &Config, agent_type: &str) -> anyhow::Result<crate::agent::AgentTypeConfig> {
    config.agents.get(agent_type).cloned().ok_or_else(|| {
        let known: Vec<&str> = config.agents.keys().map(String::as_str).collect();
        anyhow::anyhow!(
            "unknown agent type `{agent_type}`; declared: {} (add [agents.{agent_type}] to the config)",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )
    })
}

/// Spawns a worker for `agent_type`; it drains when `shutdown` is cancelled.
pub fn spawn_worker(
    log: &Arc<dyn EventLog>,
    config: &Config,
    codec: Arc<WireCodec>,
    agent_type: &str,
    concurrency: Option<u32>,
    drain_timeout: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<WorkerReport, crate::agent::WorkerError>>> {
    Ok(tokio::spawn(worker_run(log, config, codec, agent_type, concurrency, drain_timeout, shutdown)?))
}

/// A worker for `agent_type`, not started yet (for whoever owns its task); an error names a
/// configuration that cannot run.
pub fn worker_run(
    log: &Arc<dyn EventLog>,
    config: &Config,
    codec: Arc<WireCodec>,
    agent_type: &str,
    concurrency: Option<u32>,
    drain_timeout: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = Result<WorkerReport, crate::agent::WorkerError>> + Send + use<>> {
    let mut agent = declared(config, agent_type)?;
    if let Some(n) = concurrency {
        anyhow::ensure!(n > 0, "--concurrency must be at least 1");
        agent.concurrency = n;
    }
    let runtime =
        build(&agent.runtime, Duration::from_millis(agent.timeout_ms)).with_context(|| format!("building the runtime of agent type `{agent_type}`"))?;
    let settings = WorkerSettings {
        agent_type: agent_type.to_string(),
        prefetch_per_lane: crate::agent::worker::prefetch_per_lane(&agent),
        agent,
        topic_prefix: config.log.topic_prefix.clone(),
        worker_id: format!("{agent_type}-{}-{}", hostname(), std::process::id()),
        drain_timeout,
        heartbeat_interval: Duration::from_millis(config.supervisor.heartbeat_interval_ms),
        transaction_deadline: crate::agent::worker::TRANSACTION_DEADLINE,
        callback: crate::agent::callback::CallbackConfig {
            agent_types: Some(Arc::new(config.agents.keys().cloned().collect())),
            ..config.worker.callback.clone()
        },
    };
    Ok(run_worker(log.clone(), codec, runtime, settings, shutdown))
}

pub fn spawn_supervisor(
    log: &Arc<dyn EventLog>,
    config: &Config,
    codec: Arc<WireCodec>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), crate::supervisor::SupervisorError>> {
    tokio::spawn(supervisor_run(log, config, codec, shutdown))
}

/// The supervisor, not started yet (for whoever owns its task).
pub fn supervisor_run(
    log: &Arc<dyn EventLog>,
    config: &Config,
    codec: Arc<WireCodec>,
    shutdown: CancellationToken,
) -> impl Future<Output = Result<(), crate::supervisor::SupervisorError>> + Send + use<> {
    let settings = SupervisorSettings {
        topic_prefix: config.log.topic_prefix.clone(),
        supervisor_id: format!("supervisor-{}-{}", hostname(), std::process::id()),
        config: config.supervisor.clone(),
    };
    run_supervisor(log.clone(), codec, settings, shutdown)
}

pub fn print_report(agent_type: &str, r: &WorkerReport) {
    println!(
        "{agent_type} drained: {} completed, {} failed, {} retried, {} dead-lettered, {} cancelled, {} expired, {} deferred, {} undecodable, {} abandoned",
        r.completed, r.failed, r.retried, r.dead_lettered, r.cancelled, r.expired, r.deferred, r.undecodable, r.abandoned
    );
}

pub async fn run(log: &Arc<dyn EventLog>, config: &Config, agent_type: &str, concurrency: Option<u32>, drain_timeout: Duration) -> anyhow::Result<()> {
    let codec = Arc::new(WireCodec::from_config(&config.registry)?);
    let shutdown = CancellationToken::new();
    let mut worker = spawn_worker(log, config, codec, agent_type, concurrency, drain_timeout, shutdown.clone())?;
    println!("worker for `{agent_type}` running on the {} log at {}; Ctrl-C or SIGTERM drains", log.backend(), log.location());
    // The worker also ends by itself on a fatal error; either way its task is awaited.
    let joined = tokio::select! {
        _ = super::shutdown_signal() => {
            shutdown.cancel();
            worker.await
        }
        joined = &mut worker => joined,
    };
    let report = joined.context("worker task")??;
    print_report(agent_type, &report);
    Ok(())
}

pub async fn run_supervisor_command(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<()> {
    let codec = Arc::new(WireCodec::from_config(&config.registry)?);
    let shutdown = CancellationToken::new();
    let mut supervisor = spawn_supervisor(log, config, codec, shutdown.clone());
    println!("supervisor running on the {} log at {}; Ctrl-C or SIGTERM stops it", log.backend(), log.location());
    let joined = tokio::select! {
        _ = super::shutdown_signal() => {
            shutdown.cancel();
            supervisor.await
        }
        joined = &mut supervisor => joined,
    };
    joined.context("supervisor task")??;
    println!("supervisor stopped");
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into())
}
