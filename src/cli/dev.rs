//! `agentlog dev`: the whole platform in one process on the embedded log — topics, the schema
//! registry, the supervisor and one worker per declared agent type (the demo agents of
//! `config/dev.toml`). Ctrl-C drains the workers and stops everything.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use agentlog::config::Config;
use agentlog::events::wire::WireCodec;
use agentlog::log::EventLog;
use agentlog::registry::{Registry, serve};

pub async fn run(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let topic = format!("{}schemas", config.log.topic_prefix);
    let registry = Registry::open(log.clone(), &topic, shutdown.clone()).await.context("opening the schema registry")?;
    let listener = tokio::net::TcpListener::bind(&config.registry.listen).await.with_context(|| format!("binding {}", config.registry.listen))?;
    let registry_url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(serve(registry.clone(), listener, shutdown.clone()));
    println!("schema registry on {registry_url}");

    // The codecs talk to the registry this process serves, wherever `registry.url` points.
    let codec = Arc::new(WireCodec::new(&registry_url)?);
    let work = CancellationToken::new();
    let supervisor = super::worker::spawn_supervisor(log, config, codec.clone(), work.clone());
    let mut workers = Vec::new();
    for (name, agent) in &config.agents {
        workers.push((name.clone(), super::worker::spawn_worker(log, config, codec.clone(), name, None, Duration::from_secs(30), work.clone())?));
        println!("worker  {name:<10} {} (concurrency {}, lanes {})", agent.description, agent.concurrency, agent.lanes.join("/"));
    }
    println!("supervisor running (timers, heartbeats, jobs)");
    println!("ready; Ctrl-C drains the workers and stops");
    super::shutdown_signal().await;
    println!("draining");
    work.cancel();
    let mut failed = None;
    for (name, worker) in workers {
        match worker.await.context("worker task")? {
            Ok(report) => super::worker::print_report(&name, &report),
            Err(error) => failed = Some(anyhow::anyhow!("worker {name}: {error}")),
        }
    }
    if let Err(error) = supervisor.await.context("supervisor task")? {
        failed = Some(anyhow::anyhow!("supervisor: {error}"));
    }
    shutdown.cancel();
    let served = server.await.context("registry server task")?;
    registry.close().await;
    served.context("schema registry")?;
    failed.map_or(Ok(()), Err)
}
