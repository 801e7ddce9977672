//! The Kafka producer actor: publishes through the process's idempotent
//! producer and answers every publish with the broker's delivery result.
//!
//! Handlers do not wait for each other: concurrent publishes are in flight
//! together and librdkafka packs them into shared produce batches. One
//! [`SharedProducer`] (one librdkafka client, one producer id) serves every
//! `KafkaProducer` actor of the process: the command API runs one actor per
//! HTTP worker thread, so that a command never crosses threads on its way to
//! librdkafka. A fatal producer error (the idempotence guarantee can no
//! longer be kept) stops the actor that saw it, and its supervisor replaces
//! the shared client once for all of them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use tracing::Instrument;

use crate::config::Settings;
use crate::domain::{CorrelationId, TimestampCommand};
use crate::kafka::dead_letter::DeadLetter;
use crate::kafka::record::{CORRELATION_HEADER, encode_value};
use crate::kafka::{TracingContext, producer_config};
use crate::metrics::Metrics;

const ACTOR: &str = "kafka_producer";
/// Publishes that may wait for the producer before senders are held back.
pub const MAILBOX_CAPACITY: usize = 4096;

type Client = FutureProducer<TracingContext>;

/// Appends a command to the command topic.
#[derive(Debug, Message)]
#[rtype(result = "Result<Delivered, ProduceError>")]
pub struct PublishCommand {
    /// The validated command.
    pub command: TimestampCommand,
    /// Carried as the record's `correlationId` header.
    pub correlation_id: CorrelationId,
}

/// Appends a record that cannot be projected to the dead-letter topic.
#[derive(Debug, Message)]
#[rtype(result = "Result<Delivered, ProduceError>")]
pub struct PublishDeadLetter(pub DeadLetter);

/// Where the broker put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// Why a record is not known to be in the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The broker did not acknowledge within the delivery timeout.
    #[error("the broker did not acknowledge the record within {0:?}")]
    Timeout(Duration),
    /// The producer or broker refused the record.
    #[error("the record was not delivered: {0}")]
    Failed(String),
    /// The producer hit a fatal error and is being rebuilt.
    #[error("the producer failed fatally and is being rebuilt: {0}")]
    Fatal(String),
    /// The producer actor is not running.
    #[error("the producer is not available: {0}")]
    Unavailable(String),
    /// The broker or the client refused this record for what it is (too
    /// large, invalid, not allowed): sending it again cannot succeed.
    #[error("the record was refused: {0}")]
    Refused(String),
}

impl ProduceError {
    /// Whether sending the same record again may succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ProduceError::Refused(_))
    }
}

/// Broker and client errors that refuse a record for what it is: no retry
/// of the same record can succeed. (Authorisation failures are not among
/// them: an operator can fix an ACL, and until then the partition shows as
/// blocked rather than dropping dead letters.)
pub fn refuses_the_record(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTimestamp
            | RDKafkaErrorCode::UnsupportedForMessageFormat
    )
}

/// The process's idempotent producer client, shared by its producer actors.
pub struct SharedProducer {
    settings: Settings,
    metrics: Arc<Metrics>,
    /// The client and its generation; the generation grows with each rebuild.
    current: Mutex<(u64, Option<Client>)>,
}

impl SharedProducer {
    /// Builds the client; fails only on an invalid configuration.
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Result<Arc<Self>, KafkaError> {
        let client = Self::create(&settings)?;
        Ok(Arc::new(Self {
            settings,
            metrics,
            current: Mutex::new((0, Some(client))),
        }))
    }

    fn create(settings: &Settings) -> Result<Client, KafkaError> {
        producer_config(settings).create_with_context(TracingContext)
    }

    /// The current client and its generation.
    fn current(&self) -> (u64, Option<Client>) {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the client of generation `failed`, unless another actor has
    /// already replaced it, and returns the current one.
    fn renew(&self, failed: u64) -> (u64, Option<Client>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 == failed {
            let client = Self::create(&self.settings)
                .inspect_err(|error| tracing::error!(%error, "cannot rebuild the Kafka producer"))
                .ok();
            *current = (failed + 1, client);
            tracing::warn!(generation = failed + 1, "kafka producer rebuilt");
        }
        current.clone()
    }
}

/// Publishes through the shared idempotent producer.
pub struct KafkaProducer {
    shared: Arc<SharedProducer>,
    generation: u64,
    client: Option<Client>,
}

impl KafkaProducer {
    /// A producer actor publishing through `shared`.
    pub fn new(shared: Arc<SharedProducer>) -> Self {
        let (generation, client) = shared.current();
        Self {
            shared,
            generation,
            client,
        }
    }

    /// The client to publish with; retries a rebuild that failed before.
    fn client(&mut self) -> Option<Client> {
        if self.client.is_none() {
            (self.generation, self.client) = self.shared.renew(self.generation);
        }
        self.client.clone()
    }
}

impl Actor for KafkaProducer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        // Records handed to librdkafka are delivered (or time out) before the
        // actor lets go of the client, so that no accepted publish is abandoned.
        if let Some(client) = &self.client
            && let Err(error) = client.flush(Timeout::After(self.shared.settings.delivery_timeout))
        {
            tracing::warn!(%error, "producer flush on stop did not complete");
        }
        Running::Stop
    }
}

impl Supervised for KafkaProducer {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.shared.metrics.actor_restarted(ACTOR);
        // Only a fatal error stops this actor: its client is beyond repair.
        (self.generation, self.client) = self.shared.renew(self.generation);
        tracing::warn!("kafka producer restarted");
    }
}

impl Handler<PublishCommand> for KafkaProducer {
    type Result = ResponseActFuture<Self, Result<Delivered, ProduceError>>;

    fn handle(&mut self, msg: PublishCommand, _ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::info_span!(
            "publish_command",
            correlation_id = %msg.correlation_id,
            command_id = %msg.command.command_id,
        );
        let key = msg.command.command_id.to_string();
        let value = encode_value(&msg.command);
        let headers = OwnedHeaders::new().insert(Header {
            key: CORRELATION_HEADER,
            value: Some(msg.correlation_id.as_str()),
        });
        let send = publish(
            self.client(),
            self.shared.metrics.clone(),
            Outgoing {
                topic: self.shared.settings.kafka_topic.clone(),
                key: Some(key.into_bytes()),
                value: Some(value),
                headers,
                kind: "command",
            },
            self.shared.settings.delivery_timeout,
        );
        let metrics = self.shared.metrics.clone();
        let fut =
            async move { metrics.observe(ACTOR, "PublishCommand", send).await }.instrument(span);
        Box::pin(fut.into_actor(self).map(stop_on_fatal))
    }
}

impl Handler<PublishDeadLetter> for KafkaProducer {
    type Result = ResponseActFuture<Self, Result<Delivered, ProduceError>>;

    fn handle(&mut self, msg: PublishDeadLetter, _ctx: &mut Self::Context) -> Self::Result {
        let PublishDeadLetter(msg) = msg;
        let headers = msg.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k.as_str(),
                value: Some(v.as_slice()),
            })
        });
        let send = publish(
            self.client(),
            self.shared.metrics.clone(),
            Outgoing {
                topic: msg.topic,
                key: msg.key,
                value: msg.value,
                headers,
                kind: "dead_letter",
            },
            self.shared.settings.delivery_timeout,
        );
        let metrics = self.shared.metrics.clone();
        Box::pin(
            async move { metrics.observe(ACTOR, "PublishDeadLetter", send).await }
                .into_actor(self)
                .map(stop_on_fatal),
        )
    }
}

fn stop_on_fatal(
    result: Result<Delivered, ProduceError>,
    _act: &mut KafkaProducer,
    ctx: &mut Context<KafkaProducer>,
) -> Result<Delivered, ProduceError> {
    if let Err(ProduceError::Fatal(reason)) = &result {
        tracing::error!(reason, "fatal producer error, restarting the producer");
        ctx.stop();
    }
    result
}

/// A record on its way to the broker.
struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: OwnedHeaders,
    /// `command` or `dead_letter`, for the counter.
    kind: &'static str,
}

/// Sends one record and waits for the broker's acknowledgement.
async fn publish(
    client: Option<Client>,
    m: Arc<Metrics>,
    outgoing: Outgoing,
    delivery_timeout: Duration,
) -> Result<Delivered, ProduceError> {
    let kind = outgoing.kind;
    let client = client.ok_or_else(|| ProduceError::Unavailable("no producer".into()))?;
    let mut record = FutureRecord::<[u8], [u8]>::to(&outgoing.topic).headers(outgoing.headers);
    if let Some(key) = &outgoing.key {
        record = record.key(key);
    }
    if let Some(value) = &outgoing.value {
        record = record.payload(value);
    }
    let started = Instant::now();
    // librdkafka bounds a delivery by `message.timeout.ms`, but an idempotent
    // producer that is re-acquiring its producer id holds records longer; the
    // client's answer is bounded here. A record answered 503 may still be
    // delivered later: a 503 means "not known to be in the log".
    let send = client.send(record, Timeout::After(delivery_timeout));
    let Ok(result) = tokio::time::timeout(delivery_timeout, send).await else {
        m.records_produced
            .with_label_values(&[kind, "timeout"])
            .inc();
        tracing::warn!(timeout = ?delivery_timeout, "record not acknowledged in time");
        return Err(ProduceError::Timeout(delivery_timeout));
    };
    match result {
        Ok(delivery) => {
            m.produce_delivery_seconds
                .observe(started.elapsed().as_secs_f64());
            m.records_produced
                .with_label_values(&[kind, "delivered"])
                .inc();
            tracing::debug!(
                partition = delivery.partition,
                offset = delivery.offset,
                "record delivered"
            );
            Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            })
        }
        Err((error, _)) => {
            let fatal = client.client().fatal_error();
            let outcome = match (&fatal, error.rdkafka_error_code()) {
                (Some(_), _) => "fatal",
                (None, Some(RDKafkaErrorCode::MessageTimedOut)) => "timeout",
                (None, Some(code)) if refuses_the_record(code) => "refused",
                _ => "failed",
            };
            m.records_produced.with_label_values(&[kind, outcome]).inc();
            tracing::warn!(%error, outcome, "record not delivered");
            Err(match (fatal, outcome) {
                (Some((code, reason)), _) => ProduceError::Fatal(format!("{code:?}: {reason}")),
                (None, "timeout") => ProduceError::Timeout(delivery_timeout),
                (None, "refused") => ProduceError::Refused(error.to_string()),
                _ => ProduceError::Failed(error.to_string()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<SharedProducer> {
        // librdkafka connects lazily: no broker is needed to build a client.
        let settings = Settings::parse_from(["chronolog", "--kafka-brokers", "127.0.0.1:1"])
            .expect("default settings");
        SharedProducer::new(settings, Metrics::new()).expect("client")
    }

    fn pointer(client: &Option<Client>) -> *mut rdkafka::bindings::rd_kafka_t {
        client.as_ref().expect("a client").client().native_ptr()
    }

    #[test]
    fn a_failed_client_is_replaced_once_however_many_actors_saw_it_fail() {
        let shared = shared();
        let (first, original) = shared.current();
        assert_eq!(first, 0);

        let (second, replacement) = shared.renew(first);
        assert_eq!(second, 1);
        assert_ne!(pointer(&original), pointer(&replacement), "a new client");

        // Another actor that saw the same client fail gets the replacement.
        let (again, same) = shared.renew(first);
        assert_eq!(again, 1);
        assert_eq!(pointer(&same), pointer(&replacement));

        // New actors start with the replacement; its own failure replaces it.
        assert_eq!(KafkaProducer::new(shared.clone()).generation, 1);
        assert_eq!(shared.renew(second).0, 2);
    }
}
