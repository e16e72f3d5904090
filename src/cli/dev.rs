//! `agentlog dev`: the whole platform in one process on the embedded (or in-memory) log — topics, the schema
//! registry, the supervisor, one worker per declared agent type (the demo agents of
//! `config/dev.toml`) and the HTTP API to submit work.
//!
//! Each of these runs as a supervised component ([`crate::components`]): one that stops
//! (an error, a panic) is logged naming it and started again after a back-off, and `/readyz`
//! shows every component's state. Ctrl-C or SIGTERM stops them in order: the workers drain and
//! the supervisor stops first (they write through the registry), then the projector and the
//! HTTP server, then the registry's server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::components::{ComponentBoard, ComponentError, Components, RestartPolicy, StopFailure};
use crate::config::Config;
use crate::events::wire::WireCodec;
use crate::log::EventLog;
use crate::registry::{Registry, RegistryConfig, bind, serve};

/// How long a draining worker waits for its running tasks.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let topic = format!("{}schemas", config.log.topic_prefix);
    if let Some(problem) = config.registry.own_key_problem(&config.api.access()) {
        anyhow::bail!(problem);
    }
    let board = ComponentBoard::default();
    let policy = RestartPolicy::default();
    let registry = Registry::open_with(log.clone(), &topic, &config.registry, shutdown.clone()).await.context("opening the schema registry")?;
    let listener = bind(&config.registry.listen, &config.api.access()).await.with_context(|| format!("binding {}", config.registry.listen))?;
    let registry_url = format!("http://{}", listener.local_addr()?);
    let mut servers = Components::new(board.clone(), policy.clone());
    let (reg, access) = (registry.clone(), config.api.access());
    servers.spawn("registry", rebinding(listener, move |listener, stop| serve(reg.clone(), listener, access.clone(), stop))?);
    println!("schema registry on {registry_url}");

    // The codecs talk to the registry this process serves, wherever `registry.url` points.
    let codec = Arc::new(WireCodec::from_config(&RegistryConfig { url: registry_url.clone(), ..config.registry.clone() })?);
    // Everything that can fail on the configuration fails the command before any component
    // runs. The projector and the HTTP API are the way to submit and query work while this
    // process owns the embedded log.
    let parts = super::api::prepare(log, config, codec.clone(), Some(board.clone())).await?;
    let api_url = parts.url.clone();
    for name in config.agents.keys() {
        drop(super::worker::worker_run(log, config, codec.clone(), name, None, DRAIN_TIMEOUT, CancellationToken::new())?);
    }
    let agents = spawn_agents(log, config, &codec, Components::new(board.clone(), policy.clone()));
    println!("supervisor running (timers, heartbeats, jobs)");

    let mut api = Components::new(board.clone(), policy);
    let (l, k, projection) = (log.clone(), codec.clone(), parts.projection.clone());
    api.spawn("projector", move |stop| crate::projection::run(l.clone(), k.clone(), projection.clone(), stop));
    let (state, max_body) = (parts.state.clone(), config.log.max_record_bytes);
    api.spawn("api", rebinding(parts.listener, move |listener, stop| crate::api::serve(listener, state.clone(), max_body, stop))?);
    println!("projection at {}", config.projection.dir.display());
    println!("HTTP API on {api_url}; dashboard at {api_url}/");
    print_examples(&api_url);
    println!("ready; Ctrl-C drains the workers and stops; GET {api_url}/readyz shows every component");
    super::shutdown_signal().await;
    println!("draining");
    let mut failed = agents.stop().await;
    failed.extend(api.stop().await);
    failed.extend(servers.stop().await);
    shutdown.cancel();
    registry.close().await;
    match failed.as_slice() {
        [] => Ok(()),
        failures => {
            Err(anyhow::anyhow!("{}", failures.iter().map(|StopFailure { component, error }| format!("{component}: {error}")).collect::<Vec<_>>().join("; ")))
        }
    }
}

/// The supervisor and one worker per declared agent type, as components of `agents`.
fn spawn_agents(log: &Arc<dyn EventLog>, config: &Config, codec: &Arc<WireCodec>, mut agents: Components) -> Components {
    let shared = Arc::new(config.clone());
    let (l, c, k) = (log.clone(), shared.clone(), codec.clone());
    agents.spawn("supervisor", move |stop| super::worker::supervisor_run(&l, &c, k.clone(), stop));
    for (name, agent) in &config.agents {
        let (l, c, k, n) = (log.clone(), shared.clone(), codec.clone(), name.clone());
        agents.spawn(format!("worker.{name}"), move |stop| {
            let run = super::worker::worker_run(&l, &c, k.clone(), &n, None, DRAIN_TIMEOUT, stop);
            let name = n.clone();
            async move {
                let report = run?.await?;
                super::worker::print_report(&name, &report);
                Ok::<(), ComponentError>(())
            }
        });
        println!(
            "worker  {name:<10} {} (concurrency {}, lanes {})",
            agent.description,
            agent.concurrency,
            agent.lanes_by_priority().map(|l| l.as_str()).collect::<Vec<_>>().join("/")
        );
    }
    agents
}

/// What to try first, printed once everything runs.
fn print_examples(api_url: &str) {
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
}

/// One run of a server component.
type ServerRun = std::pin::Pin<Box<dyn Future<Output = Result<(), ComponentError>> + Send>>;

/// The runs of a server component: the first serves `listener`, bound before anything started
/// (so its address is known and printed); each restart binds that same address again.
fn rebinding<S, Fut, E>(listener: TcpListener, serve: S) -> anyhow::Result<impl FnMut(CancellationToken) -> ServerRun + Send + 'static>
where
    S: Fn(TcpListener, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<ComponentError> + 'static,
{
    let address: SocketAddr = listener.local_addr()?;
    let mut first = Some(listener);
    let serve = Arc::new(serve);
    Ok(move |stop: CancellationToken| {
        let bound = first.take();
        let serve = serve.clone();
        Box::pin(async move {
            let listener = match bound {
                Some(listener) => listener,
                None => crate::http::server::listen(address).await?,
            };
            serve(listener, stop).await.map_err(Into::into)
        }) as ServerRun
    })
}
