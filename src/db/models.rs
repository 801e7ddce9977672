//! Rows of the view and the domain types they map from.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::db::schema::timestamp_records;
use crate::domain::TimestampCommand;

/// A row of `timestamp_records`, as the query API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = timestamp_records, check_for_backend(diesel::pg::Pg))]
pub struct TimestampRecord {
    /// The command id.
    pub id: Uuid,
    /// When the event happened.
    pub event_timestamp: DateTime<Utc>,
    /// When the command was accepted into the log (the record's log timestamp),
    /// so that a rebuild reproduces the same row.
    pub created_at: DateTime<Utc>,
}

/// A decoded record on its way into the view, with its place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectedRecord {
    /// Offset of the record in its partition.
    pub offset: i64,
    /// The command it carries.
    pub command: TimestampCommand,
    /// The record's log timestamp.
    pub accepted_at: DateTime<Utc>,
}

impl From<&ProjectedRecord> for TimestampRecord {
    fn from(r: &ProjectedRecord) -> Self {
        Self {
            id: r.command.command_id,
            event_timestamp: r.command.event_timestamp,
            created_at: r.accepted_at,
        }
    }
}
