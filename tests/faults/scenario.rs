//! One scenario's life: a fresh topic prefix and agent type on the shared cluster, the
//! agentlog processes a user would run (registry, supervisor, api, three workers), the
//! recording client's load, the scenario's faults and heals, then drain, judge and report.
//! Scenarios take turns: they share the cluster, and a fault in one must not land in another.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};
use tokio::task::JoinHandle;

use agentlog::agent::TaskTopics;
use agentlog::config::Config;
use agentlog::events::Lane;
use agentlog::events::wire::WireCodec;
use agentlog::log::EventLog;
use agentlog::open::open_log;

use super::api_view::{self, status_of};
use super::client::{self, Answer, History, Load};
use super::cluster::{BROKERS, Cluster};
use super::lanes;
use super::processes::Fleet;
use super::results::ResultsReader;
use super::verdict::{Timeline, judge, write_history};

pub const WORKERS: usize = 3;
/// Offered load: tasks per second over HTTP, unless `AGENTLOG_FAULTS_RATE` says otherwise.
/// Below what the suite's machine sustains with no fault, so that "terminal within 30 s of
/// the heal" measures the recovery rather than a backlog: on 2 cores three brokers and six
/// agentlog processes (exactly-once on) keep up with 50/s (no-fault p99 2.2 s) and 70/s
/// (4.5 s), not with 100/s (no-fault p99 10-34 s, the brokers' per-request cost on 2 cores;
/// FAULTS.md, "Load").
pub const RATE_PER_S: u32 = 50;

/// The offered load of this run (`AGENTLOG_FAULTS_RATE`, else [`RATE_PER_S`]).
pub fn rate_per_s() -> u32 {
    std::env::var("AGENTLOG_FAULTS_RATE").ok().and_then(|v| v.parse().ok()).filter(|r| *r > 0).unwrap_or(RATE_PER_S)
}
/// The warm-up before the recorded load (see [`warm_up`]), and how long its tasks may take.
const WARM_UP_LOAD: Duration = Duration::from_secs(10);
const WARM_UP_LIMIT: Duration = Duration::from_secs(120);
/// How long the drain waits past the last heal for every acknowledged task's outcome: past
/// the 30 s the verdict allows, so a late task shows as late rather than lost, and past a
/// killed producer's transaction timeout, because a read_committed reader sees nothing
/// behind its open transaction until the coordinator aborts it (outcomes that showed up
/// after 45 s were counted lost before; they were late, and some duplicated).
const DRAIN_LIMIT: Duration = Duration::from_secs(90);
/// Outcomes keep arriving? Read on until none came for this long (duplicates show up late).
const SETTLE: Duration = Duration::from_secs(3);
const SETTLE_LIMIT: Duration = Duration::from_secs(15);
/// The API's projection may trail the topic by this much after the drain.
const API_WITHIN: Duration = Duration::from_secs(30);
const START_WITHIN: Duration = Duration::from_secs(90);

pub type Step = Result<(), Box<dyn std::error::Error + Send + Sync>>;

static SERIAL: Mutex<()> = Mutex::const_new(());

pub struct Scenario {
    pub name: String,
    pub cluster: &'static Cluster,
    pub fleet: Fleet,
    pub agent_type: String,
    pub topics: TaskTopics,
    pub api_url: String,
    registry_url: String,
    dir: PathBuf,
    timeline: Timeline,
    reader: Option<ResultsReader>,
    /// The warm-up's task ids (see [`warm_up`]).
    warmed: HashSet<String>,
    log: Arc<dyn EventLog>,
    _turn: MutexGuard<'static, ()>,
}

impl Scenario {
    /// Sets the scenario up with `supervisors` supervisor processes; with `traced`, every
    /// process exports every span to an OTLP endpoint where nothing listens (a trace
    /// collector down for the whole run: its errors must cost nothing but the spans). Panics
    /// with the evidence if the system does not come up.
    pub async fn begin(name: &str, supervisors: usize, traced: bool) -> Scenario {
        let turn = SERIAL.lock().await;
        let cluster = tokio::task::spawn_blocking(Cluster::shared).await.expect("cluster start task").unwrap_or_else(|e| panic!("three-broker cluster: {e}"));
        cluster.heal_all().await.unwrap_or_else(|e| panic!("healing the cluster before {name}: {e}"));
        let started = Instant::now();
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let dir = base_dir().join(format!("{name}-{}-{tag}", unix_secs()));
        std::fs::create_dir_all(&dir).expect("scenario directory");
        let prefix = format!("faults-{tag}.");
        let agent_type = format!("sleep_{tag}");
        let (registry_port, api_port) = (free_port(), free_port());
        let config = dir.join("agentlog.toml");
        let mut toml = config_toml(cluster.bootstrap(), &prefix, &agent_type, registry_port, api_port, &dir);
        if traced {
            // A port chosen and released: nothing listens there.
            toml.push_str(&format!("[telemetry]\nenabled = true\nendpoint = \"http://127.0.0.1:{}\"\nsampling_ratio = 1.0\n", free_port()));
        }
        std::fs::write(&config, toml).expect("config file");
        apply_topics(&config, &dir).await;

        let mut fleet = Fleet::new(&dir, &config, started);
        let spawn = |fleet: &mut Fleet, name: &str, args: &[&str]| {
            fleet.spawn(name, args).unwrap_or_else(|e| panic!("{e}"));
        };
        let registry_url = format!("http://127.0.0.1:{registry_port}");
        let api_url = format!("http://127.0.0.1:{api_port}");
        spawn(&mut fleet, "registry", &["registry"]);
        wait_for(&mut fleet, "the registry", || http_ok(format!("{registry_url}/subjects"))).await;
        for n in 1..=supervisors {
            spawn(&mut fleet, &format!("supervisor-{n}"), &["supervisor"]);
        }
        spawn(&mut fleet, "api", &["api"]);
        for n in 1..=WORKERS {
            spawn(&mut fleet, &format!("worker-{n}"), &["worker", "--agent-type", &agent_type, "--drain-timeout-s", "5"]);
        }
        wait_for(&mut fleet, "the API ready", || http_ok(format!("{api_url}/readyz"))).await;
        let agents_url = format!("{api_url}/v1/agents?agent_type={agent_type}");
        wait_for(&mut fleet, "three workers registered", || agents_at_least(agents_url.clone(), WORKERS)).await;

        let loaded = Config::load_with_env(Some(&config), Vec::new()).expect("scenario config");
        let log = open_log(&loaded.log).expect("a Kafka client for the results reader");
        let topics = TaskTopics::new(prefix);
        let reader = ResultsReader::start(&log, &topics.results()).await.expect("reading task.results");
        let warmed = warm_up(&mut fleet, &reader, &api_url, &agent_type, name).await;
        eprintln!("{name}: up and warmed in {:.1}s; logs in {}", started.elapsed().as_secs_f64(), dir.display());
        Scenario {
            name: name.to_string(),
            cluster,
            fleet,
            agent_type,
            topics,
            api_url,
            registry_url,
            dir,
            timeline: Timeline { started: Instant::now(), fault: None, healed: None },
            reader: Some(reader),
            warmed,
            log,
            _turn: turn,
        }
    }

    /// Starts the recording client: [`rate_per_s`] tasks of 10 ms sleep a second for `duration`.
    pub fn load(&self, duration: Duration) -> JoinHandle<Result<History, reqwest::Error>> {
        tokio::spawn(client::run(workload(&self.api_url, &self.agent_type, format!("{}-{}", self.name, self.agent_type), duration)))
    }

    /// Marks the first fault (the start of "during the fault").
    pub fn fault(&mut self) {
        self.timeline.fault.get_or_insert_with(Instant::now);
    }

    /// Marks a repair; the last one counts.
    pub fn healed(&mut self) {
        self.timeline.healed = Some(Instant::now());
    }

    pub async fn sleep(&mut self, d: Duration) {
        self.fleet.sleep(d).await;
    }

    /// kill -9 of broker `node`, watching the processes meanwhile.
    pub async fn kill_broker(&mut self, node: u32) -> Step {
        let cluster = self.cluster;
        self.watching(cluster.kill(node)).await?;
        Ok(())
    }

    /// Restarts broker `node` and waits until the cluster sees it (5-10 s), watching the
    /// processes meanwhile so an exit is timed when it happens, not when the wait ends.
    pub async fn restart_broker(&mut self, node: u32) -> Step {
        let cluster = self.cluster;
        self.watching(cluster.restart(node)).await?;
        Ok(())
    }

    async fn watching<T>(&mut self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        // Bounded by `work`, whose own waits are bounded (kafka-local.sh's timeouts).
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = self.fleet.sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    pub fn lane_topics(&self) -> Vec<String> {
        vec![self.topics.lane(&self.agent_type, Lane::Normal)]
    }

    /// The supervisor that holds the control partition, from its "leading" log line.
    pub async fn supervisor_leader(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            for n in 1..=9 {
                let name = format!("supervisor-{n}");
                let Ok(log) = self.fleet.log_of(&name) else { break };
                if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("leading: starting")) {
                    return Some(name);
                }
            }
            self.fleet.sleep(Duration::from_millis(250)).await;
        }
        None
    }

    /// Drains, judges, reports, and fails the test with every broken assertion. `steps` is
    /// how the scenario's own actions went (a fault that could not be applied is reported).
    pub async fn finish(mut self, load: JoinHandle<Result<History, reqwest::Error>>, steps: Step) {
        let history = match self.watching(load).await {
            Ok(Ok(history)) => history,
            Ok(Err(error)) => panic!("{}: the recording client could not start: {error}", self.name),
            Err(error) => panic!("{}: the recording client panicked: {error}", self.name),
        };
        if let Err(error) = self.cluster.heal_all().await {
            eprintln!("{}: healing the cluster after the scenario: {error}", self.name);
        }
        let healed = *self.timeline.healed.get_or_insert_with(Instant::now);
        let reader = self.reader.take().expect("reader runs until finish");
        let acked: Vec<String> = history.submissions.iter().filter(|s| s.answer == Answer::Ok).map(|s| s.task_id.clone()).collect();
        let mut notes = Vec::new();
        let deadline = healed + DRAIN_LIMIT;
        while Instant::now() < deadline && reader.terminal_among(&acked) < acked.len() {
            if !self.fleet.any_running("worker-") && healed.elapsed() > Duration::from_secs(5) {
                notes.push("drain cut short: no worker process is running".to_string());
                break;
            }
            self.fleet.sleep(Duration::from_millis(250)).await;
        }
        if reader.terminal_among(&acked) < acked.len() {
            // Acknowledged tasks without an outcome: where each process sits is the evidence.
            // The group first: gdb stops each process for seconds, past the members' session
            // timeout, and the fencing that follows reshuffles the group (it ended a stalled
            // reconciliation this way once).
            let group = self.topics.worker_group(&self.agent_type);
            let path = self.dir.join("group.txt");
            match std::fs::write(&path, super::group::describe(self.cluster, &group).await) {
                Ok(()) => notes.push(format!("the group as its coordinator sees it in {}", path.display())),
                Err(e) => notes.push(format!("writing {}: {e}", path.display())),
            }
            notes.extend(self.fleet.dump_stacks().await);
            // Then the lanes: is a lost task's submit in the log, and where?
            let missing = reader.without_outcome(&acked);
            let path = self.dir.join("lanes.txt");
            match std::fs::write(&path, lanes::dump(&self.log, &self.lane_topics(), &missing).await) {
                Ok(()) => notes.push(format!("the lane topics' records in {}", path.display())),
                Err(e) => notes.push(format!("writing {}: {e}", path.display())),
            }
        }
        let settle_until = Instant::now() + SETTLE_LIMIT;
        while Instant::now() < settle_until && reader.last_record().is_some_and(|at| at.elapsed() < SETTLE) {
            self.fleet.sleep(Duration::from_millis(250)).await;
        }
        let codec = WireCodec::new(&self.registry_url).expect("codec");
        let outcomes = reader.finish(&codec).await;

        let mut expected: HashMap<String, Option<&'static str>> = HashMap::new();
        for s in &history.submissions {
            let first = outcomes.by_task.get(&s.task_id).and_then(|o| o.first()).map(|(name, _)| name.as_str());
            expected.insert(s.task_id.clone(), first.and_then(status_of));
        }
        let api_url = self.api_url.clone();
        let api = self.watching(api_view::compare(&api_url, &expected, API_WITHIN)).await;
        self.fleet.poll();
        let exits = self.fleet.exits().to_vec();
        self.fleet.shutdown(&["registry"]).await;

        if let Err(error) = write_history(&self.dir.join("tasks.csv"), &history, &outcomes, self.timeline) {
            eprintln!("writing {}: {error}", self.dir.join("tasks.csv").display());
        }
        let verdict = judge(&self.name, &history, &self.warmed, &outcomes, self.timeline, &exits, api, &self.dir);
        eprintln!("{}", verdict.line());
        let results = results_file();
        if let Err(error) = verdict.append_to(&results) {
            eprintln!("appending to {}: {error}", results.display());
        }
        let mut failures = verdict.failures();
        if let Err(error) = steps {
            failures.insert(0, format!("a scenario step failed: {error}"));
        }
        if !failures.is_empty() {
            notes.extend(self.keep_broker_logs());
        }
        for example in verdict.examples.iter().chain(&notes) {
            eprintln!("  {example}");
        }
        assert!(failures.is_empty(), "{} failed ({} assertions):\n- {}", self.name, failures.len(), failures.join("\n- "));
    }

    /// Copies each broker's log beside the scenario's own: the cluster's directory is reused by
    /// the next scenario and formatted again by the next run, and a failure on Kafka's side
    /// (a coordinator that stops answering, an ISR that will not shrink) is read only there.
    fn keep_broker_logs(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for node in 1..=BROKERS {
            let from = self.cluster.node_dir(node).join("kafka.log");
            let to = self.dir.join(format!("broker-{node}.log"));
            match std::fs::copy(&from, &to) {
                Ok(_) => notes.push(format!("broker {node}'s log in {}", to.display())),
                Err(e) => notes.push(format!("copying {}: {e}", from.display())),
            }
        }
        notes
    }
}

fn config_toml(bootstrap: &str, prefix: &str, agent_type: &str, registry_port: u16, api_port: u16, dir: &Path) -> String {
    format!(
        r#"[log]
backend = "kafka"
topic_prefix = "{prefix}"
[log.kafka]
bootstrap_servers = "{bootstrap}"
# Brokers, six agentlog processes and this test share 2 cores.
request_timeout_ms = 15000
[topics]
replication_factor = 3
[registry]
listen = "127.0.0.1:{registry_port}"
url = "http://127.0.0.1:{registry_port}"
[api]
listen = "127.0.0.1:{api_port}"
[projection]
dir = "{projection}"
[agents.{agent_type}]
description = "sleeps {{\"ms\": N}}; the fault suite's workload"
runtime = {{ kind = "builtin", name = "sleep" }}
concurrency = 16
lanes = ["normal"]
partitions = 6
exactly_once = true
"#,
        projection = dir.join("projection").display()
    )
}

async fn apply_topics(config: &Path, dir: &Path) {
    let out = tokio::time::timeout(
        START_WITHIN,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_agentlog"))
            .arg("--config")
            .arg(config)
            .args(["topics", "apply"])
            .current_dir(dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`agentlog topics apply` did not finish within {START_WITHIN:?}"))
    .expect("running agentlog topics apply");
    assert!(out.status.success(), "agentlog topics apply failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// The suite's load: [`rate_per_s`] tasks of 10 ms sleep a second for `duration`.
fn workload(api_url: &str, agent_type: &str, id_prefix: String, duration: Duration) -> Load {
    Load {
        api_url: api_url.to_string(),
        agent_type: agent_type.to_string(),
        id_prefix,
        rate_per_s: rate_per_s(),
        duration,
        input: serde_json::json!({"ms": 10}),
    }
}

/// Runs [`WARM_UP_LOAD`] of load before the recorded one and waits until every task of it
/// that was acknowledged has its outcome; returns their ids. A cluster that just started (the
/// first scenario of a run, always in CI) spends its first half minute compiling (the broker
/// JVMs' JIT), loading transaction and group coordinators and settling the group, and on 2
/// cores that starved the processes into missed sessions: the recorded load then measured a
/// cold start instead of the fault (CI, 2026-12-03: tasks submitted before any fault waited 20 s).
async fn warm_up(fleet: &mut Fleet, reader: &ResultsReader, api_url: &str, agent_type: &str, name: &str) -> HashSet<String> {
    let load = workload(api_url, agent_type, format!("warm-up-{name}-{agent_type}"), WARM_UP_LOAD);
    let history = client::run(load).await.unwrap_or_else(|e| panic!("warm-up load: {e}"));
    let acked: Vec<String> = history.submissions.iter().filter(|s| matches!(s.answer, Answer::Ok)).map(|s| s.task_id.clone()).collect();
    let deadline = Instant::now() + WARM_UP_LIMIT;
    while reader.terminal_among(&acked) < acked.len() {
        if let Some(exit) = fleet.exits().first() {
            panic!("warming up: {} exited with {}:\n{}", exit.name, exit.status, exit.tail.join("\n"));
        }
        if Instant::now() >= deadline {
            panic!(
                "warming up: {} of {} acknowledged tasks without an outcome {WARM_UP_LIMIT:?} after the warm-up load, with no fault",
                acked.len() - reader.terminal_among(&acked),
                acked.len()
            );
        }
        fleet.sleep(Duration::from_millis(250)).await;
    }
    history.submissions.into_iter().map(|s| s.task_id).collect()
}

/// Polls `probe` until it holds, failing with the evidence if a process exits meanwhile or
/// START_WITHIN passes.
async fn wait_for<F, Fut>(fleet: &mut Fleet, what: &str, probe: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + START_WITHIN;
    while Instant::now() < deadline {
        if let Some(exit) = fleet.exits().first() {
            panic!("waiting for {what}: {} exited with {}:\n{}", exit.name, exit.status, exit.tail.join("\n"));
        }
        if probe().await {
            return;
        }
        fleet.sleep(Duration::from_millis(250)).await;
    }
    panic!("{what}: not within {START_WITHIN:?}");
}

async fn http_ok(url: String) -> bool {
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(2)).build() else { return false };
    http.get(url).send().await.is_ok_and(|r| r.status().is_success())
}

async fn agents_at_least(url: String, n: usize) -> bool {
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(2)).build() else { return false };
    let Ok(response) = http.get(url).send().await else { return false };
    let Ok(body) = response.json::<serde_json::Value>().await else { return false };
    body["agents"].as_array().is_some_and(|a| a.len() >= n)
}

/// A port the OS just handed out; closed again so the process under test can bind it.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn base_dir() -> PathBuf {
    std::env::var_os("AGENTLOG_FAULTS_DIR").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("agentlog-faults"))
}

/// Where verdicts are appended, one JSON line each.
pub fn results_file() -> PathBuf {
    std::env::var_os("AGENTLOG_FAULTS_RESULTS").map(PathBuf::from).unwrap_or_else(|| base_dir().join("results.jsonl"))
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
