//! Hostile records and a careless operator: no record, header or topic
//! change may stop a partition, kill a worker unseen, or lose data
//! unnoticed. Each test ends on the exact view, dead letters and metrics.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use chronolog::config::Settings;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{
    BIN, TestApp, brokers, create_database, eventually, produce_raw, read_topic, run_rebuild,
    settings, view_checksum, wait_for_exact_ids,
};
use crate::kafka_wire::{self, RawRecord};

const EVENT_A: &str = "2009-09-28T19:03:12Z";
const EVENT_B: &str = "2010-10-10T10:10:10Z";

fn value(id: Uuid, event_timestamp: &str) -> String {
    format!(r#"{{"command_id":"{id}","event_timestamp":"{event_timestamp}"}}"#)
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Produces a good command (event time [`EVENT_A`]) to `partition`, keyed
/// by its id; returns the id.
async fn produce_command(topic: &str, partition: i32) -> Uuid {
    let id = Uuid::new_v4();
    produce_raw(
        topic,
        Some(partition),
        Some(&id.to_string()),
        value(id, EVENT_A).as_bytes(),
        None,
    )
    .await;
    id
}

/// Produces a keyed record to `partition` with the given log timestamp.
async fn produce_at(topic: &str, partition: i32, id: Uuid, event: &str, log_ms: i64) -> i64 {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    let key = id.to_string();
    let payload = value(id, event);
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key(&key)
        .payload(&payload)
        .timestamp(log_ms);
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("record produced");
    delivery.offset
}

/// Produces raw records over the Kafka protocol (rdkafka refuses them).
async fn produce_wire(
    topic: &str,
    partition: i32,
    key: Vec<u8>,
    value: Vec<u8>,
    header_key: Vec<u8>,
) -> i64 {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let headers = [(header_key.as_slice(), Some(&b"x"[..]))];
        let record = RawRecord {
            key: Some(&key),
            value: Some(&value),
            headers: &headers,
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
        };
        kafka_wire::produce(&brokers(), &topic, partition, &[record]).expect("raw produce")
    })
    .await
    .expect("producer thread")
}

async fn ready(app: &TestApp) -> (u16, Value) {
    let response = app
        .http
        .get(format!("{}/ready", app.query_url()))
        .send()
        .await
        .expect("/ready answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

fn restarts(app: &TestApp) -> u64 {
    app.metrics()
        .actor_restarts
        .with_label_values(&["partition_consumer"])
        .get()
}

fn dead_letters(app: &TestApp, reason: &str) -> u64 {
    app.metrics()
        .dead_letters
        .with_label_values(&[reason])
        .get()
}

#[actix_rt::test]
async fn a_hostile_log_never_stops_a_partition() {
    let app = TestApp::spawn().await;
    let topic = app.settings.kafka_topic.clone();
    let mut good = HashSet::new();
    // (partition, offset) -> reason expected in the dead-letter topic.
    let mut hostile = BTreeMap::new();
    // As large as the broker takes with a header: too large to be copied
    // whole into a dead letter with its `dlq.*` headers.
    let huge = vec![b'x'; 990_000];
    let quoted = format!("\"{}\"", "a".repeat(600_000)).into_bytes();
    let (mut huge_at, mut quoted_at) = (BTreeSet::new(), BTreeSet::new());
    let mut duplicates = Vec::new();
    for partition in 0..3 {
        let first = produce_command(&topic, partition).await;
        good.insert(first);

        let (_, offset) = produce_raw(&topic, Some(partition), None, &huge, Some("huge")).await;
        hostile.insert((partition, offset), "not_json");
        huge_at.insert((partition, offset));

        // A JSON string: the parser's message quotes it, and must not make
        // the dead letter too large to publish.
        let (_, offset) = produce_raw(&topic, Some(partition), None, &quoted, None).await;
        hostile.insert((partition, offset), "not_json");
        quoted_at.insert((partition, offset));

        let smuggled = Uuid::new_v4();
        let offset = produce_wire(
            &topic,
            partition,
            smuggled.to_string().into_bytes(),
            value(smuggled, EVENT_A).into_bytes(),
            b"\xff\xfe".to_vec(),
        )
        .await;
        hostile.insert((partition, offset), "invalid_header");

        let twice = Uuid::new_v4();
        let key = twice.to_string();
        produce_raw(
            &topic,
            Some(partition),
            Some(&key),
            value(twice, EVENT_A).as_bytes(),
            None,
        )
        .await;
        let (_, offset) = produce_raw(
            &topic,
            Some(partition),
            Some(&key),
            value(twice, EVENT_B).as_bytes(),
            None,
        )
        .await;
        hostile.insert((partition, offset), "conflicting_duplicate");
        good.insert(twice);
        duplicates.push(twice);

        let last = produce_command(&topic, partition).await;
        good.insert(last);
    }

    wait_for_exact_ids(app.settings.database_url.expose(), &good).await;
    for id in duplicates {
        let row = app.wait_visible(id).await;
        assert_eq!(row["event_timestamp"], EVENT_A, "the first version is kept");
    }
    let dead = eventually("every hostile record dead-lettered", || async {
        let dead = read_topic(&app.settings.dead_letter_topic()).await;
        (dead.len() >= hostile.len()).then_some(dead)
    })
    .await;
    assert_eq!(
        dead.len(),
        hostile.len(),
        "one dead letter per hostile record"
    );
    for ((partition, offset), reason) in &hostile {
        let letter = dead
            .iter()
            .find(|m| {
                header(m, "dlq.source.partition") == Some(partition.to_string())
                    && header(m, "dlq.source.offset") == Some(offset.to_string())
            })
            .unwrap_or_else(|| panic!("no dead letter for {partition}/{offset}"));
        assert_eq!(header(letter, "dlq.reason").as_deref(), Some(*reason));
        assert_eq!(header(letter, "dlq.source.topic"), Some(topic.clone()));
        if huge_at.contains(&(*partition, *offset)) {
            assert_eq!(
                letter.payload().map(<[u8]>::len),
                Some(64 * 1024),
                "value cut"
            );
            assert_eq!(
                header(letter, "dlq.original.size").as_deref(),
                Some("990000")
            );
            assert_eq!(
                header(letter, "dlq.original.sha256"),
                Some(chronolog::kafka::dead_letter::sha256_hex(&huge))
            );
            assert_eq!(header(letter, "correlationId").as_deref(), Some("huge"));
        }
        if quoted_at.contains(&(*partition, *offset)) {
            assert_eq!(letter.payload(), Some(quoted.as_slice()), "copied whole");
            let error = header(letter, "dlq.error").unwrap_or_default();
            assert!(
                error.len() <= 1024,
                "the parser's message is cut: {} bytes",
                error.len()
            );
        }
        if *reason == "conflicting_duplicate" {
            let body: Value =
                serde_json::from_slice(letter.payload().unwrap_or_default()).expect("JSON");
            assert_eq!(body["event_timestamp"], EVENT_B, "the losing version");
        }
    }
    for (reason, count) in [
        ("not_json", 6),
        ("invalid_header", 3),
        ("conflicting_duplicate", 3),
    ] {
        assert_eq!(dead_letters(&app, reason), count, "{reason}");
    }
    let (status, body) = eventually("ready", || async {
        let (status, body) = ready(&app).await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(restarts(&app), 0, "no worker died");
    assert_eq!(
        app.metrics()
            .dead_letter_failures
            .with_label_values(&["refused"])
            .get(),
        0
    );
    app.stop().await;
}

async fn seed_offsets(settings: &Settings, next_offset: i64) {
    chronolog::db::run_migrations(&settings.database_url)
        .await
        .expect("migrations");
    let mut conn = AsyncPgConnection::establish(settings.database_url.expose())
        .await
        .expect("database");
    for partition in 0..settings.kafka_partitions {
        diesel::sql_query(format!(
            "INSERT INTO projection_offsets (group_id, topic, partition, next_offset) VALUES ('{}', '{}', {partition}, {next_offset})",
            settings.kafka_group_id, settings.kafka_topic
        ))
        .execute(&mut conn)
        .await
        .expect("offset seeded");
    }
}

#[actix_rt::test]
async fn a_stored_offset_above_the_log_stops_the_partition_until_an_operator_resets_it() {
    // A view that projected 20 records per partition of a topic that was
    // since deleted and created again, empty.
    let settings = settings(&create_database().await);
    seed_offsets(&settings, 20).await;
    let app = TestApp::spawn_with(settings, &[]).await;
    let topic = app.settings.kafka_topic.clone();
    let mut ids = HashSet::new();
    for _ in 0..6 {
        ids.insert(app.accept(Some(EVENT_A)).await);
    }

    let problems = || async {
        let (status, body) = ready(&app).await;
        let problems = body["components"]["partitions"]["problems"].clone();
        (status, problems)
    };
    let stopped = eventually("every partition stopped", || async {
        let (status, problems) = problems().await;
        (status == 503 && problems.as_object().is_some_and(|p| p.len() == 3)).then_some(problems)
    })
    .await;
    let problem = stopped["0"].as_str().expect("a reason");
    assert!(
        problem.starts_with("stored offset 20 is above the log's high watermark"),
        "{problem}"
    );
    assert!(
        problem.contains(&format!(
            "run `chronolog offsets reset --topic {topic} --group {} --partition 0 --to earliest`",
            app.settings.kafka_group_id
        )),
        "{problem}"
    );
    let ahead = |partition: &str| {
        app.metrics()
            .stored_offset_ahead
            .with_label_values(&[&app.settings.kafka_group_id, &topic, partition])
            .get()
    };
    eventually(
        "the gauge says how far each stored offset is ahead",
        || async {
            let highs: i64 = (0..3).map(|p| 20 - ahead(&p.to_string())).sum();
            (highs == 6).then_some(())
        },
    )
    .await;

    // The log of partition 0 grows past the stored offset: the records
    // below it are still not projected, so the partition stays stopped.
    for _ in 0..25 {
        let id = produce_command(&topic, 0).await;
        ids.insert(id);
    }
    eventually("partition 0 looked again at the longer log", || async {
        let (status, problems) = problems().await;
        let seen = problems["0"].as_str().is_some_and(|p| {
            p.split("the log now ends at ")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|high| high >= 25)
        });
        (status == 503 && seen).then_some(())
    })
    .await;
    assert_eq!(ahead("0"), 0, "no longer ahead, and still stopped");
    assert!(
        app.row_ids().await.is_empty(),
        "nothing is skipped silently"
    );

    let output = tokio::task::spawn_blocking({
        let settings = app.settings.clone();
        move || {
            std::process::Command::new(BIN)
                .args([
                    "offsets",
                    "reset",
                    "--topic",
                    &settings.kafka_topic,
                    "--group",
                    &settings.kafka_group_id,
                    "--to",
                    "earliest",
                ])
                .env("DATABASE_URL", settings.database_url.expose())
                .env("KAFKA_BROKERS", &settings.kafka_brokers)
                .env("LOG_LEVEL", "error")
                .output()
                .expect("offsets reset runs")
        }
    })
    .await
    .expect("thread");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (partition, line) in lines.iter().enumerate() {
        assert!(
            line.starts_with(&format!(
                "partition {partition}: stored offset 20 moved to 0 (the log holds offsets 0 to "
            )),
            "{line}"
        );
    }

    wait_for_exact_ids(app.settings.database_url.expose(), &ids).await;
    eventually("ready again", || async {
        (ready(&app).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!((0..3).map(|p| ahead(&p.to_string())).sum::<i64>(), 0);
    app.stop().await;
}

#[actix_rt::test]
async fn a_record_timestamp_postgres_cannot_store_is_dead_lettered() {
    let app = TestApp::spawn().await;
    let topic = app.settings.kafka_topic.clone();
    let far = Uuid::new_v4();
    // Year 300,000: a valid Kafka timestamp, beyond PostgreSQL's range.
    let year_300000_ms = 9_404_000_000_000_000;
    let offset = produce_at(&topic, 0, far, EVENT_A, year_300000_ms).await;
    let after = produce_command(&topic, 0).await;

    wait_for_exact_ids(app.settings.database_url.expose(), &HashSet::from([after])).await;
    let dead = read_topic(&app.settings.dead_letter_topic()).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "dlq.reason").as_deref(),
        Some("invalid_record_timestamp")
    );
    assert_eq!(
        header(&dead[0], "dlq.source.offset"),
        Some(offset.to_string())
    );
    assert_eq!(
        header(&dead[0], "dlq.error"),
        Some(format!(
            "record timestamp {year_300000_ms} ms is outside 0001-01-01 to 9999-12-31"
        ))
    );
    assert_eq!(dead_letters(&app, "invalid_record_timestamp"), 1);
    app.stop().await;
}

#[actix_rt::test]
async fn two_versions_of_a_command_keep_the_earliest_log_time_live_and_in_a_rebuild() {
    let app = TestApp::spawn().await;
    let topic = app.settings.kafka_topic.clone();
    let id = Uuid::new_v4();
    let now = chrono::Utc::now().timestamp_millis();
    // The later version is written first, to another partition than the
    // earlier one, and projected: the earlier one replaces it when it comes.
    produce_at(&topic, 0, id, EVENT_B, now).await;
    let first = app.wait_visible(id).await;
    assert_eq!(first["event_timestamp"], EVENT_B);
    produce_at(&topic, 1, id, EVENT_A, now - 60_000).await;

    let letter = eventually("the losing version dead-lettered", || async {
        let dead = read_topic(&app.settings.dead_letter_topic()).await;
        dead.into_iter().next()
    })
    .await;
    assert_eq!(
        header(&letter, "dlq.reason").as_deref(),
        Some("conflicting_duplicate")
    );
    assert_eq!(header(&letter, "dlq.replaced").as_deref(), Some("true"));
    let body: Value = serde_json::from_slice(letter.payload().unwrap_or_default()).expect("JSON");
    assert_eq!(body["event_timestamp"], EVENT_B);
    assert_eq!(body["command_id"], id.to_string());
    let row = app.wait_visible(id).await;
    assert_eq!(row["event_timestamp"], EVENT_A);
    assert_eq!(dead_letters(&app, "conflicting_duplicate"), 1);
    let live = view_checksum(app.settings.database_url.expose()).await;
    assert_eq!(live.0, 1);

    let fresh = create_database().await;
    let output = run_rebuild(&app.settings, &fresh, &[]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        view_checksum(&fresh).await,
        live,
        "the rebuild keeps the same row"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn a_panicking_worker_is_restarted_counted_and_loses_nothing() {
    let mut settings = settings(&create_database().await);
    settings.fault_panic_at = Some((0, 2));
    let app = TestApp::spawn_with(settings, &[]).await;
    let topic = app.settings.kafka_topic.clone();
    let mut ids = HashSet::new();
    for _ in 0..5 {
        let id = produce_command(&topic, 0).await;
        ids.insert(id);
    }
    wait_for_exact_ids(app.settings.database_url.expose(), &ids).await;
    assert_eq!(restarts(&app), 1, "the panic is counted as a restart");
    eventually("ready after the restart", || async {
        (ready(&app).await.0 == 200).then_some(())
    })
    .await;
    app.stop().await;

    // A rebuild whose worker panics fails, naming it, instead of hanging.
    let fresh = create_database().await;
    let mut command = std::process::Command::new(BIN);
    command
        .args(["rebuild", "--database-url", &fresh])
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", &topic)
        .env("CHRONOLOG_FAULT_PANIC_AT", "0:2")
        .env("LOG_LEVEL", "error");
    let output = tokio::task::spawn_blocking(move || command.output().expect("rebuild runs"))
        .await
        .expect("thread");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a partition worker panicked during the rebuild"),
        "{stderr}"
    );
    assert!(stderr.contains("injected fault at offset 2"), "{stderr}");
}

#[actix_rt::test]
async fn a_busy_pool_is_not_a_lost_connection() {
    // One connection for three partitions, and partition 0's offset row
    // locked by someone else: partition 0's batch holds the connection while
    // it waits, and the others' checkouts time out.
    let mut settings = settings(&create_database().await);
    settings.database_pool_size = 1;
    let app = TestApp::spawn_with(settings, &[]).await;
    let topic = app.settings.kafka_topic.clone();
    let mut ids = HashSet::new();
    for partition in 0..3 {
        let id = produce_command(&topic, partition).await;
        ids.insert(id);
    }
    wait_for_exact_ids(app.settings.database_url.expose(), &ids).await;

    let mut locker = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .expect("database");
    diesel::sql_query("BEGIN")
        .execute(&mut locker)
        .await
        .expect("begin");
    diesel::sql_query("SELECT * FROM projection_offsets WHERE partition = 0 FOR UPDATE")
        .execute(&mut locker)
        .await
        .expect("locked");
    for partition in [0, 1, 2, 1, 2] {
        let id = produce_command(&topic, partition).await;
        ids.insert(id);
    }
    let failed = || {
        app.metrics()
            .db_transactions
            .with_label_values(&["failed"])
            .get()
    };
    eventually("a checkout timed out", || async {
        (failed() > 0).then_some(())
    })
    .await;
    let blocked: i64 = (0..3)
        .map(|p| {
            app.metrics()
                .partition_blocked
                .with_label_values(&[&app.settings.kafka_group_id, &topic, &p.to_string()])
                .get()
        })
        .sum();
    assert_eq!(blocked, 0, "waiting for a connection is not being blocked");
    diesel::sql_query("COMMIT")
        .execute(&mut locker)
        .await
        .expect("commit");

    wait_for_exact_ids(app.settings.database_url.expose(), &ids).await;
    assert_eq!(
        app.metrics()
            .actor_restarts
            .with_label_values(&["db_writer"])
            .get(),
        0,
        "a busy pool does not restart the writer"
    );
    app.stop().await;
}

/// librdkafka's mock cluster, because tansu resets the connection on a
/// fetch that holds a record with a negative timestamp.
#[actix_rt::test]
async fn a_record_timestamp_before_postgres_s_range_is_dead_lettered() {
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let mut settings = settings(&create_database().await);
    settings.kafka_brokers = mock.bootstrap_servers();
    for topic in [settings.kafka_topic.clone(), settings.dead_letter_topic()] {
        mock.create_topic(&topic, 1, 1).expect("topic");
    }
    let app = TestApp::spawn_with(settings, &[]).await;
    let topic = app.settings.kafka_topic.clone();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .expect("producer");
    // 5000 BC: a valid Kafka timestamp, before PostgreSQL's 4713 BC.
    let before_4713_bc_ms = -219_900_000_000_000;
    let (ancient, after) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, log_ms) in [
        (ancient, before_4713_bc_ms),
        (after, chrono::Utc::now().timestamp_millis()),
    ] {
        let (key, payload) = (id.to_string(), value(id, EVENT_A));
        let record = FutureRecord::to(&topic)
            .partition(0)
            .key(&key)
            .payload(&payload)
            .timestamp(log_ms);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }

    wait_for_exact_ids(app.settings.database_url.expose(), &HashSet::from([after])).await;
    eventually("the ancient record dead-lettered", || async {
        (dead_letters(&app, "invalid_record_timestamp") == 1).then_some(())
    })
    .await;
    let stored: Vec<i64> = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", crate::helpers::unique("inspector"))
            .create()
            .expect("consumer");
        let (low, high) = consumer
            .fetch_watermarks(
                &app.settings.dead_letter_topic(),
                0,
                Duration::from_secs(10),
            )
            .expect("watermarks");
        vec![low, high]
    };
    assert_eq!(stored, [0, 1], "one dead letter");
    app.stop().await;
}
