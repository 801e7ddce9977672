//! Shop's copy of the customers, fed by accounts' events
//! (`accounts.customer.change`): event-carried state transfer. Each event
//! is applied only if its `aggregateVersion` is newer than the copy's
//! ([`shop::store::apply_customer_event`]), in the batch's transaction with
//! the partition's offset, so that a redelivered, duplicate or stale event
//! changes nothing.

use diesel_async::AsyncPgConnection;
use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::Message as _;
use rdkafka::message::BorrowedMessage;

use crate::db::DbError;
use crate::db::queries::PartitionKey;
use crate::engine::events;
use crate::engine::pg_sink::Projection;
use crate::engine::sink::{Decoded, Rejected};
use crate::kafka::record::{DecodeError, RecordHeaders};
use crate::outbox::Envelope;
use crate::shop::CustomerState;
use crate::shop::store::{self, Applied, ApplyError};

/// Most addresses a customer's copy keeps (the accounts service has a
/// billing and a shipping address; a few more are plenty).
const MAX_ADDRESSES: usize = 100;

/// Applies customer events to `shop.customers`.
pub struct CustomerCopy;

impl Projection for CustomerCopy {
    type Item = Envelope;

    /// An envelope whose aggregate id is a customer id and whose data, for
    /// a created or updated customer, holds a name and addresses: whatever
    /// else could be wrong is found here, so that applying it can only fail
    /// with the database.
    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        _headers: &RecordHeaders,
    ) -> Result<Envelope, DecodeError> {
        let event = Envelope::from_record(message.key(), message.payload())?;
        if !event.aggregate_id.parse::<i64>().is_ok_and(|id| id > 0) {
            return Err(DecodeError::InvalidEvent(
                "aggregateId is not a customer id (a positive integer)".to_owned(),
            ));
        }
        if matches!(
            event.event_type.as_str(),
            "CustomerCreated" | "CustomerUpdated"
        ) {
            let state =
                serde_json::from_value::<CustomerState>(event.data.clone()).map_err(|e| {
                    DecodeError::InvalidEvent(format!("the event's data is not a customer: {e}"))
                })?;
            // What PostgreSQL would refuse for ever must not reach it: a NUL
            // in a text, more addresses than a position can number.
            if crate::db::holds_nul(&event.data) {
                return Err(DecodeError::InvalidEvent(
                    "the event's data holds a NUL character".to_owned(),
                ));
            }
            if state.addresses.len() > MAX_ADDRESSES {
                return Err(DecodeError::InvalidEvent(format!(
                    "the customer has {} addresses, more than {MAX_ADDRESSES}",
                    state.addresses.len()
                )));
            }
        }
        Ok(event)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        partition: &'a PartitionKey,
        records: &'a [Decoded<Envelope>],
    ) -> BoxFuture<'a, Result<Vec<Rejected>, DbError>> {
        events::apply_each(conn, partition, records, apply_one).boxed()
    }

    fn projected(&self, record: &Decoded<Envelope>) {
        events::log_applied(record, "customer event applied to shop's copy");
    }
}

fn apply_one<'c>(
    conn: &'c mut AsyncPgConnection,
    _topic: &'c str,
    event: &'c Envelope,
) -> BoxFuture<'c, Result<Applied, ApplyError>> {
    store::apply_customer_event(conn, event).boxed()
}
