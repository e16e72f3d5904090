//! `agentlog projection dump`, `agentlog replay`, `agentlog snapshot create|restore`: the
//! projection directory when no API process has it open. (While `agentlog api` runs, use
//! `POST /v1/admin/replay` and `POST /v1/admin/snapshots`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::agent::TaskTopics;
use crate::config::Config;
use crate::events::wire::WireCodec;
use crate::log::EventLog;
use crate::projection::{Generations, ProjectionStore, catch_up, sources};
use crate::registry::{Registry, serve};

/// A codec, and on the embedded log the registry this process serves for it (the log
/// belongs to this process, so nobody else can).
pub struct LocalCodec {
    pub codec: Arc<WireCodec>,
    registry: Option<ServedRegistry>,
}

/// The registry this process serves, its server task and what stops it.
type ServedRegistry = (Arc<Registry>, tokio::task::JoinHandle<Result<(), crate::registry::RegistryError>>, CancellationToken);

impl LocalCodec {
    pub async fn open(log: &Arc<dyn EventLog>, config: &Config) -> anyhow::Result<LocalCodec> {
        if !log.in_process() {
            return Ok(LocalCodec { codec: Arc::new(WireCodec::from_config(&config.registry)?), registry: None });
        }
        let stop = CancellationToken::new();
        let registry = Registry::open_with(log.clone(), &format!("{}schemas", config.log.topic_prefix), &config.registry, stop.clone())
            .await
            .context("opening the schema registry")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(serve(registry.clone(), listener, config.api.access(), stop.clone()));
        let codec = WireCodec::from_config(&crate::registry::RegistryConfig { url, ..config.registry.clone() })?;
        Ok(LocalCodec { codec: Arc::new(codec), registry: Some((registry, server, stop)) })
    }

    pub async fn close(self) {
        if let Some((registry, server, stop)) = self.registry {
            stop.cancel();
            let _ = server.await;
            registry.close().await;
        }
    }
}

pub fn dump(config: &Config) -> anyhow::Result<()> {
    let store = Generations::new(&config.projection.dir)?.open_current()?;
    let stdout = std::io::stdout();
    store.dump(&mut stdout.lock())?;
    Ok(())
}

/// Rebuilds from the log into `into` (a new directory), or, without `into`, into the next
/// generation of `projection.dir` which then becomes current.
pub async fn replay(log: &Arc<dyn EventLog>, config: &Config, into: Option<PathBuf>, as_of_ms: Option<i64>) -> anyhow::Result<()> {
    let local = LocalCodec::open(log, config).await?;
    let topics = TaskTopics::new(config.log.topic_prefix.clone());
    let sources = sources(&topics, &config.agents);
    let generations = Generations::new(&config.projection.dir)?;
    let (target, generation) = match into {
        Some(dir) => {
            anyhow::ensure!(!dir.exists() || dir.read_dir()?.next().is_none(), "--into {} must be a new or empty directory", dir.display());
            (dir, None)
        }
        None => {
            anyhow::ensure!(as_of_ms.is_none(), "--as-of needs --into: a projection as of a past time is for inspection, not for the API to tail from");
            let (next, path) = generations.prepare_next()?;
            (path, Some(next))
        }
    };
    let store = ProjectionStore::open(&target)?;
    let report = catch_up(log, local.codec.clone(), &sources, &store, as_of_ms).await;
    drop(store);
    local.close().await;
    let report = report?;
    if let Some(next) = generation {
        generations.switch_to(next)?;
    }
    println!(
        "replayed {} events ({} records) into {} in {:.2} s: {:.0} events/s",
        report.events,
        report.records,
        target.display(),
        report.elapsed.as_secs_f64(),
        report.events as f64 / report.elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

pub fn snapshot_create(config: &Config, out: Option<PathBuf>) -> anyhow::Result<()> {
    let generations = Generations::new(&config.projection.dir)?;
    let store = generations.open_current()?;
    let out = out.unwrap_or_else(|| generations.snapshots_dir().join(format!("snap-{}", crate::events::TimestampMicros::now().0)));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    store.checkpoint(&out)?;
    println!("snapshot at {}", out.display());
    Ok(())
}

pub fn snapshot_restore(config: &Config, from: &Path) -> anyhow::Result<()> {
    let generations = Generations::new(&config.projection.dir)?;
    let generation = generations.restore(from)?;
    println!("restored {} as generation {generation} of {}; the next start tails the log from its offsets", from.display(), config.projection.dir.display());
    Ok(())
}
