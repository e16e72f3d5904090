//! What every task-lifecycle scenario gets: the catalog topics under a unique prefix, a schema
//! registry, a client, workers and a supervisor it can start and stop, and readers of the
//! outcome topics with deadlines instead of sleeps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use agentlog::agent::runtime::usage::Usage;
use agentlog::agent::runtime::{Agent, AgentFailure, TaskContext, TaskOutput};
use agentlog::agent::{AgentTypeConfig, TaskClient, TaskTopics, WorkerError, WorkerReport, WorkerSettings, run_worker};
use agentlog::events::wire::WireCodec;
use agentlog::events::{AnyEvent, Lane, TaskSubmitted, decode_any};
use agentlog::log::{
    Admin, Consumer, ConsumerEvent, ConsumerOptions, EventLog, GroupMetadata, LogError, LogResult, Producer, SeekTo, TopicDescription, TopicPartition,
    TopicSpec, Transaction, TransactionalProducer, Watermarks,
};
use agentlog::supervisor::{SupervisorConfig, SupervisorSettings, run_supervisor};

use crate::harness::{Harness, TestRegistry, create_task_topics, unique};

pub const PARTITIONS: i32 = 2;

pub struct Fixture {
    pub log: Arc<dyn EventLog>,
    pub registry: Option<TestRegistry>,
    pub codec: Arc<WireCodec>,
    pub topics: TaskTopics,
    pub client: TaskClient,
    workers: Vec<(CancellationToken, JoinHandle<Result<WorkerReport, WorkerError>>)>,
    supervisor: Option<(CancellationToken, JoinHandle<Result<(), agentlog::supervisor::SupervisorError>>)>,
    pub heartbeat: Duration,
    /// The callback server settings of the workers it starts next.
    pub callback: agentlog::agent::callback::CallbackConfig,
}

impl Fixture {
    pub async fn new(h: &Harness) -> Fixture {
        Self::with_log(h.log().clone()).await
    }

    pub async fn with_log(log: Arc<dyn EventLog>) -> Fixture {
        let registry = TestRegistry::start(&log).await;
        let codec = registry.codec();
        let prefix = format!("{}.", unique("p"));
        create_task_topics(&log, &prefix, PARTITIONS).await;
        let topics = TaskTopics::new(prefix);
        let client = TaskClient::new(&log, codec.clone(), topics.clone(), "test").expect("client");
        Fixture {
            log,
            registry: Some(registry),
            codec,
            topics,
            client,
            workers: Vec::new(),
            supervisor: None,
            heartbeat: Duration::from_millis(200),
            callback: Default::default(),
        }
    }

    /// Declares an agent type from TOML and creates its lane topics.
    pub async fn agent_type(&self, name: &str, toml_text: &str) -> (String, AgentTypeConfig) {
        self.agent_type_named(&unique(name), toml_text).await
    }

    /// Like [`Fixture::agent_type`] with exactly this name (topics are unique by prefix).
    pub async fn agent_type_named(&self, name: &str, toml_text: &str) -> (String, AgentTypeConfig) {
        let name = name.to_string();
        let agent: AgentTypeConfig = toml::from_str(toml_text).expect("agent type TOML");
        for topic in agent.lane_topics(&name, self.topics.prefix()) {
            self.log.admin().create_topic(&TopicSpec::new(topic, PARTITIONS)).await.expect("lane topic");
        }
        (name, agent)
    }

    pub fn start_worker(&mut self, agent_type: &str, agent: &AgentTypeConfig, runtime: Arc<dyn Agent>, worker_id: &str) {
        let (log, codec) = (self.log.clone(), self.codec.clone());
        self.start_worker_on(log, codec, agent_type, agent, runtime, worker_id, agentlog::agent::worker::TRANSACTION_DEADLINE);
    }

    /// Like [`Fixture::start_worker`], reaching the registry through `codec` (a
    /// [`RegistrySwitch`]'s, say).
    pub fn start_worker_via(&mut self, codec: Arc<WireCodec>, agent_type: &str, agent: &AgentTypeConfig, runtime: Arc<dyn Agent>, worker_id: &str) {
        let log = self.log.clone();
        self.start_worker_on(log, codec, agent_type, agent, runtime, worker_id, agentlog::agent::worker::TRANSACTION_DEADLINE);
    }

    /// Like [`Fixture::start_worker`], on `log` (a decorated one, say), through `codec` and
    /// with its own transaction deadline.
    #[allow(clippy::too_many_arguments)]
    pub fn start_worker_on(
        &mut self,
        log: Arc<dyn EventLog>,
        codec: Arc<WireCodec>,
        agent_type: &str,
        agent: &AgentTypeConfig,
        runtime: Arc<dyn Agent>,
        worker_id: &str,
        transaction_deadline: Duration,
    ) {
        let settings = self.worker_settings(agent_type, agent, worker_id, transaction_deadline);
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run_worker(log, codec, runtime, settings, stop.clone()));
        self.workers.push((stop, handle));
    }

    /// What the fixture's workers run with.
    pub fn worker_settings(&self, agent_type: &str, agent: &AgentTypeConfig, worker_id: &str, transaction_deadline: Duration) -> WorkerSettings {
        WorkerSettings {
            agent_type: agent_type.to_string(),
            agent: agent.clone(),
            topic_prefix: self.topics.prefix().to_string(),
            worker_id: worker_id.to_string(),
            prefetch_per_lane: 8,
            drain_timeout: Duration::from_secs(20),
            heartbeat_interval: self.heartbeat,
            transaction_deadline,
            callback: self.callback.clone(),
        }
    }

    /// Drains worker `i` (as SIGTERM does) and returns its report.
    pub async fn drain_worker(&mut self, i: usize) -> WorkerReport {
        let (stop, handle) = self.workers.remove(i);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), handle).await.expect("drained in time").expect("worker task").expect("worker")
    }

    /// Kills worker `i` without any drain (the in-process stand-in for a crash).
    pub fn abort_worker(&mut self, i: usize) {
        let (_, handle) = self.workers.remove(i);
        handle.abort();
    }

    pub fn start_supervisor(&mut self, missed_heartbeats: u32) {
        let codec = self.codec.clone();
        self.start_supervisor_with(missed_heartbeats, codec);
    }

    /// Like [`Fixture::start_supervisor`], with its own codec (one reaching the registry
    /// through a [`RegistrySwitch`], say). Its timer index lives under the temp directory.
    pub fn start_supervisor_with(&mut self, missed_heartbeats: u32, codec: Arc<WireCodec>) {
        let config = SupervisorConfig {
            heartbeat_interval_ms: self.heartbeat.as_millis() as u64,
            missed_heartbeats,
            state_dir: std::env::temp_dir().join("agentlog-test-supervisors"),
        };
        let settings = SupervisorSettings { topic_prefix: self.topics.prefix().to_string(), supervisor_id: unique("supervisor"), config };
        let stop = CancellationToken::new();
        let handle = tokio::spawn(run_supervisor(self.log.clone(), codec, settings, stop.clone()));
        self.supervisor = Some((stop, handle));
    }

    /// A switchable way to this fixture's registry (see [`RegistrySwitch`]).
    pub async fn registry_switch(&self, up: bool) -> RegistrySwitch {
        let url = &self.registry.as_ref().expect("the fixture's registry runs").url;
        RegistrySwitch::start(url, up).await
    }

    pub fn task(&self, agent_type: &str, lane: Lane, input: &str) -> TaskSubmitted {
        let id = unique("task");
        TaskSubmitted::new(self.client.meta("tenant-a"), id, agent_type, lane, input.as_bytes().to_vec())
    }

    pub async fn submit(&self, task: &TaskSubmitted) {
        self.client.submit(task).await.expect("submitted");
    }

    /// A reader of every partition of `topic` from the start.
    pub async fn reader(&self, topic: &str) -> EventStream {
        let partitions = self.log.admin().describe_topic(topic).await.expect("describe").partitions;
        let mut consumer = self.log.consumer(ConsumerOptions::default()).expect("consumer");
        let assignment: Vec<_> = (0..partitions).map(|p| (TopicPartition::new(topic, p), SeekTo::Earliest)).collect();
        consumer.assign(&assignment).await.expect("assign");
        EventStream { consumer, codec: self.codec.clone() }
    }

    /// Waits until every task in `ids` has a terminal outcome; returns them by task id (the
    /// first outcome of each) and fails on a second outcome for one task.
    pub async fn outcomes(&self, ids: &[String], within: Duration) -> HashMap<String, AnyEvent> {
        let mut stream = self.reader(&self.topics.results()).await;
        let mut found: HashMap<String, AnyEvent> = HashMap::new();
        let deadline = Instant::now() + within;
        while ids.iter().any(|id| !found.contains_key(id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = stream.next(left).await else {
                let missing: Vec<&String> = ids.iter().filter(|id| !found.contains_key(*id)).collect();
                panic!("no outcome within {within:?} for {missing:?}");
            };
            let id = event.task_id().expect("task.results holds task outcomes").to_string();
            assert!(event.is_terminal(), "task.results holds only terminal outcomes, got {}", event.name());
            if found.insert(id.clone(), event).is_some() {
                panic!("task {id} has two outcomes");
            }
        }
        found
    }

    /// Every event on `topic` written so far: reads up to the high watermarks taken now (or
    /// until nothing more arrives for `idle`, since transaction markers are never delivered).
    pub async fn all_events(&self, topic: &str, idle: Duration) -> Vec<AnyEvent> {
        let admin = self.log.admin();
        let partitions = admin.describe_topic(topic).await.expect("describe").partitions;
        let mut ends = HashMap::new();
        for p in 0..partitions {
            let tp = TopicPartition::new(topic, p);
            let marks = admin.watermarks(&tp).await.expect("watermarks");
            if marks.high > marks.low {
                ends.insert(p, marks.high);
            }
        }
        let mut consumer = self.log.consumer(ConsumerOptions::default()).expect("consumer");
        let assignment: Vec<_> = (0..partitions).map(|p| (TopicPartition::new(topic, p), SeekTo::Earliest)).collect();
        consumer.assign(&assignment).await.expect("assign");
        let mut out = Vec::new();
        while !ends.is_empty() {
            match tokio::time::timeout(idle, consumer.next_event()).await {
                Err(_) => break,
                Ok(Ok(ConsumerEvent::Record(record))) => {
                    if ends.get(&record.partition).is_some_and(|high| record.offset + 1 >= *high) {
                        ends.remove(&record.partition);
                    }
                    if !record.payload.is_empty() {
                        out.push(decode_any(&self.codec, &record.payload).await.expect("decodable event"));
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("reading {topic} failed: {e}"),
            }
        }
        out
    }

    pub async fn stop(mut self) -> Vec<WorkerReport> {
        let mut reports = Vec::new();
        while !self.workers.is_empty() {
            reports.push(self.drain_worker(0).await);
        }
        if let Some((stop, handle)) = self.supervisor.take() {
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(30), handle).await.expect("supervisor stopped in time").expect("supervisor task").expect("supervisor");
        }
        if let Some(registry) = self.registry.take() {
            registry.stop().await;
        }
        reports
    }
}

pub struct EventStream {
    consumer: Box<dyn agentlog::log::Consumer>,
    codec: Arc<WireCodec>,
}

impl EventStream {
    /// The next decoded event, or `None` if none arrives within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<AnyEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.consumer.next_event()).await {
                Err(_) => return None,
                Ok(Ok(ConsumerEvent::Record(record))) => {
                    if record.payload.is_empty() {
                        continue;
                    }
                    return Some(decode_any(&self.codec, &record.payload).await.expect("decodable event"));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("reading events failed: {e}"),
            }
        }
    }
}

/// A registry outage on demand: a TCP proxy to a registry that forwards while up and, while
/// down, cuts every connection, new ones at once and open ones (a client's pooled keep-alive
/// connections) as it goes down. Codecs built on [`RegistrySwitch::codec`] see a registry that
/// cannot be reached, the error a registry host or network failure gives.
pub struct RegistrySwitch {
    pub url: String,
    up: tokio::sync::watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl RegistrySwitch {
    pub async fn start(registry_url: &str, up: bool) -> RegistrySwitch {
        let target = registry_url.trim_start_matches("http://").trim_end_matches('/').to_string();
        // Same port as the registry, on another loopback address: without API keys the
        // registry answers only requests whose Host is a loopback name with its own port (its
        // guard against DNS rebinding), and clients of this proxy name the proxy.
        let port = target.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).expect("registry url has a port");
        let mut bound = None;
        for last in 2..=20u8 {
            if let Ok(listener) = tokio::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 0, last), port)).await {
                bound = Some(listener);
                break;
            }
        }
        let listener = bound.expect("bind a loopback address with the registry's port");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (switch, state) = tokio::sync::watch::channel(up);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = state.clone();
                if !*state.borrow() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        RegistrySwitch { url, up: switch, accept }
    }

    /// A fresh codec (nothing cached) that reaches the registry through this switch.
    pub fn codec(&self) -> Arc<WireCodec> {
        Arc::new(WireCodec::new(&self.url).expect("codec"))
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for RegistrySwitch {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What a scripted agent saw: task ids in the order attempts started, with attempt numbers.
#[derive(Default)]
pub struct Journal {
    pub started: Mutex<Vec<(String, u32, Instant)>>,
    pub finished: Mutex<Vec<(String, u32, Instant)>>,
}

impl Journal {
    pub fn started_ids(&self) -> Vec<String> {
        self.started.lock().unwrap().iter().map(|(id, _, _)| id.clone()).collect()
    }
    pub fn attempts_of(&self, task_id: &str) -> Vec<u32> {
        self.started.lock().unwrap().iter().filter(|(id, _, _)| id == task_id).map(|(_, a, _)| *a).collect()
    }
}

/// A test agent driven by its input JSON: `{"sleep_ms": n, "fail_until": k, "fail_kind": "transient",
/// "ignore_cancel": bool, "usage": {…}}` — fails attempts below `fail_until` with `fail_kind`,
/// sleeps, then echoes its input, reporting `usage` as given (unchecked, as a Rust agent may:
/// the worker checks it).
pub struct Scripted {
    pub journal: Arc<Journal>,
}

#[async_trait]
impl Agent for Scripted {
    async fn run(&self, ctx: TaskContext) -> Result<TaskOutput, AgentFailure> {
        self.journal.started.lock().unwrap().push((ctx.task_id.clone(), ctx.attempt, Instant::now()));
        let input: serde_json::Value = serde_json::from_slice(&ctx.input).unwrap_or_default();
        let sleep = Duration::from_millis(input["sleep_ms"].as_u64().unwrap_or(0));
        let ignore_cancel = input["ignore_cancel"].as_bool().unwrap_or(false);
        if ignore_cancel {
            tokio::time::sleep(sleep).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = ctx.cancel.cancelled() => return Err(AgentFailure::cancelled()),
            }
        }
        self.journal.finished.lock().unwrap().push((ctx.task_id.clone(), ctx.attempt, Instant::now()));
        if (ctx.attempt as u64) < input["fail_until"].as_u64().unwrap_or(0) {
            let kind = input["fail_kind"].as_str().unwrap_or("transient").to_string();
            return Err(AgentFailure::new(kind, format!("scripted failure of attempt {}", ctx.attempt), true));
        }
        let output = TaskOutput::new(ctx.input.clone(), ctx.content_type.clone());
        let reported = &input["usage"];
        if !reported.is_object() {
            return Ok(output);
        }
        let count = |name: &str| reported[name].as_i64();
        let text = |name: &str| reported[name].as_str().map(str::to_string);
        Ok(output.with_usage(Usage {
            input_tokens: count("input_tokens").unwrap_or(0),
            output_tokens: count("output_tokens").unwrap_or(0),
            model: text("model"),
            cost_micros: count("cost_micros"),
            currency: text("currency"),
            counters: reported["counters"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0))).collect(),
        }))
    }
}

pub fn scripted() -> (Arc<Journal>, Arc<dyn Agent>) {
    let journal = Arc::new(Journal::default());
    (journal.clone(), Arc::new(Scripted { journal }))
}

/// A log whose transactional producers never end their first transaction: `begin` waits
/// forever, as a commit did when a worker stopped polling during a broker kill. Everything
/// else is the wrapped log's.
pub struct FirstTransactionHangs(pub Arc<dyn EventLog>);

struct HangingOnce {
    inner: Arc<dyn TransactionalProducer>,
    hung: AtomicBool,
}

#[async_trait]
impl TransactionalProducer for HangingOnce {
    async fn begin(&self) -> LogResult<Box<dyn Transaction + '_>> {
        if !self.hung.swap(true, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.begin().await
    }
}

#[async_trait]
impl EventLog for FirstTransactionHangs {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    fn location(&self) -> String {
        self.0.location()
    }
    fn orders_by_time(&self) -> bool {
        self.0.orders_by_time()
    }
    fn max_record_bytes(&self) -> usize {
        self.0.max_record_bytes()
    }
    fn producer(&self) -> LogResult<Arc<dyn Producer>> {
        self.0.producer()
    }
    fn consumer(&self, options: ConsumerOptions) -> LogResult<Box<dyn Consumer>> {
        self.0.consumer(options)
    }
    fn transactional_producer(&self, transactional_id: &str) -> LogResult<Arc<dyn TransactionalProducer>> {
        Ok(Arc::new(HangingOnce { inner: self.0.transactional_producer(transactional_id)?, hung: AtomicBool::new(false) }))
    }
    fn admin(&self) -> Arc<dyn Admin> {
        self.0.admin()
    }
    async fn shutdown(&self, timeout: Duration) -> LogResult<()> {
        self.0.shutdown(timeout).await
    }
}

/// A log whose group consumers resume every newly assigned partition at its start, and whose
/// first `failing` committed-offset lookups fail: what a worker met when librdkafka resumed
/// two partitions from offset 0 while the previous owner's transaction (holding the group's
/// offsets) was still open. Counts what it did, so a test can tell the fault happened.
pub struct ResumesAtStart {
    inner: Arc<dyn EventLog>,
    counts: Arc<Rewinds>,
}

#[derive(Default)]
pub struct Rewinds {
    /// Partitions sent back to their start on assignment.
    pub rewound: AtomicU32,
    /// Committed-offset lookups still to fail, and how many did.
    to_fail: AtomicU32,
    pub failed: AtomicU32,
    /// Consumers created and not yet dropped (group members and plain readers alike).
    pub live_consumers: AtomicI32,
    /// Refuse to create transactional producers (a worker of an exactly-once type fails to
    /// start after its background readers are already running).
    pub refuse_transactions: AtomicBool,
}

impl ResumesAtStart {
    pub fn wrap(inner: Arc<dyn EventLog>, failing: u32) -> (Arc<dyn EventLog>, Arc<Rewinds>) {
        let counts = Arc::new(Rewinds { to_fail: AtomicU32::new(failing), ..Default::default() });
        (Arc::new(ResumesAtStart { inner, counts: counts.clone() }), counts)
    }
}

struct RewindingConsumer {
    // A mutex only to be `Sync`, which `committed(&self)` needs: `dyn Consumer` is `Send` only.
    inner: tokio::sync::Mutex<Box<dyn Consumer>>,
    counts: Arc<Rewinds>,
    /// Group members are rewound on assignment; plain readers are only counted.
    rewind: bool,
    _live: Live,
}

/// One of [`Rewinds::live_consumers`], until dropped.
struct Live(Arc<Rewinds>);

impl Live {
    fn new(counts: &Arc<Rewinds>) -> Live {
        counts.live_consumers.fetch_add(1, Ordering::SeqCst);
        Live(counts.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live_consumers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RewindingConsumer {
    fn get(&self) -> tokio::sync::MutexGuard<'_, Box<dyn Consumer>> {
        self.inner.try_lock().expect("one caller at a time")
    }
}

#[async_trait]
impl Consumer for RewindingConsumer {
    fn subscribe(&mut self, topics: &[String]) -> LogResult<()> {
        self.inner.get_mut().subscribe(topics)
    }
    async fn assign(&mut self, partitions: &[(TopicPartition, SeekTo)]) -> LogResult<()> {
        self.inner.get_mut().assign(partitions).await
    }
    async fn next_event(&mut self) -> LogResult<ConsumerEvent> {
        let inner = self.inner.get_mut();
        let event = inner.next_event().await?;
        if let ConsumerEvent::Assigned(parts) = &event
            && self.rewind
        {
            for p in parts {
                inner.seek(p, SeekTo::Earliest).await?;
                self.counts.rewound.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(event)
    }
    async fn seek(&mut self, partition: &TopicPartition, to: SeekTo) -> LogResult<()> {
        self.inner.get_mut().seek(partition, to).await
    }
    fn pause(&mut self, partitions: &[TopicPartition]) -> LogResult<()> {
        self.inner.get_mut().pause(partitions)
    }
    fn resume(&mut self, partitions: &[TopicPartition]) -> LogResult<()> {
        self.inner.get_mut().resume(partitions)
    }
    fn assignment(&self) -> Vec<TopicPartition> {
        self.get().assignment()
    }
    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        self.get().positions()
    }
    async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> LogResult<()> {
        self.inner.get_mut().commit(offsets).await
    }
    async fn committed(&self, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>> {
        self.inner.lock().await.committed(partitions).await
    }
    fn group_metadata(&self) -> Option<GroupMetadata> {
        self.get().group_metadata()
    }
    async fn close(self: Box<Self>) -> LogResult<()> {
        self.inner.into_inner().close().await
    }
}

struct FailingLookups {
    inner: Arc<dyn Admin>,
    counts: Arc<Rewinds>,
}

#[async_trait]
impl Admin for FailingLookups {
    async fn create_topic(&self, spec: &TopicSpec) -> LogResult<()> {
        self.inner.create_topic(spec).await
    }
    async fn describe_topic(&self, name: &str) -> LogResult<TopicDescription> {
        self.inner.describe_topic(name).await
    }
    async fn delete_topic(&self, name: &str) -> LogResult<()> {
        self.inner.delete_topic(name).await
    }
    async fn list_topics(&self) -> LogResult<Vec<String>> {
        self.inner.list_topics().await
    }
    async fn watermarks(&self, partition: &TopicPartition) -> LogResult<Watermarks> {
        self.inner.watermarks(partition).await
    }
    async fn offset_for_timestamp(&self, partition: &TopicPartition, timestamp_ms: i64) -> LogResult<Option<i64>> {
        self.inner.offset_for_timestamp(partition, timestamp_ms).await
    }
    async fn committed_offsets(&self, group: &str, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>> {
        if self.counts.to_fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.counts.failed.fetch_add(1, Ordering::SeqCst);
            return Err(LogError::Timeout { operation: "committed offsets (injected)", after: Duration::from_secs(10) });
        }
        self.inner.committed_offsets(group, partitions).await
    }
    async fn timestamp_at(&self, partition: &TopicPartition, offset: i64) -> LogResult<Option<i64>> {
        self.inner.timestamp_at(partition, offset).await
    }
}

#[async_trait]
impl EventLog for ResumesAtStart {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn orders_by_time(&self) -> bool {
        self.inner.orders_by_time()
    }
    fn max_record_bytes(&self) -> usize {
        self.inner.max_record_bytes()
    }
    fn producer(&self) -> LogResult<Arc<dyn Producer>> {
        self.inner.producer()
    }
    fn consumer(&self, options: ConsumerOptions) -> LogResult<Box<dyn Consumer>> {
        let rewind = options.group.is_some();
        let inner = self.inner.consumer(options)?;
        Ok(Box::new(RewindingConsumer { inner: tokio::sync::Mutex::new(inner), counts: self.counts.clone(), rewind, _live: Live::new(&self.counts) }))
    }
    fn transactional_producer(&self, transactional_id: &str) -> LogResult<Arc<dyn TransactionalProducer>> {
        if self.counts.refuse_transactions.load(Ordering::SeqCst) {
            return Err(LogError::Invalid { what: "transactional producer", reason: "refused (injected)".into() });
        }
        self.inner.transactional_producer(transactional_id)
    }
    fn admin(&self) -> Arc<dyn Admin> {
        Arc::new(FailingLookups { inner: self.inner.admin(), counts: self.counts.clone() })
    }
    async fn shutdown(&self, timeout: Duration) -> LogResult<()> {
        self.inner.shutdown(timeout).await
    }
}
