//! The HTTP ingestion actor: validates a command and hands it to the
//! producer; answers once the broker has acknowledged it. A command with an
//! `Idempotency-Key` goes through the idempotency store, so that every
//! request with that key is answered with the same command.

use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::actors::producer::{KafkaProducer, ProduceError, PublishCommand};
use crate::db::idempotency::{
    IdempotencyError, IdempotencyStore, KeyedCommand, LogPlace, Remembered,
};
use crate::domain::{
    CorrelationId, IdempotencyKey, TimestampCommand, TimestampError, parse_event_timestamp,
    truncate_to_micros,
};
use crate::metrics::Metrics;

const ACTOR: &str = "ingestion";
/// Commands that may wait before HTTP handlers are held back.
pub const MAILBOX_CAPACITY: usize = 4096;

/// A command as it arrives over HTTP, not yet validated.
#[derive(Debug, Message)]
#[rtype(result = "Result<CommandAccepted, SubmitError>")]
pub struct SubmitCommand {
    /// The timestamp path segment; `None` means "now".
    pub event_timestamp: Option<String>,
    /// The request's correlation id.
    pub correlation_id: CorrelationId,
    /// The request's `Idempotency-Key`, when it has one.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// A command the broker has acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandAccepted {
    /// The command id.
    pub command_id: uuid::Uuid,
    /// Where it is in the log.
    pub place: LogPlace,
    /// Whether the answer is an earlier request's, remembered for its
    /// `Idempotency-Key`, rather than a record produced for this request.
    pub replayed: bool,
}

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The timestamp is not a storable RFC 3339 instant.
    #[error(transparent)]
    InvalidTimestamp(#[from] TimestampError),
    /// The log did not take the record.
    #[error(transparent)]
    Unavailable(#[from] ProduceError),
    /// The `Idempotency-Key` could not be answered (reused for another
    /// command, store unavailable, or the log did not take the record).
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError<ProduceError>),
}

/// Validates commands and hands them to the producer.
///
/// It owns no resource that can break (the store's pool replaces broken
/// connections itself), so it never stops and runs unsupervised.
pub struct Ingestion {
    producer: Addr<KafkaProducer>,
    idempotency: Arc<IdempotencyStore>,
    metrics: Arc<Metrics>,
}

impl Ingestion {
    /// An ingestion actor publishing through `producer` and remembering
    /// idempotency keys in `idempotency`.
    pub fn new(
        producer: Addr<KafkaProducer>,
        idempotency: Arc<IdempotencyStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            producer,
            idempotency,
            metrics,
        }
    }
}

impl Actor for Ingestion {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Handler<SubmitCommand> for Ingestion {
    type Result = ResponseFuture<Result<CommandAccepted, SubmitError>>;

    fn handle(&mut self, mut msg: SubmitCommand, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!("submit_command", correlation_id = %msg.correlation_id);
        let metrics = self.metrics.clone();
        let producer = self.producer.clone();
        // Two futures boxed apart: a command without a key neither touches
        // the store nor carries the keyed path's larger state.
        match msg.idempotency_key.take() {
            None => Box::pin(
                async move {
                    metrics
                        .observe(ACTOR, "SubmitCommand", submit(producer, msg))
                        .await
                }
                .instrument(span),
            ),
            Some(key) => {
                let store = self.idempotency.clone();
                Box::pin(
                    async move {
                        let submitted = submit_keyed(producer, &store, key, msg);
                        metrics.observe(ACTOR, "SubmitCommand", submitted).await
                    }
                    .instrument(span),
                )
            }
        }
    }
}

/// The command a request names: its timestamp (or now) under a fresh id,
/// and the timestamp it named, if any.
fn validate(
    event_timestamp: Option<&str>,
) -> Result<(TimestampCommand, Option<DateTime<Utc>>), TimestampError> {
    let requested = event_timestamp
        .map(parse_event_timestamp)
        .transpose()
        .inspect_err(|error| tracing::info!(%error, "command refused"))?;
    let at = requested.unwrap_or_else(|| truncate_to_micros(Utc::now()));
    Ok((TimestampCommand::new(at), requested))
}

/// Publishes `command` and waits for the broker's acknowledgement.
async fn publish(
    producer: Addr<KafkaProducer>,
    command: TimestampCommand,
    correlation_id: CorrelationId,
) -> Result<LogPlace, ProduceError> {
    let delivered = producer
        .send(PublishCommand {
            command,
            correlation_id,
        })
        .await
        .map_err(|e| ProduceError::Unavailable(e.to_string()))??;
    Ok(LogPlace {
        partition: delivered.partition,
        offset: delivered.offset,
    })
}

/// Validates the command, publishes it and waits for the acknowledgement.
pub async fn submit(
    producer: Addr<KafkaProducer>,
    msg: SubmitCommand,
) -> Result<CommandAccepted, SubmitError> {
    let (command, _) = validate(msg.event_timestamp.as_deref())?;
    let place = publish(producer, command, msg.correlation_id).await?;
    tracing::info!(
        command_id = %command.command_id,
        partition = place.partition,
        offset = place.offset,
        "command accepted"
    );
    Ok(CommandAccepted {
        command_id: command.command_id,
        place,
        replayed: false,
    })
}

/// Validates a command with the `Idempotency-Key` `key` and answers it
/// through the idempotency store: the key's remembered answer, or the key's
/// command published now.
pub async fn submit_keyed(
    producer: Addr<KafkaProducer>,
    store: &IdempotencyStore,
    key: IdempotencyKey,
    msg: SubmitCommand,
) -> Result<CommandAccepted, SubmitError> {
    let (command, requested) = validate(msg.event_timestamp.as_deref())?;
    let request = KeyedCommand {
        key,
        command,
        requested,
    };
    let correlation_id = msg.correlation_id;
    let answered = store
        .once(&request, |command| {
            publish(producer, command, correlation_id)
        })
        .await;
    let Remembered {
        command,
        place,
        replayed,
    } = answered.inspect_err(|error| match error {
        IdempotencyError::Reused { .. } => tracing::info!(
            idempotency_key = %request.key,
            error = %error,
            "command refused"
        ),
        // The producer logged its own failure.
        IdempotencyError::Produce(_) => {}
        IdempotencyError::Store { .. } | IdempotencyError::Unsettled(_) => tracing::warn!(
            idempotency_key = %request.key,
            error = %error,
            "keyed command not answered"
        ),
    })?;
    tracing::info!(
        command_id = %command.command_id,
        partition = place.partition,
        offset = place.offset,
        idempotency_key = %request.key,
        replayed,
        "command accepted"
    );
    Ok(CommandAccepted {
        command_id: command.command_id,
        place,
        replayed,
    })
}
