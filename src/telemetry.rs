//! Traces over OTLP (`[telemetry]`, or the standard `OTEL_*` variables): the logging
//! subscriber of the binary, with the span exporter beside it when traces are on. The spans
//! themselves are made where the work is (API requests, attempts, agent calls, projection);
//! `agentlog_events::trace` carries their context across processes on the log.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::trace::TARGET;

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Export traces. Also on when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set.
    #[serde(default)]
    pub enabled: bool,
    /// The collector's OTLP/HTTP base URL (`/v1/traces` appended).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The share of new traces kept; a continued trace follows its caller's decision.
    #[serde(default = "one")]
    pub sampling_ratio: f64,
    #[serde(default = "service")]
    pub service_name: String,
}

fn one() -> f64 {
    1.0
}

fn service() -> String {
    "agentlog".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { enabled: false, endpoint: None, sampling_ratio: one(), service_name: service() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(String),
}

/// The exporter while traces are on: [`Telemetry::shutdown`] sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends what is buffered and stops the exporter (bounded: a collector that is gone costs
    /// at most the export timeout, not the exit).
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(%error, "traces: the last spans were not all exported");
        }
    }
}

/// What decides whether traces are on, read once at start.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub enabled: bool,
    /// The full traces URL, when set by `[telemetry].endpoint`; else the exporter reads the
    /// OTEL_ variables itself (the SDK's own rules: `/v1/traces` appended to the generic one).
    pub traces_url: Option<String>,
    pub sampling_ratio: f64,
    pub service_name: String,
}

impl Settings {
    /// `[telemetry]` with the standard OTEL_ variables of `env` over it.
    pub fn resolve(config: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> Settings {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let from_env = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let ratio = set("OTEL_TRACES_SAMPLER_ARG").and_then(|v| v.trim().parse::<f64>().ok()).filter(|r| (0.0..=1.0).contains(r));
        Settings {
            enabled: !disabled && (config.enabled || from_env),
            traces_url: config
                .endpoint
                .as_ref()
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
                .or_else(|| (!from_env).then(|| "http://127.0.0.1:4318/v1/traces".to_string())),
            sampling_ratio: ratio.unwrap_or(config.sampling_ratio),
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| config.service_name.clone()),
        }
    }
}

/// Installs the process's subscriber: log lines to `writer` filtered by RUST_LOG and, when
/// traces are on, the spans of target [`TARGET`] to the OTLP exporter (whatever RUST_LOG says:
/// a trace must not lose spans to a quieter log).
pub fn init<W>(settings: &Settings, writer: W) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,librdkafka=warn".into());
    if !settings.enabled {
        // The filter over the whole subscriber, not over the one layer: an EnvFilter as the
        // per-layer filter of the only layer dropped most log lines of some processes (a
        // Kafka supervisor logged neither that it leads nor anything at debug).
        tracing_subscriber::registry().with(filter).with(tracing_subscriber::fmt::layer().with_writer(writer)).init();
        return Ok(Telemetry { provider: None });
    }
    let logs = tracing_subscriber::fmt::layer().with_writer(writer).with_filter(filter);
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http().with_timeout(Duration::from_secs(5));
    if let Some(url) = &settings.traces_url {
        exporter = exporter.with_endpoint(url.clone());
    }
    let exporter = exporter.build().map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Which traces get spans is decided before a span is made (`trace::decide`, at the
        // configured ratio): a span that exists is exported.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(Resource::builder().with_service_name(settings.service_name.clone()).build())
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("agentlog"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.target() == TARGET));
    tracing_subscriber::registry().with(logs).with(spans).init();
    crate::trace::enable(settings.sampling_ratio);
    Ok(Telemetry { provider: Some(provider) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn off_by_default_on_by_config_or_by_the_standard_variables() {
        let config = TelemetryConfig::default();
        assert!(!Settings::resolve(&config, env(&[])).enabled);
        let on = Settings::resolve(&TelemetryConfig { enabled: true, endpoint: Some("http://c:4318/".into()), ..config.clone() }, env(&[]));
        assert!(on.enabled);
        assert_eq!(on.traces_url.as_deref(), Some("http://c:4318/v1/traces"));
        let by_env = Settings::resolve(
            &config,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"), ("OTEL_TRACES_SAMPLER_ARG", "0.01"), ("OTEL_SERVICE_NAME", "api-1")]),
        );
        assert!(by_env.enabled);
        assert_eq!(by_env.traces_url, None, "the exporter reads the variable itself");
        assert_eq!(by_env.sampling_ratio, 0.01);
        assert_eq!(by_env.service_name, "api-1");
        let disabled = Settings::resolve(&TelemetryConfig { enabled: true, ..config }, env(&[("OTEL_SDK_DISABLED", "true")]));
        assert!(!disabled.enabled);
    }
}
