//! Consumer-group member and assign-only reader over librdkafka's `StreamConsumer`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::client::{committed_in, map_error};
use super::fetch_states::{FetchStates, StallWatch};
use super::metadata::TopicCache;
use crate::{ConsumedRecord, Consumer, ConsumerEvent, GroupMetadata, GroupMetadataInner, Header, LogError, LogResult, SeekTo, TopicPartition};

/// Turns librdkafka's rebalance callbacks into events. librdkafka runs the callback on the
/// thread polling the consumer, before it hands out a record of the new assignment, so the
/// queue below always holds the rebalance ahead of those records.
///
/// The callback runs inside `recv()`, which keeps waiting when no record follows (an empty
/// topic), so it also wakes `next_event` through `arrived` to report the rebalance at once.
///
/// It also keeps the fetch states of librdkafka's statistics, to find partitions that are
/// assigned but never fetched ([`super::fetch_states`]).
#[derive(Default)]
pub(crate) struct RebalanceEvents {
    pending: Mutex<VecDeque<ConsumerEvent>>,
    arrived: tokio::sync::Notify,
    fetch_states: FetchStates,
}

impl ClientContext for RebalanceEvents {
    fn stats_raw(&self, statistics: &[u8]) {
        self.fetch_states.record(statistics);
    }
}

impl ConsumerContext for RebalanceEvents {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(tpl) => ConsumerEvent::Assigned(to_partitions(tpl)),
            Rebalance::Revoke(tpl) => ConsumerEvent::Revoked(to_partitions(tpl)),
            Rebalance::Error(error) => {
                tracing::warn!(%error, "consumer group rebalance failed");
                return;
            }
        };
        if matches!(&event, ConsumerEvent::Assigned(p) | ConsumerEvent::Revoked(p) if p.is_empty()) {
            return;
        }
        self.pending.lock().expect("rebalance queue lock poisoned").push_back(event);
        // notify_one keeps a permit when nobody waits yet, so the wake-up is never lost.
        self.arrived.notify_one();
    }
}

fn to_partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect()
}

fn to_tpl<'a>(partitions: impl IntoIterator<Item = (&'a TopicPartition, Offset)>) -> LogResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in partitions {
        tpl.add_partition_offset(&tp.topic, tp.partition, offset).map_err(|e| LogError::Invalid { what: "offset", reason: e.to_string() })?;
    }
    Ok(tpl)
}

/// How long reading pauses after a passing consume error, so that a burst of them (every
/// partition of a dead broker reports one) does not spin.
const PASSING_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Passing consume errors, logged at most once per [`PassingErrors::EVERY`] with a count of
/// those in between, so an outage is visible without flooding the log.
#[derive(Default)]
struct PassingErrors {
    last_logged: Option<std::time::Instant>,
    since_logged: u64,
}

impl PassingErrors {
    const EVERY: Duration = Duration::from_secs(5);

    fn note(&mut self, error: &KafkaError) {
        self.since_logged += 1;
        if self.last_logged.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        tracing::warn!(%error, errors = self.since_logged, "reading from Kafka: passing error, librdkafka retries");
        self.last_logged = Some(std::time::Instant::now());
        self.since_logged = 0;
    }
}

/// How often a group member compares its assignment with librdkafka's fetch states.
const STALL_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a member without partitions reports its group state (a member may legitimately
/// hold none, when the group has more members than partitions, so it is only reported).
const UNASSIGNED_REPORT_EVERY: Duration = Duration::from_secs(30);

/// Held records of a paused partition past which it is paused in librdkafka as well,
/// bounding the memory a long pause can take.
const HARD_PAUSE_AT: usize = 10_000;

pub(crate) struct KafkaConsumer {
    consumer: Arc<StreamConsumer<RebalanceEvents>>,
    group: Option<String>,
    topics: Arc<TopicCache>,
    endpoint: String,
    timeout: Duration,
    /// Events ready to hand out, rebalances ahead of the records that follow them.
    ready: VecDeque<ConsumerEvent>,
    /// Records of paused partitions that librdkafka had already fetched.
    held: HashMap<TopicPartition, VecDeque<ConsumerEvent>>,
    /// Paused partitions. A pause is kept here first (records are held back, librdkafka
    /// keeps fetching); only a partition holding [`HARD_PAUSE_AT`] records is paused in
    /// librdkafka too (`hard_paused`). librdkafka discards what it fetched for a paused
    /// partition and refetches after a resume only once its in-flight fetch returns (up to
    /// `fetch.wait.max.ms`), so pausing there on every full buffer capped a busy worker at
    /// a few hundred records/s.
    paused: HashSet<TopicPartition>,
    hard_paused: HashSet<TopicPartition>,
    assignment: HashSet<TopicPartition>,
    /// Assign-only mode: where each partition reads next, to re-assign on a seek.
    positions: HashMap<TopicPartition, Offset>,
    passing: PassingErrors,
    stalls: StallWatch,
    last_stall_check: std::time::Instant,
    /// Since when the member has held no partition (see `report_unassigned`).
    unassigned_since: Option<std::time::Instant>,
}

impl KafkaConsumer {
    pub(crate) fn new(consumer: StreamConsumer<RebalanceEvents>, group: Option<String>, topics: Arc<TopicCache>, endpoint: String, timeout: Duration) -> Self {
        Self {
            consumer: Arc::new(consumer),
            group,
            topics,
            endpoint,
            timeout,
            ready: VecDeque::new(),
            held: HashMap::new(),
            paused: HashSet::new(),
            hard_paused: HashSet::new(),
            assignment: HashSet::new(),
            positions: HashMap::new(),
            passing: PassingErrors::default(),
            stalls: StallWatch::default(),
            last_stall_check: std::time::Instant::now(),
            unassigned_since: None,
        }
    }

    fn err(&self, operation: &'static str, error: KafkaError) -> LogError {
        map_error(operation, &self.endpoint, None, error)
    }

    /// Runs a blocking librdkafka call off the async runtime.
    async fn blocking<T: Send + 'static>(&self, call: impl FnOnce(&StreamConsumer<RebalanceEvents>) -> T + Send + 'static) -> LogResult<T> {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || call(&consumer)).await.map_err(|_| LogError::Shutdown)
    }

    async fn resolve(&self, tp: &TopicPartition, to: SeekTo) -> LogResult<Offset> {
        Ok(match to {
            SeekTo::Earliest => Offset::Beginning,
            SeekTo::Latest => Offset::End,
            SeekTo::Offset(o) => Offset::Offset(o),
            SeekTo::Timestamp(ts) => {
                let tpl = to_tpl([(tp, Offset::Offset(ts))])?;
                let timeout = self.timeout;
                let found = self.blocking(move |c| c.offsets_for_times(tpl, timeout)).await?.map_err(|e| self.err("offsets for times", e))?;
                match found.elements().first().map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Offset::Offset(o),
                    _ => Offset::End,
                }
            }
        })
    }

    /// A group member whose assignment holds a partition librdkafka has not started fetching
    /// for [`super::fetch_states::STALLED_AFTER`] fails with [`LogError::Stalled`]: only
    /// leaving the group and joining again gets such a partition read (librdkafka#5586).
    fn check_stalls(&mut self) -> LogResult<()> {
        if self.group.is_none() || self.last_stall_check.elapsed() < STALL_CHECK_EVERY {
            return Ok(());
        }
        let now = std::time::Instant::now();
        self.last_stall_check = now;
        let assignment = self.assignment();
        self.report_unassigned(assignment.is_empty(), now);
        match self.stalls.check(&assignment, &self.consumer.context().fetch_states, now) {
            None => Ok(()),
            Some(stall) => {
                self.stalls.reset();
                Err(LogError::Stalled { topic: stall.partition.topic, partition: stall.partition.partition, state: stall.state, after: stall.after })
            }
        }
    }

    /// Logs, every [`UNASSIGNED_REPORT_EVERY`] a member holds no partition, its group state
    /// as librdkafka reports it. A member that rejoined after a fenced transaction once got no
    /// partition for minutes while two partitions had no owner (fault suite,
    /// `broker_leader_kill`); this is the evidence for the next such run.
    fn report_unassigned(&mut self, unassigned: bool, now: std::time::Instant) {
        if !unassigned {
            self.unassigned_since = None;
            return;
        }
        let since = *self.unassigned_since.get_or_insert(now);
        if now.duration_since(since) >= UNASSIGNED_REPORT_EVERY {
            self.unassigned_since = Some(now);
            let group = self.consumer.context().fetch_states.group();
            tracing::info!(group = ?self.group, state = ?group, "this group member has held no partition for {UNASSIGNED_REPORT_EVERY:?}");
        }
    }

    fn take_rebalances(&mut self) {
        let pending: Vec<ConsumerEvent> = self.consumer.context().pending.lock().expect("rebalance queue lock poisoned").drain(..).collect();
        for event in pending {
            match &event {
                ConsumerEvent::Assigned(parts) => self.assignment.extend(parts.iter().cloned()),
                ConsumerEvent::Revoked(parts) => {
                    for p in parts {
                        self.assignment.remove(p);
                        self.held.remove(p);
                        self.paused.remove(p);
                        self.hard_paused.remove(p);
                    }
                    // Records already queued for revoked partitions belong to their new owner.
                    self.ready.retain(|e| !matches!(e, ConsumerEvent::Record(r) if parts.contains(&r.topic_partition())));
                }
                ConsumerEvent::Record(_) => {}
            }
            self.ready.push_back(event);
        }
    }
}

/// librdkafka's pause and resume wait, on the calling (async) thread and without a timeout,
/// until the thread serving each partition has applied them. A call that took long is logged:
/// a worker that stopped reading with partitions during a broker outage (fault suite) left
/// no line saying where it waited.
fn slow_call(operation: &str, partition: &TopicPartition, started: std::time::Instant) {
    let took = started.elapsed();
    if took >= std::time::Duration::from_millis(500) {
        tracing::warn!(operation, %partition, took_ms = took.as_millis() as u64, "a librdkafka pause/resume call blocked this thread");
    }
}

fn to_record(message: &BorrowedMessage<'_>) -> ConsumedRecord {
    let headers = message
        .headers()
        .map(|hs| hs.iter().map(|h| Header { name: h.key.to_string(), value: Bytes::copy_from_slice(h.value.unwrap_or_default()) }).collect())
        .unwrap_or_default();
    ConsumedRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(Bytes::copy_from_slice),
        headers,
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        timestamp_ms: message.timestamp().to_millis().unwrap_or_default(),
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    fn subscribe(&mut self, topics: &[String]) -> LogResult<()> {
        if self.group.is_none() {
            return Err(LogError::Invalid { what: "subscribe", reason: "a consumer without a group can only assign".into() });
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&names).map_err(|e| self.err("subscribe", e))
    }

    async fn assign(&mut self, partitions: &[(TopicPartition, SeekTo)]) -> LogResult<()> {
        let mut resolved = Vec::with_capacity(partitions.len());
        for (tp, to) in partitions {
            let count = self.topics.partitions(&tp.topic).await?;
            if tp.partition < 0 || tp.partition >= count {
                return Err(LogError::UnknownPartition { topic: tp.topic.clone(), partition: tp.partition });
            }
            resolved.push((tp.clone(), self.resolve(tp, *to).await?));
        }
        let tpl = to_tpl(resolved.iter().map(|(tp, o)| (tp, *o)))?;
        self.consumer.assign(&tpl).map_err(|e| self.err("assign", e))?;
        self.positions = resolved.into_iter().collect();
        self.assignment = self.positions.keys().cloned().collect();
        self.ready.clear();
        self.held.clear();
        // Paused partitions start out holding again; make sure librdkafka fetches them.
        let hard: Vec<TopicPartition> = self.hard_paused.drain().filter(|p| self.assignment.contains(p)).collect();
        if !hard.is_empty() {
            let tpl = to_tpl(hard.iter().map(|p| (p, Offset::Invalid)))?;
            let started = std::time::Instant::now();
            self.consumer.resume(&tpl).map_err(|e| self.err("resume", e))?;
            if let Some(first) = hard.first() {
                slow_call("resume", first, started);
            }
        }
        Ok(())
    }

    async fn next_event(&mut self) -> LogResult<ConsumerEvent> {
        loop {
            self.take_rebalances();
            self.check_stalls()?;
            if let Some(event) = self.ready.pop_front() {
                if let ConsumerEvent::Record(r) = &event {
                    let tp = r.topic_partition();
                    if self.paused.contains(&tp) {
                        let held = self.held.entry(tp.clone()).or_default();
                        held.push_back(event);
                        if held.len() >= HARD_PAUSE_AT && !self.hard_paused.contains(&tp) {
                            let tpl = to_tpl(std::iter::once((&tp, Offset::Invalid)))?;
                            let started = std::time::Instant::now();
                            self.consumer.pause(&tpl).map_err(|e| self.err("pause", e))?;
                            slow_call("pause", &tp, started);
                            self.hard_paused.insert(tp);
                        }
                        continue;
                    }
                    if self.positions.contains_key(&tp) {
                        self.positions.insert(tp, Offset::Offset(r.offset + 1));
                    }
                }
                return Ok(event);
            }
            // recv is cancel-safe: a message is only taken from librdkafka when it is returned.
            let consumer = self.consumer.clone();
            let record = tokio::select! {
                biased;
                _ = consumer.context().arrived.notified() => continue,
                // Wakes an idle member for its stall check (see `check_stalls`).
                _ = tokio::time::sleep(STALL_CHECK_EVERY), if self.group.is_some() => continue,
                received = consumer.recv() => match received {
                    Ok(message) => to_record(&message),
                    // Only a fatal error ends reading: librdkafka reports broker transport
                    // failures, timeouts and failed offset fetches here as information while it
                    // reconnects and retries by itself, and a member that returned them as
                    // failures stopped whenever one broker of a cluster restarted.
                    Err(error @ KafkaError::MessageConsumptionFatal(_)) => return Err(self.err("consume", error)),
                    Err(error) => {
                        self.passing.note(&error);
                        tokio::time::sleep(PASSING_ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            self.take_rebalances();
            let tp = record.topic_partition();
            if self.assignment.contains(&tp) {
                self.ready.push_back(ConsumerEvent::Record(record));
            }
        }
    }

    async fn seek(&mut self, partition: &TopicPartition, to: SeekTo) -> LogResult<()> {
        if !self.assignment.contains(partition) {
            return Err(LogError::Invalid { what: "seek", reason: format!("{partition} is not assigned to this consumer") });
        }
        let offset = self.resolve(partition, to).await?;
        self.ready.retain(|e| !matches!(e, ConsumerEvent::Record(r) if &r.topic_partition() == partition));
        self.held.remove(partition);
        if self.group.is_none() || self.positions.contains_key(partition) {
            // Assign-only: re-assign everything from where each partition stands. librdkafka
            // refuses `seek` on a partition whose fetcher has not started yet ("Erroneous
            // state"); a fresh assignment has no such window.
            self.positions.insert(partition.clone(), offset);
            let tpl = to_tpl(self.positions.iter().map(|(tp, o)| (tp, *o)))?;
            return self.consumer.assign(&tpl).map_err(|e| self.err("seek", e));
        }
        let tpl = to_tpl([(partition, offset)])?;
        let timeout = self.timeout;
        let started = std::time::Instant::now();
        loop {
            let tpl = tpl.clone();
            let result = self.blocking(move |c| c.seek_partitions(tpl, timeout)).await?;
            let error = match result {
                Ok(done) => done.elements().iter().find_map(|e| e.error().err()),
                Err(e) => Some(e),
            };
            match error {
                None => return Ok(()),
                // The fetcher of a just-assigned partition starts shortly; retry briefly.
                Some(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) && started.elapsed() < timeout => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(e) => return Err(self.err("seek", e)),
            }
        }
    }

    fn pause(&mut self, partitions: &[TopicPartition]) -> LogResult<()> {
        // Validated like a real pause, so a bad partition fails here rather than later.
        to_tpl(partitions.iter().map(|p| (p, Offset::Invalid)))?;
        self.paused.extend(partitions.iter().cloned());
        Ok(())
    }

    fn resume(&mut self, partitions: &[TopicPartition]) -> LogResult<()> {
        let hard: Vec<&TopicPartition> = partitions.iter().filter(|p| self.hard_paused.contains(*p)).collect();
        if !hard.is_empty() {
            let tpl = to_tpl(hard.iter().map(|p| (*p, Offset::Invalid)))?;
            let started = std::time::Instant::now();
            self.consumer.resume(&tpl).map_err(|e| self.err("resume", e))?;
            if let Some(first) = hard.first() {
                slow_call("resume", first, started);
            }
        }
        for p in partitions {
            self.hard_paused.remove(p);
            self.paused.remove(p);
            if let Some(held) = self.held.remove(p) {
                for event in held.into_iter().rev() {
                    self.ready.push_front(event);
                }
            }
        }
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        // A revocation librdkafka already applied but not yet handed out as an event counts:
        // those partitions may be another member's by now.
        let revoked: HashSet<TopicPartition> = self
            .consumer
            .context()
            .pending
            .lock()
            .map(|q| q.iter().filter_map(|e| if let ConsumerEvent::Revoked(p) = e { Some(p.clone()) } else { None }).flatten().collect())
            .unwrap_or_default();
        let mut parts: Vec<TopicPartition> = self.assignment.iter().filter(|p| !revoked.contains(*p)).cloned().collect();
        parts.sort();
        parts
    }

    fn positions(&self) -> Vec<(TopicPartition, i64)> {
        // librdkafka's application position: it moves past control records (transaction
        // markers) as it handles them, though they are never delivered.
        let Ok(tpl) = self.consumer.position() else { return Vec::new() };
        tpl.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
                _ => None,
            })
            // Records fetched but not handed out yet are still to be read.
            .map(|(tp, o)| {
                let held = self
                    .ready
                    .iter()
                    .chain(self.held.get(&tp).into_iter().flatten())
                    .filter_map(|e| match e {
                        ConsumerEvent::Record(r) if r.topic == tp.topic && r.partition == tp.partition => Some(r.offset),
                        _ => None,
                    })
                    .min();
                let o = held.map_or(o, |h| h.min(o));
                (tp, o)
            })
            .collect()
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> LogResult<()> {
        let Some(group) = self.group.clone() else {
            return Err(LogError::Invalid { what: "commit", reason: "a consumer without a group has nothing to commit to".into() });
        };
        self.take_rebalances();
        if let Some((tp, _)) = offsets.iter().find(|(tp, _)| !self.assignment.contains(tp)) {
            return Err(LogError::NotAssigned { group, topic: tp.topic.clone(), partition: tp.partition });
        }
        let tpl = to_tpl(offsets.iter().map(|(tp, o)| (tp, Offset::Offset(*o))))?;
        let result = self.blocking(move |c| c.commit(&tpl, rdkafka::consumer::CommitMode::Sync)).await?;
        result.map_err(|e| match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::StaleMemberEpoch
                | RDKafkaErrorCode::FencedMemberEpoch,
            ) => {
                let (topic, partition) = offsets.first().map(|(tp, _)| (tp.topic.clone(), tp.partition)).unwrap_or_default();
                LogError::NotAssigned { group: group.clone(), topic, partition }
            }
            _ => self.err("commit", e),
        })
    }

    async fn committed(&self, partitions: &[TopicPartition]) -> LogResult<Vec<Option<i64>>> {
        let tpl = to_tpl(partitions.iter().map(|p| (p, Offset::Invalid)))?;
        let timeout = self.timeout;
        let found = self.blocking(move |c| c.committed_offsets(tpl, timeout)).await?.map_err(|e| self.err("committed", e))?;
        Ok(committed_in(&found, partitions))
    }

    fn group_metadata(&self) -> Option<GroupMetadata> {
        self.group.as_ref()?;
        self.consumer.group_metadata().map(|m| GroupMetadata(GroupMetadataInner::Kafka(Arc::new(m))))
    }

    async fn close(self: Box<Self>) -> LogResult<()> {
        let consumer = self.consumer;
        // Dropping the last handle closes the consumer (leave group, commit nothing more),
        // which blocks while librdkafka talks to the coordinator.
        tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await
        .map_err(|_| LogError::Shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;
    use crate::{EventLog, TopicSpec};

    /// The stall check relies on librdkafka's statistics naming each assigned partition's fetch
    /// state; a real client must deliver them in the shape `FetchStates` reads, or the check
    /// would silently never fire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Kafka: AGENTLOG_TEST_KAFKA names a broker (make test starts one and runs these)"]
    async fn a_group_member_sees_the_fetch_state_of_its_partitions() {
        let bootstrap = match std::env::var("AGENTLOG_TEST_KAFKA") {
            Ok(servers) if !servers.trim().is_empty() => servers,
            _ => panic!("this Kafka test needs AGENTLOG_TEST_KAFKA to name a broker (scripts/kafka-local.sh start; make test does both)"),
        };
        let mut kafka = LogConfig::shipped_defaults().kafka;
        kafka.bootstrap_servers = bootstrap;
        kafka.request_timeout_ms = 15_000;
        let log = super::super::KafkaLog::connect(&kafka, 100_000).expect("connect");
        let topic = format!("fetch-states-{}-{:08x}", std::process::id(), rand::random::<u32>());
        log.admin().create_topic(&TopicSpec::new(&topic, 2)).await.expect("create topic");
        let group = format!("fetch-states-{:08x}", rand::random::<u32>());
        let created: StreamConsumer<RebalanceEvents> =
            super::super::client::consumer_config(&kafka, Some(&group), None).create_with_context(RebalanceEvents::default()).expect("consumer");
        let mut consumer = KafkaConsumer::new(created, Some(group), log.topics.clone(), "test".into(), Duration::from_secs(15));
        consumer.subscribe(std::slice::from_ref(&topic)).expect("subscribe");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut assigned = Vec::new();
        while assigned.len() < 2 {
            match tokio::time::timeout_at(deadline, consumer.next_event()).await.expect("assigned within 60 s") {
                Ok(ConsumerEvent::Assigned(parts)) => assigned.extend(parts),
                Ok(_) => {}
                Err(error) => panic!("reading: {error}"),
            }
        }
        // Statistics arrive every STATISTICS_INTERVAL_MS, served inside the consumer's poll.
        let mut states = Vec::new();
        while tokio::time::Instant::now() < deadline {
            states = assigned.iter().map(|tp| consumer.consumer.context().fetch_states.state(tp)).collect::<Vec<_>>();
            if states.iter().all(|s| s.as_deref() == Some("active")) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), consumer.next_event()).await;
        }
        assert!(
            states.iter().all(|s| s.as_deref() == Some("active")),
            "librdkafka's statistics report every assigned partition of an empty topic as fetching: {states:?}"
        );
        Box::new(consumer).close().await.expect("close");
        log.admin().delete_topic(&topic).await.expect("delete topic");
    }
}
