//! The view's write statement on its own, against a real PostgreSQL: what a
//! batch inserts, skips and stores when it overlaps what the view holds.

use std::ops::Range;

use chrono::{DateTime, TimeZone, Utc};
use chronolog::db::InsertFirst;
use chronolog::db::models::ProjectedRecord;
use chronolog::db::queries::{BatchApplied, PartitionKey, apply_batch, load_offsets};
use chronolog::domain::TimestampCommand;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::helpers::{create_database, eventually, row_ids};

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_254_164_592 + seconds, 0).unwrap()
}

/// A record at `offset` carrying `id`.
fn record(offset: i64, id: Uuid) -> ProjectedRecord {
    ProjectedRecord {
        offset,
        command: TimestampCommand {
            command_id: id,
            event_timestamp: at(offset),
        },
        accepted_at: at(1000 + offset),
    }
}

/// The records at `offsets`, each carrying the id of that index in `ids`.
fn records(ids: &[Uuid], offsets: Range<i64>) -> Vec<ProjectedRecord> {
    offsets.map(|o| record(o, ids[o as usize])).collect()
}

/// Partition `partition` of the projector group's command topic.
fn partition(partition: i32) -> PartitionKey {
    PartitionKey {
        group_id: "projector".into(),
        topic: "commands".into(),
        partition,
    }
}

/// A new database with the view's schema, and a connection to it.
async fn empty_view() -> (String, AsyncPgConnection) {
    let url = create_database().await;
    chronolog::db::run_migrations(&url.parse().unwrap())
        .await
        .unwrap();
    let conn = AsyncPgConnection::establish(&url).await.unwrap();
    (url, conn)
}

fn applied(inserted: usize, skipped: usize, next_offset: i64) -> BatchApplied {
    BatchApplied {
        inserted,
        skipped,
        next_offset,
        conflicts: Vec::new(),
    }
}

/// The view's insert-first policy, fresh (batches are tried as plain
/// inserts until one conflicts, then upserted) or just after a conflict
/// (every batch of a test goes straight to the upsert): every outcome
/// below is the same either way.
fn policies() -> [InsertFirst; 2] {
    let upserting = InsertFirst::default();
    let conflict = diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::UniqueViolation,
        Box::new("duplicate key value violates unique constraint".to_owned()),
    );
    assert!(upserting.conflicted(&conflict));
    [InsertFirst::default(), upserting]
}

#[actix_rt::test]
async fn a_batch_inserts_what_is_at_or_above_the_stored_offset_and_the_offset_never_moves_back() {
    for policy in policies() {
        batches_overlapping_the_stored_offset(&policy).await;
    }
}

async fn batches_overlapping_the_stored_offset(policy: &InsertFirst) {
    let (url, mut conn) = empty_view().await;
    let key = partition(2);
    let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let batch = |offsets| records(&ids, offsets);

    // Offsets 0..3 into an empty view.
    let outcome = apply_batch(&mut conn, policy, &key, &batch(0..3), 3)
        .await
        .unwrap();
    assert_eq!(outcome, applied(3, 0, 3));

    // A redelivery overlapping it: 1 and 2 are skipped, 3 and 4 inserted.
    let outcome = apply_batch(&mut conn, policy, &key, &batch(1..5), 5)
        .await
        .unwrap();
    assert_eq!(outcome, applied(2, 2, 5));

    // An old batch again, from a consumer that lost the partition: nothing
    // is written and the stored offset stays where it was.
    let outcome = apply_batch(&mut conn, policy, &key, &batch(0..2), 2)
        .await
        .unwrap();
    assert_eq!(outcome, applied(0, 2, 5));

    // A batch whose every record was dead-lettered moves the offset alone.
    let outcome = apply_batch(&mut conn, policy, &key, &[], 7).await.unwrap();
    assert_eq!(outcome, applied(0, 0, 7));

    // A record above the offset whose id the view already holds inserts
    // nothing and leaves the row as it was.
    let repeat = ProjectedRecord {
        offset: 7,
        ..record(0, ids[0])
    };
    let outcome = apply_batch(&mut conn, policy, &key, &[repeat, record(8, ids[5])], 9)
        .await
        .unwrap();
    assert_eq!(outcome, applied(1, 0, 9));

    let mut expected = ids.clone();
    expected.sort();
    let mut rows = row_ids(&url).await;
    rows.sort();
    assert_eq!(rows, expected, "each id once");
    let row = chronolog::db::queries::find_record(&mut conn, ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.event_timestamp, at(0), "the first version stays");
    assert_eq!(row.created_at, at(1000));

    // Offsets are kept per group, topic and partition.
    let other = partition(0);
    let outcome = apply_batch(&mut conn, policy, &other, &[], 4)
        .await
        .unwrap();
    assert_eq!(outcome, applied(0, 0, 4));
    let stored = load_offsets(&mut conn, "projector", "commands")
        .await
        .unwrap();
    assert_eq!(stored, [(2, 9), (0, 4)].into_iter().collect());
}

/// Whether some session of the test's database waits for a lock.
async fn someone_waits_for_a_lock(url: &str) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    let waiting: Waiting = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    waiting.n > 0
}

#[actix_rt::test]
async fn a_second_owner_of_the_partition_waits_for_the_first_and_skips_what_it_applied() {
    let (url, mut first) = empty_view().await;
    let policy = InsertFirst::default();
    let key = partition(0);
    let ids: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    let batch = |offsets| records(&ids, offsets);
    apply_batch(&mut first, &policy, &key, &batch(0..5), 5)
        .await
        .unwrap();

    // The first owner is mid-transaction: it holds the offset row and has
    // moved it to 10.
    diesel::sql_query("BEGIN")
        .execute(&mut first)
        .await
        .unwrap();
    diesel::sql_query("UPDATE projection_offsets SET next_offset = 10 WHERE partition = 0")
        .execute(&mut first)
        .await
        .unwrap();

    // The second owner's batch overlaps it.
    let (second_url, second_key, second_batch) = (url.clone(), key.clone(), batch(5..12));
    let second = actix_rt::spawn(async move {
        let mut conn = AsyncPgConnection::establish(&second_url).await.unwrap();
        apply_batch(
            &mut conn,
            &InsertFirst::default(),
            &second_key,
            &second_batch,
            12,
        )
        .await
    });
    eventually("the second owner waits for the offset row", || {
        let url = url.clone();
        async move { someone_waits_for_a_lock(&url).await.then_some(()) }
    })
    .await;
    diesel::sql_query("COMMIT")
        .execute(&mut first)
        .await
        .unwrap();

    // It then reads the offset the first one committed, not the one it
    // would have seen when it started.
    let outcome = second.await.unwrap().unwrap();
    assert_eq!(outcome, applied(2, 5, 12));
    let mut expected: Vec<Uuid> = ids[0..5].iter().chain(&ids[10..12]).copied().collect();
    expected.sort();
    let mut rows = row_ids(&url).await;
    rows.sort();
    assert_eq!(rows, expected);
}

#[actix_rt::test]
async fn two_versions_of_a_command_keep_the_earliest_log_time_in_any_order() {
    for policy in policies() {
        two_versions_of_a_command(&policy).await;
    }
}

async fn two_versions_of_a_command(policy: &InsertFirst) {
    use chronolog::db::queries::{Conflict, find_record};
    let id = Uuid::new_v4();
    // Version `early` has the earlier log time, `late` the earlier event time.
    let early = ProjectedRecord {
        offset: 0,
        command: TimestampCommand {
            command_id: id,
            event_timestamp: at(50),
        },
        accepted_at: at(1000),
    };
    let late = ProjectedRecord {
        offset: 1,
        command: TimestampCommand {
            command_id: id,
            event_timestamp: at(10),
        },
        accepted_at: at(2000),
    };
    let kept = (at(50), at(1000));
    let lost = (at(10), at(2000));

    // Both in one batch, in either order.
    for batch in [[early, late], [late, early]] {
        let (_, mut conn) = empty_view().await;
        let outcome = apply_batch(&mut conn, policy, &partition(0), &batch, 2)
            .await
            .unwrap();
        let loser = batch
            .iter()
            .find(|r| r.accepted_at == at(2000))
            .unwrap()
            .offset;
        assert_eq!(
            outcome.conflicts,
            [Conflict {
                command_id: id,
                kept,
                lost,
                lost_offset: Some(loser)
            }]
        );
        let row = find_record(&mut conn, id).await.unwrap().unwrap();
        assert_eq!((row.event_timestamp, row.created_at), kept);
    }

    // In two batches: the later log time second loses ...
    let (_, mut conn) = empty_view().await;
    apply_batch(&mut conn, policy, &partition(0), &[early], 1)
        .await
        .unwrap();
    let second = ProjectedRecord { offset: 0, ..late };
    let outcome = apply_batch(&mut conn, policy, &partition(1), &[second], 1)
        .await
        .unwrap();
    assert_eq!(
        outcome.conflicts,
        [Conflict {
            command_id: id,
            kept,
            lost,
            lost_offset: Some(0)
        }]
    );
    let row = find_record(&mut conn, id).await.unwrap().unwrap();
    assert_eq!((row.event_timestamp, row.created_at), kept);

    // ... and the earlier log time second replaces the row it finds.
    let (_, mut conn) = empty_view().await;
    apply_batch(&mut conn, policy, &partition(1), &[second], 1)
        .await
        .unwrap();
    let outcome = apply_batch(&mut conn, policy, &partition(0), &[early], 1)
        .await
        .unwrap();
    assert_eq!(
        outcome.conflicts,
        [Conflict {
            command_id: id,
            kept,
            lost,
            lost_offset: None
        }]
    );
    let row = find_record(&mut conn, id).await.unwrap().unwrap();
    assert_eq!((row.event_timestamp, row.created_at), kept);

    // The same version twice (a retried produce) is no conflict, and the
    // row keeps the earliest log time.
    let (_, mut conn) = empty_view().await;
    let again = ProjectedRecord {
        offset: 1,
        accepted_at: at(900),
        ..early
    };
    let outcome = apply_batch(&mut conn, policy, &partition(0), &[early, again], 2)
        .await
        .unwrap();
    assert!(outcome.conflicts.is_empty());
    let row = find_record(&mut conn, id).await.unwrap().unwrap();
    assert_eq!(row.created_at, at(900));
}
