//! What the engine writes into: a sink decodes a partition's records and
//! makes batches of them durable, and says how its position in the log is
//! kept.
//!
//! The engine does everything else (membership, batching, acknowledging,
//! draining, retries, dead letters, readiness): a sink is only the part that
//! differs between the timestamp view, the shop's views, the shop's copy of
//! the customers and a pipeline's output.
//!
//! How a sink commits decides what a crash can do:
//!
//! * a database sink stores each batch's next offset in the batch's own
//!   transaction ([`Sink::keeps_positions`]): a record's effect is applied
//!   once however often it is read (exactly-once effect), and the engine
//!   guards those stored offsets against a log that lost records;
//! * a sink that cannot take the offset with the data (a Kafka topic, a
//!   file) is written and made durable first, and the engine then
//!   acknowledges the offset to Kafka, whose committed offsets are the
//!   sink's position: a crash between the two repeats that batch (at least
//!   once).

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use rdkafka::message::BorrowedMessage;

use crate::db::queries::PartitionKey;
use crate::kafka::dead_letter::DeadLetter;
use crate::kafka::record::{DecodeError, RecordHeaders};

/// One record of a batch, decoded by its sink.
#[derive(Debug, Clone)]
pub struct Decoded<T> {
    /// The record's offset in its partition.
    pub offset: i64,
    /// The record's `correlationId` header, if it has one.
    pub correlation_id: Option<String>,
    /// What the sink made of the record.
    pub item: T,
}

/// A batch of one partition's records, in offset order, shared (not copied)
/// by the retries of one write.
pub type Records<T> = Arc<Vec<Decoded<T>>>;

/// A batch is durable in the sink.
#[derive(Debug, Default)]
pub struct Written {
    /// Records the write itself decided against (a conflicting duplicate),
    /// to dead-letter after the commit that decided them: offset, dead
    /// letter, correlation id.
    pub rejected: Vec<Rejected>,
}

/// A record of a committed batch that the sink refused.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The record the dead letter is filed under.
    pub offset: i64,
    /// Whether that record was applied all the same (the dead letter is of
    /// what it replaced).
    pub record_applied: bool,
    /// What goes to the dead-letter topic.
    pub dead_letter: DeadLetter,
    /// The correlation id to log it with.
    pub correlation_id: Option<String>,
}

/// Why a batch is not durable (yet). The engine retries both; only
/// [`SinkError::Failed`] shows the partition as blocked.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Every connection is in use: a queue, not a failure.
    #[error("every connection of the sink is busy")]
    Busy,
    /// The sink failed; the batch is retried with backoff.
    #[error("{0}")]
    Failed(String),
}

/// A destination of the projection engine.
pub trait Sink: Send + Sync + 'static {
    /// What a record decodes into.
    type Item: Clone + Send + Sync + 'static;

    /// Decodes one record whose headers were read (and found readable).
    /// An error dead-letters the record with the error's reason.
    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        headers: &RecordHeaders,
    ) -> Result<Self::Item, DecodeError>;

    /// Makes `records` (in offset order, possibly none when every record of
    /// the batch was dead-lettered) durable, with `next_offset` as the
    /// partition's position after them when the sink stores positions.
    /// Records below the stored position were applied before and must
    /// change nothing. A sink should not keep a share of the batch once
    /// the write is done: the engine takes its buffer back for the next
    /// batch, and a share kept costs a new buffer.
    fn write(
        &self,
        partition: PartitionKey,
        records: Records<Self::Item>,
        next_offset: i64,
    ) -> BoxFuture<'static, Result<Written, SinkError>>;

    /// Whether the sink stores its position with its data. When it does
    /// not, [`Sink::positions`] is never asked and Kafka's committed offsets
    /// are the position.
    fn keeps_positions(&self) -> bool {
        true
    }

    /// The next offset stored for each partition of `topic` for `group_id`
    /// (a partition the sink holds nothing of is absent).
    fn positions(
        &self,
        group_id: String,
        topic: String,
    ) -> BoxFuture<'static, Result<HashMap<i32, i64>, SinkError>>;

    /// Called once per record of a committed batch that was not rejected,
    /// to log it (the default logs nothing).
    fn projected(&self, _record: &Decoded<Self::Item>) {}
}
