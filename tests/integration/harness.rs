//! What every conformance scenario gets: a backend, unique names, and helpers to read with
//! deadlines instead of sleeps.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentlog::config::{Backend, Config};
use agentlog::log::{ConsumedRecord, Consumer, ConsumerEvent, EventLog, Record, TopicSpec};
use agentlog::open::open_log;

pub struct Harness {
    pub backend: Backend,
    pub config: Config,
    log: Option<Arc<dyn EventLog>>,
    _dir: Option<tempfile::TempDir>,
}

/// The broker the Kafka tests use. They are `#[ignore]`d, so a plain `cargo test` lists them
/// as ignored (never as passed); one asked to run (`--ignored`, `--include-ignored`, as
/// `make test` does) without a broker fails, saying what is missing.
pub fn kafka_bootstrap() -> String {
    match std::env::var("AGENTLOG_TEST_KAFKA") {
        Ok(servers) if !servers.trim().is_empty() => servers,
        _ => panic!("this Kafka test needs AGENTLOG_TEST_KAFKA to name a broker (scripts/kafka-local.sh start; make test does both)"),
    }
}

impl Harness {
    pub fn embedded() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir for the embedded log");
        let mut config = Config::load_with_env(None, Vec::new()).expect("default config");
        config.log.backend = Backend::Embedded;
        config.log.embedded.data_dir = dir.path().join("log");
        config.log.max_record_bytes = 100_000;
        let log = open_log(&config.log).expect("open embedded log");
        Harness { backend: Backend::Embedded, config, log: Some(log), _dir: Some(dir) }
    }

    /// The in-memory log: nothing survives `release` (`reopen` gives an empty log), and no
    /// child process can open it.
    pub fn memory() -> Harness {
        let mut config = Config::load_with_env(None, Vec::new()).expect("default config");
        config.log.backend = Backend::Memory;
        config.log.max_record_bytes = 100_000;
        let log = open_log(&config.log).expect("open memory log");
        Harness { backend: Backend::Memory, config, log: Some(log), _dir: None }
    }

    pub fn kafka(bootstrap: &str) -> Harness {
        let mut config = Config::load_with_env(None, Vec::new()).expect("default config");
        config.log.backend = Backend::Kafka;
        config.log.kafka.bootstrap_servers = bootstrap.to_string();
        config.log.max_record_bytes = 100_000;
        // The broker's JVM, the tests and their workers share 2 cores: give admin and metadata
        // calls more room than the 5 s default before they count as failed.
        config.log.kafka.request_timeout_ms = 15_000;
        let log = open_log(&config.log).expect("connect to kafka");
        Harness { backend: Backend::Kafka, config, log: Some(log), _dir: None }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        self.log.as_ref().expect("log is open")
    }

    /// Closes the log in this process, so another process can open the embedded data
    /// directory (RocksDB allows one process at a time).
    pub async fn release(&mut self) {
        if let Some(log) = self.log.take() {
            log.shutdown(Duration::from_secs(10)).await.expect("shutdown");
            // Wait until every handle is gone so RocksDB's lock is released.
            drop(log);
        }
    }

    pub fn reopen(&mut self) {
        if self.log.is_none() {
            self.log = Some(open_log(&self.config.log).expect("reopen log"));
        }
    }

    /// Environment that points an `agentlog` child process at this backend.
    pub fn child_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AGENTLOG__LOG__BACKEND".into(),
                match self.backend {
                    Backend::Embedded => "embedded",
                    Backend::Kafka => "kafka",
                    Backend::Memory => "memory",
                }
                .into(),
            ),
            ("AGENTLOG__LOG__EMBEDDED__DATA_DIR".into(), self.config.log.embedded.data_dir.display().to_string()),
            ("AGENTLOG__LOG__KAFKA__BOOTSTRAP_SERVERS".into(), self.config.log.kafka.bootstrap_servers.clone()),
            ("AGENTLOG__LOG__MAX_RECORD_BYTES".into(), self.config.log.max_record_bytes.to_string()),
        ]
    }

    /// A fresh topic with a unique name.
    pub async fn topic(&self, partitions: i32) -> String {
        let name = unique("t");
        self.log().admin().create_topic(&TopicSpec::new(&name, partitions)).await.expect("create topic");
        name
    }

    pub async fn produce(&self, record: Record) -> agentlog::log::Position {
        let producer = self.log().producer().expect("producer");
        producer.send(record).await.expect("accepted").await.expect("durable")
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

pub fn agentlog_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agentlog"))
}

/// Reads events until `n` records arrived, failing the test at the deadline.
pub async fn read_records(consumer: &mut dyn Consumer, n: usize, within: Duration) -> Vec<ConsumedRecord> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.next_event()).await {
            Ok(Ok(ConsumerEvent::Record(r))) => out.push(r),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("consumer failed after {} records: {e}", out.len()),
            Err(_) => panic!("only {} of {n} records within {within:?}", out.len()),
        }
    }
    out
}

/// Reads records until one with payload `marker` arrives; returns those before it.
pub async fn read_until_marker(consumer: &mut dyn Consumer, marker: &[u8], within: Duration) -> Vec<ConsumedRecord> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, consumer.next_event()).await {
            Ok(Ok(ConsumerEvent::Record(r))) if &r.payload[..] == marker => return out,
            Ok(Ok(ConsumerEvent::Record(r))) => out.push(r),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("consumer failed: {e}"),
            Err(_) => panic!("marker not seen within {within:?}; saw {} records", out.len()),
        }
    }
}

pub const WITHIN: Duration = Duration::from_secs(30);

/// The built-in schema registry on a real port over a backend, for scenarios that encode
/// events; stopped with [`TestRegistry::stop`].
pub struct TestRegistry {
    pub url: String,
    server: agentlog::registry::RegistryServer,
}

impl TestRegistry {
    pub async fn start(log: &Arc<dyn EventLog>) -> TestRegistry {
        let server = agentlog::registry::RegistryServer::on_loopback(log.clone(), &unique("schemas")).await.expect("registry");
        TestRegistry { url: server.url().to_string(), server }
    }

    pub fn codec(&self) -> Arc<agentlog::events::wire::WireCodec> {
        Arc::new(agentlog::events::wire::WireCodec::new(&self.url).expect("codec"))
    }

    pub async fn stop(self) {
        self.server.stop().await.expect("registry server");
    }
}

/// Creates the task-lifecycle topics of the catalog under `prefix` (`task.events`,
/// `task.results`, `task.stream`, `dlq`, `timers`, `agent.events`, `agent.heartbeats` with `partitions`
/// each, `control` with one), as `topics apply` would.
pub async fn create_task_topics(log: &Arc<dyn EventLog>, prefix: &str, partitions: i32) {
    let admin = log.admin();
    for name in ["task.events", "task.results", "task.stream", "task.checkpoints", "dlq", "timers", "agent.events", "agent.heartbeats", "control"] {
        let n = if name == "control" { 1 } else { partitions };
        admin.create_topic(&TopicSpec::new(format!("{prefix}{name}"), n)).await.expect("task topic");
    }
}
