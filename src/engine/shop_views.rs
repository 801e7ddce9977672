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
use crate::shop::store::Applied;
use crate::shop::store::ApplyError;
use crate::shop::views;

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
        events::apply_each(conn, partition, records, apply_one).boxed()
    }

    fn projected(&self, record: &Decoded<Envelope>) {
        events::log_applied(record, "event applied to the shop's views");
    }
}

fn apply_one<'c>(
    conn: &'c mut AsyncPgConnection,
    topic: &'c str,
    event: &'c Envelope,
) -> BoxFuture<'c, Result<Applied, ApplyError>> {
    views::apply_view_event(conn, topic, event).boxed()
}
