//! Transactions: records are buffered in memory and, on commit, written together with the
//! consumed offsets as one writer command, hence one `WriteBatch`: readers and the group see
//! all of it or none of it. Abort (or drop) just discards the buffer.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Mutex, MutexGuard};

use super::producer::Ingress;
use super::writer::{Append, OffsetsCommit};
use crate::coordinator::committing_member;
use crate::{GroupMetadata, LogResult, Position, Record, TopicPartition, Transaction, TransactionalProducer};

pub(crate) struct EmbeddedTransactionalProducer {
    id: String,
    ingress: Arc<Ingress>,
    /// One open transaction at a time; the guard lives in the transaction.
    open: Mutex<()>,
}

impl EmbeddedTransactionalProducer {
    pub fn new(id: &str, ingress: Arc<Ingress>) -> Self {
        Self { id: id.to_owned(), ingress, open: Mutex::new(()) }
    }
}

#[async_trait]
impl TransactionalProducer for EmbeddedTransactionalProducer {
    async fn begin(&self) -> LogResult<Box<dyn Transaction + '_>> {
        self.ingress.ensure_open()?;
        let guard = self.open.lock().await;
        Ok(Box::new(EmbeddedTransaction { producer: self, _open: guard, appends: Vec::new() }))
    }
}

struct EmbeddedTransaction<'a> {
    producer: &'a EmbeddedTransactionalProducer,
    _open: MutexGuard<'a, ()>,
    appends: Vec<Append>,
}

#[async_trait]
impl Transaction for EmbeddedTransaction<'_> {
    async fn send(&mut self, record: Record) -> LogResult<()> {
        self.appends.push(self.producer.ingress.resolve(record)?);
        Ok(())
    }

    async fn commit_with_offsets(self: Box<Self>, offsets: &[(TopicPartition, i64)], group: Option<&GroupMetadata>) -> LogResult<Vec<Position>> {
        let commit = committing_member(offsets, group)?.map(|(group, member)| OffsetsCommit { group, member: Some(member), offsets: offsets.to_vec() });
        let this = *self;
        if this.appends.is_empty() && commit.is_none() {
            return Ok(Vec::new());
        }
        let delivery = this.producer.ingress.submit_many(this.appends, commit).await?;
        let result = delivery.await;
        if let Err(error) = &result {
            tracing::warn!(transactional_id = %this.producer.id, %error, "embedded transaction commit failed; nothing was written");
        }
        result
    }

    async fn abort(self: Box<Self>) -> LogResult<()> {
        Ok(())
    }
}
