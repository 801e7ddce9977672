//! What the projections of the outbox's topics share: reading an event from
//! a record, and the dead letter of an event that can never be applied.

use crate::db::queries::PartitionKey;
use crate::engine::sink::{Decoded, Rejected};
use crate::kafka::dead_letter::{DeadLetter, SourcePosition};
use crate::kafka::record::{CORRELATION_HEADER, DecodeError};
use crate::outbox::Envelope;
use crate::shop::store::ApplyError;

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
