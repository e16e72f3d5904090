//! How finished work reaches the log: at-least-once (each turn wrote its own records; only
//! offsets are committed here) or exactly-once (the outcomes of the contiguous done prefix
//! and the offsets in one transaction, committed in the background).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::WorkerError;
use crate::log::{Consumer, GroupMetadata, LogError, Record, TopicPartition, TransactionalProducer};

/// How outcomes reach the log.
pub(super) enum Delivery {
    /// Each attempt writes its own records and waits for them before reporting done.
    AtLeastOnce,
    /// Records of the contiguous done prefix go in one transaction with the offset commit.
    /// A transaction commits in the background (`committing`) while the loop keeps starting
    /// buffered tasks and finishing them (it does not read the log meanwhile, see
    /// `Membership::work`); what finishes meanwhile goes into the next one. Committing in the
    /// loop itself held every slot idle for a commit's round trips (tens of ms on three
    /// brokers), which capped an exactly-once worker below 150 tasks/s.
    ExactlyOnce {
        producer: Arc<dyn TransactionalProducer>,
        stash: HashMap<TopicPartition, BTreeMap<i64, Vec<Record>>>,
        committing: Option<Committing>,
        /// How long one transaction may take ([`super::WorkerSettings::transaction_deadline`]).
        allowed: Duration,
    },
}

/// A transaction committing in the background.
pub(super) struct Committing {
    handle: tokio::task::JoinHandle<Result<(), WorkerError>>,
    /// Fixed when it began: the loop's `select!` drops and re-creates the wait on every turn,
    /// so a timeout counted from each wait would never fire.
    deadline: tokio::time::Instant,
    allowed: Duration,
}

impl Committing {
    fn spawn(commit: impl std::future::Future<Output = Result<(), WorkerError>> + Send + 'static, allowed: Duration) -> Self {
        Self { handle: tokio::spawn(commit), deadline: tokio::time::Instant::now() + allowed, allowed }
    }
}

/// Waits for a background transaction, until its deadline. One that overruns is abandoned
/// (its task is aborted, which drops the transaction handle: the producer aborts it, or is
/// re-initialised, before the next one) and ends the membership like any passing failure,
/// so the partitions move and their uncommitted tasks run again.
async fn await_transaction(committing: &mut Committing) -> Result<(), WorkerError> {
    match tokio::time::timeout_at(committing.deadline, &mut committing.handle).await {
        Ok(joined) => joined.map_err(|e| WorkerError::Attempt(format!("transaction task: {e}")))?,
        Err(_) => {
            committing.handle.abort();
            tracing::error!("a transaction did not end by its deadline; abandoning it and leaving the group");
            Err(LogError::Timeout { operation: "transaction commit", after: committing.allowed }.into())
        }
    }
}

impl Delivery {
    pub fn new(transactions: Option<&Arc<dyn TransactionalProducer>>, allowed: Duration) -> Self {
        match transactions {
            Some(producer) => Delivery::ExactlyOnce { producer: producer.clone(), stash: HashMap::new(), committing: None, allowed },
            None => Delivery::AtLeastOnce,
        }
    }

    /// Whether each turn writes its own records (at-least-once).
    pub fn turns_write(&self) -> bool {
        matches!(self, Delivery::AtLeastOnce)
    }

    /// Waits for the transaction committing in the background, if any, and returns its result.
    pub async fn settle(&mut self) -> Result<(), WorkerError> {
        if let Delivery::ExactlyOnce { committing, .. } = self
            && let Some(mut running) = committing.take()
        {
            return await_transaction(&mut running).await;
        }
        Ok(())
    }

    /// Resolves when the background transaction ends (never while none runs).
    pub async fn committed(&mut self) -> Result<(), WorkerError> {
        match self {
            Delivery::ExactlyOnce { committing: Some(running), .. } => {
                let result = await_transaction(running).await;
                if let Delivery::ExactlyOnce { committing, .. } = self {
                    *committing = None;
                }
                result
            }
            _ => std::future::pending().await,
        }
    }

    pub fn is_committing(&self) -> bool {
        matches!(self, Delivery::ExactlyOnce { committing: Some(_), .. })
    }

    /// Keeps a finished task's records for the transaction that commits its offset
    /// (exactly-once; at-least-once wrote them already).
    pub fn stash(&mut self, tp: &TopicPartition, offset: i64, records: Vec<Record>) {
        if let Delivery::ExactlyOnce { stash, .. } = self {
            stash.entry(tp.clone()).or_default().insert(offset, records);
        }
    }

    /// Exactly-once: drops the uncommitted outcomes and positions of revoked partitions. They
    /// may already be their new owner's, who re-runs everything not committed: outcomes of
    /// ours that are not committed yet must never be, or they would appear twice.
    pub fn forget(&mut self, parts: &[TopicPartition], pending: &mut BTreeMap<TopicPartition, i64>) {
        if let Delivery::ExactlyOnce { stash, .. } = self {
            pending.retain(|tp, _| !parts.contains(tp));
            stash.retain(|tp, _| !parts.contains(tp));
        }
    }

    /// Commits the pending positions: with at-least-once an offset commit (the outcomes are
    /// durable already), with exactly-once one transaction holding the outcomes of the
    /// committed prefix and the offsets, begun here and committed in the background.
    pub async fn flush(&mut self, pending: &mut BTreeMap<TopicPartition, i64>, consumer: &mut dyn Consumer) -> Result<(), WorkerError> {
        if pending.is_empty() {
            return Ok(());
        }
        // One transaction at a time: the one under way ends before the next begins.
        self.settle().await?;
        let mut positions: Vec<(TopicPartition, i64)> = std::mem::take(pending).into_iter().collect();
        match self {
            Delivery::AtLeastOnce => match commit(consumer, &positions).await {
                // The outcomes are durable; only the offsets wait for the next tick.
                Err(WorkerError::Log(error)) if error.retryable() => {
                    tracing::warn!(%error, "committing offsets failed; retrying on the next tick");
                    for (tp, position) in positions {
                        let slot = pending.entry(tp).or_insert(position);
                        *slot = (*slot).max(position);
                    }
                    Ok(())
                }
                other => other,
            },
            Delivery::ExactlyOnce { producer, stash, committing, allowed } => {
                // Only partitions still ours: a transactional offset commit is checked against
                // the member's epoch, not against its assignment, so the broker would take a
                // commit for a partition that moved, and its outcomes would appear a second
                // time from the new owner.
                let owned: HashSet<TopicPartition> = consumer.assignment().into_iter().collect();
                positions.retain(|(tp, _)| owned.contains(tp));
                stash.retain(|tp, _| owned.contains(tp));
                if positions.is_empty() {
                    return Ok(());
                }
                let mut records = Vec::new();
                for (tp, position) in &positions {
                    if let Some(waiting) = stash.get_mut(tp) {
                        let later = waiting.split_off(position);
                        records.extend(std::mem::replace(waiting, later).into_values().flatten());
                    }
                }
                // The membership proof is taken now, while these partitions are ours.
                let group = consumer.group_metadata();
                let producer = producer.clone();
                *committing = Some(Committing::spawn(async move { commit_transaction(producer.as_ref(), group, records, &positions).await }, *allowed));
                Ok(())
            }
        }
    }
}

/// Writes the records and commits the positions atomically. A transaction refused because
/// the group moved on (a zombie after a rebalance) is aborted: the new owner re-runs those
/// tasks, and their outcomes appear once, from it.
async fn commit_transaction(
    producer: &dyn TransactionalProducer,
    group: Option<GroupMetadata>,
    records: Vec<Record>,
    positions: &[(TopicPartition, i64)],
) -> Result<(), WorkerError> {
    let mut transaction = producer.begin().await?;
    for record in records {
        if let Err(error) = transaction.send(record).await {
            transaction.abort().await?;
            return Err(error.into());
        }
    }
    match transaction.commit_with_offsets(positions, group.as_ref()).await {
        // The commit's round trips bound an exactly-once worker's pace (see `prefetch_per_lane`):
        // the log backend says at debug where each commit spent its time.
        Ok(_) => Ok(()),
        Err(LogError::NotAssigned { .. }) => {
            tracing::info!(?positions, "partitions moved before the transaction committed; the new owner re-runs those tasks");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Commits positions; a partition that moved meanwhile is the new owner's to commit.
async fn commit(consumer: &mut dyn Consumer, positions: &[(TopicPartition, i64)]) -> Result<(), WorkerError> {
    match consumer.commit(positions).await {
        Ok(()) => Ok(()),
        Err(LogError::NotAssigned { .. }) if positions.len() > 1 => {
            for one in positions {
                Box::pin(commit(consumer, std::slice::from_ref(one))).await?;
            }
            Ok(())
        }
        Err(LogError::NotAssigned { topic, partition, .. }) => {
            tracing::info!(%topic, partition, "partition moved before its commit; the new owner re-runs the rest");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
