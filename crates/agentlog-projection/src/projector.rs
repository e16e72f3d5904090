//! The projector: reads the task, agent, job and dead-letter topics and applies them to the store in
//! batches, each batch one WriteBatch with the next offsets of the partitions it read. It
//! starts from the offsets in the store, so a restart (even after kill -9) resumes exactly
//! where durable state ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::apply::{Changes, OutcomeNotice, Source, WrittenTasks};
use super::store::{ProjectionStore, StoreError};
use crate::agent::{AgentTypeConfig, TaskTopics};
use crate::events::AnyEvent;
use crate::events::any::decode_any;
use crate::events::wire::{WireCodec, WireError};
use crate::log::{ConsumedRecord, Consumer, ConsumerEvent, ConsumerOptions, EventLog, LogError, SeekTo, TopicPartition};
use crate::trace;

/// Most records applied in one WriteBatch.
pub const MAX_BATCH: usize = 4096;
/// While catching up, this long without any record means the history has been read, on a
/// backend whose consumers report no positions.
pub const IDLE: Duration = Duration::from_secs(1);
/// How often a catch-up compares its consumer's positions with the history's end.
const POSITIONS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the log: {0}")]
    Log(#[from] LogError),
    /// The record at `position` needs the schema registry to be read, and it failed: the
    /// projection waits (and says so in `/readyz`) rather than move past the record.
    #[error("decoding {position}: {error}")]
    Registry { position: String, error: WireError },
}

/// The topics a projection reads: every lane of every declared agent type, `timers`, `dlq`
/// (indexed so dead letters page like tasks), `task.stream` (kept per task for its SSE
/// stream), and the task, result, agent and heartbeat topics.
pub fn sources(topics: &TaskTopics, agents: &std::collections::BTreeMap<String, AgentTypeConfig>) -> Vec<(String, Source)> {
    let mut out = vec![
        (topics.timers(), Source::Timers),
        (topics.dlq(), Source::Dlq),
        (topics.events(), Source::Other),
        (topics.results(), Source::Other),
        (topics.stream(), Source::Stream),
        (topics.agent_events(), Source::Other),
        (topics.heartbeats(), Source::Other),
    ];
    for name in agents.keys() {
        for lane in agents[name].lanes_by_priority() {
            out.push((topics.lane(name, lane), Source::Lane));
        }
    }
    out
}

/// What the API reads: the current store (replaceable by a replay), how far it has applied,
/// and the stream of outcomes.
pub struct Projection {
    /// Why the projector is not following the log right now (it is retrying), for `/readyz`.
    trouble: Mutex<Option<String>>,
    store: RwLock<Arc<ProjectionStore>>,
    applied: Mutex<HashMap<(String, i32), i64>>,
    version: watch::Sender<u64>,
    outcomes: broadcast::Sender<Arc<OutcomeNotice>>,
    caught_up: watch::Sender<bool>,
    sources: Vec<(String, Source)>,
}

impl Projection {
    pub fn new(store: ProjectionStore, sources: Vec<(String, Source)>) -> Result<Arc<Projection>, StoreError> {
        let applied = store.offsets()?;
        Ok(Arc::new(Projection {
            trouble: Mutex::new(None),
            store: RwLock::new(Arc::new(store)),
            applied: Mutex::new(applied),
            version: watch::channel(0).0,
            outcomes: broadcast::channel(4096).0,
            caught_up: watch::channel(false).0,
            sources,
        }))
    }

    pub fn store(&self) -> Arc<ProjectionStore> {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the store (after a replay rebuilt it elsewhere); returns the old one.
    pub fn swap(&self, store: ProjectionStore) -> Result<Arc<ProjectionStore>, StoreError> {
        let applied = store.offsets()?;
        let mut guard = self.store.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *guard, Arc::new(store));
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = applied;
        self.version.send_modify(|v| *v += 1);
        Ok(old)
    }

    pub fn sources(&self) -> &[(String, Source)] {
        &self.sources
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<OutcomeNotice>> {
        self.outcomes.subscribe()
    }

    /// Changes each time applied records become readable (or the store is replaced): what a
    /// reader following a task's stream waits on.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Why the projector is retrying instead of following the log, if it is.
    pub fn trouble(&self) -> Option<String> {
        self.trouble.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_trouble(&self, trouble: Option<String>) {
        *self.trouble.lock().unwrap_or_else(|p| p.into_inner()) = trouble;
    }

    /// The next offset the projection will apply, per source partition.
    pub fn applied(&self) -> HashMap<(String, i32), i64> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn has_applied(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).get(&(topic.to_string(), partition)).is_some_and(|next| *next > offset)
    }

    /// Waits until the record at `offset` of `topic`/`partition` has been applied (read your
    /// writes); `false` if `timeout` passed first.
    pub async fn wait_applied(&self, topic: &str, partition: i32, offset: i64, timeout: Duration) -> bool {
        let mut version = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.has_applied(topic, partition, offset) {
                return true;
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.has_applied(topic, partition, offset),
            }
        }
    }

    fn published(&self, offsets: &HashMap<(String, i32), i64>, notices: Vec<OutcomeNotice>) {
        {
            let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            for (tp, next) in offsets {
                let slot = applied.entry(tp.clone()).or_insert(*next);
                *slot = (*slot).max(*next);
            }
        }
        self.version.send_modify(|v| *v += 1);
        for notice in notices {
            // No subscribers is fine: nobody is streaming.
            let _ = self.outcomes.send(Arc::new(notice));
        }
    }

    /// Records not applied yet, per source topic, against the current high watermarks.
    pub async fn lag(&self, log: &Arc<dyn EventLog>) -> Result<HashMap<String, i64>, LogError> {
        let admin = log.admin();
        let applied = self.applied();
        let mut out = HashMap::new();
        for (topic, _) in &self.sources {
            let partitions = admin.describe_topic(topic).await?.partitions;
            let mut lag = 0;
            for p in 0..partitions {
                let marks = admin.watermarks(&TopicPartition::new(topic.clone(), p)).await?;
                let next = applied.get(&(topic.clone(), p)).copied().unwrap_or(marks.low).max(marks.low);
                lag += (marks.high - next).max(0);
            }
            out.insert(topic.clone(), lag);
        }
        Ok(out)
    }
}

/// Opens an assign-only consumer over `sources`, each partition from `offsets` (or its
/// start). Returns it with the high watermarks at open time.
async fn open_sources(
    log: &Arc<dyn EventLog>,
    sources: &[(String, Source)],
    offsets: &HashMap<(String, i32), i64>,
) -> Result<(Box<dyn Consumer>, HashMap<(String, i32), i64>), ProjectorError> {
    let admin = log.admin();
    let mut assignment = Vec::new();
    let mut behind = HashMap::new();
    for (topic, _) in sources {
        let partitions = admin.describe_topic(topic).await?.partitions;
        for p in 0..partitions {
            let tp = TopicPartition::new(topic.clone(), p);
            let marks = admin.watermarks(&tp).await?;
            let from = offsets.get(&(topic.clone(), p)).copied().unwrap_or(marks.low).max(marks.low);
            if from < marks.high {
                behind.insert((topic.clone(), p), marks.high);
            }
            assignment.push((tp, SeekTo::Offset(from)));
        }
    }
    let mut consumer = log.consumer(ConsumerOptions { group: None, client_id: Some("agentlog-projector".into()), time_ordered: true })?;
    consumer.assign(&assignment).await?;
    Ok((consumer, behind))
}

/// Most records the reader decodes and hands over at once while catching up.
pub const CATCH_UP_BATCH: usize = 2_048;
/// Decoded batches waiting for the applier (~32k records): the reader runs ahead of the
/// applier, so a deeper queue only holds more memory (64 measured no faster, 80 MB more).
const CATCH_UP_QUEUE: usize = 16;
/// Records applied in memory before they are written (with their offsets) while catching
/// up from a log that delivers in time order: a task's events then arrive together, and
/// small rounds keep the round's maps and WriteBatch in cache and let memory be reused
/// instead of faulted in (1M-event embedded rebuild, before time order: 262,144 → ~290k
/// events/s, 65,536 → ~325k, 4,096 → ~400k).
pub const CATCH_UP_WRITE_EVERY: usize = 4_096;
/// The same for a log whose partitions interleave as they come (Kafka): a task's events
/// can be far apart, and a task whose events span two rounds is read back from the store,
/// so rounds are large (4,096 took a Kafka rebuild from ~250k to ~195k events/s).
pub const CATCH_UP_WRITE_EVERY_UNORDERED: usize = 262_144;

type DecodedBatch = Vec<(ConsumedRecord, Option<AnyEvent>)>;

/// Decodes a batch. A record that cannot be decoded stays in the log; the projection moves
/// past it (and says so). A registry that cannot be asked is not the record's fault: the
/// batch fails with [`ProjectorError::Registry`] and the projector retries it from its stored
/// offsets, as after any passing failure. Fired-timer markers are empty and carry nothing.
async fn decode_batch(codec: &WireCodec, mut records: Vec<ConsumedRecord>) -> Result<DecodedBatch, ProjectorError> {
    let mut out = Vec::with_capacity(records.len());
    decode_into(codec, &mut records, &mut out).await?;
    Ok(out)
}

/// [`decode_batch`] into buffers the caller reuses: a catch-up hands over a batch every
/// millisecond or so, and fresh vectors for each (freed on the applier's thread) made the
/// allocator fault in new memory.
async fn decode_into(codec: &WireCodec, records: &mut Vec<ConsumedRecord>, out: &mut DecodedBatch) -> Result<(), ProjectorError> {
    out.reserve(records.len());
    for record in records.drain(..) {
        let event = if record.payload.is_empty() {
            None
        } else {
            match decode_any(codec, &record.payload).await {
                Ok(event) => Some(event),
                Err(error) if error.is_passing() => {
                    return Err(ProjectorError::Registry { position: format!("{}/{}@{}", record.topic, record.partition, record.offset), error });
                }
                Err(error) => {
                    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %error, "projection skipped an undecodable record");
                    None
                }
            }
        };
        out.push((record, event));
    }
    Ok(())
}

/// What applying a batch did: the next offset of each (topic, partition) it touched, the
/// outcomes it reached and the number of events applied.
type Applied = (HashMap<(String, i32), i64>, Vec<OutcomeNotice>, usize);

/// Applies a decoded batch as one WriteBatch with the next offsets of its partitions.
fn apply_decoded(store: &ProjectionStore, kinds: &HashMap<String, Source>, batch: DecodedBatch) -> Result<Applied, ProjectorError> {
    let mut changes = Changes::new(store);
    // Traces: the projection is a task's last hop; each outcome's span ends once its batch is
    // written (dropped at the end of this function).
    let mut spans = Vec::new();
    for (record, event) in batch {
        changes.consumed(&record.topic, record.partition, record.offset);
        if let Some(span) = event.as_ref().and_then(outcome_span) {
            spans.push(span);
        }
        apply_record(&mut changes, kinds, &record, event)?;
    }
    if changes.is_empty() {
        return Ok((HashMap::new(), Vec::new(), 0));
    }
    let applied = changes.applied;
    let offsets = changes.next_offsets();
    let (write, notices) = changes.finish()?;
    store.write(write)?;
    Ok((offsets, notices, applied))
}

/// The span of a task's outcome being projected, a child of the attempt that wrote it; only
/// while tracing is on and for a sampled trace (checked on the event, before any span is made).
fn outcome_span(event: &AnyEvent) -> Option<tracing::Span> {
    if !trace::enabled() {
        return None;
    }
    let meta = match event {
        AnyEvent::TaskCompleted(e) => &e.meta,
        AnyEvent::TaskFailed(e) => &e.meta,
        AnyEvent::TaskDeadLettered(e) => &e.meta,
        AnyEvent::TaskCancelled(e) => &e.meta,
        AnyEvent::TaskExpired(e) => &e.meta,
        _ => return None,
    };
    let context = trace::Context::of(meta).filter(trace::Context::sampled)?;
    let span = tracing::info_span!(
        target: trace::TARGET,
        "project",
        otel.name = %format_args!("project {}", event.name()),
        otel.kind = "consumer",
        agentlog.task_id = event.task_ref().map_or("", |(_, id)| id),
    );
    trace::set_parent(&span, Some(&context));
    Some(span)
}

/// Applies one decoded record by the kind of its topic: a dead letter is indexed with its
/// headers, anything else applied as an event.
fn apply_record(changes: &mut Changes<'_>, kinds: &HashMap<String, Source>, record: &ConsumedRecord, event: Option<AnyEvent>) -> Result<(), StoreError> {
    match kinds.get(&record.topic).copied().unwrap_or(Source::Other) {
        Source::Dlq => changes.dead_letter(record, event),
        Source::Stream => changes.streamed(record, event),
        kind => match event {
            Some(event) => changes.apply(kind, event),
            None => Ok(()),
        },
    }
}

/// Takes the next record, then whatever else is ready, up to `max`.
fn drain_ready(consumer: &mut Box<dyn Consumer>, first: ConsumedRecord, max: usize) -> Result<Vec<ConsumedRecord>, LogError> {
    let mut records = Vec::new();
    drain_ready_into(consumer, first, max, &mut records)?;
    Ok(records)
}

/// [`drain_ready`] into a vector the caller reuses.
fn drain_ready_into(consumer: &mut Box<dyn Consumer>, first: ConsumedRecord, max: usize, records: &mut Vec<ConsumedRecord>) -> Result<(), LogError> {
    records.push(first);
    while records.len() < max {
        match consumer.next_event().now_or_never() {
            Some(Ok(ConsumerEvent::Record(record))) => records.push(record),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error),
            None => break,
        }
    }
    Ok(())
}

fn kinds_of(sources: &[(String, Source)]) -> HashMap<String, Source> {
    sources.iter().cloned().collect()
}

/// High watermarks still to reach, by topic then partition (looked up by &str per record).
type Behind = HashMap<String, HashMap<i32, i64>>;

fn behind_of(flat: HashMap<(String, i32), i64>) -> Behind {
    let mut out: Behind = HashMap::new();
    for ((topic, partition), high) in flat {
        out.entry(topic).or_default().insert(partition, high);
    }
    out
}

fn high_of(behind: &Behind, topic: &str, partition: i32) -> Option<i64> {
    behind.get(topic).and_then(|p| p.get(&partition)).copied()
}

fn remove_behind(behind: &mut Behind, topic: &str, partition: i32) {
    if let Some(partitions) = behind.get_mut(topic) {
        partitions.remove(&partition);
        if partitions.is_empty() {
            behind.remove(topic);
        }
    }
}

/// Ends the partitions whose read position passed the high mark taken at the start.
fn settle_passed_partitions(positions: Vec<(TopicPartition, i64)>, behind: &mut Behind) {
    for (tp, position) in positions {
        if high_of(behind, &tp.topic, tp.partition).is_some_and(|high| position >= high) {
            remove_behind(behind, &tp.topic, tp.partition);
        }
    }
}

/// Keeps of `records` only what existed at the start (later records belong to the live
/// projector) and, with --as-of, only what was written by then; ends the partitions they
/// show finished: a record at or past the last offset of the history (also when it is itself
/// too new to keep), or one past `as_of_ms`.
fn keep_history(records: &mut Vec<ConsumedRecord>, behind: &mut Behind, as_of_ms: Option<i64>) {
    let mut ended = Vec::new();
    records.retain(|r| {
        if as_of_ms.is_some_and(|as_of| r.timestamp_ms > as_of) {
            ended.push((r.topic.clone(), r.partition));
            return false;
        }
        let Some(high) = high_of(behind, &r.topic, r.partition) else { return false };
        if r.offset + 1 >= high {
            ended.push((r.topic.clone(), r.partition));
        }
        r.offset < high
    });
    for (topic, partition) in ended {
        remove_behind(behind, &topic, partition);
    }
}

/// The reading half of a catch-up: reads what existed at the start (up to `as_of_ms`),
/// decodes it on this task (so decoding and applying use two cores) and hands batches over.
/// Ends when everything is read, nothing arrived for [`IDLE`], or the receiver is gone.
async fn read_history(
    mut consumer: Box<dyn Consumer>,
    mut behind: Behind,
    codec: Arc<WireCodec>,
    as_of_ms: Option<i64>,
    batches: mpsc::Sender<Result<DecodedBatch, ProjectorError>>,
    recycled: std::sync::mpsc::Receiver<DecodedBatch>,
) {
    let mut records = Vec::with_capacity(CATCH_UP_BATCH);
    let mut last_record = Instant::now();
    let mut last_positions = Instant::now();
    while !behind.is_empty() {
        // A partition is read to its end once the consumer's position passed the high mark
        // taken at the start, even if its last offsets were transaction markers that are
        // never delivered. Ending on silence alone never ended while workers kept writing
        // heartbeats: the API then stayed not ready for good behind an exactly-once topic.
        if last_positions.elapsed() >= POSITIONS_EVERY {
            last_positions = Instant::now();
            settle_passed_partitions(consumer.positions(), &mut behind);
            if behind.is_empty() {
                break;
            }
        }
        let first = match tokio::time::timeout(POSITIONS_EVERY, consumer.next_event()).await {
            // Nothing at all for IDLE: what is left ends in markers on a backend that does
            // not report positions.
            Err(_) if last_record.elapsed() >= IDLE => break,
            Err(_) => continue,
            Ok(Ok(ConsumerEvent::Record(record))) => record,
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => {
                let _ = batches.send(Err(error.into())).await;
                break;
            }
        };
        last_record = Instant::now();
        if let Err(error) = drain_ready_into(&mut consumer, first, CATCH_UP_BATCH, &mut records) {
            let _ = batches.send(Err(error.into())).await;
            break;
        }
        keep_history(&mut records, &mut behind, as_of_ms);
        if records.is_empty() {
            continue;
        }
        let mut decoded = recycled.try_recv().unwrap_or_else(|_| Vec::with_capacity(CATCH_UP_BATCH));
        if let Err(error) = decode_into(&codec, &mut records, &mut decoded).await {
            let _ = batches.send(Err(error)).await;
            break;
        }
        if batches.send(Ok(decoded)).await.is_err() {
            break;
        }
    }
    if let Err(error) = consumer.close().await {
        tracing::debug!(%error, "closing the catch-up consumer");
    }
}

/// A projector that ran this long was healthy: the next failure starts the back-off over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Follows the sources into `projection` until `cancel`: first the history (pipelined,
/// without the WAL, flushed at the end), then record by record as they arrive.
///
/// A failure (the cluster unreachable, a leader moving, the store refusing a write) never
/// ends it: it is reported through [`Projection::trouble`] (so `/readyz` says what it waits
/// for), and after a back-off the projector starts again from the offsets in the store,
/// which are exactly where its durable state ends.
///
/// Boxed here so a crate that runs it compiles a pointer, not this async body again (Rust
/// compiles an async function's body in every crate that awaits it; BENCHMARKS.md, build times).
pub fn run(
    log: Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    projection: Arc<Projection>,
    cancel: CancellationToken,
) -> BoxFuture<'static, Result<(), ProjectorError>> {
    Box::pin(running(log, codec, projection, cancel))
}

async fn running(log: Arc<dyn EventLog>, codec: Arc<WireCodec>, projection: Arc<Projection>, cancel: CancellationToken) -> Result<(), ProjectorError> {
    let mut backoff = crate::backoff::Backoff::default();
    loop {
        let began = Instant::now();
        let result = follow(&log, &codec, &projection, &cancel).await;
        if cancel.is_cancelled() {
            return Ok(());
        }
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if began.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        tracing::error!(%error, failures = backoff.failures() + 1, "projector failed; starting again from the stored offsets after a back-off");
        projection.set_trouble(Some(format!("projector: {error} (retrying)")));
        if !backoff.wait(&cancel).await {
            return Ok(());
        }
    }
}

/// One run of the projector: catches up (the first time) and follows until `cancel` or a failure.
async fn follow(log: &Arc<dyn EventLog>, codec: &Arc<WireCodec>, projection: &Arc<Projection>, cancel: &CancellationToken) -> Result<(), ProjectorError> {
    let kinds = kinds_of(&projection.sources);
    let mut store = projection.store();
    if !projection.is_caught_up() {
        let report = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            report = catch_up(log, codec.clone(), &projection.sources, &store, None) => report?,
        };
        tracing::info!(events = report.events, elapsed_ms = report.elapsed.as_millis() as u64, "projection caught up");
        projection.published(&store.offsets()?, Vec::new());
        projection.caught_up.send_replace(true);
    }
    let offsets = store.offsets()?;
    let (mut consumer, _) = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        opened = open_sources(log, &projection.sources, &offsets) => opened?,
    };
    projection.set_trouble(None);
    let result = loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            next = consumer.next_event() => match next {
                Ok(ConsumerEvent::Record(record)) => record,
                Ok(_) => continue,
                Err(error) => break Err(error.into()),
            },
        };
        let records = match drain_ready(&mut consumer, first, MAX_BATCH) {
            Ok(records) => records,
            Err(error) => break Err(error.into()),
        };
        // A replay may have swapped the store: continue from its offsets.
        let current = projection.store();
        if !Arc::ptr_eq(&current, &store) {
            store = current;
            let offsets = match store.offsets() {
                Ok(offsets) => offsets,
                Err(error) => break Err(error.into()),
            };
            match open_sources(log, &projection.sources, &offsets).await {
                Ok((fresh, _)) => {
                    let old = std::mem::replace(&mut consumer, fresh);
                    old.close().await.ok();
                }
                Err(error) => break Err(error),
            }
            continue;
        }
        let decoded = match decode_batch(codec, records).await {
            Ok(decoded) => decoded,
            Err(error) => break Err(error),
        };
        match apply_decoded(&store, &kinds, decoded) {
            Ok((offsets, notices, _)) => projection.published(&offsets, notices),
            Err(error) => break Err(error),
        }
    };
    if let Err(error) = consumer.close().await {
        tracing::debug!(%error, "closing the projector's consumer");
    }
    result
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct RebuildReport {
    pub records: usize,
    pub events: usize,
    pub elapsed: Duration,
}

/// Applies the sources into `store` from its offsets (empty: from the start) up to the high
/// watermarks at the start, or only records written at or before `as_of_ms`. Decoding runs
/// on a second task; writes skip the WAL and are flushed at the end.
pub async fn catch_up(
    log: &Arc<dyn EventLog>,
    codec: Arc<WireCodec>,
    sources: &[(String, Source)],
    store: &ProjectionStore,
    as_of_ms: Option<i64>,
) -> Result<RebuildReport, ProjectorError> {
    let started = Instant::now();
    let kinds = kinds_of(sources);
    let (consumer, behind) = open_sources(log, sources, &store.offsets()?).await?;
    let write_every = if log.orders_by_time() { CATCH_UP_WRITE_EVERY } else { CATCH_UP_WRITE_EVERY_UNORDERED };
    let (sender, mut batches) = mpsc::channel(CATCH_UP_QUEUE);
    // Emptied batches go back to the reader to be filled again.
    let (recycle, recycled) = std::sync::mpsc::channel();
    // The reader ends on its own once this receiver is dropped (also when this future is).
    let reader = tokio::spawn(read_history(consumer, behind_of(behind), codec, as_of_ms, sender, recycled));
    let mut records = 0;
    let mut events = 0;
    let mut failure = None;
    // One set of changes across many batches: a task's events, spread over several topics,
    // fold into one write of its view. Offsets go into the same WriteBatch as always.
    let mut changes = if store.holds_tasks()? { Changes::quiet(store) } else { Changes::quiet_fresh(store, WrittenTasks::default()) };
    let mut pending = 0;
    while let Some(batch) = batches.recv().await {
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                failure = Some(error);
                break;
            }
        };
        records += batch.len();
        pending += batch.len();
        let applied = batch.drain(..).try_for_each(|(record, event)| {
            changes.consumed(&record.topic, record.partition, record.offset);
            apply_record(&mut changes, &kinds, &record, event)
        });
        // The reader may be gone already; then the batch is simply freed.
        let _ = recycle.send(batch);
        if let Err(error) = applied {
            failure = Some(error.into());
            break;
        }
        if pending >= write_every {
            events += changes.applied;
            let finished = changes.finish_round().and_then(|write| store.write_unlogged(write));
            pending = 0;
            if let Err(error) = finished {
                failure = Some(error.into());
                break;
            }
        }
    }
    if failure.is_none() && !changes.is_empty() {
        events += changes.applied;
        if let Err(error) = changes.finish().and_then(|(write, _)| store.write_unlogged(write)) {
            failure = Some(error.into());
        }
    }
    drop(batches);
    if reader.await.is_err() {
        failure.get_or_insert(ProjectorError::Log(LogError::Shutdown));
    }
    store.flush()?;
    match failure {
        Some(error) => Err(error),
        None => Ok(RebuildReport { records, events, elapsed: started.elapsed() }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    #[error(transparent)]
    Generation(#[from] super::GenerationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Rebuilds the projection from the start of the log into the next generation while the
/// current one keeps serving, then swaps it in; the live projector continues from the new
/// generation's offsets.
pub async fn replay_and_swap(
    log: &Arc<dyn EventLog>,
    codec: &Arc<WireCodec>,
    projection: &Projection,
    generations: &super::Generations,
) -> Result<RebuildReport, ReplayError> {
    let (next, path) = generations.prepare_next()?;
    let store = ProjectionStore::open(&path)?;
    let mut report = catch_up(log, codec.clone(), projection.sources(), &store, None).await?;
    // What arrived during the first pass, so the swap does not step back noticeably.
    let tail = catch_up(log, codec.clone(), projection.sources(), &store, None).await?;
    report.records += tail.records;
    report.events += tail.events;
    report.elapsed += tail.elapsed;
    projection.swap(store)?;
    generations.switch_to(next)?;
    tracing::info!(generation = next, events = report.events, elapsed_ms = report.elapsed.as_millis() as u64, "projection replayed and swapped in");
    Ok(report)
}
