//! A sink into PostgreSQL tables with the offsets in the same transaction:
//! each batch's rows and the partition's next offset commit together, and
//! records below the stored offset (a redelivery, a second owner of the
//! partition after a rebalance) are skipped, so that every record's effect
//! is applied exactly once however often it is read.
//!
//! What differs between such sinks (how a record decodes, what applying it
//! writes) is a [`Projection`]; [`PgSink`] does the rest.

use std::collections::HashMap;
use std::sync::Arc;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::message::BorrowedMessage;

use crate::db::queries::{self, PartitionKey};
use crate::db::{DbError, Pool};
use crate::engine::sink::{Decoded, Records, Rejected, Sink, SinkError, Written};
use crate::kafka::record::{DecodeError, RecordHeaders};

/// What a record means to one set of tables.
pub trait Projection: Send + Sync + 'static {
    /// What a record decodes into.
    type Item: Clone + Send + Sync + 'static;

    /// Decodes one record; an error dead-letters it. Everything that can be
    /// wrong with a record must be found here: [`Projection::apply`] may
    /// fail only because the database does.
    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        headers: &RecordHeaders,
    ) -> Result<Self::Item, DecodeError>;

    /// Applies `records` of `partition` (in offset order, none of them
    /// applied before) in the caller's transaction. What it refuses without
    /// failing the transaction comes back as [`Rejected`], to dead-letter.
    fn apply<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        partition: &'a PartitionKey,
        records: &'a [Decoded<Self::Item>],
    ) -> BoxFuture<'a, Result<Vec<Rejected>, DbError>>;

    /// Called after the commit with the records [`Projection::apply`] was
    /// given in that transaction, to count them: counted before the commit,
    /// a transaction that failed and was retried would count them twice
    /// (the default does nothing).
    fn committed(&self, _records: &[Decoded<Self::Item>]) {}

    /// Logs a record of a committed batch (the default logs nothing).
    fn projected(&self, _record: &Decoded<Self::Item>) {}
}

/// A [`Projection`] written through a pool, offsets in the transaction.
pub struct PgSink<P> {
    pool: Pool,
    projection: Arc<P>,
}

impl<P: Projection> PgSink<P> {
    /// Writes `projection` through `pool`.
    pub fn new(pool: Pool, projection: P) -> Self {
        Self {
            pool,
            projection: Arc::new(projection),
        }
    }
}

fn sink_error(error: DbError) -> SinkError {
    match error {
        DbError::PoolBusy => SinkError::Busy,
        other => SinkError::Failed(other.to_string()),
    }
}

impl<P: Projection> Sink for PgSink<P> {
    type Item = P::Item;

    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        headers: &RecordHeaders,
    ) -> Result<P::Item, DecodeError> {
        self.projection.decode(message, headers)
    }

    fn write(
        &self,
        partition: PartitionKey,
        records: Records<P::Item>,
        next_offset: i64,
    ) -> BoxFuture<'static, Result<Written, SinkError>> {
        let (pool, projection) = (self.pool.clone(), self.projection.clone());
        async move {
            let mut conn = crate::db::checkout(&pool).await.map_err(sink_error)?;
            let (rejected, fresh) = conn
                .transaction::<_, DbError, _>(async |conn| {
                    let stored = queries::lock_offset(conn, &partition).await?;
                    let fresh = match stored {
                        Some(stored) => records.partition_point(|r| r.offset < stored),
                        None => 0,
                    };
                    let rejected = projection
                        .apply(conn, &partition, &records[fresh..])
                        .await?;
                    queries::save_offset(conn, &partition, next_offset).await?;
                    Ok((rejected, fresh))
                })
                .await
                .map_err(sink_error)?;
            projection.committed(&records[fresh..]);
            Ok(Written { rejected })
        }
        .boxed()
    }

    fn positions(
        &self,
        group_id: String,
        topic: String,
    ) -> BoxFuture<'static, Result<HashMap<i32, i64>, SinkError>> {
        let pool = self.pool.clone();
        async move {
            let mut conn = crate::db::checkout(&pool).await.map_err(sink_error)?;
            queries::load_offsets(&mut conn, &group_id, &topic)
                .await
                .map_err(sink_error)
        }
        .boxed()
    }

    fn projected(&self, record: &Decoded<P::Item>) {
        self.projection.projected(record);
    }
}
