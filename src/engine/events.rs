//! What the projections of the outbox's topics share: reading an event from
//! a record, and the dead letter of an event that can never be applied.

use diesel_async::AsyncPgConnection;
use futures::future::BoxFuture;

use crate::db::DbError;
use crate::db::queries::PartitionKey;
use crate::engine::sink::{Decoded, Rejected};
use crate::kafka::dead_letter::{DeadLetter, SourcePosition};
use crate::kafka::record::{CORRELATION_HEADER, DecodeError};
use crate::outbox::Envelope;
use crate::shop::store::{Applied, ApplyError};

/// Applies one event in the caller's transaction (shop's customer copy,
/// the shop's views).
pub type ApplyOne = for<'c> fn(
    &'c mut AsyncPgConnection,
    &'c str,
    &'c Envelope,
) -> BoxFuture<'c, Result<Applied, ApplyError>>;

/// Applies `records` of `partition` one by one with `apply`, in the
/// caller's transaction. An event that can never be applied (refused before
/// any statement, so the transaction goes on) comes back as a dead letter;
/// a database error fails the batch.
pub async fn apply_each(
    conn: &mut AsyncPgConnection,
    partition: &PartitionKey,
    records: &[Decoded<Envelope>],
    apply: ApplyOne,
) -> Result<Vec<Rejected>, DbError> {
    let mut refused = Vec::new();
    for record in records {
        match apply(conn, &partition.topic, &record.item).await {
            Ok(Applied::Applied) => {}
            Ok(outcome @ (Applied::Stale | Applied::Ignored)) => tracing::debug!(
                offset = record.offset,
                ?outcome,
                aggregate_version = record.item.aggregate_version,
                "event changes nothing"
            ),
            Err(ApplyError::Database(error)) => return Err(error.into()),
            Err(error) => refused.push(rejected(partition, record, &error)),
        }
    }
    Ok(refused)
}

/// The dead letter of `record`, an event that applying refused for
/// `error` (one for which [`ApplyError::is_bad_event`] holds): the event as
/// read, keyed by its aggregate id, reason `invalid_event`.
pub fn rejected(
    partition: &PartitionKey,
    record: &Decoded<Envelope>,
    error: &ApplyError,
) -> Rejected {
    let value = serde_json::to_vec(&record.item).unwrap_or_default();
    let headers = record
        .correlation_id
        .iter()
        .map(|id| (CORRELATION_HEADER.to_owned(), id.clone().into_bytes()))
        .collect();
    let dead_letter = DeadLetter::new(
        &SourcePosition {
            topic: partition.topic.clone(),
            partition: partition.partition,
            offset: record.offset,
        },
        Some(record.item.aggregate_id.as_bytes()),
        Some(&value),
        headers,
        &DecodeError::InvalidEvent(error.to_string()),
    );
    Rejected {
        offset: record.offset,
        record_applied: false,
        dead_letter,
        correlation_id: record.correlation_id.clone(),
    }
}

/// Logs an applied event.
pub fn log_applied(record: &Decoded<Envelope>, what: &'static str) {
    tracing::info!(
        aggregate_id = record.item.aggregate_id,
        aggregate_version = record.item.aggregate_version,
        event_type = record.item.event_type,
        offset = record.offset,
        correlation_id = record.correlation_id.as_deref().unwrap_or(""),
        "{what}"
    );
}
