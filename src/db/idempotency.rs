//! The command side's memory of `Idempotency-Key` headers: the
//! `idempotency_keys` table in the command role's `DATABASE_URL`, shared by
//! every command process.
//!
//! "Now" differs between two retries of one command, and between two
//! processes, so the first request's command (its id and event timestamp)
//! must be remembered where every process can read it, before it is produced.
//! One keyed request ([`IdempotencyStore::once`]):
//!
//! 1. **Claim**: insert the key with this request's command unless the key
//!    is there already (`ON CONFLICT DO NOTHING`), committed at once: from
//!    then on every retry, from any process, produces that command and no
//!    other.
//! 2. **Lock** the key's row (`SELECT ... FOR UPDATE`) in a transaction. A
//!    request that holds it is producing; the others wait on the lock (at
//!    most `lock_wait`, PostgreSQL's `lock_timeout`), not in a polling loop.
//!    Then, by what the row holds:
//!    - older than the TTL: the key is forgotten; the row is replaced with
//!      this request's command and the request starts over;
//!    - another timestamp than this request names: refused ([`IdempotencyError::Reused`]);
//!    - a place in the log: answered from the row (a replay);
//!    - pending (the first request, or one whose owner answered 503 or
//!      died): the stored command is produced, its place in the log stored,
//!      the transaction committed, and only then answered.
//!
//! A failed produce rolls back and leaves the key pending with the same
//! command, which the next retry produces again: the log may then hold that
//! command twice (a 503 means "not known to be in the log", and the record
//! may land after all), with the same key and value, and the view one row.
//! The same holds when the place cannot be stored after the record was
//! produced: the request answers 503. So every 2xx for a key carries the
//! same id, partition and offset. An owner that dies releases its lock when
//! PostgreSQL sees its connection close, or at the latest after the
//! `idle_in_transaction_session_timeout` the owner sets on its transaction.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, TransactionManager};

use crate::db::schema::idempotency_keys;
use crate::db::{DbError, Pool};
use crate::domain::{IdempotencyKey, TimestampCommand, format_timestamp};

/// How many times a request starts over when its key expired or was purged
/// between the claim and the lock (once is the rule; more means a race).
const ATTEMPTS: usize = 3;
/// How long a request waits for the request that holds its key, beyond the
/// holder's delivery timeout.
const LOCK_MARGIN: Duration = Duration::from_secs(2);
/// Expired keys are purged at most this often (or once per TTL if shorter).
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per purge statement, so that a purge never holds many locks.
const PURGE_BATCH: i64 = 1000;
/// Longest a start-up migration attempt may take before the role starts anyway.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two migration attempts in the background.
const PREPARE_BACKOFF_MAX: Duration = Duration::from_secs(30);

type Transactions = <AsyncPgConnection as AsyncConnection>::TransactionManager;

/// A keyed command as the store sees it.
#[derive(Debug, Clone)]
pub struct KeyedCommand {
    /// The client's key.
    pub key: IdempotencyKey,
    /// The command to produce when the key is new.
    pub command: TimestampCommand,
    /// The timestamp the request named; `None` for the server's current time.
    pub requested: Option<DateTime<Utc>>,
}

/// Where the broker put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPlace {
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// The answer a key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// The command the key names (the first request's id and event timestamp).
    pub command: TimestampCommand,
    /// Where it is in the log.
    pub place: LogPlace,
    /// Whether the answer was read from the store rather than produced by
    /// this request.
    pub replayed: bool,
}

/// Why a keyed request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError<E> {
    /// The key was first used for a command at another timestamp.
    #[error("the Idempotency-Key '{key}' was first used for {first}; this request names {this}")]
    Reused {
        /// The key.
        key: IdempotencyKey,
        /// What the first request named.
        first: String,
        /// What this request names.
        this: String,
    },
    /// The store did not answer, or the key stayed locked by another request
    /// for longer than the wait.
    #[error("the idempotency store failed while {during}: {source}")]
    Store {
        /// The step that failed.
        during: &'static str,
        /// What failed.
        #[source]
        source: DbError,
    },
    /// The key expired or was purged under this request again and again.
    #[error("the Idempotency-Key '{0}' changed under this request {ATTEMPTS} times; retry")]
    Unsettled(IdempotencyKey),
    /// Producing the command failed; the key stays pending with the same command.
    #[error(transparent)]
    Produce(E),
}

fn store_error<E>(during: &'static str) -> impl FnOnce(DbError) -> IdempotencyError<E> {
    move |source| IdempotencyError::Store { during, source }
}

/// What the locked row says to do.
enum Decision {
    /// Answer from the row.
    Replay(Remembered),
    /// Produce the row's command while holding the lock.
    Produce(TimestampCommand),
    /// The row was replaced or is gone: claim again.
    Again,
}

/// A row of `idempotency_keys`, locked, with its age judged by the server's clock.
#[derive(QueryableByName)]
struct LockedKey {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    command_id: uuid::Uuid,
    #[diesel(sql_type = Timestamptz)]
    event_timestamp: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    requested_timestamp: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Integer>)]
    partition: Option<i32>,
    #[diesel(sql_type = Nullable<BigInt>)]
    log_offset: Option<i64>,
    #[diesel(sql_type = Bool)]
    expired: bool,
}

/// The shared memory of idempotency keys, with its own connection pool.
pub struct IdempotencyStore {
    pool: Pool,
    database_url: crate::db::DatabaseUrl,
    ttl: Duration,
    lock_wait: Duration,
    last_purge: Mutex<Option<Instant>>,
}

impl IdempotencyStore {
    /// A store in `database_url` remembering keys for `ttl`. A request waits
    /// for another that holds its key at most `delivery_timeout` (the
    /// holder's produce) plus a margin. Connects lazily.
    pub fn new(
        database_url: &crate::db::DatabaseUrl,
        pool_size: u32,
        ttl: Duration,
        delivery_timeout: Duration,
    ) -> Self {
        Self {
            pool: crate::db::pool(database_url, pool_size),
            database_url: database_url.clone(),
            ttl,
            lock_wait: delivery_timeout + LOCK_MARGIN,
            last_purge: Mutex::new(None),
        }
    }

    /// Applies the migrations the store needs. The command role serves
    /// commands without a key without any database, so a database that is
    /// down does not stop the start: the migrations are retried in the
    /// background until they succeed, and keyed requests answer 503 meanwhile.
    pub async fn prepare(&self) {
        let url = self.database_url.clone();
        if migrate(&url).await {
            return;
        }
        tokio::spawn(async move {
            let mut pause = Duration::from_secs(1);
            loop {
                tokio::time::sleep(pause).await;
                if migrate(&url).await {
                    tracing::info!("idempotency store ready");
                    return;
                }
                pause = (pause * 2).min(PREPARE_BACKOFF_MAX);
            }
        });
    }

    /// Answers a keyed request: the key's remembered answer, or `produce`
    /// called with the key's command (this request's when the key is new,
    /// the first request's otherwise) and its result remembered. See the
    /// module documentation for the protocol.
    pub async fn once<F, Fut, E>(
        &self,
        request: &KeyedCommand,
        produce: F,
    ) -> Result<Remembered, IdempotencyError<E>>
    where
        F: FnOnce(TimestampCommand) -> Fut,
        Fut: Future<Output = Result<LogPlace, E>>,
    {
        self.purge_if_due();
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| store_error("connecting")(DbError::from(e)))?;
        for _ in 0..ATTEMPTS {
            claim(&mut conn, request)
                .await
                .map_err(store_error("claiming the key"))?;
            Transactions::begin_transaction(&mut *conn)
                .await
                .map_err(|e| store_error("locking the key")(e.into()))?;
            let decided = self.decide(&mut conn, request).await;
            let command = match decided {
                Ok(Decision::Replay(remembered)) => {
                    commit(&mut conn, "reading the key").await?;
                    return Ok(remembered);
                }
                Ok(Decision::Again) => {
                    commit(&mut conn, "replacing an expired key").await?;
                    continue;
                }
                Ok(Decision::Produce(command)) => command,
                Err(error) => {
                    rollback(&mut conn).await;
                    return Err(error);
                }
            };
            let place = match produce(command).await {
                Ok(place) => place,
                Err(error) => {
                    rollback(&mut conn).await;
                    return Err(IdempotencyError::Produce(error));
                }
            };
            if let Err(error) = complete(&mut conn, &request.key, place).await {
                rollback(&mut conn).await;
                return Err(store_error("storing the answer")(error));
            }
            commit(&mut conn, "storing the answer").await?;
            return Ok(Remembered {
                command,
                place,
                replayed: false,
            });
        }
        Err(IdempotencyError::Unsettled(request.key.clone()))
    }

    /// Locks the key's row and decides what to do with it.
    async fn decide<E>(
        &self,
        conn: &mut AsyncPgConnection,
        request: &KeyedCommand,
    ) -> Result<Decision, IdempotencyError<E>> {
        let wait = millis(self.lock_wait);
        // The lock wait bounds how long this request waits for another; the
        // idle bound frees the key should this process stop answering while
        // it holds the lock.
        diesel::sql_query(
            "SELECT set_config('lock_timeout', $1, true), \
                    set_config('idle_in_transaction_session_timeout', $1, true)",
        )
        .bind::<Text, _>(&wait)
        .execute(conn)
        .await
        .map_err(|e| store_error("locking the key")(e.into()))?;
        let row: Option<LockedKey> = diesel::sql_query(
            "SELECT command_id, event_timestamp, requested_timestamp, partition, log_offset, \
                    created_at <= now() - $2 * interval '1 microsecond' AS expired \
             FROM idempotency_keys WHERE key = $1 FOR UPDATE",
        )
        .bind::<Text, _>(request.key.as_str())
        .bind::<BigInt, _>(micros(self.ttl))
        .get_result(conn)
        .await
        .optional()
        .map_err(|e| store_error("locking the key")(e.into()))?;
        let Some(row) = row else {
            // Purged between the claim and the lock: claim again.
            return Ok(Decision::Again);
        };
        if row.expired {
            replace(conn, request)
                .await
                .map_err(store_error("replacing an expired key"))?;
            return Ok(Decision::Again);
        }
        if row.requested_timestamp != request.requested {
            return Err(IdempotencyError::Reused {
                key: request.key.clone(),
                first: describe(row.requested_timestamp),
                this: describe(request.requested),
            });
        }
        let command = TimestampCommand {
            command_id: row.command_id,
            event_timestamp: row.event_timestamp,
        };
        Ok(match (row.partition, row.log_offset) {
            (Some(partition), Some(offset)) => Decision::Replay(Remembered {
                command,
                place: LogPlace { partition, offset },
                replayed: true,
            }),
            _ => Decision::Produce(command),
        })
    }

    /// Starts a purge of expired keys in the background when the last one is
    /// old enough. Only keyed requests get here: without them, the command
    /// role never touches the database.
    fn purge_if_due(&self) {
        let every = self.ttl.min(PURGE_EVERY);
        {
            let mut last = self
                .last_purge
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < every) {
                return;
            }
            *last = Some(Instant::now());
        }
        let (pool, ttl) = (self.pool.clone(), self.ttl);
        tokio::spawn(async move {
            match purge(&pool, ttl).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "expired idempotency keys purged"),
                Err(error) => {
                    tracing::warn!(error = %error, "cannot purge expired idempotency keys")
                }
            }
        });
    }
}

impl std::fmt::Debug for IdempotencyStore {
    // The database URL may carry a password: it is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyStore")
            .field("ttl", &self.ttl)
            .field("lock_wait", &self.lock_wait)
            .finish_non_exhaustive()
    }
}

/// One attempt at the migrations; `true` when the store is ready.
async fn migrate(database_url: &crate::db::DatabaseUrl) -> bool {
    match tokio::time::timeout(PREPARE_TIMEOUT, crate::db::run_migrations(database_url)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::warn!(
                error = %error,
                "idempotency store not ready: keyed commands answer 503 until the database is back"
            );
            false
        }
        Err(_) => {
            tracing::warn!(
                timeout = ?PREPARE_TIMEOUT,
                "idempotency store not ready (the database did not answer): keyed commands answer 503 until it does"
            );
            false
        }
    }
}

/// Inserts the key with the request's command unless the key is known.
async fn claim(conn: &mut AsyncPgConnection, request: &KeyedCommand) -> Result<(), DbError> {
    use idempotency_keys::dsl as k;
    diesel::insert_into(k::idempotency_keys)
        .values((
            k::key.eq(request.key.as_str()),
            k::command_id.eq(request.command.command_id),
            k::event_timestamp.eq(request.command.event_timestamp),
            k::requested_timestamp.eq(request.requested),
        ))
        .on_conflict(k::key)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

/// Replaces an expired key's row with the request's command, pending.
async fn replace(conn: &mut AsyncPgConnection, request: &KeyedCommand) -> Result<(), DbError> {
    use idempotency_keys::dsl as k;
    diesel::update(k::idempotency_keys.find(request.key.as_str()))
        .set((
            k::command_id.eq(request.command.command_id),
            k::event_timestamp.eq(request.command.event_timestamp),
            k::requested_timestamp.eq(request.requested),
            k::partition.eq(None::<i32>),
            k::log_offset.eq(None::<i64>),
            k::created_at.eq(now),
            k::completed_at.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores where the key's command landed.
async fn complete(
    conn: &mut AsyncPgConnection,
    key: &IdempotencyKey,
    place: LogPlace,
) -> Result<(), DbError> {
    use idempotency_keys::dsl as k;
    diesel::update(k::idempotency_keys.find(key.as_str()))
        .set((
            k::partition.eq(place.partition),
            k::log_offset.eq(place.offset),
            k::completed_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

async fn commit<E>(
    conn: &mut AsyncPgConnection,
    during: &'static str,
) -> Result<(), IdempotencyError<E>> {
    Transactions::commit_transaction(conn)
        .await
        .map_err(|e| store_error(during)(e.into()))
}

/// Rolls back; a connection whose rollback fails is left broken, and the
/// pool discards it rather than hand out a connection inside a transaction.
async fn rollback(conn: &mut AsyncPgConnection) {
    if let Err(error) = Transactions::rollback_transaction(conn).await {
        tracing::warn!(error = %error, "rollback of an idempotency key's transaction failed");
    }
}

/// Deletes keys older than `ttl`, a batch at a time, skipping rows that a
/// request holds. Answers how many were deleted.
async fn purge(pool: &Pool, ttl: Duration) -> Result<usize, DbError> {
    let mut conn = pool.get().await?;
    let mut purged = 0;
    loop {
        let deleted = diesel::sql_query(
            "DELETE FROM idempotency_keys WHERE key IN ( \
                SELECT key FROM idempotency_keys \
                WHERE created_at <= now() - $1 * interval '1 microsecond' \
                LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind::<BigInt, _>(micros(ttl))
        .bind::<BigInt, _>(PURGE_BATCH)
        .execute(&mut conn)
        .await?;
        purged += deleted;
        if i64::try_from(deleted).unwrap_or(i64::MAX) < PURGE_BATCH {
            return Ok(purged);
        }
    }
}

/// What a request named, for messages.
fn describe(requested: Option<DateTime<Utc>>) -> String {
    match requested {
        Some(at) => format!("the timestamp {}", format_timestamp(&at)),
        None => "the current time (no timestamp)".to_owned(),
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A duration as a PostgreSQL setting in milliseconds (at least 1: 0 would
/// mean "no limit").
fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_messages_are_rendered_as_postgresql_and_people_read_them() {
        assert_eq!(millis(Duration::from_micros(10)), "1");
        assert_eq!(millis(Duration::from_secs(12)), "12000");
        assert_eq!(micros(Duration::MAX), i64::MAX);
        let at = DateTime::parse_from_rfc3339("2009-09-28T19:03:12Z")
            .map(|d| d.with_timezone(&Utc))
            .ok();
        assert_eq!(describe(at), "the timestamp 2009-09-28T19:03:12Z");
        assert_eq!(describe(None), "the current time (no timestamp)");
    }
}
