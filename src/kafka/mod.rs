//! Kafka plumbing: client configuration, topic administration, the consumer
//! group and the command record's wire format.
//!
//! Every client chronolog builds (producer, group consumer, admin client,
//! lag probes, readiness probe) starts from [`base_config`], so that the
//! security settings and the `KAFKA_OPTION_*` pass-through reach them all.

pub mod admin;
pub mod consumer;
pub mod dead_letter;
pub mod lag;
pub mod record;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};

use crate::config::{KafkaOptions, Settings};

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

/// What every client shares: the brokers, how to reach them securely, and
/// the `KAFKA_OPTION_*` properties, applied last so that they win.
pub(crate) fn base_config(settings: &Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    let protocol = settings.kafka_security_protocol;
    config
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("client.id", "chronolog")
        .set("socket.keepalive.enable", "true")
        .set("security.protocol", protocol.as_str());
    if protocol.uses_sasl() {
        config
            .set("sasl.mechanism", settings.kafka_sasl_mechanism.as_str())
            .set("sasl.username", &settings.kafka_sasl_username)
            .set("sasl.password", settings.kafka_sasl_password.expose());
    }
    if let Some(ca) = &settings.kafka_ssl_ca_location {
        config.set("ssl.ca.location", ca.to_string_lossy());
    }
    apply_options(&mut config, &settings.kafka_options);
    config
}

/// Sets the `KAFKA_OPTION_*` properties; called last by each builder.
fn apply_options(config: &mut ClientConfig, options: &KafkaOptions) {
    for (property, value) in &options.0 {
        config.set(property, value.expose());
    }
}

/// Settings that would make the brokers unreachable or chronolog unsafe,
/// found before any client is built; each names its variable, never a
/// secret's value.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// A setting is missing, contradicts another, or librdkafka refuses it.
    #[error("{variable}: {reason}")]
    Setting {
        /// The environment variable to fix.
        variable: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS handshake with the brokers failed (wrong CA, host name not
    /// in the certificate, no TLS on the other side).
    #[error(
        "KAFKA_SSL_CA_LOCATION: the TLS handshake with the brokers failed (KAFKA_SECURITY_PROTOCOL={protocol}): {reason}"
    )]
    Tls {
        /// The security protocol in use.
        protocol: &'static str,
        /// librdkafka's explanation.
        reason: String,
    },
    /// The brokers refused the SASL credentials or mechanism.
    #[error(
        "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD: the brokers refused to authenticate chronolog (KAFKA_SASL_MECHANISM={mechanism}): {reason}"
    )]
    Authentication {
        /// The SASL mechanism in use.
        mechanism: &'static str,
        /// librdkafka's explanation.
        reason: String,
    },
    /// A client could not be created.
    #[error("cannot create a Kafka client: {0}")]
    Client(String),
}

impl KafkaSetupError {
    fn setting(variable: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Setting {
            variable: variable.into(),
            reason: reason.into(),
        }
    }
}

/// Properties that a `KAFKA_OPTION_*` variable may not set, and why: those
/// with a setting of their own (one source of truth), and those whose
/// change would break the guarantee that no record is lost.
const RESERVED: [(&str, &str); 15] = [
    ("bootstrap.servers", "use KAFKA_BROKERS"),
    ("metadata.broker.list", "use KAFKA_BROKERS"),
    ("security.protocol", "use KAFKA_SECURITY_PROTOCOL"),
    ("sasl.mechanism", "use KAFKA_SASL_MECHANISM"),
    ("sasl.mechanisms", "use KAFKA_SASL_MECHANISM"),
    ("sasl.username", "use KAFKA_SASL_USERNAME"),
    ("sasl.password", "use KAFKA_SASL_PASSWORD"),
    ("ssl.ca.location", "use KAFKA_SSL_CA_LOCATION"),
    ("group.id", "use KAFKA_GROUP_ID"),
    ("group.instance.id", "use KAFKA_GROUP_INSTANCE_ID"),
    ("session.timeout.ms", "use KAFKA_SESSION_TIMEOUT"),
    ("message.timeout.ms", "use DELIVERY_TIMEOUT"),
    ("linger.ms", "use PRODUCER_LINGER"),
    (
        "enable.auto.offset.store",
        "chronolog stores an offset only once its record is in the database",
    ),
    (
        "auto.offset.reset",
        "a new consumer group must read the log from its beginning",
    ),
];

/// The environment variable that set `property`.
fn option_variable(property: &str) -> String {
    format!(
        "{}{}",
        KafkaOptions::PREFIX,
        property.replace('.', "_").to_ascii_uppercase()
    )
}

/// Checks the Kafka settings together, and every `KAFKA_OPTION_*` property
/// against librdkafka, without talking to a broker.
pub fn check_settings(settings: &Settings) -> Result<(), KafkaSetupError> {
    let protocol = settings.kafka_security_protocol;
    let named_protocol = format!("KAFKA_SECURITY_PROTOCOL={protocol}");
    if protocol.uses_sasl() {
        if settings.kafka_sasl_username.is_empty() {
            return Err(KafkaSetupError::setting(
                "KAFKA_SASL_USERNAME",
                format!("required with {named_protocol}"),
            ));
        }
        if settings.kafka_sasl_password.is_empty() {
            return Err(KafkaSetupError::setting(
                "KAFKA_SASL_PASSWORD",
                format!("required with {named_protocol}"),
            ));
        }
    } else {
        // Credentials that would silently go unused point at a forgotten
        // protocol: the brokers would then refuse the connection.
        let unused = if !settings.kafka_sasl_username.is_empty() {
            Some("KAFKA_SASL_USERNAME")
        } else if !settings.kafka_sasl_password.is_empty() {
            Some("KAFKA_SASL_PASSWORD")
        } else {
            None
        };
        if let Some(variable) = unused {
            return Err(KafkaSetupError::setting(
                variable,
                format!(
                    "set, but {named_protocol} does not use SASL (sasl_plaintext or sasl_ssl do)"
                ),
            ));
        }
    }
    if settings.kafka_ssl_ca_location.is_some() && !protocol.uses_tls() {
        return Err(KafkaSetupError::setting(
            "KAFKA_SSL_CA_LOCATION",
            format!("set, but {named_protocol} does not use TLS (ssl or sasl_ssl do)"),
        ));
    }
    for (property, value) in &settings.kafka_options.0 {
        let variable = option_variable(property);
        if let Some((_, why)) = RESERVED.iter().find(|(p, _)| p == property) {
            return Err(KafkaSetupError::setting(
                variable,
                format!("sets `{property}`, which chronolog sets itself: {why}"),
            ));
        }
        let mut alone = ClientConfig::new();
        alone.set(property, value.expose());
        if let Err(error) = alone.create_native_config() {
            let reason = match error {
                // librdkafka's description may quote the value: cut it out.
                KafkaError::ClientConfig(_, description, _, _) => {
                    scrub(&description, value.expose())
                }
                other => scrub(&other.to_string(), value.expose()),
            };
            return Err(KafkaSetupError::setting(
                variable,
                format!("librdkafka refuses `{property}` (value not shown): {reason}"),
            ));
        }
    }
    Ok(())
}

/// `text` with every occurrence of `secret` replaced by `***`.
fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_owned()
    } else {
        text.replace(secret, "***")
    }
}

/// `text` with the SASL password and every `KAFKA_OPTION_*` value cut out.
fn scrub_secrets(text: &str, settings: &Settings) -> String {
    let mut text = scrub(text, settings.kafka_sasl_password.expose());
    for (_, value) in &settings.kafka_options.0 {
        // A short value ("1", "all") is no secret and is everywhere in a
        // message; cutting it out would garble the message.
        if value.expose().len() >= 6 {
            text = scrub(&text, value.expose());
        }
    }
    text
}

/// How long [`preflight`] waits for the brokers before carrying on.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the settings, then reaches the brokers once: a TLS handshake or a
/// SASL authentication that fails stops the start with librdkafka's reason,
/// since retrying would never succeed. Brokers that are merely unreachable
/// do not: chronolog starts, reports them on `/ready` and keeps trying.
pub async fn preflight(settings: &Settings) -> Result<(), KafkaSetupError> {
    check_settings(settings)?;
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || probe_brokers(&settings))
        .await
        .map_err(|e| KafkaSetupError::Client(format!("the broker probe failed: {e}")))?
}

fn probe_brokers(settings: &Settings) -> Result<(), KafkaSetupError> {
    // A producer hands error events to its context with librdkafka's
    // reason; it produces nothing here. Metadata of all topics is asked
    // for, as a request naming the topic could make a broker create it.
    let producer: BaseProducer<ProbeContext> = base_config(settings)
        .create_with_context(ProbeContext::default())
        .map_err(|e| KafkaSetupError::Client(scrub_secrets(&e.to_string(), settings)))?;
    let started = Instant::now();
    loop {
        if producer
            .client()
            .fetch_metadata(None, Duration::from_millis(250))
            .is_ok()
        {
            return Ok(());
        }
        // Serves the queued events for a while: log lines and errors share
        // one queue, so a single poll could leave the error behind the logs.
        producer.poll(Duration::from_millis(100));
        let failure = producer
            .context()
            .failure
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        match failure {
            Some((RDKafkaErrorCode::SSL, reason)) => {
                return Err(KafkaSetupError::Tls {
                    protocol: settings.kafka_security_protocol.as_str(),
                    reason: scrub_secrets(&reason, settings),
                });
            }
            Some((_, reason)) => {
                return Err(KafkaSetupError::Authentication {
                    mechanism: settings.kafka_sasl_mechanism.as_str(),
                    reason: scrub_secrets(&reason, settings),
                });
            }
            None if started.elapsed() >= PREFLIGHT_TIMEOUT => {
                tracing::warn!(
                    brokers = settings.kafka_brokers,
                    "the brokers do not answer yet; starting anyway"
                );
                return Ok(());
            }
            None => {}
        }
    }
}

/// Context of the broker probe: keeps the first TLS or authentication
/// failure librdkafka reports.
#[derive(Default)]
struct ProbeContext {
    failure: Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl ClientContext for ProbeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if let Some(code @ (RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)) = code
            && let Ok(mut failure) = self.failure.lock()
        {
            failure.get_or_insert_with(|| (code, reason.to_owned()));
        }
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
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
    apply_options(&mut config, &settings.kafka_options);
    config
}

/// A consumer of `topic` in `group_id` that never commits an offset it was not told to
/// store: offsets are stored only after the database commit, and librdkafka
/// commits what is stored (periodically and on revoke) so that lag tools work.
pub fn consumer_config(settings: &Settings, group_id: &str, topic: &str) -> ClientConfig {
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
    // A static member id names one consumer, and a process runs one per
    // topic of a group (a pipeline may read several): each gets the
    // process's id with its topic, or the broker fences all but one.
    if !settings.kafka_group_instance_id.is_empty() {
        config.set(
            "group.instance.id",
            format!("{}-{topic}", settings.kafka_group_instance_id),
        );
    }
    apply_options(&mut config, &settings.kafka_options);
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SaslMechanism, SecurityProtocol};

    fn settings() -> Settings {
        Settings::parse_from(["chronolog"]).unwrap()
    }

    fn options(pairs: &[(&str, &str)]) -> KafkaOptions {
        KafkaOptions::from_vars(
            pairs
                .iter()
                .map(|(k, v)| (format!("KAFKA_OPTION_{k}"), (*v).to_owned())),
        )
    }

    fn sasl_settings() -> Settings {
        let mut settings = settings();
        settings.kafka_security_protocol = SecurityProtocol::SaslSsl;
        settings.kafka_sasl_mechanism = SaslMechanism::ScramSha512;
        settings.kafka_sasl_username = "app".into();
        settings.kafka_sasl_password = "hunter2-sasl".to_owned().into();
        settings
    }

    #[test]
    fn every_builder_carries_the_security_settings_and_options_win() {
        let mut settings = sasl_settings();
        settings.kafka_ssl_ca_location = Some("/etc/ca.pem".into());
        settings.kafka_options = options(&[
            ("CLIENT_ID", "billing"),
            ("ACKS", "1"),
            ("FETCH_MAX_BYTES", "1048576"),
        ]);
        for config in [
            base_config(&settings),
            producer_config(&settings),
            consumer_config(&settings, "g", "t"),
        ] {
            assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(config.get("sasl.username"), Some("app"));
            assert_eq!(config.get("sasl.password"), Some("hunter2-sasl"));
            assert_eq!(config.get("ssl.ca.location"), Some("/etc/ca.pem"));
            assert_eq!(config.get("client.id"), Some("billing"));
            assert_eq!(config.get("fetch.max.bytes"), Some("1048576"));
        }
        // chronolog's own `acks=all` is overridden too.
        assert_eq!(producer_config(&settings).get("acks"), Some("1"));
    }

    #[test]
    fn each_topic_consumer_of_a_static_member_has_an_id_of_its_own() {
        let mut settings = settings();
        assert_eq!(
            consumer_config(&settings, "g", "t").get("group.instance.id"),
            None
        );
        settings.kafka_group_instance_id = "node-1".to_owned();
        for topic in ["orders", "customers"] {
            let config = consumer_config(&settings, "g", topic);
            let expected = format!("node-1-{topic}");
            assert_eq!(config.get("group.instance.id"), Some(expected.as_str()));
        }
    }

    #[test]
    fn plaintext_sends_no_credentials() {
        let config = base_config(&settings());
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        assert_eq!(config.get("sasl.password"), None);
        assert_eq!(config.get("ssl.ca.location"), None);
    }

    fn refusal(settings: &Settings) -> String {
        check_settings(settings).expect_err("refused").to_string()
    }

    #[test]
    fn sasl_needs_a_user_and_a_password() {
        assert!(check_settings(&sasl_settings()).is_ok());
        let mut settings = sasl_settings();
        settings.kafka_sasl_username.clear();
        assert_eq!(
            refusal(&settings),
            "KAFKA_SASL_USERNAME: required with KAFKA_SECURITY_PROTOCOL=sasl_ssl"
        );
        let mut settings = sasl_settings();
        settings.kafka_sasl_password = String::new().into();
        assert_eq!(
            refusal(&settings),
            "KAFKA_SASL_PASSWORD: required with KAFKA_SECURITY_PROTOCOL=sasl_ssl"
        );
    }

    #[test]
    fn settings_that_would_go_unused_are_refused() {
        let mut settings = sasl_settings();
        settings.kafka_security_protocol = SecurityProtocol::Ssl;
        assert_eq!(
            refusal(&settings),
            "KAFKA_SASL_USERNAME: set, but KAFKA_SECURITY_PROTOCOL=ssl does not use SASL (sasl_plaintext or sasl_ssl do)"
        );
        let mut settings = self::settings();
        settings.kafka_ssl_ca_location = Some("/etc/ca.pem".into());
        assert_eq!(
            refusal(&settings),
            "KAFKA_SSL_CA_LOCATION: set, but KAFKA_SECURITY_PROTOCOL=plaintext does not use TLS (ssl or sasl_ssl do)"
        );
    }

    #[test]
    fn a_rejected_option_is_named_without_its_value() {
        let mut settings = settings();
        settings.kafka_options = options(&[("ACKS", "hunter2-acks")]);
        let error = refusal(&settings);
        assert!(
            error.starts_with("KAFKA_OPTION_ACKS: librdkafka refuses `acks` (value not shown): "),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");

        settings.kafka_options = options(&[("NO_SUCH_PROPERTY", "hunter2-x")]);
        let error = refusal(&settings);
        assert!(
            error.starts_with(
                "KAFKA_OPTION_NO_SUCH_PROPERTY: librdkafka refuses `no.such.property`"
            ),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn options_may_not_replace_a_setting_or_break_at_least_once() {
        let mut settings = settings();
        settings.kafka_options = options(&[("SASL_PASSWORD", "hunter2")]);
        assert_eq!(
            refusal(&settings),
            "KAFKA_OPTION_SASL_PASSWORD: sets `sasl.password`, which chronolog sets itself: use KAFKA_SASL_PASSWORD"
        );
        settings.kafka_options = options(&[("ENABLE_AUTO_OFFSET_STORE", "true")]);
        assert_eq!(
            refusal(&settings),
            "KAFKA_OPTION_ENABLE_AUTO_OFFSET_STORE: sets `enable.auto.offset.store`, which chronolog sets itself: chronolog stores an offset only once its record is in the database"
        );
    }

    #[test]
    fn secrets_are_scrubbed_from_messages() {
        let mut settings = sasl_settings();
        settings.kafka_options = options(&[("SSL_KEY_PASSWORD", "hunter2-key"), ("ACKS", "1")]);
        assert_eq!(
            scrub_secrets("a hunter2-sasl b hunter2-key c 1", &settings),
            "a *** b *** c 1"
        );
    }
}
