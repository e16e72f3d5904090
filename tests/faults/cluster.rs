//! The three-broker Kafka cluster the fault scenarios share: started once per test binary
//! through `scripts/kafka-local.sh` (RF 3, min.insync.replicas 2), faults applied to single
//! nodes by pid, and healed before each scenario so one scenario's damage never becomes the
//! next one's fault.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub const BROKERS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kafka-local.sh {command} failed ({status}): {stderr}")]
    Script { command: String, status: String, stderr: String },
    #[error("running kafka-local.sh {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("signal {signal} to broker node {node} (pid {pid}): {source}")]
    Signal { node: u32, pid: i32, signal: i32, source: std::io::Error },
    #[error("broker node {0} has no running process")]
    NotRunning(u32),
    #[error("reading the metadata of `{topic}`: {message}")]
    Metadata { topic: String, message: String },
}

/// Where the cluster lives: its ports and state directory, chosen so it never meets the
/// single local broker other tests use (19092).
#[derive(Debug, Clone)]
pub struct Cluster {
    port: u16,
    dir: PathBuf,
    bootstrap: String,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
/// Set when this binary started the cluster, so the exit hook stops only what it started.
static STARTED_HERE: OnceLock<Cluster> = OnceLock::new();

fn script() -> PathBuf {
    repo_dir().join("scripts/kafka-local.sh")
}

/// The checkout under test. Read at run time (cargo test sets it) before the compile-time
/// value: cargo's fingerprints are relative to the workspace, so a binary built in one clone
/// is reused, unrebuilt, by another clone sharing the target dir, and would otherwise run the
/// first clone's script (or one that no longer exists).
pub fn repo_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

impl Cluster {
    /// The cluster of this test binary, started on first use (about 20 s); a later call
    /// gets the same one. Env: `AGENTLOG_FAULTS_KAFKA_PORT` (default 29092, uses six ports
    /// from there) and `AGENTLOG_FAULTS_KAFKA_DIR` (default ~/.cache/agentlog/kafka-faults).
    pub fn shared() -> Result<&'static Cluster, String> {
        SHARED.get_or_init(|| Cluster::start().map_err(|e| e.to_string())).as_ref().map_err(Clone::clone)
    }

    fn start() -> Result<Cluster, ClusterError> {
        let port = std::env::var("AGENTLOG_FAULTS_KAFKA_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(29092);
        let dir = std::env::var_os("AGENTLOG_FAULTS_KAFKA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/agentlog/kafka-faults"));
        let mut cluster = Cluster { port, dir, bootstrap: String::new() };
        let already = cluster.run(&["status"]).is_ok();
        cluster.bootstrap = cluster.run(&["start", "--brokers", &BROKERS.to_string()])?.trim().to_string();
        if !already {
            let _ = STARTED_HERE.set(cluster.clone());
            // Statics are never dropped: stop the brokers when the test binary exits.
            // SAFETY: registering a plain extern "C" function with no captured state.
            unsafe { libc::atexit(stop_at_exit) };
        }
        Ok(cluster)
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The state directory of node `node` (its kafka.log is the broker's side of a story).
    pub fn node_dir(&self, node: u32) -> PathBuf {
        self.dir.join(format!("node-{node}"))
    }

    fn run(&self, args: &[&str]) -> Result<String, ClusterError> {
        let command = args.join(" ");
        // kafka-local.sh bounds every wait itself (start 90 s, restart-node 180 s, locks 180 s).
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_LOCAL_DIR", &self.dir)
            .output()
            .map_err(|source| ClusterError::Spawn { command: command.clone(), source })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            return Err(ClusterError::Script { command, status: out.status.to_string(), stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n") });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub async fn run_async(&self, args: &[&str]) -> Result<String, ClusterError> {
        let this = self.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || this.run(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap_or_else(|e| Err(ClusterError::Spawn { command: "kafka-local.sh".into(), source: std::io::Error::other(e.to_string()) }))
    }

    /// The pid of node `node`, if it runs.
    pub fn pid(&self, node: u32) -> Option<i32> {
        let text = std::fs::read_to_string(self.node_dir(node).join("kafka.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
    }

    /// kill -9 of one broker.
    pub async fn kill(&self, node: u32) -> Result<(), ClusterError> {
        self.run_async(&["kill-node", &node.to_string()]).await.map(drop)
    }

    /// Starts a killed broker on its data and waits until the cluster sees all of them.
    pub async fn restart(&self, node: u32) -> Result<(), ClusterError> {
        self.run_async(&["restart-node", &node.to_string()]).await.map(drop)
    }

    /// SIGSTOP: the broker keeps its sockets open but answers nothing (a long GC pause, a
    /// frozen VM). Pair with [`Cluster::resume`].
    pub fn pause(&self, node: u32) -> Result<(), ClusterError> {
        self.signal(node, libc::SIGSTOP)
    }

    pub fn resume(&self, node: u32) -> Result<(), ClusterError> {
        self.signal(node, libc::SIGCONT)
    }

    fn signal(&self, node: u32, signal: i32) -> Result<(), ClusterError> {
        let pid = self.pid(node).ok_or(ClusterError::NotRunning(node))?;
        // SAFETY: a signal to a pid read from this cluster's own pid file.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(ClusterError::Signal { node, pid, signal, source: std::io::Error::last_os_error() });
        }
        Ok(())
    }

    /// Every node running and not stopped: resumes paused ones and restarts dead ones.
    pub async fn heal_all(&self) -> Result<(), ClusterError> {
        for node in 1..=BROKERS {
            match self.pid(node) {
                Some(_) => self.resume(node)?,
                None => self.restart(node).await?,
            }
        }
        Ok(())
    }

    /// How many partitions of `topics` each broker leads (broker id = node number).
    pub async fn leaders(&self, topics: &[String]) -> Result<BTreeMap<u32, usize>, ClusterError> {
        let bootstrap = self.bootstrap.clone();
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let metadata_error = |topic: &str, message: String| ClusterError::Metadata { topic: topic.to_string(), message };
            let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().map_err(|e| metadata_error("-", e.to_string()))?;
            let mut counts = BTreeMap::new();
            for topic in &topics {
                let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| metadata_error(topic, e.to_string()))?;
                for t in metadata.topics() {
                    for p in t.partitions() {
                        if p.leader() >= 0 {
                            *counts.entry(p.leader() as u32).or_insert(0) += 1;
                        }
                    }
                }
            }
            Ok(counts)
        })
        .await
        .unwrap_or_else(|e| Err(ClusterError::Metadata { topic: "-".into(), message: e.to_string() }))
    }
}

extern "C" fn stop_at_exit() {
    if let Some(cluster) = STARTED_HERE.get()
        && let Err(error) = cluster.run(&["stop"])
    {
        eprintln!("stopping the fault-test Kafka cluster: {error}");
    }
}
