//! `agentlog worker --agent-type T`: wires config, codec and runtime into the library's worker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use agentlog::agent::runtime::build;
use agentlog::agent::{WorkerSettings, run_worker};
use agentlog::config::Config;
use agentlog::events::wire::WireCodec;
use agentlog::log::EventLog;

pub async fn run(
    log: &Arc<dyn EventLog>,
    config: &Config,
    agent_type: &str,
    concurrency: Option<u32>,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let Some(declared) = config.agents.get(agent_type) else {
        let known: Vec<&str> = config.agents.keys().map(String::as_str).collect();
        anyhow::bail!(
            "unknown agent type `{agent_type}`; declared: {} (add [agents.{agent_type}] to the config)",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        );
    };
    let mut agent = declared.clone();
    if let Some(n) = concurrency {
        anyhow::ensure!(n > 0, "--concurrency must be at least 1");
        agent.concurrency = n;
    }
    let runtime = build(&agent.runtime, Duration::from_millis(agent.timeout_ms)).context("building the agent runtime")?;
    let codec = Arc::new(WireCodec::new(&config.registry.url)?);
    let settings = WorkerSettings {
        agent_type: agent_type.to_string(),
        prefetch_per_lane: (agent.concurrency as usize * 2).max(8),
        agent,
        topic_prefix: config.log.topic_prefix.clone(),
        worker_id: format!("{agent_type}-{}", std::process::id()),
        drain_timeout,
    };
    let shutdown = CancellationToken::new();
    let mut worker = tokio::spawn(run_worker(log.clone(), codec, runtime, settings, shutdown.clone()));
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
    println!(
        "drained: {} completed, {} failed, {} dead-lettered, {} abandoned",
        report.completed, report.failed, report.dead_lettered, report.abandoned
    );
    Ok(())
}
