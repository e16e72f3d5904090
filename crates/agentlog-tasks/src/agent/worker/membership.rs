//! One group membership of a worker. The poll loop is a state struct, [`Membership`], with one
//! method per event: a task read, turns finished, a transaction ended, committed offsets known,
//! the commit tick, partitions revoked or assigned; then the drain and the leave.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::delivery::Delivery;
use super::turn::{Done, Taken, turn};
use super::{COMMIT_INTERVAL, WorkerError, WorkerReport, WorkerSettings};
use crate::agent::attempt::{AttemptEnv, Ending};
use crate::agent::floors::{Floor, FloorLookups};
use crate::agent::offsets::OffsetTracker;
use crate::agent::presence::{Load, Presence};
use crate::agent::scheduler::Scheduler;
use crate::events::reader::{EventReader, ReadOutcome};
use crate::events::wire::WireCodec;
use crate::events::{AgentState, Lane, TaskSubmitted};
use crate::log::{ConsumedRecord, ConsumerEvent, ConsumerOptions, EventLog, SeekTo, TopicPartition, TransactionalProducer};

/// What every group membership of the worker needs; [`Member::run`] is one membership.
pub(super) struct Member<'a> {
    pub log: &'a Arc<dyn EventLog>,
    pub codec: &'a Arc<WireCodec>,
    pub env: &'a Arc<AttemptEnv>,
    pub settings: &'a WorkerSettings,
    pub lane_topics: &'a [String],
    pub lane_of: &'a HashMap<String, Lane>,
    pub load: &'a Arc<Load>,
    pub transactions: Option<&'a Arc<dyn TransactionalProducer>>,
}

impl Member<'_> {
    /// Joins the group and works until `shutdown` (then drains: `Ok`) or a failure (`Err`;
    /// in-flight attempts are dropped and the member leaves the group).
    pub async fn run(&self, presence: &mut Presence, report: &mut WorkerReport, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let mut membership = self.join()?;
        let result = async {
            membership.work(report, shutdown).await?;
            membership.drain(presence, report).await
        }
        .await;
        membership.leave(result).await
    }

    fn join(&self) -> Result<Membership<'_>, WorkerError> {
        let settings = self.settings;
        let group = self.env.topics.worker_group(&settings.agent_type);
        let mut consumer =
            self.log.consumer(ConsumerOptions { group: Some(group.clone()), client_id: Some(settings.worker_id.clone()), ..Default::default() })?;
        consumer.subscribe(self.lane_topics)?;
        let delivery = Delivery::new(self.transactions, settings.transaction_deadline);
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Membership {
            member: self,
            reader: EventReader::new(consumer, self.codec.clone(), self.env.producer.clone(), self.env.topics.dlq()),
            delivery,
            scheduler: Scheduler::new(settings.agent.concurrency as usize, settings.prefetch_per_lane),
            tracker: OffsetTracker::default(),
            floors: FloorLookups::new(self.log.admin(), group, self.env.topics.legacy_worker_group(&settings.agent_type)),
            running: JoinSet::new(),
            paused: [None; Lane::COUNT],
            pending: BTreeMap::new(),
            commit_tick,
        })
    }
}

/// The state of one membership's poll loop.
struct Membership<'m> {
    member: &'m Member<'m>,
    reader: EventReader<TaskSubmitted>,
    delivery: Delivery,
    /// Tasks buffered per lane, started as slots free up.
    scheduler: Scheduler<Taken>,
    /// Per partition: offsets taken and finished, and the committed floor.
    tracker: OffsetTracker,
    /// Assigned partitions whose committed offsets are being looked up (read only after).
    floors: FloorLookups,
    /// The turns under way.
    running: JoinSet<Done>,
    /// Per lane: whether its partitions are paused; `None` after a rebalance, to re-apply.
    paused: [Option<bool>; Lane::COUNT],
    /// Commit positions of finished work, flushed on the commit tick.
    pending: BTreeMap<TopicPartition, i64>,
    commit_tick: tokio::time::Interval,
}

impl Membership<'_> {
    /// The poll loop, until `shutdown` (`Ok`) or a failure that ends the membership.
    async fn work(&mut self, report: &mut WorkerReport, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        loop {
            self.start_ready(shutdown);
            self.update_pauses()?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => self.on_finished(joined, report)?,
                committed = self.delivery.committed(), if self.delivery.is_committing() => self.on_committed(committed)?,
                known = self.floors.next(), if self.floors.is_looking() => self.on_floors_known(known).await?,
                _ = self.commit_tick.tick(), if !self.pending.is_empty() && !self.delivery.is_committing() => self.flush().await?,
                // Not read while a transaction commits: librdkafka hands a revocation to the
                // application (and acknowledges it to the group) only while it is polled, and
                // a transactional offset commit is checked against the member's epoch, not
                // its assignment. Polling on would let a partition move to a new owner, which
                // re-runs its tasks, while the transaction commits their outcomes here too.
                // Tasks already buffered keep starting meanwhile.
                outcome = self.reader.next(), if !self.delivery.is_committing() => match outcome? {
                    ReadOutcome::Event { record, event, .. } => self.on_task(record, event).await?,
                    ReadOutcome::DeadLettered { record, .. } => self.on_undecodable(&record, report),
                    ReadOutcome::Rebalance(ConsumerEvent::Revoked(parts)) => self.on_revoked(&parts).await?,
                    ReadOutcome::Rebalance(ConsumerEvent::Assigned(parts)) => self.on_assigned(&parts)?,
                    ReadOutcome::Rebalance(_) => self.paused = [None; Lane::COUNT],
                },
            }
        }
    }

    /// Starts buffered tasks while slots are free.
    fn start_ready(&mut self, shutdown: &CancellationToken) {
        let writes = self.delivery.turns_write();
        while let Some((_, taken)) = self.scheduler.take_next() {
            self.member.load.in_flight.fetch_add(1, Ordering::Relaxed);
            // Boxed: a turn's future is several kilobytes, and spawning it unboxed copies all
            // of it more than once per task.
            self.running.spawn(Box::pin(turn(self.member.env.clone(), taken, writes, shutdown.clone())));
        }
    }

    /// A task read from a lane partition: buffered for a slot.
    async fn on_task(&mut self, record: ConsumedRecord, task: TaskSubmitted) -> Result<(), WorkerError> {
        let tp = record.topic_partition();
        if self.floors.awaits(&tp) {
            // Paused since its assignment, so not expected: put it back until the partition's
            // committed offset is known.
            tracing::warn!(partition = %tp, offset = record.offset, "a record of a partition whose committed offset is not known yet; reading it later");
            self.reader.consumer().seek(&tp, SeekTo::Offset(record.offset)).await?;
            self.reader.consumer().pause(std::slice::from_ref(&tp))?;
            return Ok(());
        }
        if let Some(floor) = self.tracker.below_floor(&tp, record.offset) {
            // Committed work is never taken again, whatever position the client resumed the
            // partition at.
            tracing::warn!(partition = %tp, offset = record.offset, committed = floor, "skipping a record below the group's committed offset");
            return Ok(());
        }
        let lane = self.member.lane_of.get(&record.topic).copied().unwrap_or(Lane::Low);
        self.tracker.started(&tp, record.offset);
        let key = task.ordering_key.clone();
        self.scheduler.push(lane, record.partition, record.timestamp_ms, key, Taken { record, task });
        Ok(())
    }

    /// A record that could not be decoded, already dead-lettered by the reader: done.
    fn on_undecodable(&mut self, record: &ConsumedRecord, report: &mut WorkerReport) {
        report.undecodable += 1;
        let tp = record.topic_partition();
        self.tracker.started(&tp, record.offset);
        if let Some(position) = self.tracker.finished(&tp, record.offset) {
            self.pending.insert(tp, position);
        }
    }

    /// Turns finished: this one and every other already done go in the same commit.
    fn on_finished(&mut self, first: Result<Done, JoinError>, report: &mut WorkerReport) -> Result<(), WorkerError> {
        self.finish(first, report)?;
        while let Some(more) = self.running.try_join_next() {
            self.finish(more, report)?;
        }
        Ok(())
    }

    /// Frees a finished turn's slot and notes the commit position that became contiguous.
    fn finish(&mut self, joined: Result<Done, JoinError>, report: &mut WorkerReport) -> Result<(), WorkerError> {
        let done = joined.map_err(|e| WorkerError::Attempt(e.to_string()))?;
        let load = self.member.load;
        load.in_flight.fetch_sub(1, Ordering::Relaxed);
        // An outcome that could not be written for a passing reason (the log or registry away
        // past the worker's shutdown) ends the membership: the offset stays uncommitted and
        // the task runs again on whoever owns the partition next. Records the log refuses for
        // what they are never get here (see `turn`).
        let outcome = done.outcome?;
        report.count(outcome.ending);
        match outcome.ending {
            Ending::Completed => load.completed.fetch_add(1, Ordering::Relaxed),
            Ending::Failed | Ending::DeadLettered => load.failed.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        self.scheduler.finished(done.key.as_deref());
        if !self.tracker.is_in_flight(&done.tp, done.offset) {
            // Taken while the partition was ours before a rebalance: it has been revoked since
            // (and maybe given back). Whoever owns it now runs or ran this task and commits its
            // outcome; stashing ours would put a second copy into a later transaction.
            return Ok(());
        }
        self.delivery.stash(&done.tp, done.offset, outcome.records);
        if let Some(position) = self.tracker.finished(&done.tp, done.offset) {
            self.pending.insert(done.tp, position);
        }
        Ok(())
    }

    /// The background transaction ended.
    fn on_committed(&mut self, committed: Result<(), WorkerError>) -> Result<(), WorkerError> {
        committed?;
        // The next transaction waits a full interval, while the reader (not read during a
        // commit) catches up. The tick fell due during the commit, so without this the next
        // one began at once: the reader got a turn only by chance, buffered tasks ran dry
        // while each commit's acks took a second or two on three busy brokers, and a
        // revocation waited several commits (a restarted member of the fault suite got
        // partitions 9 s after it subscribed; exactly-once workers ran ~50 tasks per commit).
        self.commit_tick.reset();
        Ok(())
    }

    /// The group's committed offsets of newly assigned partitions are known: read them. A
    /// partition that only its group's former name committed is read from there (the client
    /// resumed it at the start, as for a group that never committed).
    async fn on_floors_known(&mut self, known: Vec<(TopicPartition, Floor)>) -> Result<(), WorkerError> {
        if known.is_empty() {
            return Ok(());
        }
        for (tp, floor) in &known {
            if let Floor::Legacy(offset) = floor {
                self.reader.consumer().seek(tp, SeekTo::Offset(*offset)).await?;
            }
        }
        let (parts, found): (Vec<TopicPartition>, Vec<Option<i64>>) = known.into_iter().map(|(tp, floor)| (tp, floor.offset())).unzip();
        tracing::debug!(?parts, committed = ?found, "committed offsets known; reading the partitions");
        self.tracker.assigned(&parts, &found);
        // Re-applied per lane, which resumes them unless their lane is full.
        self.paused = [None; Lane::COUNT];
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WorkerError> {
        self.delivery.flush(&mut self.pending, self.reader.consumer()).await
    }

    async fn on_revoked(&mut self, parts: &[TopicPartition]) -> Result<(), WorkerError> {
        tracing::info!(?parts, "partitions revoked");
        // A transaction already under way commits what was ours when it began.
        self.delivery.settle().await?;
        self.delivery.forget(parts, &mut self.pending);
        // Commit what finished while the partitions were still ours (a moved partition's
        // commit is refused and its new owner re-runs the rest).
        self.flush().await?;
        self.delivery.settle().await?;
        // Waiting tasks of lost partitions belong to their new owner.
        self.scheduler.remove_waiting(|t| parts.contains(&t.record.topic_partition()));
        self.tracker.revoke(parts);
        self.floors.revoke(parts);
        self.paused = [None; Lane::COUNT];
        Ok(())
    }

    fn on_assigned(&mut self, parts: &[TopicPartition]) -> Result<(), WorkerError> {
        tracing::info!(?parts, "partitions assigned");
        // Read only once the group's committed offsets are known (see `floors`): paused here,
        // resumed when the lookup answers.
        self.reader.consumer().pause(parts)?;
        self.floors.start(parts);
        self.paused = [None; Lane::COUNT];
        Ok(())
    }

    /// Pauses the partitions of lanes whose buffer is full, and resumes them once half drained.
    fn update_pauses(&mut self) -> Result<(), WorkerError> {
        let consumer = self.reader.consumer();
        // The assignment is only fetched when a lane's state flips: this runs on every turn of
        // the poll loop, and on Kafka it copies librdkafka's assignment list.
        let mut assignment: Option<Vec<TopicPartition>> = None;
        for topic in self.member.lane_topics {
            let lane = self.member.lane_of.get(topic).copied().unwrap_or(Lane::Low);
            let full = match self.paused[lane.index()] {
                Some(true) => !self.scheduler.lane_low(lane),
                _ => self.scheduler.lane_full(lane),
            };
            if self.paused[lane.index()] == Some(full) {
                continue;
            }
            // A partition whose committed offset is not known yet stays paused whatever its lane.
            let floors = &self.floors;
            let parts: Vec<TopicPartition> = assignment
                .get_or_insert_with(|| consumer.assignment())
                .iter()
                .filter(|tp| &tp.topic == topic && (full || !floors.awaits(tp)))
                .cloned()
                .collect();
            if full {
                consumer.pause(&parts)?
            } else {
                consumer.resume(&parts)?
            }
            tracing::debug!(%topic, paused = full, "lane flow control");
            self.paused[lane.index()] = Some(full);
        }
        Ok(())
    }

    /// Shutdown: nothing new starts; running tasks finish within the drain timeout and are
    /// committed; waiting tasks stay uncommitted for the next owner.
    async fn drain(&mut self, presence: &mut Presence, report: &mut WorkerReport) -> Result<(), WorkerError> {
        if let Err(error) = presence.change(AgentState::Draining, Some("shutdown requested".into())).await {
            tracing::warn!(%error, "the Draining state was not written");
        }
        self.scheduler.drain_waiting();
        let deadline = tokio::time::Instant::now() + self.member.settings.drain_timeout;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.running.join_next()).await {
                Ok(Some(joined)) => self.finish(joined, report)?,
                Ok(None) => break,
                Err(_) => {
                    report.abandoned = self.running.len() as u64;
                    self.running.shutdown().await;
                    break;
                }
            }
        }
        self.delivery.settle().await?;
        self.flush().await?;
        self.delivery.settle().await
    }

    /// Ends the membership whatever happened: a transaction still under way is finished or
    /// aborted, the attempts stop, and the member leaves the group.
    async fn leave(mut self, result: Result<(), WorkerError>) -> Result<(), WorkerError> {
        let settled = self.delivery.settle().await;
        let result = result.and(settled);
        let dropped = self.running.len() as i64;
        self.running.shutdown().await;
        self.member.load.in_flight.fetch_sub(dropped, Ordering::Relaxed);
        let closed = self.reader.into_consumer().close().await;
        result?;
        closed?;
        Ok(())
    }
}
