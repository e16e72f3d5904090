//! `agentlog dev`: the whole platform in one process on the embedded log — topics, the schema
//! registry, the supervisor, one worker per declared agent type (the demo agents of
//! `config/dev.toml`) and the HTTP API to submit work. Ctrl-C drains the workers and stops
//! everything.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use agentlog::config::Config;
use agentlog::events::wire::WireCodec;
use agentlog::log::EventLog;
use agentlog::registry::{Registry, RegistryConfig, bind, serve};

pub async fn run(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let topic = format!("{}schemas", config.log.topic_prefix);
    if let Some(problem) = config.registry.own_key_problem(&config.api) {
        anyhow::bail!(problem);
    }
    let registry = Registry::open_with(log.clone(), &topic, &config.registry, shutdown.clone()).await.context("opening the schema registry")?;
    let listener = bind(&config.registry.listen, &config.api).await.with_context(|| format!("binding {}", config.registry.listen))?;
    let registry_url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(serve(registry.clone(), listener, config.api.clone(), shutdown.clone()));
    println!("schema registry on {registry_url}");

    // The codecs talk to the registry this process serves, wherever `registry.url` points.
    let codec = Arc::new(WireCodec::from_config(&RegistryConfig { url: registry_url.clone(), ..config.registry.clone() })?);
    let work = CancellationToken::new();
    let supervisor = super::worker::spawn_supervisor(log, config, codec.clone(), work.clone());
    let mut workers = Vec::new();
    for (name, agent) in &config.agents {
        workers.push((name.clone(), super::worker::spawn_worker(log, config, codec.clone(), name, None, Duration::from_secs(30), work.clone())?));
        println!("worker  {name:<10} {} (concurrency {}, lanes {})", agent.description, agent.concurrency, agent.lanes.join("/"));
    }
    println!("supervisor running (timers, heartbeats, jobs)");

    // The projector and the HTTP API: the way to submit and query work while this process
    // owns the embedded log.
    let api = super::api::start(log, config, codec.clone()).await?;
    let api_url = api.url.clone();
    println!("projection at {}", config.projection.dir.display());
    println!("HTTP API on {api_url}");
    println!();
    println!("submit and wait for the outcome:");
    println!("  curl -s -X POST '{api_url}/v1/tasks?wait_ms=5000' -H 'content-type: application/json' \\");
    println!("       -d '{{\"agent_type\": \"textstats\", \"input\": {{\"text\": \"hello agent world\"}}}}'");
    println!("fan out through the coordinator (echo + textstats + sleep), high lane:");
    println!("  curl -s -X POST '{api_url}/v1/tasks?wait_ms=10000' -H 'content-type: application/json' \\");
    println!("       -d '{{\"agent_type\": \"coordinator\", \"lane\": \"high\", \"input\": {{\"text\": \"one two three\", \"sleep_ms\": 500}}}}'");
    println!("read a task (status, attempts, timeline, result), list, stream outcomes:");
    println!("  curl -s {api_url}/v1/tasks/<id>");
    println!("  curl -s '{api_url}/v1/tasks?status=completed&limit=10'");
    println!("  curl -N {api_url}/v1/stream/outcomes");
    println!("also: POST {api_url}/v1/tasks/<id>/cancel, GET {api_url}/v1/agents, /v1/agent-types, /v1/stats, /v1/dlq, /metrics, /openapi.json");
    println!();
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
    if let Err(error) = api.stop().await {
        failed = Some(error);
    }
    shutdown.cancel();
    let served = server.await.context("registry server task")?;
    registry.close().await;
    served.context("schema registry")?;
    failed.map_or(Ok(()), Err)
}
