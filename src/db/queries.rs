//! Every statement chronolog runs against the view.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Integer, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::models::{ProjectedRecord, TimestampRecord};
use crate::db::schema::{projection_offsets, timestamp_records};
use crate::db::{DbError, InsertFirst};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchApplied {
    /// Rows inserted (a record already in the view inserts nothing).
    pub inserted: usize,
    /// Records at offsets the view had already applied, skipped whole.
    pub skipped: usize,
    /// The partition's next offset after this commit.
    pub next_offset: i64,
    /// Records whose command id the view holds with another event timestamp.
    pub conflicts: Vec<Conflict>,
}

/// Two versions of one command: the same `command_id` with different
/// event timestamps. The view keeps the version with the earliest log
/// timestamp (then the earliest event timestamp), whatever order the records
/// arrive in, so that a rebuild keeps the same row as the live view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The command id both versions carry.
    pub command_id: Uuid,
    /// The version the view keeps: (event timestamp, log timestamp).
    pub kept: (DateTime<Utc>, DateTime<Utc>),
    /// The version it does not: (event timestamp, log timestamp).
    pub lost: (DateTime<Utc>, DateTime<Utc>),
    /// The losing record's offset when it is a record of this batch; `None`
    /// when it is the view's earlier row, replaced by this batch.
    pub lost_offset: Option<i64>,
}

/// The order that decides between two versions of a command: earliest log
/// timestamp first, then earliest event timestamp.
fn rank(r: &ProjectedRecord) -> (DateTime<Utc>, DateTime<Utc>) {
    (r.accepted_at, r.command.event_timestamp)
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

/// Applies a batch atomically: the rows and the partition's next offset
/// commit together or not at all.
///
/// Records below the stored next offset were applied by an earlier commit
/// (a redelivery, or a consumer that lost its partition mid-batch) and are
/// skipped; the offset row is locked first so two owners of one partition
/// serialise. Inserts are idempotent on the primary key as well, and the
/// stored offset never moves back.
///
/// Two versions of one command id (different event timestamps) are
/// [`Conflict`]s: the view keeps the one with the earliest log timestamp,
/// then the earliest event timestamp, in whatever order they come, and the
/// answer lists the loser for the caller to dead-letter.
///
/// It is one statement (`ApplyBatch`, below), so one round trip and one
/// implicit transaction: at a few rows per batch, PostgreSQL's cost is per
/// statement and per transaction far more than per row. The statement is a
/// plain insert first (see [`InsertFirst`]); when a command id is already
/// in the view it fails, and the batch is sent again as the upsert (a
/// second round trip). `conn` must not be in a transaction: a failed
/// statement would abort it, and the upsert with it.
pub async fn apply_batch(
    conn: &mut AsyncPgConnection,
    insert_first: &InsertFirst,
    key: &PartitionKey,
    records: &[ProjectedRecord],
    next_offset: i64,
) -> Result<BatchApplied, DbError> {
    // One version per command id goes to the statement (an upsert cannot
    // touch a row twice); the others are conflicts or plain duplicates.
    let mut winners: Vec<ProjectedRecord> = Vec::with_capacity(records.len());
    let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(records.len());
    let mut conflicts = Vec::new();
    for record in records {
        let id = record.command.command_id;
        let Some(&at) = index.get(&id) else {
            index.insert(id, winners.len());
            winners.push(*record);
            continue;
        };
        let held = winners[at];
        let (kept, lost) = if rank(record) < rank(&held) {
            (*record, held)
        } else {
            (held, *record)
        };
        if kept.command.event_timestamp != lost.command.event_timestamp {
            conflicts.push(Conflict {
                command_id: id,
                kept: (kept.command.event_timestamp, kept.accepted_at),
                lost: (lost.command.event_timestamp, lost.accepted_at),
                lost_offset: Some(lost.offset),
            });
        }
        winners[at] = kept;
    }
    // Outside a transaction, one statement is its own: a plain insert that
    // meets a command id already in the view fails as a whole, and the
    // batch is written again as the upsert.
    let rows = BatchRows::new(&winners);
    let plain = ApplyBatch::<false> {
        key,
        rows: &rows,
        next_offset,
    };
    let applied = if insert_first.next_batch() {
        match plain.get_result::<Applied>(conn).await {
            Err(error) if insert_first.conflicted(&error) => None,
            other => Some(other?),
        }
    } else {
        None
    };
    let (inserted, fresh, next_offset, ids, event_timestamps, created_ats) = match applied {
        Some(applied) => applied,
        None => {
            let upsert = ApplyBatch::<true> {
                key,
                rows: &rows,
                next_offset,
            };
            upsert.get_result::<Applied>(conn).await?
        }
    };
    for ((id, event_timestamp), created_at) in
        ids.into_iter().zip(event_timestamps).zip(created_ats)
    {
        let Some(record) = index.get(&id).map(|&at| winners[at]) else {
            continue;
        };
        let held = (event_timestamp, created_at);
        let ours = (record.command.event_timestamp, record.accepted_at);
        conflicts.push(if rank(&record) < (created_at, event_timestamp) {
            Conflict {
                command_id: id,
                kept: ours,
                lost: held,
                lost_offset: None,
            }
        } else {
            Conflict {
                command_id: id,
                kept: held,
                lost: ours,
                lost_offset: Some(record.offset),
            }
        });
    }
    let count = |n: i64| usize::try_from(n).unwrap_or_default();
    Ok(BatchApplied {
        inserted: count(inserted),
        skipped: winners.len().saturating_sub(count(fresh)),
        next_offset,
        conflicts,
    })
}

/// The statement behind [`apply_batch`]: lock and read the partition's stored
/// next offset, insert the batch's records at or above it, store the new
/// next offset; answers (rows inserted, records at or above the stored
/// offset, the next offset stored).
///
/// The batch travels as four arrays through `unnest`, so the statement's
/// text is the same for every batch and each connection prepares it once (a
/// multi-row `VALUES` list is a new statement for every batch size, parsed
/// and planned every time), with no limit on the rows per statement.
/// Sub-statements of one statement share a snapshot, but a row locked by
/// `FOR UPDATE` is read at its latest committed version, so a second owner
/// of the partition waits for the first and then sees its offset.
///
/// The view's earlier version of a command (`existing`, for the conflicts)
/// is looked up only for the records the insert did not insert as new: the
/// lookup reads the snapshot from before the statement, and in a batch of
/// new commands, the usual case, it reads nothing (looking up every record
/// was a quarter of the statement's time).
///
/// `UPSERT` false is the plain insert tried first (see [`InsertFirst`]): it
/// fails on a command id already in the view, and its `existing` is empty.
/// The two are two statements, each prepared once per connection.
struct ApplyBatch<'a, const UPSERT: bool = false> {
    key: &'a PartitionKey,
    rows: &'a BatchRows,
    next_offset: i64,
}

/// A batch's records as the statement's arrays.
struct BatchRows {
    ids: Vec<Uuid>,
    event_timestamps: Vec<DateTime<Utc>>,
    created_ats: Vec<DateTime<Utc>>,
    offsets: Vec<i64>,
}

impl BatchRows {
    fn new(records: &[ProjectedRecord]) -> Self {
        let mut rows = Self {
            ids: Vec::with_capacity(records.len()),
            event_timestamps: Vec::with_capacity(records.len()),
            created_ats: Vec::with_capacity(records.len()),
            offsets: Vec::with_capacity(records.len()),
        };
        for record in records {
            let row = TimestampRecord::from(record);
            rows.ids.push(row.id);
            rows.event_timestamps.push(row.event_timestamp);
            rows.created_ats.push(row.created_at);
            rows.offsets.push(record.offset);
        }
        rows
    }
}

/// What [`ApplyBatch`] answers.
type Applied = (
    i64,
    i64,
    i64,
    Vec<Uuid>,
    Vec<DateTime<Utc>>,
    Vec<DateTime<Utc>>,
);

impl<const UPSERT: bool> ApplyBatch<'_, UPSERT> {
    /// Binds the partition's key: group id, topic, partition.
    fn push_key<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<Text, _>(&self.key.group_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.key.topic)?;
        out.push_sql(", ");
        out.push_bind_param::<Integer, _>(&self.key.partition)
    }
}

impl<const UPSERT: bool> QueryId for ApplyBatch<'_, UPSERT> {
    type QueryId = ApplyBatch<'static, UPSERT>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<const UPSERT: bool> Query for ApplyBatch<'_, UPSERT> {
    type SqlType = (
        BigInt,
        BigInt,
        BigInt,
        Array<diesel::sql_types::Uuid>,
        Array<Timestamptz>,
        Array<Timestamptz>,
    );
}

impl<const UPSERT: bool> QueryFragment<Pg> for ApplyBatch<'_, UPSERT> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "WITH stored AS MATERIALIZED ( \
                SELECT next_offset FROM projection_offsets \
                WHERE (group_id, topic, partition) = (",
        );
        self.push_key(&mut out)?;
        out.push_sql(
            ") FOR UPDATE), \
             fresh AS ( \
                SELECT r.id, r.event_timestamp, r.created_at \
                FROM unnest(",
        );
        out.push_bind_param::<Array<diesel::sql_types::Uuid>, _>(&self.rows.ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.rows.event_timestamps)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.rows.created_ats)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&self.rows.offsets)?;
        out.push_sql(
            ") AS r(id, event_timestamp, created_at, record_offset) \
                WHERE r.record_offset >= \
                    COALESCE((SELECT next_offset FROM stored), r.record_offset)), \
             inserted AS ( \
                INSERT INTO timestamp_records (id, event_timestamp, created_at) \
                SELECT id, event_timestamp, created_at FROM fresh ",
        );
        if UPSERT {
            out.push_sql(
                "ON CONFLICT (id) DO UPDATE \
                SET event_timestamp = excluded.event_timestamp, created_at = excluded.created_at \
                WHERE (excluded.created_at, excluded.event_timestamp) \
                    < (timestamp_records.created_at, timestamp_records.event_timestamp) ",
            );
        }
        out.push_sql(
            "RETURNING id, (xmax = 0) AS new), \
             existing AS MATERIALIZED ( \
                SELECT t.id, t.event_timestamp, t.created_at \
                FROM timestamp_records t JOIN fresh f ON t.id = f.id \
                WHERE f.id IN (SELECT id FROM fresh EXCEPT SELECT id FROM inserted WHERE new) \
                    AND t.event_timestamp <> f.event_timestamp), \
             saved AS ( \
                INSERT INTO projection_offsets (group_id, topic, partition, next_offset) \
                SELECT ",
        );
        self.push_key(&mut out)?;
        out.push_sql(", GREATEST(");
        out.push_bind_param::<BigInt, _>(&self.next_offset)?;
        out.push_sql(
            ", (SELECT next_offset FROM stored)) \
                ON CONFLICT (group_id, topic, partition) DO UPDATE \
                SET next_offset = GREATEST(projection_offsets.next_offset, excluded.next_offset), \
                    updated_at = now() \
                RETURNING next_offset) \
             SELECT (SELECT count(*) FROM inserted WHERE new), (SELECT count(*) FROM fresh), \
                    (SELECT next_offset FROM saved), \
                    COALESCE((SELECT array_agg(id ORDER BY id) FROM existing), '{}'), \
                    COALESCE((SELECT array_agg(event_timestamp ORDER BY id) FROM existing), '{}'), \
                    COALESCE((SELECT array_agg(created_at ORDER BY id) FROM existing), '{}')",
        );
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

/// Locks `key`'s stored offset row for the caller's transaction and
/// returns the stored next offset (`None`: nothing stored yet). A second
/// owner of the partition waits here until the first commits, then sees
/// what it stored. (A partition with no row gets one at offset 0, which the
/// caller's [`save_offset`] raises before it commits.)
pub async fn lock_offset(
    conn: &mut AsyncPgConnection,
    key: &PartitionKey,
) -> Result<Option<i64>, DbError> {
    let created = diesel::insert_into(projection_offsets::table)
        .values((
            projection_offsets::group_id.eq(&key.group_id),
            projection_offsets::topic.eq(&key.topic),
            projection_offsets::partition.eq(key.partition),
            projection_offsets::next_offset.eq(0_i64),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    let stored: i64 = projection_offsets::table
        .find((&key.group_id, &key.topic, key.partition))
        .select(projection_offsets::next_offset)
        .for_update()
        .first(conn)
        .await?;
    Ok(Some(stored).filter(|_| created == 0))
}

/// Raises `key`'s stored next offset to `next_offset` (never lowers it),
/// in the caller's transaction, after [`lock_offset`].
pub async fn save_offset(
    conn: &mut AsyncPgConnection,
    key: &PartitionKey,
    next_offset: i64,
) -> Result<(), DbError> {
    diesel::update(projection_offsets::table.find((&key.group_id, &key.topic, key.partition)))
        .set((
            projection_offsets::next_offset.eq(diesel::dsl::sql::<BigInt>(
                "GREATEST(next_offset, ",
            )
            .bind::<BigInt, _>(next_offset)
            .sql(")")),
            projection_offsets::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// A round trip to the server, for readiness checks.
pub async fn ping(conn: &mut AsyncPgConnection) -> Result<(), DbError> {
    diesel::sql_query("SELECT 1").execute(conn).await?;
    Ok(())
}

/// Sets a partition's stored next offset to `next_offset`, lower or higher
/// than before: the operator's `chronolog offsets reset`, never the
/// projection (whose offsets only move forward).
pub async fn reset_offset(
    conn: &mut AsyncPgConnection,
    key: &PartitionKey,
    next_offset: i64,
) -> Result<(), DbError> {
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
            projection_offsets::next_offset.eq(next_offset),
            projection_offsets::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
