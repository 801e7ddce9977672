//! Every statement chronolog runs against the view.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{Array, Timestamptz};
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::DbError;
use crate::db::models::{ProjectedRecord, TimestampRecord};
use crate::db::schema::{projection_offsets, timestamp_records};

/// Where a batch belongs in the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    /// Consumer group whose view this is.
    pub group_id: String,
    /// Topic of the partition.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

/// What one committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchApplied {
    /// Rows inserted (a record already in the view inserts nothing).
    pub inserted: usize,
    /// Records at offsets the view had already applied, skipped whole.
    pub skipped: usize,
    /// The partition's next offset after this commit.
    pub next_offset: i64,
}

/// Reads one row of the view.
pub async fn find_record(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<TimestampRecord>, DbError> {
    Ok(timestamp_records::table
        .find(id)
        .select(TimestampRecord::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Applies a batch in one transaction: the rows and the partition's next
/// offset commit together or not at all.
///
/// Records below the stored next offset were applied by an earlier commit
/// (a redelivery, or a consumer that lost its partition mid-batch) and are
/// skipped; the offset row is locked first so two owners of one partition
/// serialise. Inserts are idempotent on the primary key as well.
pub async fn apply_batch(
    conn: &mut AsyncPgConnection,
    key: &PartitionKey,
    records: &[ProjectedRecord],
    next_offset: i64,
) -> Result<BatchApplied, DbError> {
    let outcome = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            let stored: Option<i64> = projection_offsets::table
                .find((&key.group_id, &key.topic, key.partition))
                .select(projection_offsets::next_offset)
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let applied_below = stored.unwrap_or(i64::MIN);
            let fresh = InsertRecords::of(records.iter().filter(|r| r.offset >= applied_below));
            let fresh_count = fresh.ids.len();
            let inserted = if fresh_count == 0 {
                0
            } else {
                fresh.execute(conn).await?
            };
            let next_offset = next_offset.max(applied_below);
            diesel::insert_into(projection_offsets::table)
                .values((
                    projection_offsets::group_id.eq(&key.group_id),
                    projection_offsets::topic.eq(&key.topic),
                    projection_offsets::partition.eq(key.partition),
                    projection_offsets::next_offset.eq(next_offset),
                ))
                .on_conflict((
                    projection_offsets::group_id,
                    projection_offsets::topic,
                    projection_offsets::partition,
                ))
                .do_update()
                .set((
                    projection_offsets::next_offset.eq(excluded(projection_offsets::next_offset)),
                    projection_offsets::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            Ok(BatchApplied {
                inserted,
                skipped: records.len() - fresh_count,
                next_offset,
            })
        })
        .await?;
    Ok(outcome)
}

/// `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`: a batch as three
/// array parameters. The statement's text is the same for every batch, so
/// each connection prepares it once (a multi-row `VALUES` list is a new
/// statement for every batch size, parsed and planned every time), and the
/// arrays travel in binary with no limit on the rows per statement.
#[derive(Debug, Default)]
struct InsertRecords {
    ids: Vec<Uuid>,
    event_timestamps: Vec<DateTime<Utc>>,
    created_ats: Vec<DateTime<Utc>>,
}

impl InsertRecords {
    fn of<'a>(records: impl Iterator<Item = &'a ProjectedRecord>) -> Self {
        let mut rows = Self::default();
        for record in records {
            let row = TimestampRecord::from(record);
            rows.ids.push(row.id);
            rows.event_timestamps.push(row.event_timestamp);
            rows.created_ats.push(row.created_at);
        }
        rows
    }
}

impl QueryId for InsertRecords {
    type QueryId = Self;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for InsertRecords {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO timestamp_records (id, event_timestamp, created_at) \
             SELECT * FROM unnest(",
        );
        out.push_bind_param::<Array<diesel::sql_types::Uuid>, _>(&self.ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.event_timestamps)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.created_ats)?;
        out.push_sql(") ON CONFLICT DO NOTHING");
        Ok(())
    }
}

/// The stored next offsets of a group's partitions of `topic`.
pub async fn load_offsets(
    conn: &mut AsyncPgConnection,
    group_id: &str,
    topic: &str,
) -> Result<HashMap<i32, i64>, DbError> {
    let rows: Vec<(i32, i64)> = projection_offsets::table
        .filter(projection_offsets::group_id.eq(group_id))
        .filter(projection_offsets::topic.eq(topic))
        .select((
            projection_offsets::partition,
            projection_offsets::next_offset,
        ))
        .load(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// A round trip to the server, for readiness checks.
pub async fn ping(conn: &mut AsyncPgConnection) -> Result<(), DbError> {
    diesel::sql_query("SELECT 1").execute(conn).await?;
    Ok(())
}
