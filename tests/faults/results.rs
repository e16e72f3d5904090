//! A downstream consumer of `task.results`, as a user would run one: the library's Kafka
//! consumer (read_committed), every partition from the start, running through the whole
//! scenario so the time an outcome became visible is the time it was read. Records are kept
//! raw (the key is the task id) and decoded once the registry is back, because a scenario
//! may take the registry away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use agentlog::events::decode_any;
use agentlog::events::wire::WireCodec;
use agentlog::log::{ConsumerEvent, ConsumerOptions, EventLog, LogError, SeekTo, TopicPartition};

/// Pause after a consume error: librdkafka retries underneath, this only keeps a burst of
/// errors from spinning.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);

/// One outcome record as read.
#[derive(Debug, Clone)]
pub struct Seen {
    pub partition: i32,
    pub offset: i64,
    pub arrived: Instant,
    payload: Bytes,
}

#[derive(Debug, Default)]
struct Shared {
    by_task: HashMap<String, Vec<Seen>>,
    /// Records without a key (the task id is then only known after decoding).
    unkeyed: Vec<Seen>,
    errors: u64,
    last_error: Option<String>,
    last_record: Option<Instant>,
}

pub struct ResultsReader {
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What was read, decoded: task id → its outcomes in read order, as (event name, seen).
pub struct Outcomes {
    pub by_task: HashMap<String, Vec<(String, Seen)>>,
    pub consume_errors: u64,
    pub last_error: Option<String>,
}

impl ResultsReader {
    pub async fn start(log: &Arc<dyn EventLog>, topic: &str) -> Result<ResultsReader, LogError> {
        let partitions = log.admin().describe_topic(topic).await?.partitions;
        let mut consumer = log.consumer(ConsumerOptions::default())?;
        let assignment: Vec<(TopicPartition, SeekTo)> = (0..partitions).map(|p| (TopicPartition::new(topic, p), SeekTo::Earliest)).collect();
        consumer.assign(&assignment).await?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (shared, stop) = (shared.clone(), stop.clone());
            async move {
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => break,
                        event = consumer.next_event() => event,
                    };
                    match event {
                        Ok(ConsumerEvent::Record(r)) => {
                            let seen = Seen { partition: r.partition, offset: r.offset, arrived: Instant::now(), payload: r.payload };
                            let mut s = lock(&shared);
                            s.last_record = Some(seen.arrived);
                            match r.key {
                                Some(key) => s.by_task.entry(String::from_utf8_lossy(&key).into_owned()).or_default().push(seen),
                                None => s.unkeyed.push(seen),
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            {
                                let mut s = lock(&shared);
                                s.errors += 1;
                                s.last_error = Some(error.to_string());
                            }
                            tokio::time::sleep(ERROR_BACKOFF).await;
                        }
                    }
                }
                let _ = consumer.close().await;
            }
        });
        Ok(ResultsReader { shared, stop, task })
    }

    /// How many of `ids` have at least one outcome so far.
    pub fn terminal_among<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> usize {
        let s = lock(&self.shared);
        ids.into_iter().filter(|id| s.by_task.contains_key(*id)).count()
    }

    /// Those of `ids` without an outcome yet.
    pub fn without_outcome(&self, ids: &[String]) -> Vec<String> {
        let s = lock(&self.shared);
        ids.iter().filter(|id| !s.by_task.contains_key(*id)).cloned().collect()
    }

    /// When the last record arrived.
    pub fn last_record(&self) -> Option<Instant> {
        lock(&self.shared).last_record
    }

    /// Stops reading and decodes what was read with the registry at `codec`.
    pub async fn finish(self, codec: &WireCodec) -> Outcomes {
        self.stop.cancel();
        let _ = self.task.await;
        let shared = std::mem::take(&mut *lock(&self.shared));
        let mut by_task: HashMap<String, Vec<(String, Seen)>> = HashMap::new();
        for (id, seen) in shared.by_task {
            for s in seen {
                let name = decoded_name(codec, &s.payload).await.0;
                by_task.entry(id.clone()).or_default().push((name, s));
            }
        }
        for s in shared.unkeyed {
            let (name, id) = decoded_name(codec, &s.payload).await;
            by_task.entry(id.unwrap_or_else(|| "<no task id>".into())).or_default().push((name, s));
        }
        Outcomes { by_task, consume_errors: shared.errors, last_error: shared.last_error }
    }
}

async fn decoded_name(codec: &WireCodec, payload: &[u8]) -> (String, Option<String>) {
    match decode_any(codec, payload).await {
        Ok(event) => (event.name().to_string(), event.task_id().map(str::to_string)),
        Err(error) => (format!("undecodable ({error})"), None),
    }
}

/// A poisoned lock only means a panic elsewhere already failed the test; the data is fine.
fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
