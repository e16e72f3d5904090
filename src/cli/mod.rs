//! The `agentlog` command line: [`main`] parses it, loads the config and runs the command;
//! [`dispatch`] routes each command to its module, one module per area. It lives in the
//! library, not the binary, so the async code of every layer is compiled once, here, instead of
//! again in the binary (an async function's body is compiled in each crate that awaits it).

pub mod api;
pub mod args;
pub mod bench;
pub mod dev;
pub mod dispatch;
pub mod events;
pub mod projection;
pub mod records;
pub mod tasks;
pub mod topics;
pub mod worker;

/// The `agentlog` binary's `main`: logging, the command line, the config, the command.
pub fn main() -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::Parser;
    // Log lines are written by a thread of their own. Every thread logs through this
    // subscriber, librdkafka's included, so a write to stderr that blocks (a disk busy with
    // other writers, a pipe nobody reads) blocked them all: in a broker_kill run a worker's
    // transaction had committed, but its task sat 30 s in the debug line that says so while
    // the process wrote nothing, and the worker held its partitions meanwhile. Lines beyond
    // the writer's buffer are dropped rather than wait; the guard flushes the rest at exit.
    let (writer, _flush_at_exit) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(true).thread_name("agentlog-log").finish(std::io::stderr());
    let cli = args::Cli::parse();
    let config = crate::config::Config::load(cli.config.as_deref())?;
    let settings = crate::telemetry::Settings::resolve(&config.telemetry, |name| std::env::var(name).ok());
    let telemetry = crate::telemetry::init(&settings, writer)?;
    if settings.enabled {
        tracing::info!(
            endpoint = settings.traces_url.as_deref().unwrap_or("(OTEL_EXPORTER_OTLP_*)"),
            sampling = settings.sampling_ratio,
            "traces are exported over OTLP"
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(dispatch::run(cli.command, config));
    // The spans of the last work (a drained shutdown's) go out before the process ends.
    telemetry.shutdown();
    result
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
