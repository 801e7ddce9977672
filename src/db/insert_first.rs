//! Inserting first, upserting when that fails.
//!
//! A sink whose later records replace earlier rows with the same key writes
//! `INSERT … ON CONFLICT DO UPDATE`, and pays for it on every row: a lookup
//! of the key before the insert, the insert's own, and a second WAL record
//! confirming the speculative insertion. Inserting 4,500 new rows into
//! 200,000 took about 30% longer than a plain `INSERT` of them (PostgreSQL
//! 15, the timestamp view's rows and a pipeline's alike). Most batches
//! hold only new keys (command ids, event ids), so such a sink first writes
//! a batch as a plain `INSERT`; a unique violation means a key was already
//! there (or, for a pipeline's table, came twice in the batch), and the
//! batch is written again as the upsert, in the same transaction (after
//! rolling back to a savepoint) or in a new one.
//!
//! After such a conflict the next [`UPSERTS_AFTER_A_CONFLICT`] batches go
//! straight to the upsert, so a table whose keys do repeat (latest states)
//! wastes about one attempt in that many batches (batches of other
//! partitions already in flight when the conflict is seen try theirs too).
//! The policy is per sink: the DB writer's, and each pipeline table's per
//! topic of its pipeline.
//!
//! A pipeline table's attempt runs in a savepoint, which costs two short
//! round trips per batch (`SAVEPOINT`, `RELEASE`); at the thousands of rows
//! a batch holds under load, that is nothing against the rows.
//!
//! PostgreSQL logs each such conflict as an `ERROR` (`duplicate key value
//! violates unique constraint`, with the key in its `DETAIL`, so a
//! pipeline's keys, which are user data, reach the server's log): expected,
//! and about one in that many batches of a sink.

use std::sync::atomic::{AtomicU32, Ordering};

use diesel::result::{DatabaseErrorKind, Error};

/// How many batches after a conflict go straight to the upsert.
pub const UPSERTS_AFTER_A_CONFLICT: u32 = 16;

/// Whether a sink's next batch is tried as a plain insert; shared by the
/// sink's partitions.
#[derive(Debug, Default)]
pub struct InsertFirst {
    /// Batches still to go straight to the upsert.
    upserts_ahead: AtomicU32,
}

impl InsertFirst {
    /// Whether to try the next batch as a plain insert (counts a batch).
    pub fn next_batch(&self) -> bool {
        self.upserts_ahead
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    /// Whether `error`, of a plain insert, means a key was already there;
    /// if so the next batches go straight to the upsert.
    pub fn conflicted(&self, error: &Error) -> bool {
        let conflicted = matches!(
            error,
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
        );
        if conflicted {
            self.upserts_ahead
                .store(UPSERTS_AFTER_A_CONFLICT, Ordering::Relaxed);
        }
        conflicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique_violation() -> Error {
        Error::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate key value violates unique constraint".to_owned()),
        )
    }

    #[test]
    fn after_a_conflict_the_next_batches_go_to_the_upsert_then_inserts_are_tried_again() {
        let first = InsertFirst::default();
        assert!(first.next_batch(), "a new sink's first batch is inserted");
        assert!(first.next_batch());
        assert!(first.conflicted(&unique_violation()));
        let upserted = (0..UPSERTS_AFTER_A_CONFLICT)
            .filter(|_| !first.next_batch())
            .count();
        assert_eq!(upserted, UPSERTS_AFTER_A_CONFLICT as usize);
        assert!(
            first.next_batch(),
            "inserts are tried again after the window"
        );
        // A conflict inside the window starts it again.
        assert!(first.conflicted(&unique_violation()));
        assert!(!first.next_batch());
        assert!(first.conflicted(&unique_violation()));
        let upserted = (0..=UPSERTS_AFTER_A_CONFLICT)
            .take_while(|_| !first.next_batch())
            .count();
        assert_eq!(upserted, UPSERTS_AFTER_A_CONFLICT as usize);
    }

    #[test]
    fn any_other_error_is_not_a_conflict_and_changes_nothing() {
        let first = InsertFirst::default();
        assert!(!first.conflicted(&Error::NotFound));
        assert!(!first.conflicted(&Error::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            Box::new("could not serialize access".to_owned()),
        )));
        assert!(first.next_batch());
    }
}
