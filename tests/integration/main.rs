//! Every integration test of agentlog in one binary (one link of RocksDB and librdkafka instead
//! of one per file): one module per area, sharing the backend harness and the task fixture.
//! Tests that need Kafka are `#[ignore]`d, so a plain `cargo test` lists them as ignored;
//! `make test` starts a broker, names it in `AGENTLOG_TEST_KAFKA` and runs them with
//! `--include-ignored`. The fault suite (tests/faults.rs) is its own binary: it starts a
//! three-broker cluster and `make faults` runs it alone.

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
mod conformance;
mod deploy_settings;
mod embedded_durability;
mod fault_projector_kill;
mod fault_worker_kill;
mod kafka_unreachable;
mod projection_apply;
mod registry_http;
mod registry_wire;
mod tasks;
mod tenancy;
