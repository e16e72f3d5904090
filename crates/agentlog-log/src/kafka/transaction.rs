//! Kafka transactions: records plus consumed offsets committed atomically.
//!
//! A transactional producer whose call timed out or failed fatally is re-initialised before
//! the next transaction, never reused as it is (Jepsen's 2024 analysis of a Kafka-compatible
//! broker found lost writes when a timed-out transactional producer kept going).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{Mutex, MutexGuard};

use super::metadata::TopicCache;
use super::producer::{to_future_record, validate};
use crate::{GroupMetadata, GroupMetadataInner, LogError, LogResult, Position, Record, TopicPartition, Transaction, TransactionalProducer};

struct State {
    producer: Option<FutureProducer>,
    /// A transaction was begun and neither committed nor aborted (its handle was dropped).
    open: bool,
}

pub(crate) struct KafkaTransactionalProducer {
    config: ClientConfig,
    transactional_id: String,
    topics: Arc<TopicCache>,
    max_record_bytes: usize,
    timeout: Duration,
    /// How long a call librdkafka says may be resumed is called again: the transaction
    /// timeout, past which the coordinator has aborted the transaction anyway.
    resume_for: Duration,
    state: Mutex<State>,
}

impl KafkaTransactionalProducer {
    pub(crate) fn new(
        config: ClientConfig,
        transactional_id: String,
        topics: Arc<TopicCache>,
        max_record_bytes: usize,
        timeout: Duration,
        resume_for: Duration,
    ) -> Self {
        Self { config, transactional_id, topics, max_record_bytes, timeout, resume_for, state: Mutex::new(State { producer: None, open: false }) }
    }

    fn txn_error(&self, operation: &'static str, error: &KafkaError) -> LogError {
        let abortable = match error {
            KafkaError::Transaction(e) => e.txn_requires_abort() || e.is_retriable(),
            _ => false,
        };
        LogError::Transaction { transactional_id: self.transactional_id.clone(), operation, reason: error.to_string(), abortable }
    }
}

/// Runs a blocking librdkafka transaction call off the async runtime.
async fn blocking<T: Send + 'static>(producer: &FutureProducer, call: impl FnOnce(&FutureProducer) -> T + Send + 'static) -> LogResult<T> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer)).await.map_err(|_| LogError::Shutdown)
}

#[async_trait]
impl TransactionalProducer for KafkaTransactionalProducer {
    async fn begin(&self) -> LogResult<Box<dyn Transaction + '_>> {
        let mut state = self.state.lock().await;
        let timeout = self.timeout;
        if state.open {
            // The previous handle was dropped without an outcome: abort it first.
            if let Some(producer) = state.producer.clone()
                && let Err(e) = blocking(&producer, move |p| p.abort_transaction(timeout)).await?
            {
                tracing::warn!(transactional_id = %self.transactional_id, error = %e, "abort of abandoned transaction failed; re-initialising");
                state.producer = None;
            }
            state.open = false;
        }
        if state.producer.is_none() {
            let producer: FutureProducer = self.config.create().map_err(|e| super::client::kafka_error("create transactional producer", e))?;
            blocking(&producer, move |p| p.init_transactions(timeout)).await?.map_err(|e| self.txn_error("init", &e))?;
            state.producer = Some(producer);
        }
        let Some(producer) = state.producer.clone() else {
            return Err(LogError::Shutdown);
        };
        if let Err(e) = producer.begin_transaction() {
            state.producer = None;
            return Err(self.txn_error("begin", &e));
        }
        state.open = true;
        Ok(Box::new(KafkaTransaction { owner: self, state, producer, deliveries: Vec::new() }))
    }
}

struct KafkaTransaction<'a> {
    owner: &'a KafkaTransactionalProducer,
    state: MutexGuard<'a, State>,
    producer: FutureProducer,
    deliveries: Vec<DeliveryFuture>,
}

impl KafkaTransaction<'_> {
    /// Runs a transactional call, calling it again while librdkafka reports the error as
    /// retriable: a commit that timed out is still in progress, and only calling commit
    /// again finishes it (aborting instead fails with a conflicting-call error and the
    /// outcome stays unknown). Abortable and fatal errors come back at once.
    ///
    /// Resuming stops after the transaction timeout ([`KafkaTransactionalProducer::resume_for`]):
    /// by then the coordinator has ended the transaction itself, and the caller (a worker,
    /// which does not read its partitions while it commits, so that they cannot move) must
    /// not hold its partitions longer. Giving up drops the producer; its re-initialisation
    /// waits for the coordinator to finish the transaction, committed or aborted, and the
    /// group's offsets say which.
    async fn resuming<F, Fut>(&self, operation: &'static str, call: F) -> LogResult<Result<(), LogError>>
    where
        F: Fn(FutureProducer) -> Fut,
        Fut: std::future::Future<Output = LogResult<rdkafka::error::KafkaResult<()>>>,
    {
        let started = std::time::Instant::now();
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match call(self.producer.clone()).await? {
                Ok(()) => return Ok(Ok(())),
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && !e.txn_requires_abort() && !e.is_fatal() && started.elapsed() < self.owner.resume_for =>
                {
                    tracing::warn!(transactional_id = %self.owner.transactional_id, operation, error = %e, "transaction call timed out; resuming it");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Ok(Err(self.owner.txn_error(operation, &e))),
            }
        }
    }

    /// Aborts after a failure; a producer that cannot abort is dropped and re-initialised.
    async fn abort_after(&mut self, error: LogError) -> LogError {
        let timeout = self.owner.timeout;
        match blocking(&self.producer, move |p| p.abort_transaction(timeout)).await {
            Ok(Ok(())) => {}
            _ => self.state.producer = None,
        }
        self.state.open = false;
        if matches!(&error, LogError::Transaction { abortable: false, .. } | LogError::Unavailable { .. }) {
            self.state.producer = None;
        }
        error
    }
}

#[async_trait]
impl Transaction for KafkaTransaction<'_> {
    async fn send(&mut self, record: Record) -> LogResult<()> {
        validate(&self.owner.topics, &record, self.owner.max_record_bytes).await?;
        let future = self.producer.send_result(to_future_record(&record)).map_err(|(e, _)| self.owner.txn_error("send", &e))?;
        self.deliveries.push(future);
        Ok(())
    }

    async fn commit_with_offsets(mut self: Box<Self>, offsets: &[(TopicPartition, i64)], group: Option<&GroupMetadata>) -> LogResult<Vec<Position>> {
        let timeout = self.owner.timeout;
        let started = std::time::Instant::now();
        let mut positions = Vec::with_capacity(self.deliveries.len());
        for future in std::mem::take(&mut self.deliveries) {
            match future.await {
                Ok(Ok(d)) if d.offset >= 0 => positions.push(Position { partition: d.partition, offset: d.offset }),
                // Acknowledged without an offset: perhaps never written (see `confirm`), and a
                // commit would make the transaction's offsets count without it. Abort; the
                // caller does the work again.
                Ok(Ok(d)) => {
                    let error = LogError::Transaction {
                        transactional_id: self.owner.transactional_id.clone(),
                        operation: "send",
                        reason: format!("a record for partition {} was acknowledged without an offset, so it may not have been written", d.partition),
                        abortable: true,
                    };
                    return Err(self.abort_after(error).await);
                }
                Ok(Err((e, _))) => {
                    let error = self.owner.txn_error("send", &e);
                    return Err(self.abort_after(error).await);
                }
                Err(_) => return Err(self.abort_after(LogError::Shutdown).await),
            }
        }
        let delivered = started.elapsed();
        if !offsets.is_empty() {
            let metadata = match group {
                Some(GroupMetadata(GroupMetadataInner::Kafka(m))) => Arc::clone(m),
                _ => {
                    let error = LogError::Invalid {
                        what: "transaction offsets",
                        reason: "committing offsets needs the group metadata of a Kafka consumer group member".into(),
                    };
                    return Err(self.abort_after(error).await);
                }
            };
            let mut tpl = TopicPartitionList::new();
            for (tp, offset) in offsets {
                if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset)) {
                    return Err(self.abort_after(LogError::Invalid { what: "offset", reason: e.to_string() }).await);
                }
            }
            let result = self
                .resuming("send offsets", |producer| {
                    let (tpl, metadata) = (tpl.clone(), metadata.clone());
                    async move { blocking(&producer, move |p| p.send_offsets_to_transaction(&tpl, metadata.as_ref(), timeout)).await }
                })
                .await?;
            if let Err(error) = result {
                return Err(self.abort_after(error).await);
            }
        }
        let offsets_sent = started.elapsed();
        let result = self.resuming("commit", |producer| async move { blocking(&producer, move |p| p.commit_transaction(timeout)).await }).await?;
        if let Err(error) = result {
            return Err(self.abort_after(error).await);
        }
        self.state.open = false;
        // Where a slow commit spends its time: the records' acks, the offsets' round trips to
        // the group coordinator, or the end of the transaction (markers on every partition).
        tracing::debug!(
            partitions = positions.len(),
            delivered_ms = delivered.as_millis() as u64,
            offsets_ms = (offsets_sent - delivered).as_millis() as u64,
            end_ms = (started.elapsed() - offsets_sent).as_millis() as u64,
            "transaction commit timings"
        );
        Ok(positions)
    }

    async fn abort(mut self: Box<Self>) -> LogResult<()> {
        let timeout = self.owner.timeout;
        let result = blocking(&self.producer, move |p| p.abort_transaction(timeout)).await?;
        self.state.open = false;
        result.map_err(|e| {
            self.state.producer = None;
            self.owner.txn_error("abort", &e)
        })
    }
}
