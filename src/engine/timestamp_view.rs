//! The timestamp view as a sink of the engine: records of the command topic
//! decode into commands, and each batch goes to the DB writer, which applies
//! it with the partition's next offset in one transaction.

use actix::Addr;
use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::Message as _;
use rdkafka::message::BorrowedMessage;

use crate::actors::db_writer::{DbWriter, LoadOffsets, WriteBatch};
use crate::db::DbError;
use crate::db::models::ProjectedRecord;
use crate::db::queries::{Conflict, PartitionKey};
use crate::domain::{TimestampCommand, format_timestamp};
use std::collections::HashMap;

use crate::engine::sink::{Decoded, Records, Rejected, Sink, SinkError, Written};
use crate::kafka::dead_letter::{DeadLetter, SourcePosition};
use crate::kafka::record::{self, DecodeError, RecordHeaders};

/// The `timestamp_records` view, written through the DB writer.
pub struct TimestampView {
    writer: Addr<DbWriter>,
}

impl TimestampView {
    /// The view behind `writer`.
    pub fn new(writer: Addr<DbWriter>) -> Self {
        Self { writer }
    }
}

fn sink_error(error: DbError) -> SinkError {
    match error {
        DbError::PoolBusy => SinkError::Busy,
        other => SinkError::Failed(other.to_string()),
    }
}

impl Sink for TimestampView {
    type Item = ProjectedRecord;

    /// The log timestamp (the row's `created_at`), then key and value.
    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        _headers: &RecordHeaders,
    ) -> Result<ProjectedRecord, DecodeError> {
        let accepted_at = record::record_timestamp(message.timestamp().to_millis())?;
        let command = record::decode(message.key(), message.payload())?;
        Ok(ProjectedRecord {
            offset: message.offset(),
            command,
            accepted_at,
        })
    }

    fn write(
        &self,
        partition: PartitionKey,
        records: Records<ProjectedRecord>,
        next_offset: i64,
    ) -> BoxFuture<'static, Result<Written, SinkError>> {
        let writer = self.writer.clone();
        async move {
            let batch = WriteBatch {
                partition: partition.clone(),
                records: records.iter().map(|r| r.item).collect(),
                next_offset,
            };
            let committed = writer
                .send(batch)
                .await
                .map_err(|e| SinkError::Failed(e.to_string()))?
                .map_err(sink_error)?;
            let rejected = committed
                .applied
                .conflicts
                .iter()
                .map(|conflict| conflict_letter(&partition, conflict, &records))
                .collect();
            Ok(Written { rejected })
        }
        .boxed()
    }

    fn positions(
        &self,
        group_id: String,
        topic: String,
    ) -> BoxFuture<'static, Result<HashMap<i32, i64>, SinkError>> {
        let request = self.writer.send(LoadOffsets { group_id, topic });
        async move {
            request
                .await
                .map_err(|e| SinkError::Failed(e.to_string()))?
                .map_err(sink_error)
        }
        .boxed()
    }

    fn projected(&self, record: &Decoded<ProjectedRecord>) {
        tracing::info!(
            command_id = %record.item.command.command_id,
            offset = record.offset,
            correlation_id = record.correlation_id.as_deref().unwrap_or(""),
            "record projected"
        );
    }
}

/// The dead letter of a conflict's losing version. A losing record of the
/// batch is dead-lettered at its own offset; a replaced earlier row is
/// dead-lettered as the version it held, at the offset of the record that
/// replaced it, marked `dlq.replaced: true`.
fn conflict_letter(
    partition: &PartitionKey,
    conflict: &Conflict,
    records: &[Decoded<ProjectedRecord>],
) -> Rejected {
    let kept_offset = records
        .iter()
        .find(|r| {
            r.item.command.command_id == conflict.command_id
                && Some(r.offset) != conflict.lost_offset
        })
        .map(|r| r.offset);
    let offset = conflict.lost_offset.or(kept_offset).unwrap_or_default();
    let correlation_id = records
        .iter()
        .find(|r| r.offset == offset)
        .and_then(|r| r.correlation_id.clone());
    let (event_timestamp, log_time) = conflict.lost;
    let (kept_event, kept_log) = conflict.kept;
    let error = DecodeError::ConflictingDuplicate(format!(
        "command {} has two versions: event_timestamp {} (log time {}) is kept, {} (log time {}) is not; the earliest log time wins",
        conflict.command_id,
        format_timestamp(&kept_event),
        format_timestamp(&kept_log),
        format_timestamp(&event_timestamp),
        format_timestamp(&log_time),
    ));
    let value = record::encode_value(&TimestampCommand {
        command_id: conflict.command_id,
        event_timestamp,
    });
    let mut headers = Vec::new();
    if let Some(id) = &correlation_id {
        headers.push((
            record::CORRELATION_HEADER.to_owned(),
            id.clone().into_bytes(),
        ));
    }
    if conflict.lost_offset.is_none() {
        headers.push(("dlq.replaced".to_owned(), b"true".to_vec()));
    }
    let key = conflict.command_id.to_string();
    let dead_letter = DeadLetter::new(
        &SourcePosition {
            topic: partition.topic.clone(),
            partition: partition.partition,
            offset,
        },
        Some(key.as_bytes()),
        Some(&value),
        headers,
        &error,
    );
    Rejected {
        offset,
        record_applied: conflict.lost_offset.is_none(),
        dead_letter,
        correlation_id,
    }
}
