//! The HTTP ingestion actor: validates a command and hands it to the
//! producer; answers once the broker has acknowledged it.

use actix::prelude::*;
use chrono::Utc;
use tracing::Instrument;
use uuid::Uuid;

use crate::actors::producer::{Delivered, KafkaProducer, ProduceError, PublishCommand};
use crate::domain::{
    CorrelationId, TimestampCommand, TimestampError, parse_event_timestamp, truncate_to_micros,
};
use std::sync::Arc;

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
}

/// A command the broker has acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandAccepted {
    /// The new command id.
    pub command_id: Uuid,
    /// Where it is in the log.
    pub delivered: Delivered,
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
}

/// Validates commands and hands them to the producer.
pub struct Ingestion {
    producer: Addr<KafkaProducer>,
    metrics: Arc<Metrics>,
}

impl Ingestion {
    /// An ingestion actor publishing through `producer`.
    pub fn new(producer: Addr<KafkaProducer>, metrics: Arc<Metrics>) -> Self {
        Self { producer, metrics }
    }
}

impl Actor for Ingestion {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Supervised for Ingestion {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.metrics.actor_restarted(ACTOR);
    }
}

impl Handler<SubmitCommand> for Ingestion {
    type Result = ResponseFuture<Result<CommandAccepted, SubmitError>>;

    fn handle(&mut self, msg: SubmitCommand, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!("submit_command", correlation_id = %msg.correlation_id);
        let metrics = self.metrics.clone();
        let producer = self.producer.clone();
        Box::pin(
            async move {
                metrics
                    .observe(ACTOR, "SubmitCommand", submit(producer, msg))
                    .await
            }
            .instrument(span),
        )
    }
}

/// Validates the command, publishes it and waits for the acknowledgement.
pub async fn submit(
    producer: Addr<KafkaProducer>,
    msg: SubmitCommand,
) -> Result<CommandAccepted, SubmitError> {
    let event_timestamp = match msg.event_timestamp.as_deref() {
        Some(raw) => parse_event_timestamp(raw).inspect_err(|error| {
            tracing::info!(%error, "command refused");
        })?,
        None => truncate_to_micros(Utc::now()),
    };
    let command = TimestampCommand::new(event_timestamp);
    let delivered = producer
        .send(PublishCommand {
            command,
            correlation_id: msg.correlation_id,
        })
        .await
        .map_err(|e| ProduceError::Unavailable(e.to_string()))??;
    tracing::info!(
        command_id = %command.command_id,
        partition = delivered.partition,
        offset = delivered.offset,
        "command accepted"
    );
    Ok(CommandAccepted {
        command_id: command.command_id,
        delivered,
    })
}
