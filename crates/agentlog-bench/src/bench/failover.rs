//! `agentlog bench tasks --failover` (Kafka): how long a kill -9 of a worker takes to heal.
//! Two `agentlog worker` processes (this binary) serve a steady offered load of 80 tasks/s of
//! 100 ms each with spare capacity (concurrency 16 each: either worker alone could take 160/s),
//! so the figure measures the failover and not a queue; the tasks are short so that about 8
//! are always in flight without the re-run itself dominating the figure. Once both workers
//! have run a second's worth of tasks each, one is killed with SIGKILL, mid-task. The failover
//! time is from the kill to the last of its in-flight tasks completed by the survivor (the
//! outcome's own timestamp). Then a third worker joins the live group and the time from its
//! registration to its first task is the join time. Exactly-once is on, so duplicates count.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

use super::log::BenchError;
use crate::agent::{TaskClient, TaskTopics};
use crate::events::wire::WireCodec;
use crate::events::{AnyEvent, Lane, TaskSubmitted, TimestampMicros, decode_any};
use crate::log::config::LogConfig;
use crate::log::follow::Follower;
use crate::log::{EventLog, SeekTo, TopicSpec};
use crate::registry::RegistryServer;

const AGENT_TYPE: &str = "bench_sleep";
const PARTITIONS: i32 = 4;

#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub accepted: usize,
    pub in_flight_on_killed: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Up to ten of the duplicated task ids (`failover-*` ran around the kill, `join-*` around
    /// the third worker joining).
    pub duplicated_sample: Vec<String>,
    pub failover_ms: i64,
    /// From the kill to the first re-run of one of its in-flight tasks elsewhere: the part of
    /// `failover_ms` spent noticing the death and moving the partitions.
    pub reassigned_ms: i64,
    pub join_ms: i64,
}

impl std::fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "failover (kill -9 of one of two workers, 80 tasks/s of 100 ms, exactly-once): {} ms (first re-run started after {} ms)",
            self.failover_ms, self.reassigned_ms
        )?;
        writeln!(
            f,
            "  accepted={} in-flight on the killed worker={} lost={} duplicated={}",
            self.accepted, self.in_flight_on_killed, self.lost, self.duplicated
        )?;
        if !self.duplicated_sample.is_empty() {
            writeln!(f, "  duplicated (sample): {}", self.duplicated_sample.join(", "))?;
        }
        write!(f, "join: a new worker started its first task {} ms after registering", self.join_ms)
    }
}

/// A worker child process, killed when dropped.
struct Worker(Child);

impl Worker {
    fn id_suffix(&self) -> String {
        format!("-{}", self.0.id())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the follower saw.
#[derive(Default)]
struct Seen {
    /// (task id, agent id, started at) of each TaskStarted, in the order read.
    started: Vec<(String, String, TimestampMicros)>,
    /// task id → (written at, by whom) of each outcome.
    outcomes: HashMap<String, Vec<(TimestampMicros, String)>>,
    registered: HashMap<String, TimestampMicros>,
    first_start: HashMap<String, TimestampMicros>,
}

/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn run_failover_bench<'a>(log: Arc<dyn EventLog>, config: &'a LogConfig) -> BoxFuture<'a, Result<FailoverReport, BenchError>> {
    Box::pin(measure_failover_bench(log, config))
}

async fn measure_failover_bench(log: Arc<dyn EventLog>, config: &LogConfig) -> Result<FailoverReport, BenchError> {
    let setup = |e: &dyn std::fmt::Display| BenchError::Setup(e.to_string());
    if log.backend() != "kafka" {
        return Err(BenchError::Setup("--failover needs the Kafka backend: the embedded log lives in one process".into()));
    }
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let topics = TaskTopics::new(format!("bench-failover.{suffix}."));
    let admin = log.admin();
    for name in ["task.events", "task.results", "task.stream", "task.checkpoints", "dlq", "timers", "agent.events", "agent.heartbeats"] {
        admin.create_topic(&TopicSpec::new(format!("{}{name}", topics.prefix()), PARTITIONS)).await?;
    }
    admin.create_topic(&TopicSpec::new(topics.control(), 1)).await?;
    admin.create_topic(&TopicSpec::new(topics.lane(AGENT_TYPE, Lane::Normal), PARTITIONS)).await?;

    let registry = RegistryServer::on_loopback(log.clone(), &format!("{}schemas", topics.prefix())).await.map_err(|e| setup(&e))?;
    let result = measure(&log, config, &topics, registry.url()).await;
    let _ = registry.stop().await;
    result
}

async fn measure(log: &Arc<dyn EventLog>, config: &LogConfig, topics: &TaskTopics, registry_url: &str) -> Result<FailoverReport, BenchError> {
    let setup = |e: &dyn std::fmt::Display| BenchError::Setup(e.to_string());
    let codec = Arc::new(WireCodec::new(registry_url).map_err(|e| setup(&e))?);
    let dir = std::env::temp_dir().join(format!("agentlog-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| setup(&e))?;
    let config_path = write_worker_config(&dir, config, topics, registry_url).map_err(|e| setup(&e))?;
    let exe = std::env::current_exe().map_err(|e| setup(&e))?;
    let spawn = |name: &str| -> Result<Worker, BenchError> {
        let stderr = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| setup(&e))?;
        Command::new(&exe)
            .args(["--config", &config_path.display().to_string(), "worker", "--agent-type", AGENT_TYPE, "--drain-timeout-s", "5"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map(Worker)
            .map_err(|e| setup(&e))
    };

    let mut follower = Follower::open(log, &[topics.events(), topics.results(), topics.agent_events()], SeekTo::Earliest).await?;
    let mut seen = Seen::default();
    let mut a = spawn("a")?;
    let b = spawn("b")?;
    let wait = Duration::from_secs(60);
    follow(&mut follower, &codec, &mut seen, wait, |s| s.registered.len() >= 2).await?;

    let client = TaskClient::new(log, codec.clone(), topics.clone(), "bench").map_err(|e| setup(&e))?;
    let submitter = tokio::spawn(submit_load(client.clone()));
    let a_suffix = a.id_suffix();
    let b_suffix = b.id_suffix();
    // Kill once the group is steady, mid-task: both workers have run a second's worth of
    // tasks since both had partitions. (Killing `a` while the group still forms measures
    // the group's first assignment, where the survivor gets the partitions in two steps.)
    let steady = |s: &Seen| {
        let first = |suffix: &str| s.started.iter().position(|(_, agent, _)| agent.ends_with(suffix));
        let (Some(on_a), Some(on_b)) = (first(&a_suffix), first(&b_suffix)) else { return false };
        let since = &s.started[on_a.max(on_b)..];
        let count = |suffix: &str| since.iter().filter(|(_, agent, _)| agent.ends_with(suffix)).count();
        count(&a_suffix) >= 40 && count(&b_suffix) >= 40
    };
    follow(&mut follower, &codec, &mut seen, wait, steady).await?;
    a.0.kill().map_err(|e| setup(&e))?;
    let killed_at = TimestampMicros::now();
    let _ = a.0.wait();
    let in_flight: HashSet<String> =
        seen.started.iter().filter(|(id, agent, _)| agent.ends_with(&a_suffix) && !seen.outcomes.contains_key(id)).map(|(id, _, _)| id.clone()).collect();
    let accepted = submitter.await.map_err(|e| setup(&e))?.map_err(|e| setup(&e))?;
    follow(&mut follower, &codec, &mut seen, Duration::from_secs(120), |s| accepted.iter().all(|id| s.outcomes.contains_key(id))).await?;
    let reassigned_ms = seen
        .started
        .iter()
        .filter(|(id, agent, at)| in_flight.contains(id) && !agent.ends_with(&a_suffix) && at.0 >= killed_at.0)
        .map(|(_, _, at)| (at.0 - killed_at.0) / 1000)
        .min()
        .unwrap_or(0);
    let failover_ms =
        in_flight.iter().filter_map(|id| seen.outcomes.get(id).and_then(|o| o.first())).map(|(at, _)| (at.0 - killed_at.0) / 1000).max().unwrap_or(0);

    for i in 0..40 {
        let task = TaskSubmitted::new(client.meta("bench"), format!("join-{i}"), AGENT_TYPE, Lane::Normal, br#"{"ms": 300}"#.to_vec());
        client.submit(&task).await.map_err(|e| setup(&e))?;
    }
    let c = spawn("c")?;
    let c_suffix = c.id_suffix();
    follow(&mut follower, &codec, &mut seen, wait, |s| s.first_start.keys().any(|agent| agent.ends_with(&c_suffix))).await?;
    let registered = seen.registered.iter().find(|(agent, _)| agent.ends_with(&c_suffix)).map(|(_, at)| at.0).unwrap_or(0);
    let first = seen.first_start.iter().find(|(agent, _)| agent.ends_with(&c_suffix)).map(|(_, at)| at.0).unwrap_or(0);
    drop(c);
    drop(b);
    follower.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(FailoverReport {
        accepted: accepted.len(),
        in_flight_on_killed: in_flight.len(),
        lost: accepted.iter().filter(|id| !seen.outcomes.contains_key(*id)).count(),
        duplicated: seen.outcomes.values().filter(|o| o.len() > 1).count(),
        duplicated_sample: duplicated_sample(&seen),
        failover_ms,
        reassigned_ms,
        join_ms: (first - registered) / 1000,
    })
}

/// The workers' configuration: exactly-once sleep workers on the benchmark's topics.
fn write_worker_config(dir: &std::path::Path, config: &LogConfig, topics: &TaskTopics, registry_url: &str) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join("worker.toml");
    std::fs::write(
        &path,
        format!(
            "[log]\nbackend = \"kafka\"\ntopic_prefix = \"{}\"\n[log.kafka]\nbootstrap_servers = \"{}\"\n\
             [registry]\nurl = \"{registry_url}\"\nlisten = \"127.0.0.1:0\"\n[supervisor]\nheartbeat_interval_ms = 250\n\
             [agents.{AGENT_TYPE}]\nruntime = {{ kind = \"builtin\", name = \"sleep\" }}\nconcurrency = 16\nlanes = [\"normal\"]\n\
             partitions = {PARTITIONS}\nexactly_once = true\n",
            topics.prefix(),
            config.kafka.bootstrap_servers
        ),
    )?;
    Ok(path)
}

/// 480 tasks of 100 ms at 80/s (6 s, through the kill); the ids of those accepted.
async fn submit_load(client: TaskClient) -> Result<Vec<String>, crate::agent::ClientError> {
    let mut accepted = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_micros(12_500));
    for i in 0..480 {
        tick.tick().await;
        let task = TaskSubmitted::new(client.meta("bench"), format!("failover-{i}"), AGENT_TYPE, Lane::Normal, br#"{"ms": 100}"#.to_vec());
        client.submit(&task).await?;
        accepted.push(task.task_id);
    }
    Ok(accepted)
}

/// Up to ten tasks with more than one outcome, with the workers that wrote them.
fn duplicated_sample(seen: &Seen) -> Vec<String> {
    let mut ids: Vec<String> = seen
        .outcomes
        .iter()
        .filter(|(_, o)| o.len() > 1)
        .map(|(id, o)| format!("{id} (by {})", o.iter().map(|(_, by)| by.as_str()).collect::<Vec<_>>().join(" and ")))
        .collect();
    ids.sort();
    ids.truncate(10);
    ids
}

/// Reads events until `done` holds, failing after `within`.
async fn follow(follower: &mut Follower, codec: &WireCodec, seen: &mut Seen, within: Duration, done: impl Fn(&Seen) -> bool) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + within;
    while !done(seen) {
        let record = match tokio::time::timeout_at(deadline, follower.next()).await {
            Err(_) => return Err(BenchError::Setup(format!("the failover run did not reach its next step within {within:?}"))),
            Ok(record) => record?,
        };
        let Some(record) = record else { continue };
        match decode_any(codec, &record.payload).await {
            Ok(AnyEvent::TaskStarted(s)) => {
                seen.first_start.entry(s.agent_id.clone()).or_insert(s.meta.occurred_at);
                seen.started.push((s.task_id, s.agent_id, s.meta.occurred_at));
            }
            Ok(AnyEvent::AgentRegistered(r)) => {
                seen.registered.insert(r.agent_id, r.meta.occurred_at);
            }
            Ok(event) if event.is_terminal() => {
                let (at, by) = match &event {
                    AnyEvent::TaskCompleted(c) => (c.meta.occurred_at, c.meta.producer_id.clone()),
                    _ => (TimestampMicros::now(), String::new()),
                };
                if let Some(id) = event.task_id() {
                    seen.outcomes.entry(id.to_string()).or_default().push((at, by));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
