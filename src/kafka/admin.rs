//! Topic creation and checks. The command topic is the golden record: it is
//! created so that no record ever expires (`retention.ms` from
//! `KAFKA_TOPIC_RETENTION_MS`, `-1` by default; `retention.bytes=-1`;
//! `cleanup.policy=delete`), with the configured replication factor and
//! `min.insync.replicas`. A topic that already exists is left as it is, but a
//! finite retention is reported: a view rebuilt from a log that lost its
//! oldest records would be silently partial.
//!
//! Brokers that do not create topics on first use (tansu) need the creation;
//! brokers that do not answer CreateTopics or DescribeConfigs (librdkafka's
//! mock cluster) must not stop the start: that is logged and start carries on.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigResource, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::kafka::{TracingContext, base_config, topic_partitions};

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A retention this long or longer counts as forever (Kafka's own "forever"
/// is -1; `i64::MAX` ms, used for tansu, is forever too).
const CENTURY_MS: i64 = 3_155_760_000_000;

/// What the start learnt about chronolog's topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicReport {
    /// Topics whose records expire, with the setting that makes them expire
    /// (`retention.ms=604800000 (7 days)`).
    pub finite_retention: BTreeMap<String, String>,
    /// Topics whose configuration the broker would not describe.
    pub unchecked: Vec<String>,
}

/// Errors of topic administration that stop the start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The client could not be built (bad configuration).
    #[error("cannot create a Kafka client: {0}")]
    Client(KafkaError),
    /// The broker refused to create the topic.
    #[error("cannot create topic '{topic}': {source}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's answer.
        source: KafkaError,
    },
}

/// Partition count of `topic` as the broker reports it, `None` when absent.
/// Blocking: call from a blocking thread.
pub fn partition_count(settings: &Settings, topic: &str) -> Result<Option<usize>, KafkaError> {
    let client: BaseConsumer<TracingContext> =
        base_config(settings).create_with_context(TracingContext)?;
    let partitions = topic_partitions(&client, topic, METADATA_TIMEOUT)?;
    Ok(Some(partitions.len()).filter(|&n| n > 0))
}

/// Creates the command topic and its dead-letter topic with
/// `KAFKA_PARTITIONS` partitions when they do not exist yet, and checks the
/// retention of those that do. Every finite retention is logged as an error
/// with what to do; the report lets the caller show it on `/ready` and as a
/// metric.
pub async fn ensure_topics(settings: &Settings) -> Result<TopicReport, AdminError> {
    ensure_named_topics(
        settings,
        &[settings.kafka_topic.clone(), settings.dead_letter_topic()],
    )
    .await
}

/// Creates `topics` as [`ensure_topics`] creates the command topic (same
/// partition count, replication, retention kept for good), and checks the
/// retention of those that exist. The event topics of the outbox relay are
/// created through here: they are the golden record of accounts and shop.
pub async fn ensure_named_topics(
    settings: &Settings,
    topics: &[String],
) -> Result<TopicReport, AdminError> {
    let admin: AdminClient<TracingContext> = base_config(settings)
        .create_with_context(TracingContext)
        .map_err(AdminError::Client)?;
    let mut report = TopicReport::default();
    // Concurrently: a broker that does not answer CreateTopics (the mock
    // cluster) costs one timeout, not one per topic.
    let created = futures::future::join_all(
        topics
            .iter()
            .map(|topic| async { (topic.clone(), ensure_topic(settings, &admin, topic).await) }),
    )
    .await;
    for (topic, created) in created {
        let retention = match created? {
            Created::Now => Some(finite_retention(
                Some(&settings.kafka_topic_retention_ms.to_string()),
                Some("-1"),
            )),
            Created::Before => describe_retention(&admin, &topic).await,
            Created::Unknown => None,
        };
        match retention {
            Some(None) => {}
            Some(Some(finite)) => {
                tracing::error!(
                    topic,
                    retention = finite,
                    "the topic's records expire: a view rebuilt from it would miss them; \
                     make it keep them for good (retention.ms=-1, retention.bytes=-1)"
                );
                report.finite_retention.insert(topic, finite);
            }
            None => report.unchecked.push(topic),
        }
    }
    Ok(report)
}

/// Whether `ensure_topic` made the topic, found it, or cannot tell.
enum Created {
    Now,
    Before,
    /// The broker neither listed nor created it (it creates topics on first use).
    Unknown,
}

/// The retention settings chronolog gives the topics it creates.
fn topic_config(settings: &Settings) -> [(&'static str, String); 4] {
    [
        (
            "retention.ms",
            settings.kafka_topic_retention_ms.to_string(),
        ),
        ("retention.bytes", "-1".to_owned()),
        ("cleanup.policy", "delete".to_owned()),
        (
            "min.insync.replicas",
            settings.kafka_min_insync_replicas.to_string(),
        ),
    ]
}

/// Why a topic's records expire, from its `retention.ms` and
/// `retention.bytes`; `None` when they are kept for good. A retention of a
/// century or more counts as forever.
pub fn finite_retention(
    retention_ms: Option<&str>,
    retention_bytes: Option<&str>,
) -> Option<String> {
    let parse = |v: Option<&str>| v.and_then(|v| v.trim().parse::<i64>().ok());
    let mut reasons = Vec::new();
    match parse(retention_ms) {
        Some(ms) if (0..CENTURY_MS).contains(&ms) => {
            let days = ms as f64 / 86_400_000.0;
            reasons.push(format!("retention.ms={ms} ({days:.1} days)"));
        }
        _ => {}
    }
    if let Some(bytes) = parse(retention_bytes).filter(|&b| b >= 0) {
        reasons.push(format!("retention.bytes={bytes}"));
    }
    (!reasons.is_empty()).then(|| reasons.join(", "))
}

/// The topic's retention as [`finite_retention`] judges it; `None` when the
/// broker does not describe topic configurations.
async fn describe_retention(
    admin: &AdminClient<TracingContext>,
    topic: &str,
) -> Option<Option<String>> {
    let options = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await;
    let resource: ConfigResource = match described.map(|mut r| r.pop()) {
        Ok(Some(Ok(resource))) => resource,
        Ok(Some(Err(error))) => {
            tracing::warn!(topic, %error, "cannot read the topic's retention");
            return None;
        }
        Ok(None) => return None,
        Err(error) => {
            tracing::warn!(topic, %error, "cannot read the topic's retention");
            return None;
        }
    };
    let value = |name| resource.get(name).and_then(|e| e.value.as_deref());
    let retention_ms = value("retention.ms");
    if retention_ms.is_none() {
        tracing::warn!(topic, "the broker does not report the topic's retention.ms");
        return None;
    }
    Some(finite_retention(retention_ms, value("retention.bytes")))
}

async fn ensure_topic(
    settings: &Settings,
    admin: &AdminClient<TracingContext>,
    topic: &str,
) -> Result<Created, AdminError> {
    let probe = {
        let (settings, topic) = (settings.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || partition_count(&settings, &topic)).await
    };
    if let Ok(Ok(Some(partitions))) = probe {
        tracing::debug!(topic, partitions, "topic exists");
        return Ok(Created::Before);
    }
    let config = topic_config(settings);
    let new_topic = config.iter().fold(
        NewTopic::new(
            topic,
            settings.kafka_partitions,
            TopicReplication::Fixed(settings.kafka_replication_factor),
        ),
        |t, (key, value)| t.set(key, value),
    );
    let options = AdminOptions::new()
        .operation_timeout(Some(CREATE_TIMEOUT))
        .request_timeout(Some(CREATE_TIMEOUT));
    match admin.create_topics([&new_topic], &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(name) => {
                        tracing::info!(
                            topic = name,
                            partitions = settings.kafka_partitions,
                            replication_factor = settings.kafka_replication_factor,
                            retention_ms = settings.kafka_topic_retention_ms,
                            "created topic"
                        )
                    }
                    // Another process created it meanwhile: check it as found.
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(Created::Before),
                    Err((name, code)) => {
                        return Err(AdminError::Create {
                            topic: name,
                            source: KafkaError::AdminOp(code),
                        });
                    }
                }
            }
            Ok(Created::Now)
        }
        Err(error) => {
            // A broker without a controller (the mock cluster) times out here;
            // it creates topics on first use instead, with its own settings.
            tracing::warn!(topic, %error, "could not create topic; carrying on, the broker may create it on first use");
            Ok(Created::Unknown)
        }
    }
}

/// Low and high watermarks of every partition of `topic`.
/// Blocking: call from a blocking thread.
pub fn watermarks(
    settings: &Settings,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    let client: BaseConsumer<TracingContext> =
        base_config(settings).create_with_context(TracingContext)?;
    topic_partitions(&client, topic, METADATA_TIMEOUT)?
        .into_iter()
        .map(|p| Ok((p, client.fetch_watermarks(topic, p, METADATA_TIMEOUT)?)))
        .collect()
}

/// The first offset at or after `millis` (log time) of each partition of
/// `topic`; `None` for a partition with no record that late.
pub fn offsets_for_time(
    settings: &Settings,
    topic: &str,
    millis: i64,
) -> Result<BTreeMap<i32, Option<i64>>, KafkaError> {
    let client: BaseConsumer<TracingContext> =
        base_config(settings).create_with_context(TracingContext)?;
    let mut query = TopicPartitionList::new();
    for partition in topic_partitions(&client, topic, METADATA_TIMEOUT)? {
        query.add_partition_offset(topic, partition, Offset::Offset(millis))?;
    }
    let found = client.offsets_for_times(query, METADATA_TIMEOUT)?;
    Ok(found
        .elements_for_topic(topic)
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forever_is_minus_one_or_a_century_or_more() {
        assert_eq!(finite_retention(Some("-1"), Some("-1")), None);
        assert_eq!(finite_retention(Some("9223372036854775807"), None), None);
        assert_eq!(
            finite_retention(Some(&CENTURY_MS.to_string()), Some("-1")),
            None
        );
        assert_eq!(
            finite_retention(Some("604800000"), Some("-1")).as_deref(),
            Some("retention.ms=604800000 (7.0 days)")
        );
        assert_eq!(
            finite_retention(Some("-1"), Some("1073741824")).as_deref(),
            Some("retention.bytes=1073741824")
        );
        assert_eq!(
            finite_retention(Some("0"), Some("0")).as_deref(),
            Some("retention.ms=0 (0.0 days), retention.bytes=0")
        );
    }
}
