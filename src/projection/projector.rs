//! The projector: reads the task, agent and job topics and applies them to the store in
//! batches, each batch one WriteBatch with the next offsets of the partitions it read. It
//! starts from the offsets in the store, so a restart (even after kill -9) resumes exactly
//! where durable state ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::apply::{Changes, OutcomeNotice, Source};
use super::store::{ProjectionStore, StoreError};
use crate::agent::{AgentTypeConfig, TaskTopics};
use crate::events::any::decode_any;
use crate::events::wire::WireCodec;
use crate::events::Lane;
use crate::log::{ConsumedRecord, Consumer, ConsumerEvent, ConsumerOptions, EventLog, LogError, SeekTo, TopicPartition};

/// Most records applied in one WriteBatch.
pub const MAX_BATCH: usize = 4096;
/// While catching up, this long without a record means the history has been read (a
/// partition that ends in transaction markers never delivers its last offset).
pub const IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the log: {0}")]
    Log(#[from] LogError),
}

/// The topics a projection reads: every lane of every declared agent type, `timers`, and the
/// task, result, agent and heartbeat topics.
pub fn sources(topics: &TaskTopics, agents: &std::collections::BTreeMap<String, AgentTypeConfig>) -> Vec<(String, Source)> {
    let mut out = vec![
        (topics.timers(), Source::Timers),
        (topics.events(), Source::Other),
        (topics.results(), Source::Other),
        (topics.agent_events(), Source::Other),
        (topics.heartbeats(), Source::Other),
    ];
    for name in agents.keys() {
        for lane in Lane::ALL {
            if agents[name].lanes.iter().any(|l| l == lane.as_str()) {
                out.push((topics.lane(name, lane), Source::Lane));
            }
        }
    }
    out
}

/// What the API reads: the current store (replaceable by a replay), how far it has applied,
/// and the stream of outcomes.
pub struct Projection {
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

    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
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
    let mut consumer = log.consumer(ConsumerOptions { group: None, client_id: Some("agentlog-projector".into()) })?;
    consumer.assign(&assignment).await?;
    Ok((consumer, behind))
}

/// Applies `records` as one WriteBatch. Records past `as_of_ms` are left unapplied (and their
/// offsets untouched). Returns the offsets written, the outcomes and the number applied.
async fn apply_batch(
    store: &ProjectionStore,
    codec: &WireCodec,
    kinds: &HashMap<String, Source>,
    records: &[ConsumedRecord],
    as_of_ms: Option<i64>,
) -> Result<(HashMap<(String, i32), i64>, Vec<OutcomeNotice>, usize), ProjectorError> {
    let mut changes = Changes::new(store);
    let mut offsets = HashMap::new();
    for record in records {
        if as_of_ms.is_some_and(|as_of| record.timestamp_ms > as_of) {
            continue;
        }
        changes.consumed(&record.topic, record.partition, record.offset);
        let next = offsets.entry((record.topic.clone(), record.partition)).or_insert(record.offset + 1);
        *next = (*next).max(record.offset + 1);
        // Fired-timer markers are empty; nothing to apply.
        if record.payload.is_empty() {
            continue;
        }
        match decode_any(codec, &record.payload).await {
            Ok(event) => changes.apply(kinds.get(&record.topic).copied().unwrap_or(Source::Other), &event)?,
            // A record we cannot decode stays in the log; the projection moves past it.
            Err(error) => tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, %error, "projection skipped an undecodable record"),
        }
    }
    let applied = changes.applied;
    if changes.is_empty() {
        return Ok((offsets, Vec::new(), 0));
    }
    let (batch, notices) = changes.finish()?;
    store.write(batch)?;
    Ok((offsets, notices, applied))
}

/// Takes the next record, then whatever else is ready, up to [`MAX_BATCH`].
fn drain_ready(consumer: &mut Box<dyn Consumer>, first: ConsumedRecord) -> Result<Vec<ConsumedRecord>, LogError> {
    let mut records = vec![first];
    while records.len() < MAX_BATCH {
        match consumer.next_event().now_or_never() {
            Some(Ok(ConsumerEvent::Record(record))) => records.push(record),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error),
            None => break,
        }
    }
    Ok(records)
}

fn kinds_of(sources: &[(String, Source)]) -> HashMap<String, Source> {
    sources.iter().cloned().collect()
}

fn mark_behind(behind: &mut HashMap<(String, i32), i64>, records: &[ConsumedRecord]) {
    for record in records {
        let key = (record.topic.clone(), record.partition);
        if behind.get(&key).is_some_and(|high| record.offset + 1 >= *high) {
            behind.remove(&key);
        }
    }
}

/// Follows the sources into `projection` until `cancel`.
pub async fn run(log: Arc<dyn EventLog>, codec: Arc<WireCodec>, projection: Arc<Projection>, cancel: CancellationToken) -> Result<(), ProjectorError> {
    let kinds = kinds_of(&projection.sources);
    let mut store = projection.store();
    let (mut consumer, mut behind) = open_sources(&log, &projection.sources, &store.offsets()?).await?;
    if behind.is_empty() {
        projection.caught_up.send_replace(true);
    }
    let started = Instant::now();
    let mut applied_total = 0usize;
    let result = loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            next = consumer.next_event() => Some(next),
            _ = tokio::time::sleep(IDLE), if !behind.is_empty() => None,
        };
        let first = match next {
            None => {
                behind.clear();
                projection.caught_up.send_replace(true);
                continue;
            }
            Some(Ok(ConsumerEvent::Record(record))) => record,
            Some(Ok(_)) => continue,
            Some(Err(error)) => break Err(error.into()),
        };
        let records = match drain_ready(&mut consumer, first) {
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
            match open_sources(&log, &projection.sources, &offsets).await {
                Ok((fresh, _)) => {
                    let old = std::mem::replace(&mut consumer, fresh);
                    old.close().await.ok();
                }
                Err(error) => break Err(error),
            }
            continue;
        }
        match apply_batch(&store, &codec, &kinds, &records, None).await {
            Ok((offsets, notices, applied)) => {
                applied_total += applied;
                projection.published(&offsets, notices);
            }
            Err(error) => break Err(error),
        }
        if !behind.is_empty() {
            mark_behind(&mut behind, &records);
            if behind.is_empty() {
                tracing::info!(events = applied_total, elapsed_ms = started.elapsed().as_millis() as u64, "projection caught up");
                projection.caught_up.send_replace(true);
            }
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
/// watermarks at the start, or only records written at or before `as_of_ms`.
pub async fn catch_up(
    log: &Arc<dyn EventLog>,
    codec: &WireCodec,
    sources: &[(String, Source)],
    store: &ProjectionStore,
    as_of_ms: Option<i64>,
) -> Result<RebuildReport, ProjectorError> {
    let started = Instant::now();
    let kinds = kinds_of(sources);
    let (mut consumer, mut behind) = open_sources(log, sources, &store.offsets()?).await?;
    let mut records_total = 0;
    let mut events = 0;
    let result = loop {
        if behind.is_empty() {
            break Ok(());
        }
        let first = match tokio::time::timeout(IDLE, consumer.next_event()).await {
            Err(_) => break Ok(()),
            Ok(Ok(ConsumerEvent::Record(record))) => record,
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => break Err(error.into()),
        };
        let mut records = match drain_ready(&mut consumer, first) {
            Ok(records) => records,
            Err(error) => break Err(error.into()),
        };
        // Only what existed at the start: later records belong to the live projector.
        records.retain(|r| behind.get(&(r.topic.clone(), r.partition)).is_some_and(|high| r.offset < *high));
        records_total += records.len();
        match apply_batch(store, codec, &kinds, &records, as_of_ms).await {
            Ok((_, _, applied)) => events += applied,
            Err(error) => break Err(error),
        }
        mark_behind(&mut behind, &records);
        if let Some(as_of) = as_of_ms {
            // A partition past the instant asked for is done.
            for record in &records {
                if record.timestamp_ms > as_of {
                    behind.remove(&(record.topic.clone(), record.partition));
                }
            }
        }
    };
    if let Err(error) = consumer.close().await {
        tracing::debug!(%error, "closing the rebuild consumer");
    }
    result.map(|()| RebuildReport { records: records_total, events, elapsed: started.elapsed() })
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
    codec: &WireCodec,
    projection: &Projection,
    generations: &super::Generations,
) -> Result<RebuildReport, ReplayError> {
    let (next, path) = generations.prepare_next()?;
    let store = ProjectionStore::open(&path)?;
    let mut report = catch_up(log, codec, projection.sources(), &store, None).await?;
    // What arrived during the first pass, so the swap does not step back noticeably.
    let tail = catch_up(log, codec, projection.sources(), &store, None).await?;
    report.records += tail.records;
    report.events += tail.events;
    report.elapsed += tail.elapsed;
    projection.swap(store)?;
    generations.switch_to(next)?;
    tracing::info!(generation = next, events = report.events, elapsed_ms = report.elapsed.as_millis() as u64, "projection replayed and swapped in");
    Ok(report)
}
