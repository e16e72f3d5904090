//! `agentlog api`: the projector feeding its RocksDB and the HTTP API over it. On the
//! embedded log this process owns the log, so it also serves the schema registry; on Kafka
//! it uses `registry.url` and can run next to workers and supervisors elsewhere.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{TaskClient, TaskTopics};
use crate::api::admin::AdminContext;
use crate::api::{ApiStartError, ApiState};
use crate::components::ComponentBoard;
use crate::config::Config;
use crate::events::wire::WireCodec;
use crate::log::EventLog;
use crate::projection::{Generations, Projection, ProjectorError};

/// The projector and the API server, running.
pub struct ApiHandle {
    pub url: String,
    pub projection: Arc<Projection>,
    projector: JoinHandle<Result<(), ProjectorError>>,
    server: JoinHandle<Result<(), ApiStartError>>,
    stop: CancellationToken,
}

/// What the projector and the API server run on, opened and bound but not started: `start`
/// spawns them, `agentlog dev` runs them as supervised components.
pub struct ApiParts {
    pub url: String,
    pub projection: Arc<Projection>,
    pub state: Arc<ApiState>,
    pub listener: TcpListener,
}

pub async fn prepare(log: &Arc<dyn EventLog>, config: &Config, codec: Arc<WireCodec>, components: Option<ComponentBoard>) -> anyhow::Result<ApiParts> {
    let topics = TaskTopics::new(config.log.topic_prefix.clone());
    let generations = Arc::new(Generations::new(&config.projection.dir)?);
    let store = generations.open_current()?;
    let projection = Projection::new(store, crate::projection::sources(&topics, &config.agents))?;
    let client = TaskClient::new(log, codec.clone(), topics, "api")?;
    let admin = AdminContext::new(generations, codec);
    let mut state = ApiState::new(log.clone(), client, config.agents.clone(), projection.clone(), config.api.clone())?.with_admin(admin);
    if let Some(board) = components {
        state = state.with_components(board);
    }
    let listener = crate::api::bind(&config.api).await?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok(ApiParts { url, projection, state: Arc::new(state), listener })
}

pub async fn start(log: &Arc<dyn EventLog>, config: &Config, codec: Arc<WireCodec>) -> anyhow::Result<ApiHandle> {
    let ApiParts { url, projection, state, listener } = prepare(log, config, codec.clone(), None).await?;
    let stop = CancellationToken::new();
    let projector = tokio::spawn(crate::projection::run(log.clone(), codec, projection.clone(), stop.clone()));
    let server = tokio::spawn(crate::api::serve(listener, state, config.log.max_record_bytes, stop.clone()));
    Ok(ApiHandle { url, projection, projector, server, stop })
}

impl ApiHandle {
    /// Stops serving, then stops the projector (its last batch is already durable).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let served = self.server.await.context("api task")?;
        let projected = self.projector.await.context("projector task")?;
        served.context("api")?;
        projected.context("projector")?;
        Ok(())
    }

    /// Waits until the projector fails (it runs until stopped otherwise).
    pub async fn failed(&mut self) -> anyhow::Error {
        match (&mut self.projector).await {
            Ok(Ok(())) => anyhow::anyhow!("the projector stopped"),
            Ok(Err(error)) => anyhow::Error::new(error).context("projector"),
            Err(error) => anyhow::Error::new(error).context("projector task"),
        }
    }
}

pub async fn run(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut registry = None;
    let registry_url = if log.in_process() {
        let topic = format!("{}schemas", config.log.topic_prefix);
        if let Some(problem) = config.registry.own_key_problem(&config.api.access()) {
            anyhow::bail!(problem);
        }
        let reg = crate::registry::Registry::open_with(log.clone(), &topic, &config.registry, shutdown.clone()).await.context("opening the schema registry")?;
        let listener =
            crate::registry::bind(&config.registry.listen, &config.api.access()).await.with_context(|| format!("binding {}", config.registry.listen))?;
        let served = crate::registry::RegistryServer::spawn(reg, listener, config.api.access(), shutdown.clone())?;
        let url = served.url().to_string();
        registry = Some(served);
        println!("schema registry on {url}");
        url
    } else {
        config.registry.url.clone()
    };
    let codec = Arc::new(WireCodec::from_config(&crate::registry::RegistryConfig { url: registry_url, ..config.registry.clone() })?);
    let mut api = start(log, config, codec).await?;
    println!("projection at {} (reading {} topics)", config.projection.dir.display(), api.projection.sources().len());
    println!("HTTP API on {}", api.url);
    let failure = tokio::select! {
        _ = super::shutdown_signal() => None,
        error = api.failed() => Some(error),
    };
    let stopped = match failure {
        Some(error) => {
            api.stop.cancel();
            Err(error)
        }
        None => api.stop().await,
    };
    shutdown.cancel();
    if let Some(registry) = registry {
        registry.stop().await.context("schema registry")?;
    }
    stopped
}
