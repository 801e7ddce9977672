//! Typed settings, read from environment variables (12-factor) or CLI flags.
//!
//! Every field names the variable that sets it and its default. A bad value
//! stops start-up with clap's error, which names the variable (the value name
//! of each flag is its environment variable).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::db::DatabaseUrl;

/// Settings shared by every role.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", value_name = "KAFKA_BROKERS", default_value = "127.0.0.1:9092", value_parser = non_empty)]
    pub kafka_brokers: String,

    /// The command topic, the golden record. Its dead-letter topic is `<topic>.dlq`.
    #[arg(long, env = "KAFKA_TOPIC", value_name = "KAFKA_TOPIC", default_value = "timestamp.command.v1", value_parser = topic_name)]
    pub kafka_topic: String,

    /// Consumer group of the projector; each group builds its own view.
    #[arg(long, env = "KAFKA_GROUP_ID", value_name = "KAFKA_GROUP_ID", default_value = "chronolog-projector", value_parser = non_empty)]
    pub kafka_group_id: String,

    /// Partition count used when chronolog creates the topic (an existing topic is left as is).
    #[arg(long, env = "KAFKA_PARTITIONS", value_name = "KAFKA_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub kafka_partitions: i32,

    /// `retention.ms` of the topics chronolog creates. `-1` (the default) is
    /// Kafka's "kept forever": the command topic is the golden record. tansu
    /// 0.6.0 reads -1 literally and deletes everything; give it
    /// 9223372036854775807, which is forever too.
    #[arg(long, env = "KAFKA_TOPIC_RETENTION_MS", value_name = "KAFKA_TOPIC_RETENTION_MS", default_value_t = -1, allow_hyphen_values = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub kafka_topic_retention_ms: i64,

    /// Replication factor of the topics chronolog creates (3 in production).
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", value_name = "KAFKA_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub kafka_replication_factor: i32,

    /// `min.insync.replicas` of the topics chronolog creates (2 in
    /// production, with a replication factor of 3 and `acks=all`).
    #[arg(long, env = "KAFKA_MIN_INSYNC_REPLICAS", value_name = "KAFKA_MIN_INSYNC_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub kafka_min_insync_replicas: i32,

    /// How chronolog talks to the brokers.
    #[arg(
        long,
        env = "KAFKA_SECURITY_PROTOCOL",
        value_name = "KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext",
        ignore_case = true
    )]
    pub kafka_security_protocol: SecurityProtocol,

    /// SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`), with a
    /// `sasl_*` security protocol.
    #[arg(
        long,
        env = "KAFKA_SASL_MECHANISM",
        value_name = "KAFKA_SASL_MECHANISM",
        default_value = "PLAIN",
        ignore_case = true
    )]
    pub kafka_sasl_mechanism: SaslMechanism,

    /// SASL user name, with a `sasl_*` security protocol.
    #[arg(
        long,
        env = "KAFKA_SASL_USERNAME",
        value_name = "KAFKA_SASL_USERNAME",
        default_value = ""
    )]
    pub kafka_sasl_username: String,

    /// SASL password, with a `sasl_*` security protocol. Never logged.
    #[arg(
        long,
        env = "KAFKA_SASL_PASSWORD",
        value_name = "KAFKA_SASL_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub kafka_sasl_password: Secret,

    /// CA certificate(s) (PEM) that sign the brokers' certificates, with an
    /// `ssl` or `sasl_ssl` security protocol; the system's CAs when absent.
    #[arg(
        long,
        env = "KAFKA_SSL_CA_LOCATION",
        value_name = "KAFKA_SSL_CA_LOCATION",
        value_parser = ca_location
    )]
    pub kafka_ssl_ca_location: Option<PathBuf>,

    /// Any other librdkafka property, from environment variables
    /// `KAFKA_OPTION_<property with dots as underscores>`
    /// (`KAFKA_OPTION_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM=none`). Applied
    /// last, so they override chronolog's own choices. Values are never logged.
    #[arg(skip = KafkaOptions::from_env())]
    pub kafka_options: KafkaOptions,

    /// How long the group waits for a silent member (a crashed process) before
    /// giving its partitions to the others.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT", value_name = "KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub kafka_session_timeout: Duration,

    /// Static group membership (`group.instance.id`): a restarted process with
    /// the same id takes its predecessor's partitions back without waiting for
    /// the session timeout. Must be unique per running process; each consumer
    /// uses it with `-TOPIC` appended. Empty: dynamic.
    #[arg(
        long,
        env = "KAFKA_GROUP_INSTANCE_ID",
        value_name = "KAFKA_GROUP_INSTANCE_ID",
        default_value = ""
    )]
    pub kafka_group_instance_id: String,

    /// How long the broker has to acknowledge a command before the request is answered 503.
    #[arg(long, env = "DELIVERY_TIMEOUT", value_name = "DELIVERY_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub delivery_timeout: Duration,

    /// How long the producer waits to fill a produce batch (`linger.ms`);
    /// commands arriving together share one batch. `0ms` sends at once.
    #[arg(long, env = "PRODUCER_LINGER", value_name = "PRODUCER_LINGER", default_value = "500us", value_parser = duration_or_zero)]
    pub producer_linger: Duration,

    /// Longest the broker holds a consumer's fetch while no record arrives
    /// (`fetch.wait.max.ms`): a bound on the latency until visible.
    #[arg(long, env = "FETCH_WAIT", value_name = "FETCH_WAIT", default_value = "20ms", value_parser = duration)]
    pub fetch_wait: Duration,

    /// PostgreSQL URL of the view, with libpq's `sslmode` and `sslrootcert`
    /// honoured. Its password is never shown, not even in errors about it.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chronolog",
        value_parser = DatabaseUrlParser,
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,

    /// PostgreSQL URL of the accounts context (schema `accounts` and its
    /// outbox); `DATABASE_URL` when unset.
    #[arg(
        long,
        env = "ACCOUNTS_DATABASE_URL",
        value_name = "ACCOUNTS_DATABASE_URL",
        value_parser = DatabaseUrlParser,
        hide_env_values = true
    )]
    pub accounts_database_url: Option<DatabaseUrl>,

    /// PostgreSQL URL of the shop context (schema `shop` and its outbox);
    /// `DATABASE_URL` when unset.
    #[arg(
        long,
        env = "SHOP_DATABASE_URL",
        value_name = "SHOP_DATABASE_URL",
        value_parser = DatabaseUrlParser,
        hide_env_values = true
    )]
    pub shop_database_url: Option<DatabaseUrl>,

    /// How long a published outbox event is kept before it is deleted.
    #[arg(long, env = "OUTBOX_RETENTION", value_name = "OUTBOX_RETENTION", default_value = "24h", value_parser = duration)]
    pub outbox_retention: Duration,

    /// How often the outbox relay looks for committed events when no commit
    /// woke it (it is woken by each transaction that writes events).
    #[arg(long, env = "OUTBOX_POLL_INTERVAL", value_name = "OUTBOX_POLL_INTERVAL", default_value = "1s", value_parser = duration)]
    pub outbox_poll_interval: Duration,

    /// Most outbox events the relay publishes in one round.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", value_name = "OUTBOX_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub outbox_batch_size: u32,

    /// Prefix of the event topics the outbox relay publishes to
    /// (`<prefix>accounts.customer.change`, `<prefix>shop.product.v1`,
    /// `<prefix>shop.order.v1`); empty by default.
    #[arg(long, env = "OUTBOX_TOPIC_PREFIX", value_name = "OUTBOX_TOPIC_PREFIX", default_value = "", value_parser = topic_prefix)]
    pub outbox_topic_prefix: String,

    /// Connections in each PostgreSQL pool (the writer, the query side and
    /// each pipeline into PostgreSQL have one each).
    #[arg(long, env = "DATABASE_POOL_SIZE", value_name = "DATABASE_POOL_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: u32,

    /// Most records a partition consumer puts into one database transaction.
    #[arg(long, env = "BATCH_MAX_RECORDS", value_name = "BATCH_MAX_RECORDS", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_max_records: u32,

    /// Listen address of the command API (and its /health, /ready, /metrics).
    #[arg(
        long,
        env = "COMMAND_ADDR",
        value_name = "COMMAND_ADDR",
        default_value = "127.0.0.1:7080"
    )]
    pub command_addr: SocketAddr,

    /// Listen address of the query API (and its /health, /ready, /metrics).
    #[arg(
        long,
        env = "QUERY_ADDR",
        value_name = "QUERY_ADDR",
        default_value = "127.0.0.1:7081"
    )]
    pub query_addr: SocketAddr,

    /// Listen address of /health, /ready, /metrics in a process that runs only the consumer role.
    #[arg(
        long,
        env = "CONSUMER_ADDR",
        value_name = "CONSUMER_ADDR",
        default_value = "127.0.0.1:7082"
    )]
    pub consumer_addr: SocketAddr,

    /// How often consumer lag is measured (in every process that talks to the broker).
    #[arg(long, env = "LAG_INTERVAL", value_name = "LAG_INTERVAL", default_value = "5s", value_parser = duration)]
    pub lag_interval: Duration,

    /// How long a rebalance or shutdown waits for in-flight batches to commit.
    #[arg(long, env = "DRAIN_TIMEOUT", value_name = "DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// Fault injection for the recovery tests: `PARTITION:OFFSET` makes the
    /// partition worker panic once when it reads that record. Unset in
    /// production.
    #[arg(long, env = "CHRONOLOG_FAULT_PANIC_AT", value_name = "PARTITION:OFFSET", value_parser = fault_point, hide = true)]
    pub fault_panic_at: Option<(i32, i64)>,

    /// Bearer token of the admin API (`/admin/pipelines`), served on the
    /// query port and on `CONSUMER_ADDR` only when set: requests must carry
    /// `Authorization: Bearer <token>`. At least 16 visible ASCII
    /// characters. Never logged. Unset (the default): the admin routes
    /// answer 404 like any unknown route.
    #[arg(
        long,
        env = "ADMIN_TOKEN",
        value_name = "ADMIN_TOKEN",
        value_parser = AdminTokenParser,
        hide_env_values = true
    )]
    pub admin_token: Option<Secret>,

    /// How long the command side remembers an `Idempotency-Key`: a retry
    /// within this time gets the first answer's id.
    #[arg(long, env = "IDEMPOTENCY_KEY_TTL", value_name = "IDEMPOTENCY_KEY_TTL", default_value = "24h", value_parser = duration)]
    pub idempotency_key_ttl: Duration,
}

/// `Settings` alone as a command line, for [`Settings::parse_from`].
#[derive(Parser)]
struct SettingsOnly {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// Settings from command-line arguments (the first is the program name)
    /// and the environment, exactly as `chronolog serve` reads them.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        SettingsOnly::try_parse_from(args).map(|cli| cli.settings)
    }
}

/// How chronolog connects to the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecurityProtocol {
    /// No encryption, no authentication.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication without encryption.
    #[value(name = "sasl_plaintext", alias = "sasl-plaintext")]
    SaslPlaintext,
    /// SASL authentication over TLS.
    #[value(name = "sasl_ssl", alias = "sasl-ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the protocol authenticates with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// Whether the protocol encrypts with TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How chronolog proves who it is to the brokers (librdkafka's
/// `sasl.mechanism`): the mechanisms this build of librdkafka has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    /// User name and password, in clear inside the connection: use with `sasl_ssl`.
    #[value(name = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A value that must never appear in logs or messages: its `Debug` and
/// `Display` show `***`. [`Secret::expose`] is the one way to read it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, to hand to the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// librdkafka properties passed through from `KAFKA_OPTION_*` variables.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaOptions(pub Vec<(String, Secret)>);

impl KafkaOptions {
    /// Prefix of the environment variables that carry them.
    pub const PREFIX: &str = "KAFKA_OPTION_";

    /// The options in the process environment, sorted by property.
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The options among `vars` (name, value): `KAFKA_OPTION_FETCH_MAX_BYTES`
    /// becomes `fetch.max.bytes`.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut options: Vec<(String, Secret)> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let property = name.strip_prefix(Self::PREFIX)?;
                (!property.is_empty()).then(|| {
                    (
                        property.to_ascii_lowercase().replace('_', "."),
                        Secret(value),
                    )
                })
            })
            .collect();
        options.sort_by(|a, b| a.0.cmp(&b.0));
        Self(options)
    }
}

impl fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=***")))
            .finish()
    }
}

/// Logging settings, applied once at start.
#[derive(Debug, Clone, Args)]
pub struct LogSettings {
    /// Log filter: a level (`info`) or `tracing` directives (`chronolog=debug,rdkafka=warn`).
    #[arg(
        long,
        env = "LOG_LEVEL",
        value_name = "LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// `json` for machines, `text` for people.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// A role of the service; a process runs one or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Role {
    /// Command API: validates commands and appends them to the log.
    Command,
    /// Projector: consumes the log into the PostgreSQL view.
    Consumer,
    /// Query API: reads the view.
    Query,
}

impl Role {
    /// Every role, as `serve` runs by default.
    pub const ALL: [Role; 3] = [Role::Command, Role::Consumer, Role::Query];
}

impl Settings {
    /// The database of the accounts context.
    pub fn accounts_database(&self) -> &DatabaseUrl {
        self.accounts_database_url
            .as_ref()
            .unwrap_or(&self.database_url)
    }

    /// The database of the shop context.
    pub fn shop_database(&self) -> &DatabaseUrl {
        self.shop_database_url
            .as_ref()
            .unwrap_or(&self.database_url)
    }

    /// The dead-letter topic that belongs to the command topic.
    pub fn dead_letter_topic(&self) -> String {
        crate::kafka::dead_letter::dead_letter_topic(&self.kafka_topic)
    }
}

/// A prefix that keeps every event topic name valid (Kafka's rule below).
fn topic_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    let valid_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if value.len() > 200 || !valid_chars {
        return Err("a topic prefix is at most 200 characters of [a-zA-Z0-9._-]".into());
    }
    Ok(value.to_owned())
}

fn non_empty(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(value.to_owned())
}

/// Kafka's own rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn topic_name(value: &str) -> Result<String, String> {
    let valid_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    // The dead-letter topic appends 4 characters and must be valid too.
    if value.is_empty() || value.len() > 245 || !valid_chars || value == "." || value == ".." {
        return Err("a topic name is 1 to 245 characters of [a-zA-Z0-9._-]".into());
    }
    Ok(value.to_owned())
}

/// Parses `DATABASE_URL` like any value parser, except that its error does
/// not quote the value: clap's own would print the password.
#[derive(Clone)]
struct DatabaseUrlParser;

impl clap::builder::TypedValueParser for DatabaseUrlParser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        let name = arg.map_or_else(|| "DATABASE_URL".to_owned(), |a| a.to_string());
        let invalid = |why: &dyn fmt::Display| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '{name}' (not shown: it may hold a password): {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| invalid(&"not UTF-8"))?;
        text.parse().map_err(|e| invalid(&e))
    }
}

/// Shortest `ADMIN_TOKEN` accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// Parses `ADMIN_TOKEN`: at least [`MIN_ADMIN_TOKEN`] visible ASCII
/// characters (it travels in an HTTP header). Its error does not quote the
/// value, which clap's own would.
#[derive(Clone)]
struct AdminTokenParser;

impl clap::builder::TypedValueParser for AdminTokenParser {
    type Value = Secret;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Secret, clap::Error> {
        let name = arg.map_or_else(|| "ADMIN_TOKEN".to_owned(), |a| a.to_string());
        let invalid = |why: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '{name}' (not shown: it is a secret): {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| invalid("not UTF-8"))?;
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "use visible ASCII characters only (no spaces or control characters)",
            ));
        }
        if text.len() < MIN_ADMIN_TOKEN {
            return Err(invalid(&format!(
                "use at least {MIN_ADMIN_TOKEN} characters"
            )));
        }
        Ok(Secret::from(text.to_owned()))
    }
}

/// `KAFKA_SSL_CA_LOCATION`: a readable PEM file holding at least one
/// certificate, or a directory of them (librdkafka accepts both).
fn ca_location(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if path.is_dir() {
        std::fs::read_dir(&path).map_err(|e| format!("cannot read the directory: {e}"))?;
        return Ok(path);
    }
    let pem = std::fs::read(&path).map_err(|e| format!("cannot read the file: {e}"))?;
    match openssl::x509::X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(path),
        Ok(_) => Err("holds no PEM certificate".into()),
        Err(e) => Err(format!("not a PEM file of certificates: {e}")),
    }
}

fn duration_or_zero(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (examples: 0ms, 500us, 5ms)"))
}

fn fault_point(value: &str) -> Result<(i32, i64), String> {
    let (partition, offset) = value
        .split_once(':')
        .ok_or_else(|| format!("expected PARTITION:OFFSET, got '{value}'"))?;
    Ok((
        partition.parse().map_err(|e| format!("partition: {e}"))?,
        offset.parse().map_err(|e| format!("offset: {e}"))?,
    ))
}

fn duration(value: &str) -> Result<Duration, String> {
    let parsed = duration_or_zero(value)?;
    if parsed.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(topic_name("timestamp.command.v1").is_ok());
        assert!(topic_name("").is_err());
        assert!(topic_name("..").is_err());
        assert!(topic_name("has space").is_err());
        assert!(topic_name(&"a".repeat(246)).is_err());
    }

    #[test]
    fn durations_must_be_positive_and_parseable() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
        assert_eq!(duration_or_zero("0ms"), Ok(Duration::ZERO));
        assert_eq!(duration_or_zero("500us"), Ok(Duration::from_micros(500)));
        assert!(duration_or_zero("-1ms").is_err());
    }

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::parse_from(std::iter::once("chronolog").chain(args.iter().copied()))
    }

    #[test]
    fn database_url_errors_name_the_variable_but_not_the_value() {
        let error = parse(&["--database-url", "mysql://app:hunter2-db@h/db"])
            .expect_err("refused")
            .to_string();
        assert!(error.contains("DATABASE_URL"), "{error}");
        assert!(error.contains("postgres://"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let settings = parse(&["--database-url", "postgres://app:hunter2-db@h/db"]).unwrap();
        assert_eq!(
            settings.database_url.expose(),
            "postgres://app:hunter2-db@h/db"
        );
    }

    #[test]
    fn debug_output_of_the_settings_shows_no_secret() {
        let mut settings = parse(&[
            "--database-url",
            "postgres://app:hunter2-db@h/db?password=hunter2-param",
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-username",
            "app",
            "--kafka-sasl-password",
            "hunter2-sasl",
        ])
        .unwrap();
        settings.kafka_options = KafkaOptions::from_vars([(
            "KAFKA_OPTION_SSL_KEY_PASSWORD".to_owned(),
            "hunter2-option".to_owned(),
        )]);
        settings.admin_token = Some(Secret::from("hunter2-admin-token".to_owned()));
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("ssl.key.password=***"), "{shown}");
        assert!(shown.contains("postgres://app:***@h/db"), "{shown}");
    }

    #[test]
    fn admin_token_errors_name_the_variable_but_not_the_value() {
        assert_eq!(parse(&[]).unwrap().admin_token, None);
        let token = parse(&["--admin-token", "hunter2-admin-token"])
            .unwrap()
            .admin_token
            .expect("set");
        assert_eq!(token.expose(), "hunter2-admin-token");
        for bad in ["hunter2-short", "hunter2 with spaces in it"] {
            let error = parse(&["--admin-token", bad])
                .expect_err("refused")
                .to_string();
            assert!(error.contains("ADMIN_TOKEN"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn security_protocols_have_librdkafka_names() {
        let protocol = |name: &str| {
            parse(&["--kafka-security-protocol", name]).map(|s| s.kafka_security_protocol)
        };
        assert_eq!(protocol("sasl_ssl").unwrap(), SecurityProtocol::SaslSsl);
        assert_eq!(
            protocol("SASL_PLAINTEXT").unwrap(),
            SecurityProtocol::SaslPlaintext
        );
        assert_eq!(protocol("ssl").unwrap(), SecurityProtocol::Ssl);
        assert!(protocol("tls").is_err());
    }

    #[test]
    fn sasl_mechanisms_are_those_librdkafka_has() {
        let mechanism =
            |name: &str| parse(&["--kafka-sasl-mechanism", name]).map(|s| s.kafka_sasl_mechanism);
        assert_eq!(
            mechanism("SCRAM-SHA-512").unwrap(),
            SaslMechanism::ScramSha512
        );
        assert_eq!(
            mechanism("scram-sha-256").unwrap(),
            SaslMechanism::ScramSha256
        );
        let error = mechanism("GSSAPI").expect_err("refused").to_string();
        assert!(error.contains("KAFKA_SASL_MECHANISM"), "{error}");
    }

    #[test]
    fn the_ca_location_must_hold_a_certificate() {
        let error = parse(&["--kafka-ssl-ca-location", "/nonexistent/ca.pem"])
            .expect_err("refused")
            .to_string();
        assert!(error.contains("KAFKA_SSL_CA_LOCATION"), "{error}");
        assert!(error.contains("cannot read the file"), "{error}");
        let not_pem = std::env::temp_dir().join(format!("chronolog-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&not_pem, "hello\n").unwrap();
        let error = ca_location(not_pem.to_str().unwrap()).unwrap_err();
        std::fs::remove_file(&not_pem).unwrap();
        assert_eq!(error, "holds no PEM certificate");
        assert!(ca_location(std::env::temp_dir().to_str().unwrap()).is_ok());
    }
}
