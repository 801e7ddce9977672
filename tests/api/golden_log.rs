//! The log is the golden record: chronolog creates its topics so that no
//! record expires, reports a topic whose records do, and `rebuild` refuses a
//! log that has lost its oldest records and resumes an interrupted run.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chronolog::domain::TimestampCommand;
use chronolog::kafka::record::encode_value;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::helpers::{
    DEADLINE, TestApp, brokers, create_database, produce_raw, row_ids, run_rebuild, settings,
    wait_for_exact_ids,
};

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client")
}

/// The topic's configuration as the broker describes it.
async fn topic_config(topic: &str) -> HashMap<String, String> {
    let described = admin()
        .describe_configs(
            [&ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("DescribeConfigs answered");
    let resource = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("the topic is described");
    resource
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

#[actix_rt::test]
async fn the_topics_are_created_to_keep_every_record_for_good() {
    let app = TestApp::spawn().await;
    for topic in [
        app.settings.kafka_topic.clone(),
        app.settings.dead_letter_topic(),
    ] {
        let config = topic_config(&topic).await;
        // The test rig gives tansu i64::MAX: its "-1" deletes everything.
        assert_eq!(
            config.get("retention.ms").map(String::as_str),
            Some("9223372036854775807"),
            "{topic}: {config:?}"
        );
        assert_eq!(
            config.get("retention.bytes").map(String::as_str),
            Some("-1"),
            "{topic}"
        );
        assert_eq!(
            config.get("cleanup.policy").map(String::as_str),
            Some("delete"),
            "{topic}"
        );
        assert_eq!(
            config.get("min.insync.replicas").map(String::as_str),
            Some("1"),
            "{topic}"
        );
        assert_eq!(
            app.metrics()
                .topic_retention_finite
                .with_label_values(&[&topic])
                .get(),
            0,
            "{topic}"
        );
    }
    app.stop().await;
}

#[actix_rt::test]
async fn an_existing_topic_whose_records_expire_is_reported_at_start() {
    let settings = settings(&create_database().await);
    let week = NewTopic::new(&settings.kafka_topic, 3, TopicReplication::Fixed(1))
        .set("retention.ms", "604800000");
    let created = admin()
        .create_topics([&week], &AdminOptions::new())
        .await
        .expect("CreateTopics answered");
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let app = TestApp::spawn_with(settings, &[]).await;
    let finite = |topic: &str| {
        app.metrics()
            .topic_retention_finite
            .with_label_values(&[topic])
            .get()
    };
    assert_eq!(finite(&app.settings.kafka_topic), 1, "the week is reported");
    assert_eq!(
        finite(&app.settings.dead_letter_topic()),
        0,
        "the dead-letter topic chronolog created keeps its records"
    );
    // Reported, not refused: the service still takes and projects commands,
    // and /ready shows the warning without failing.
    let id = app.accept(None).await;
    app.wait_visible(id).await;
    let ready = app
        .http
        .get(format!("{}/ready", app.query_url()))
        .send()
        .await
        .expect("/ready answers");
    assert_eq!(ready.status().as_u16(), 200);
    let body: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(body["components"]["topics"]["status"], "WARN", "{body}");
    assert_eq!(
        body["components"]["topics"]["finite_retention"],
        serde_json::json!({ app.settings.kafka_topic.clone(): "retention.ms=604800000 (7.0 days)" }),
        "{body}"
    );
    app.stop().await;
}

/// A valid command record padded to about `size` bytes (unknown fields are
/// ignored by the consumer).
fn padded_command(size: usize) -> (String, Vec<u8>) {
    let command = TimestampCommand::new(chrono::Utc::now());
    let value = encode_value(&command);
    let pad = "x".repeat(size.saturating_sub(value.len() + 10));
    let mut json: serde_json::Value = serde_json::from_slice(&value).expect("JSON");
    json["pad"] = serde_json::Value::String(pad);
    (
        command.command_id.to_string(),
        json.to_string().into_bytes(),
    )
}

/// Runs against librdkafka's mock cluster, which keeps at most 5 MiB per
/// partition and drops older records: a log whose oldest records are gone,
/// as a finite retention leaves it.
#[actix_rt::test]
async fn rebuild_refuses_a_log_that_lost_its_oldest_records_unless_allowed() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let mut settings = settings(&create_database().await);
    settings.kafka_brokers = mock.bootstrap_servers();
    mock.create_topic(&settings.kafka_topic, 2, 1)
        .expect("topic");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .create()
        .expect("producer");
    // 7 MiB into partition 0, one record into partition 1.
    for i in 0..701 {
        let (key, value) = padded_command(10 * 1024);
        let partition = if i == 700 { 1 } else { 0 };
        producer
            .send(
                FutureRecord::to(&settings.kafka_topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }
    let (low, high) = {
        let (brokers, topic) = (settings.kafka_brokers.clone(), settings.kafka_topic.clone());
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let client: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()
                .expect("client");
            client
                .fetch_watermarks(&topic, 0, Duration::from_secs(10))
                .expect("watermarks")
        })
        .await
        .expect("thread")
    };
    assert!(
        low > 0,
        "the mock dropped the oldest records ({low}..{high})"
    );

    let target = create_database().await;
    let refused = run_rebuild(&settings, &target, &[]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a partial rebuild is refused");
    let expected = format!("partition 0: {low} records (offsets 0 to {})", low - 1);
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("--allow-partial"), "{stderr}");
    assert!(
        !stderr.contains("partition 1:"),
        "partition 1 is whole: {stderr}"
    );
    assert!(row_ids(&target).await.is_empty(), "nothing was rebuilt");

    let allowed = run_rebuild(&settings, &target, &["--allow-partial"]).await;
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(
        row_ids(&target).await.len() as i64,
        high - low + 1,
        "what is left of partition 0, and partition 1"
    );
}

#[actix_rt::test]
async fn a_rebuild_run_again_with_its_group_resumes_and_finishes() {
    let app = TestApp::spawn().await;
    let mut ids: HashSet<Uuid> = HashSet::new();
    for _ in 0..30 {
        ids.insert(app.accept(None).await);
    }
    let target = create_database().await;
    let group = ["--group-id", "resumed-rebuild"];
    let first = run_rebuild(&app.settings, &target, &group).await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    wait_for_exact_ids(&target, &ids).await;

    // New records in partition 0 only: the other partitions are already at
    // their finish line and will commit nothing in the second run.
    for _ in 0..5 {
        let id = Uuid::new_v4();
        let value = format!(r#"{{"command_id":"{id}","event_timestamp":"2009-09-28T19:03:12Z"}}"#);
        produce_raw(
            &app.settings.kafka_topic,
            Some(0),
            Some(&id.to_string()),
            value.as_bytes(),
            None,
        )
        .await;
        ids.insert(id);
    }
    let second = tokio::time::timeout(DEADLINE, run_rebuild(&app.settings, &target, &group))
        .await
        .expect("the second run finishes");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("(100.0%)"), "{stderr}");
    wait_for_exact_ids(&target, &ids).await;
    app.stop().await;
}
