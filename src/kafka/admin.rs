//! Topic creation. Brokers that do not create topics on first use (tansu)
//! need it; brokers that do not answer CreateTopics (librdkafka's mock
//! cluster) must not stop the start: a timeout is logged and start carries on.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Settings;
use crate::kafka::{TracingContext, base_config, topic_partitions};

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

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
/// `KAFKA_PARTITIONS` partitions when they do not exist yet.
pub async fn ensure_topics(settings: &Settings) -> Result<(), AdminError> {
    for topic in [settings.kafka_topic.clone(), settings.dead_letter_topic()] {
        ensure_topic(settings, &topic).await?;
    }
    Ok(())
}

async fn ensure_topic(settings: &Settings, topic: &str) -> Result<(), AdminError> {
    let probe = {
        let (settings, topic) = (settings.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || partition_count(&settings, &topic)).await
    };
    if let Ok(Ok(Some(partitions))) = probe {
        tracing::debug!(topic, partitions, "topic exists");
        return Ok(());
    }
    let admin: AdminClient<TracingContext> = base_config(settings)
        .create_with_context(TracingContext)
        .map_err(AdminError::Client)?;
    let new_topic = NewTopic::new(topic, settings.kafka_partitions, TopicReplication::Fixed(1));
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
                            "created topic"
                        )
                    }
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        return Err(AdminError::Create {
                            topic: name,
                            source: KafkaError::AdminOp(code),
                        });
                    }
                }
            }
            Ok(())
        }
        Err(error) => {
            // A broker without a controller (the mock cluster) times out here;
            // it creates topics on first use instead.
            tracing::warn!(topic, %error, "could not create topic; carrying on, the broker may create it on first use");
            Ok(())
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
