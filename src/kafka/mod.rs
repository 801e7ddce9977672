//! Kafka plumbing: client configuration, topic administration, the consumer
//! group and the command record's wire format.

pub mod admin;
pub mod group;
pub mod lag;
pub mod record;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;

use crate::config::Settings;

/// librdkafka's own log lines, forwarded into `tracing` so that they share
/// the process' format and filter.
pub fn forward_log(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility = fac, "{log_message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility = fac, "{log_message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility = fac, "{log_message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", facility = fac, "{log_message}")
        }
    }
}

/// Client context of the producer and admin clients: logs go to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }
}

/// The partition ids of `topic` as the broker reports them; empty when the
/// topic is absent or reported with an error. Blocking.
pub fn topic_partitions<C, K>(
    client: &K,
    topic: &str,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<Vec<i32>>
where
    C: rdkafka::consumer::ConsumerContext,
    K: rdkafka::consumer::Consumer<C>,
{
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Metadata probes use a group-less consumer with this context.
impl rdkafka::consumer::ConsumerContext for TracingContext {}

pub(crate) fn base_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("client.id", "chronolog")
        .set("socket.keepalive.enable", "true");
    config
}

/// A duration as librdkafka's fractional milliseconds.
fn millis(d: std::time::Duration) -> String {
    format!("{}", d.as_secs_f64() * 1000.0)
}

/// The idempotent producer: `acks=all`, no reordering or duplicates on
/// retries, and a delivery bounded by the configured timeout.
pub fn producer_config(settings: &Settings) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            settings.delivery_timeout.as_millis().to_string(),
        )
        // Concurrent requests share produce batches; a short linger keeps a
        // quiet service's latency low.
        .set("linger.ms", millis(settings.producer_linger));
    config
}

/// A consumer of `group_id` that never commits an offset it was not told to
/// store: offsets are stored only after the database commit, and librdkafka
/// commits what is stored (periodically and on revoke) so that lag tools work.
pub fn consumer_config(settings: &Settings, group_id: &str) -> ClientConfig {
    let mut config = base_config(settings);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Latency until visible: a fetch returns as soon as one record is there.
        .set(
            "fetch.wait.max.ms",
            settings.fetch_wait.as_millis().to_string(),
        )
        .set(
            "session.timeout.ms",
            settings.kafka_session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.kafka_session_timeout.as_millis() / 5)
                .max(100)
                .to_string(),
        );
    if !settings.kafka_group_instance_id.is_empty() {
        config.set("group.instance.id", &settings.kafka_group_instance_id);
    }
    config
}
