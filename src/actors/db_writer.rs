//! The DB writer actor: runs each batch in one Diesel transaction and answers
//! only after the commit, so that the partition consumer can acknowledge the
//! offsets the batch covers. The transaction is a single statement (rows and
//! the partition's next offset together, see [`queries::apply_batch`]): one
//! round trip, committed as a whole or not at all.
//!
//! Batches of different partitions run concurrently on the pool. When the
//! connection itself is lost the actor stops, and its supervisor restarts it
//! with a fresh pool; the failed batch is retried by its partition consumer.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix::prelude::*;
use futures::FutureExt;

use crate::db::models::ProjectedRecord;
use crate::db::queries::{self, BatchApplied, PartitionKey};
use crate::db::{DatabaseUrl, DbError, InsertFirst, Pool};
use std::sync::Arc;

use crate::metrics::Metrics;

const ACTOR: &str = "db_writer";
/// Batches that may wait for the writer; one per partition is in flight at
/// most, so this bound is only reached with thousands of partitions.
pub const MAILBOX_CAPACITY: usize = 1024;

/// Applies a batch of one partition, with the offset that follows it.
#[derive(Debug, Message)]
#[rtype(result = "Result<BatchCommitted, DbError>")]
pub struct WriteBatch {
    /// The partition the records come from.
    pub partition: PartitionKey,
    /// Decoded records, in offset order (may be empty when every record of
    /// the batch went to the dead-letter topic).
    pub records: Vec<ProjectedRecord>,
    /// The offset after the batch's last record.
    pub next_offset: i64,
}

/// The batch's transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCommitted {
    /// What the transaction did.
    pub applied: BatchApplied,
}

/// Reads the stored next offsets of a group's partitions.
#[derive(Debug, Message)]
#[rtype(result = "Result<HashMap<i32, i64>, DbError>")]
pub struct LoadOffsets {
    /// Consumer group.
    pub group_id: String,
    /// Topic.
    pub topic: String,
}

/// Owns the write-side pool.
pub struct DbWriter {
    database_url: DatabaseUrl,
    pool_size: u32,
    pool: Pool,
    metrics: Arc<Metrics>,
    insert_first: Arc<InsertFirst>,
}

impl DbWriter {
    /// A writer with its own pool of `pool_size` connections.
    pub fn new(database_url: DatabaseUrl, pool_size: u32, metrics: Arc<Metrics>) -> Self {
        let pool = crate::db::pool(&database_url, pool_size);
        Self {
            database_url,
            pool_size,
            pool,
            metrics,
            insert_first: Arc::default(),
        }
    }
}

impl Actor for DbWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Supervised for DbWriter {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.metrics.actor_restarted(ACTOR);
        self.pool = crate::db::pool(&self.database_url, self.pool_size);
        tracing::warn!("db writer restarted with a fresh connection pool");
    }
}

impl Handler<WriteBatch> for DbWriter {
    type Result = ResponseActFuture<Self, Result<BatchCommitted, DbError>>;

    fn handle(&mut self, msg: WriteBatch, _ctx: &mut Self::Context) -> Self::Result {
        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
        let insert_first = self.insert_first.clone();
        let fut = async move {
            let write =
                AssertUnwindSafe(write_batch(pool, &metrics, &insert_first, msg)).catch_unwind();
            let written = async {
                write.await.unwrap_or_else(|panic| {
                    // Only this batch failed: its partition retries it, and
                    // the other partitions' batches go on (a restart of the
                    // actor would abandon them all).
                    let reason = crate::panic_message(panic.as_ref());
                    tracing::error!(
                        panic = reason,
                        "db writer panicked on a batch; its partition retries it"
                    );
                    metrics.actor_restarted(ACTOR);
                    Err(DbError::Panicked(reason))
                })
            };
            metrics.observe(ACTOR, "WriteBatch", written).await
        };
        Box::pin(fut.into_actor(self).map(stop_on_lost_connection))
    }
}

impl Handler<LoadOffsets> for DbWriter {
    type Result = ResponseActFuture<Self, Result<HashMap<i32, i64>, DbError>>;

    fn handle(&mut self, msg: LoadOffsets, _ctx: &mut Self::Context) -> Self::Result {
        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
        let fut = async move {
            let load = async {
                let mut conn = crate::db::checkout(&pool).await?;
                queries::load_offsets(&mut conn, &msg.group_id, &msg.topic).await
            };
            metrics.observe(ACTOR, "LoadOffsets", load).await
        };
        Box::pin(fut.into_actor(self).map(stop_on_lost_connection))
    }
}

fn stop_on_lost_connection<T>(
    result: Result<T, DbError>,
    _act: &mut DbWriter,
    ctx: &mut Context<DbWriter>,
) -> Result<T, DbError> {
    if let Err(error) = &result
        && error.is_connection_lost()
    {
        ctx.stop();
    }
    result
}

/// Runs one batch in one transaction and records its outcome.
pub async fn write_batch(
    pool: Pool,
    m: &Metrics,
    insert_first: &InsertFirst,
    msg: WriteBatch,
) -> Result<BatchCommitted, DbError> {
    let started = Instant::now();
    let result = async {
        let mut conn = crate::db::checkout(&pool).await?;
        queries::apply_batch(
            &mut conn,
            insert_first,
            &msg.partition,
            &msg.records,
            msg.next_offset,
        )
        .await
    }
    .await;
    m.db_transaction_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(applied) => {
            m.db_transactions.with_label_values(&["committed"]).inc();
            m.db_rows_written.inc_by(applied.inserted as u64);
            m.db_records_skipped.inc_by(applied.skipped as u64);
            m.db_batch_size.observe(msg.records.len() as f64);
            Ok(BatchCommitted { applied })
        }
        Err(error) => {
            m.db_transactions.with_label_values(&["failed"]).inc();
            Err(error)
        }
    }
}
