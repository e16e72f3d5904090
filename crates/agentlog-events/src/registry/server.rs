//! A registry served over HTTP, as one handle that starts and stops it the same way wherever
//! it runs: the `api` process and `dev` on the embedded log, the benchmarks, the tests.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Registry, RegistryError, serve};
use crate::http::access::Access;
use crate::log::EventLog;

pub struct RegistryServer {
    url: String,
    registry: Arc<Registry>,
    server: JoinHandle<Result<(), RegistryError>>,
    stop: CancellationToken,
}

impl RegistryServer {
    /// Serves `registry` on `listener` with `access`'s keys and connection limits, until
    /// `stop` is cancelled or [`RegistryServer::stop`] is called.
    pub fn spawn(registry: Arc<Registry>, listener: TcpListener, access: Access, stop: CancellationToken) -> Result<RegistryServer, RegistryError> {
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(serve(registry.clone(), listener, access, stop.clone()));
        Ok(RegistryServer { url, registry, server, stop })
    }

    /// Opens the registry stored on `topic` and serves it without keys on a free loopback
    /// port: the registry of a benchmark or a test.
    pub async fn on_loopback(log: Arc<dyn EventLog>, topic: &str) -> Result<RegistryServer, RegistryError> {
        let stop = CancellationToken::new();
        let registry = Registry::open(log, topic, stop.clone()).await?;
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(error) => {
                registry.close().await;
                return Err(error.into());
            }
        };
        RegistryServer::spawn(registry, listener, Access::default(), stop)
    }

    /// Where clients reach it (`http://127.0.0.1:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Stops serving (in-flight requests drain), then stops the registry's tail.
    pub async fn stop(self) -> Result<(), RegistryError> {
        self.stop.cancel();
        let served = self.server.await;
        self.registry.close().await;
        match served {
            Ok(result) => result,
            Err(error) => Err(RegistryError::Io(std::io::Error::other(format!("registry server task: {error}")))),
        }
    }
}
