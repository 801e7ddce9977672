//! Pipeline definitions in PostgreSQL, versioned.
//!
//! `pipelines` holds each pipeline's current version and definition;
//! `pipeline_versions` every version ever applied, a deletion included, with
//! the time it was applied. A change that equals the current definition
//! (both are normalised by [`Definition::validate`]) stores nothing.
//!
//! Changes are made one at a time (a transaction-level advisory lock) and
//! numbered by `change`, a counter over all pipelines: a process that loaded
//! the definitions at change N polls [`last_change`] (one index lookup) and
//! reloads ([`snapshot`]) only when it moved.
//!
//! A pipeline's topics and sink cannot change: what it has read and written
//! so far would mean something else. Such a change is refused
//! ([`StoreError::TopicsChanged`], [`StoreError::SinkChanged`]); it is a new
//! pipeline, or a replay. A deleted pipeline's name can be used again, for
//! anything, its versions counting on.

use std::fmt;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::db::DbError;
use crate::pipelines::definition::{Definition, Sink};
use crate::pipelines::schema::{pipeline_versions, pipelines};

/// Advisory lock key held by every change ("chrpipe" in ASCII).
const CHANGE_LOCK: i64 = 0x0063_6872_7069_7065;

/// What applying a definition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A new pipeline (or a deleted one's name used again).
    Created,
    /// A new version of a pipeline.
    Updated,
    /// The definition equals the current one: nothing stored.
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
        })
    }
}

/// The outcome for one pipeline of [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The pipeline.
    pub name: String,
    /// What was done.
    pub action: Action,
    /// Its current version afterwards.
    pub version: i32,
}

impl fmt::Display for Applied {
    /// `NAME: created v1`, `NAME: updated v3`, `NAME: unchanged v3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} v{}", self.name, self.action, self.version)
    }
}

/// A pipeline's current definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its version: every record a pipeline processes is processed by one.
    pub version: i32,
    /// When that version was applied.
    pub applied_at: DateTime<Utc>,
    /// The version it was created at, or created again at after a
    /// deletion: a pipeline applied again under a deleted one's name is a
    /// new pipeline, with a consumer group of its own.
    pub created_version: i32,
    /// The definition.
    pub definition: Definition,
}

/// Every current (not deleted) pipeline, as of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The last change it includes (0: none ever).
    pub change: i64,
    /// The pipelines, by name.
    pub pipelines: Vec<Stored>,
}

/// One version in a pipeline's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The version.
    pub version: i32,
    /// What it was.
    pub action: HistoryAction,
    /// When it was applied.
    pub applied_at: DateTime<Utc>,
    /// The definition (for a deletion, the one deleted).
    pub definition: Definition,
}

/// What a version in the history was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryAction {
    /// The first version, or the first after a deletion.
    Created,
    /// A change of a running pipeline.
    Updated,
    /// The pipeline was deleted.
    Deleted,
}

impl fmt::Display for HistoryAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HistoryAction::Created => "created",
            HistoryAction::Updated => "updated",
            HistoryAction::Deleted => "deleted",
        })
    }
}

/// Why a change was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A change of a pipeline's topics.
    #[error(
        "pipeline {name}: its topics cannot change ({from} to {to}): apply it under a new name, or replay it into a new sink"
    )]
    TopicsChanged {
        /// The pipeline.
        name: String,
        /// Its topics.
        from: String,
        /// The topics asked for.
        to: String,
    },
    /// A change of a pipeline's sink.
    #[error(
        "pipeline {name}: its sink cannot change ({from} to {to}): apply it under a new name, or replay it into a new sink"
    )]
    SinkChanged {
        /// The pipeline.
        name: String,
        /// Its sink.
        from: String,
        /// The sink asked for.
        to: String,
    },
    /// No pipeline of that name (or it is deleted).
    #[error("no pipeline named {0}")]
    Unknown(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(error: diesel::result::Error) -> Self {
        StoreError::Db(DbError::Query(error))
    }
}

impl StoreError {
    /// Whether the change itself is refused (not the database failing).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, StoreError::Db(_))
    }
}

/// A row of `pipelines`.
#[derive(Queryable)]
struct Current {
    version: i32,
    definition: serde_json::Value,
    deleted: bool,
    updated_at: DateTime<Utc>,
    created_version: i32,
}

/// Stores `definitions` (validated, see [`Definition::validate`]) in one
/// transaction: every one of them, or none when one is refused.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    definitions: &[Definition],
) -> Result<Vec<Applied>, StoreError> {
    conn.transaction::<_, StoreError, _>(async |conn| {
        let mut change = lock_changes(conn).await?;
        let mut applied = Vec::with_capacity(definitions.len());
        for definition in definitions {
            let current = current(conn, &definition.name).await?;
            let json = definition.to_json();
            let (action, version) = match current {
                None => {
                    diesel::insert_into(pipelines::table)
                        .values((
                            pipelines::name.eq(&definition.name),
                            pipelines::version.eq(1),
                            pipelines::definition.eq(&json),
                        ))
                        .execute(conn)
                        .await?;
                    (Action::Created, 1)
                }
                Some(current) => {
                    let action = if current.deleted {
                        Action::Created
                    } else {
                        let stored = decode(current.definition)?;
                        refuse_immutable(&stored, definition)?;
                        if stored == *definition {
                            applied.push(Applied {
                                name: definition.name.clone(),
                                action: Action::Unchanged,
                                version: current.version,
                            });
                            continue;
                        }
                        Action::Updated
                    };
                    let version = current.version + 1;
                    let created_version = match action {
                        Action::Created => version,
                        _ => current.created_version,
                    };
                    diesel::update(pipelines::table.find(&definition.name))
                        .set((
                            pipelines::version.eq(version),
                            pipelines::definition.eq(&json),
                            pipelines::deleted.eq(false),
                            pipelines::updated_at.eq(diesel::dsl::now),
                            pipelines::created_version.eq(created_version),
                        ))
                        .execute(conn)
                        .await?;
                    (action, version)
                }
            };
            change += 1;
            record_version(conn, &definition.name, version, change, &json, false).await?;
            applied.push(Applied {
                name: definition.name.clone(),
                action,
                version,
            });
        }
        Ok(applied)
    })
    .await
}

/// Deletes a pipeline: it stops, its sink is kept, its history too. Returns
/// the version that records the deletion.
pub async fn delete(conn: &mut AsyncPgConnection, name: &str) -> Result<i32, StoreError> {
    conn.transaction::<_, StoreError, _>(async |conn| {
        let change = lock_changes(conn).await? + 1;
        let current = current(conn, name)
            .await?
            .filter(|c| !c.deleted)
            .ok_or_else(|| StoreError::Unknown(name.to_owned()))?;
        let version = current.version + 1;
        diesel::update(pipelines::table.find(name))
            .set((
                pipelines::version.eq(version),
                pipelines::deleted.eq(true),
                pipelines::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        record_version(conn, name, version, change, &current.definition, true).await?;
        Ok(version)
    })
    .await
}

/// Every current (not deleted) pipeline, by name.
pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<Stored>, DbError> {
    let rows: Vec<(i32, serde_json::Value, DateTime<Utc>, i32)> = pipelines::table
        .filter(pipelines::deleted.eq(false))
        .order(pipelines::name)
        .select((
            pipelines::version,
            pipelines::definition,
            pipelines::updated_at,
            pipelines::created_version,
        ))
        .load(conn)
        .await?;
    rows.into_iter()
        .map(|(version, definition, applied_at, created_version)| {
            Ok(Stored {
                version,
                applied_at,
                created_version,
                definition: decode(definition)?,
            })
        })
        .collect()
}

/// One pipeline's current definition; `None` when unknown or deleted.
pub async fn get(conn: &mut AsyncPgConnection, name: &str) -> Result<Option<Stored>, DbError> {
    match current(conn, name).await? {
        Some(c) if !c.deleted => Ok(Some(Stored {
            version: c.version,
            applied_at: c.updated_at,
            created_version: c.created_version,
            definition: decode(c.definition)?,
        })),
        _ => Ok(None),
    }
}

/// Every version of a pipeline, oldest first; empty when the name was
/// never used.
pub async fn history(conn: &mut AsyncPgConnection, name: &str) -> Result<Vec<Version>, DbError> {
    let rows: Vec<(i32, serde_json::Value, bool, DateTime<Utc>)> = pipeline_versions::table
        .filter(pipeline_versions::name.eq(name))
        .order(pipeline_versions::version)
        .select((
            pipeline_versions::version,
            pipeline_versions::definition,
            pipeline_versions::deleted,
            pipeline_versions::applied_at,
        ))
        .load(conn)
        .await?;
    let mut versions: Vec<Version> = Vec::with_capacity(rows.len());
    for (version, definition, deleted, applied_at) in rows {
        let action = match versions.last() {
            _ if deleted => HistoryAction::Deleted,
            None => HistoryAction::Created,
            Some(previous) if previous.action == HistoryAction::Deleted => HistoryAction::Created,
            Some(_) => HistoryAction::Updated,
        };
        versions.push(Version {
            version,
            action,
            applied_at,
            definition: decode(definition)?,
        });
    }
    Ok(versions)
}

/// The number of the last change to any pipeline (0: none ever): cheap
/// enough to poll every second.
pub async fn last_change(conn: &mut AsyncPgConnection) -> Result<i64, DbError> {
    let change: Option<i64> = pipeline_versions::table
        .select(diesel::dsl::max(pipeline_versions::change))
        .first(conn)
        .await?;
    Ok(change.unwrap_or(0))
}

/// Every current pipeline and the change they are as of, read in one
/// snapshot: a change committing meanwhile is either in both or in neither.
pub async fn snapshot(conn: &mut AsyncPgConnection) -> Result<Snapshot, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(conn)
            .await?;
        let change = last_change(conn).await?;
        let pipelines = list(conn).await?;
        Ok(Snapshot { change, pipelines })
    })
    .await
}

/// Takes the change lock (until the transaction ends) and returns the last
/// change number.
async fn lock_changes(conn: &mut AsyncPgConnection) -> Result<i64, DbError> {
    diesel::sql_query(format!("SELECT pg_advisory_xact_lock({CHANGE_LOCK})"))
        .execute(conn)
        .await?;
    last_change(conn).await
}

async fn current(conn: &mut AsyncPgConnection, name: &str) -> Result<Option<Current>, DbError> {
    Ok(pipelines::table
        .find(name)
        .select((
            pipelines::version,
            pipelines::definition,
            pipelines::deleted,
            pipelines::updated_at,
            pipelines::created_version,
        ))
        .first::<Current>(conn)
        .await
        .optional()?)
}

async fn record_version(
    conn: &mut AsyncPgConnection,
    name: &str,
    version: i32,
    change: i64,
    definition: &serde_json::Value,
    deleted: bool,
) -> Result<(), DbError> {
    diesel::insert_into(pipeline_versions::table)
        .values((
            pipeline_versions::name.eq(name),
            pipeline_versions::version.eq(version),
            pipeline_versions::change.eq(change),
            pipeline_versions::definition.eq(definition),
            pipeline_versions::deleted.eq(deleted),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// A stored definition, read back.
fn decode(definition: serde_json::Value) -> Result<Definition, DbError> {
    serde_json::from_value(definition)
        .map_err(|e| DbError::Query(diesel::result::Error::DeserializationError(Box::new(e))))
}

fn refuse_immutable(stored: &Definition, new: &Definition) -> Result<(), StoreError> {
    if stored.topics != new.topics {
        return Err(StoreError::TopicsChanged {
            name: new.name.clone(),
            from: stored.topics.join(","),
            to: new.topics.join(","),
        });
    }
    if stored.sink != new.sink {
        return Err(StoreError::SinkChanged {
            name: new.name.clone(),
            from: describe_sink(&stored.sink),
            to: describe_sink(&new.sink),
        });
    }
    Ok(())
}

/// `postgres table t key .id`, `kafka topic t`, `file /x`.
pub fn describe_sink(sink: &Sink) -> String {
    match sink {
        Sink::Postgres { table, key } => match key {
            Some(key) => format!("postgres table {table} key {key}"),
            None => format!("postgres table {table}"),
        },
        Sink::Kafka { topic, key } => match key {
            Some(key) => format!("kafka topic {topic} key {key}"),
            None => format!("kafka topic {topic}"),
        },
        Sink::File { path } => format!("file {path}"),
    }
}
