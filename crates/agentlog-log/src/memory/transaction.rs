//! Transactions: records are validated and buffered, and on commit appended together with
//! the consumed offsets in one step under the log's write lock, so readers and the group see
//! all of it or none of it. Abort (or drop) discards the buffer.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Mutex, MutexGuard};

use super::{Append, OffsetsCommit, Shared};
use crate::coordinator::committing_member;
use crate::{GroupMetadata, LogResult, Position, Record, TopicPartition, Transaction, TransactionalProducer};

pub(crate) struct MemoryTransactionalProducer {
    id: String,
    shared: Arc<Shared>,
    /// One open transaction at a time; the guard lives in the transaction.
    open: Mutex<()>,
}

impl MemoryTransactionalProducer {
    pub fn new(id: &str, shared: Arc<Shared>) -> Self {
        Self { id: id.to_owned(), shared, open: Mutex::new(()) }
    }
}

#[async_trait]
impl TransactionalProducer for MemoryTransactionalProducer {
    async fn begin(&self) -> LogResult<Box<dyn Transaction + '_>> {
        self.shared.ensure_open()?;
        let guard = self.open.lock().await;
        Ok(Box::new(MemoryTransaction { producer: self, _open: guard, appends: Vec::new() }))
    }
}

struct MemoryTransaction<'a> {
    producer: &'a MemoryTransactionalProducer,
    _open: MutexGuard<'a, ()>,
    appends: Vec<Append>,
}

#[async_trait]
impl Transaction for MemoryTransaction<'_> {
    async fn send(&mut self, record: Record) -> LogResult<()> {
        self.appends.push(self.producer.shared.resolve(record)?);
        Ok(())
    }

    async fn commit_with_offsets(self: Box<Self>, offsets: &[(TopicPartition, i64)], group: Option<&GroupMetadata>) -> LogResult<Vec<Position>> {
        let commit = committing_member(offsets, group)?.map(|(group, member)| OffsetsCommit { group, member: Some(member), offsets: offsets.to_vec() });
        let this = *self;
        let result = this.producer.shared.write(this.appends, commit);
        if let Err(error) = &result {
            tracing::warn!(transactional_id = %this.producer.id, %error, "memory transaction commit failed; nothing was written");
        }
        result
    }

    async fn abort(self: Box<Self>) -> LogResult<()> {
        Ok(())
    }
}
