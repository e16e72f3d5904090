//! Every integration test of agentlog in one binary (one link of RocksDB and librdkafka instead
//! of one per file): one module per area, sharing the backend harness and the task fixture.
//! Tests that need Kafka are `#[ignore]`d, so a plain `cargo test` lists them as ignored;
//! `make test` starts a broker, names it in `AGENTLOG_TEST_KAFKA` and runs them with
//! `--include-ignored`. The fault suite (tests/faults.rs) is its own binary: it starts a
//! three-broker cluster and `make faults` runs it alone.

/// The every-backend suites (conformance, task lifecycle, tenancy): one module per backend (memory,
/// embedded, Kafka), one test per scenario in each, each scenario on a fresh harness.
/// `memory` leaves out the scenarios listed after `durable:`, which need a log that outlives
/// a process. Defined before the modules that use it (macros are scoped by text).
macro_rules! every_backend_suite {
    ($($scenario:ident),* $(,)? ; durable: $($durable:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let mut harness = Harness::memory();
                    scenarios::$scenario(&mut harness).await;
                    harness.release().await;
                }
            )*
        }
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let mut harness = Harness::embedded();
                    scenarios::$scenario(&mut harness).await;
                    harness.release().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $durable() {
                    let mut harness = Harness::embedded();
                    scenarios::$durable(&mut harness).await;
                    harness.release().await;
                }
            )*
        }
        mod kafka {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs Kafka: AGENTLOG_TEST_KAFKA names a broker (make test starts one and runs these)"]
                async fn $scenario() {
                    let bootstrap = kafka_bootstrap();
                    let mut harness = Harness::kafka(&bootstrap);
                    scenarios::$scenario(&mut harness).await;
                    harness.release().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs Kafka: AGENTLOG_TEST_KAFKA names a broker (make test starts one and runs these)"]
                async fn $durable() {
                    let bootstrap = kafka_bootstrap();
                    let mut harness = Harness::kafka(&bootstrap);
                    scenarios::$durable(&mut harness).await;
                    harness.release().await;
                }
            )*
        }
    };
}

// Shared by the modules below.
mod fixture;
mod harness;

mod agent_runtimes;
mod api_admin;
mod api_http;
mod api_limits;
mod api_positions;
mod api_reads;
mod cli_bench;
mod cli_logs;
mod conformance;
mod deploy_settings;
mod embedded_durability;
mod fault_projector_kill;
mod fault_worker_kill;
mod grafana_dashboard;
mod kafka_unreachable;
mod projection_apply;
mod protocol;
mod registry_http;
mod registry_wire;
mod tasks;
mod tenancy;
mod traces_jaeger;
