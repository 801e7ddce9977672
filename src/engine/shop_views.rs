//! The shop's read side: events of the outbox's topics (products, orders,
//! customers) applied to the `shop_view` tables the query API serves
//! ([`shop::views::apply_view_event`]), each batch in one transaction with
//! the partition's offset. Every view row keeps the aggregate version it
//! holds, so a redelivered, duplicate or stale event changes nothing and a
//! rebuild gives the same views.

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
use crate::shop::store::ApplyError;
use crate::shop::views::{self, ViewApplied};

/// Applies events to the `shop_view` tables.
pub struct ShopViews;

impl Projection for ShopViews {
    type Item = Envelope;

    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        _headers: &RecordHeaders,
    ) -> Result<Envelope, DecodeError> {
        Envelope::from_record(message.key(), message.payload())
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        partition: &'a PartitionKey,
        records: &'a [Decoded<Envelope>],
    ) -> BoxFuture<'a, Result<Vec<Rejected>, DbError>> {
        async move {
            let mut refused = Vec::new();
            for record in records {
                match views::apply_view_event(conn, &partition.topic, &record.item).await {
                    Ok(ViewApplied::Applied) => {}
                    Ok(outcome @ (ViewApplied::Stale | ViewApplied::Ignored)) => tracing::debug!(
                        offset = record.offset,
                        ?outcome,
                        aggregate_version = record.item.aggregate_version,
                        "event changes no view"
                    ),
                    Err(ApplyError::Database(error)) => return Err(error.into()),
                    // Refused before any statement: the transaction goes on.
                    Err(error) => refused.push(events::rejected(partition, record, &error)),
                }
            }
            Ok(refused)
        }
        .boxed()
    }

    fn projected(&self, record: &Decoded<Envelope>) {
        events::log_applied(record, "event applied to the shop's views");
    }
}
