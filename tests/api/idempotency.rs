//! Safe client retries: `Idempotency-Key` on the command routes, remembered
//! in the command side's database, and the record's place in the log in the
//! `202` body.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chronolog::config::Role;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    DEADLINE, PrivatePostgres, TestApp, brokers, create_database, describe, eventually, read_topic,
    row_ids, settings, unique,
};

/// What one command route answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
    pub replayed: bool,
}

impl Answer {
    pub fn id(&self) -> Uuid {
        Uuid::parse_str(self.body["id"].as_str().expect("an id")).expect("a UUID")
    }

    /// Partition and offset of a `202` body.
    pub fn place(&self) -> (i32, i64) {
        (
            self.body["partition"].as_i64().expect("a partition") as i32,
            self.body["offset"].as_i64().expect("an offset"),
        )
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

/// `POST {path}` on the command API with an optional `Idempotency-Key`.
pub async fn post_keyed(app: &TestApp, path: &str, key: Option<&str>) -> Answer {
    let mut request = app.http.post(format!("{}{path}", app.command_url()));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    answer(request.send().await.expect("the command API answers")).await
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let replayed = match response.headers().get("idempotent-replayed") {
        None => false,
        Some(value) => {
            assert_eq!(value, "true");
            true
        }
    };
    let body = response.json().await.expect("a JSON body");
    Answer {
        status,
        body,
        replayed,
    }
}

/// One row of `idempotency_keys`.
#[derive(Debug, QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    command_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    event_timestamp: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    partition: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    log_offset: Option<i64>,
}

async fn key_row(database_url: &str, key: &str) -> Option<KeyRow> {
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    diesel::sql_query(
        "SELECT command_id, event_timestamp, partition, log_offset \
         FROM idempotency_keys WHERE key = $1",
    )
    .bind::<diesel::sql_types::Text, _>(key)
    .get_result(&mut conn)
    .await
    .ok()
}

async fn execute(database_url: &str, sql: &str) {
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    diesel::sql_query(sql).execute(&mut conn).await.unwrap();
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(database_url: &str, sql: &str) -> i64 {
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

/// The record at `partition`/`offset` of `topic` on `brokers`.
pub async fn record_at(brokers: &str, topic: &str, partition: i32, offset: i64) -> OwnedMessage {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("inspector"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, partition, Offset::Offset(offset))
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < DEADLINE,
                "no record at {partition}/{offset}"
            );
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                return message.unwrap().detach();
            }
        }
    })
    .await
    .unwrap()
}

/// Every record of `topic` on `brokers` (a mock cluster), up to the high watermarks.
async fn read_all(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("inspector"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        let mut remaining = 0;
        for p in 0..3 {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .unwrap();
            remaining += high - low;
            assignment
                .add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut records = Vec::new();
        let started = Instant::now();
        while remaining > 0 {
            assert!(started.elapsed() < DEADLINE, "could not read {topic}");
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                records.push(message.unwrap().detach());
                remaining -= 1;
            }
        }
        records
    })
    .await
    .unwrap()
}

fn value_of(id: Uuid, event_timestamp: &DateTime<Utc>) -> String {
    format!(
        r#"{{"command_id":"{id}","event_timestamp":"{}"}}"#,
        chronolog::domain::format_timestamp(event_timestamp)
    )
}

/// Waits until the consumer has applied every record of the topic, so that
/// the view can be compared with the log.
async fn wait_for_projection(app: &TestApp) {
    let expected = read_topic(&app.settings.kafka_topic).await.len() as i64;
    let sql = format!(
        "SELECT coalesce(sum(next_offset), 0)::bigint AS n FROM projection_offsets WHERE topic = '{}'",
        app.settings.kafka_topic
    );
    eventually("every record is projected", || async {
        (count(app.settings.database_url.expose(), &sql).await >= expected).then_some(())
    })
    .await;
}

#[actix_rt::test]
async fn the_202_body_gives_the_records_place_in_the_log() {
    let app = TestApp::spawn().await;
    for (path, key) in [
        ("/api/v1/timestamp/2009-09-28T19:03:12Z", None),
        ("/api/v1/timestamp", None),
        ("/api/v1/timestamp/2006-01-02T15:04:05Z", Some("place-1")),
        ("/api/v1/timestamp", Some("place-2")),
    ] {
        let answer = post_keyed(&app, path, key).await;
        assert_eq!(answer.status, 202, "{path} {key:?}");
        let fields: HashSet<&str> = answer
            .body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, HashSet::from(["id", "partition", "offset"]));
        let (partition, offset) = answer.place();
        let record = record_at(&brokers(), &app.settings.kafka_topic, partition, offset).await;
        let (at, record_key, value, _) = describe(&record);
        assert_eq!(at, partition);
        assert_eq!(record.offset(), offset);
        assert_eq!(record_key, answer.id().to_string(), "{path} {key:?}");
        assert!(value.contains(&answer.id().to_string()), "{value}");
    }
    app.stop().await;
}

#[actix_rt::test]
async fn sixteen_concurrent_retries_with_one_key_get_one_id_one_record_and_one_row() {
    let app = TestApp::spawn().await;
    let key = "order-42:attempt.any_1";
    let answers = futures::future::join_all(
        (0..16).map(|_| post_keyed(&app, "/api/v1/timestamp", Some(key))),
    )
    .await;
    let first = answers[0].clone();
    assert_eq!(first.status, 202, "{first:?}");
    for answer in &answers {
        assert_eq!(answer.status, 202);
        assert_eq!(answer.body, first.body, "one id, partition and offset");
    }
    assert_eq!(
        answers.iter().filter(|a| !a.replayed).count(),
        1,
        "exactly one request produced, the others were answered from the store"
    );
    let id = first.id();

    // A later retry, on either route, gets the same command.
    let again = post_keyed(&app, "/api/v1/timestamp", Some(key)).await;
    assert_eq!(
        (again.status, &again.body, again.replayed),
        (202, &first.body, true)
    );
    let original = post_keyed(&app, "/app", Some(key)).await;
    assert_eq!(
        (original.status, original.body, original.replayed),
        (200, json!({"id": id.to_string()}), true)
    );

    let records = read_topic(&app.settings.kafka_topic).await;
    assert_eq!(records.len(), 1, "one record in the log");
    let (_, record_key, value, _) = describe(&records[0]);
    assert_eq!(record_key, id.to_string());
    let stored = key_row(app.settings.database_url.expose(), key)
        .await
        .unwrap();
    assert_eq!(stored.command_id, id);
    assert_eq!(value, value_of(id, &stored.event_timestamp));
    assert_eq!(
        (stored.partition, stored.log_offset),
        (Some(first.place().0), Some(first.place().1))
    );

    let row = app.wait_visible(id).await;
    assert_eq!(
        row["event_timestamp"],
        json!(chronolog::domain::format_timestamp(&stored.event_timestamp))
    );
    wait_for_projection(&app).await;
    assert_eq!(app.row_ids().await, vec![id], "one row in the view");
    app.stop().await;
}

#[actix_rt::test]
async fn two_command_processes_answer_one_key_with_one_id() {
    let settings = settings(&create_database().await);
    let first = TestApp::spawn_with(settings.clone(), &[]).await;
    let second = TestApp::spawn_with(settings.clone(), &[Role::Command]).await;
    let key = "shared-between-processes";
    let answers = futures::future::join_all((0..16).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        post_keyed(app, "/api/v1/timestamp", Some(key))
    }))
    .await;
    let id = answers[0].id();
    for answer in &answers {
        assert_eq!(answer.status, 202, "{answer:?}");
        assert_eq!(answer.body, answers[0].body);
    }
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    // Sequential retries on each process after the burst.
    for app in [&second, &first] {
        let again = post_keyed(app, "/api/v1/timestamp", Some(key)).await;
        assert_eq!((again.status, again.id(), again.replayed), (202, id, true));
    }

    let records = read_topic(&settings.kafka_topic).await;
    assert_eq!(records.len(), 1);
    assert_eq!(describe(&records[0]).1, id.to_string());
    first.wait_visible(id).await;
    wait_for_projection(&first).await;
    assert_eq!(row_ids(settings.database_url.expose()).await, vec![id]);
    second.stop().await;
    first.stop().await;
}

#[actix_rt::test]
async fn a_key_names_one_command_and_another_timestamp_is_refused_with_422() {
    let app = TestApp::spawn().await;
    let at = post_keyed(&app, "/api/v1/timestamp/2009-09-28T19:03:12Z", Some("at")).await;
    assert_eq!((at.status, at.replayed), (202, false));
    // The same instant, written another way, is the same command.
    let same = post_keyed(
        &app,
        "/api/v1/timestamp/2009-09-28T21:03:12+02:00",
        Some("at"),
    )
    .await;
    assert_eq!(
        (same.status, &same.body, same.replayed),
        (202, &at.body, true)
    );

    for path in [
        "/api/v1/timestamp/2009-09-28T19:03:13Z",
        "/api/v1/timestamp",
        "/app",
    ] {
        let refused = post_keyed(&app, path, Some("at")).await;
        assert_eq!(
            (refused.status, refused.error()),
            (422, "idempotency_key_reused"),
            "{path}: {:?}",
            refused.body
        );
        let message = refused.body["message"].as_str().unwrap();
        assert!(
            message.contains("2009-09-28T19:03:12Z"),
            "the message names the first timestamp: {message}"
        );
    }

    // A key first used for "now" stays "now", on either route.
    let now = post_keyed(&app, "/app", Some("now")).await;
    assert_eq!(now.status, 200);
    let versioned = post_keyed(&app, "/api/v1/timestamp", Some("now")).await;
    assert_eq!(
        (versioned.status, versioned.id(), versioned.replayed),
        (202, now.id(), true)
    );
    let refused = post_keyed(&app, "/api/v1/timestamp/2009-09-28T19:03:12Z", Some("now")).await;
    assert_eq!(
        (refused.status, refused.error()),
        (422, "idempotency_key_reused")
    );

    // A bad timestamp is a bad timestamp, key or not, and claims nothing.
    let bad = post_keyed(&app, "/api/v1/timestamp/yesterday", Some("bad-ts")).await;
    assert_eq!((bad.status, bad.error()), (400, "invalid_timestamp"));
    assert!(
        key_row(app.settings.database_url.expose(), "bad-ts")
            .await
            .is_none()
    );

    let ids: HashSet<String> = read_topic(&app.settings.kafka_topic)
        .await
        .iter()
        .map(|m| describe(m).1)
        .collect();
    assert_eq!(
        ids,
        HashSet::from([at.id().to_string(), now.id().to_string()]),
        "a refused request produces nothing"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn malformed_idempotency_keys_get_400_and_nothing_is_produced() {
    let app = TestApp::spawn().await;
    let long = "k".repeat(129);
    let bad: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        long.into_bytes(),
        b"has space".to_vec(),
        b"a/b".to_vec(),
        b"a,b".to_vec(),
        b"semi;colon".to_vec(),
        b"caf\xc3\xa9".to_vec(),
        b"\xff".to_vec(),
    ];
    for path in [
        "/api/v1/timestamp",
        "/api/v1/timestamp/2009-09-28T19:03:12Z",
        "/app",
    ] {
        for key in &bad {
            let value = reqwest::header::HeaderValue::from_bytes(key).unwrap();
            let response = app
                .http
                .post(format!("{}{path}", app.command_url()))
                .header("Idempotency-Key", value)
                .send()
                .await
                .unwrap();
            let answer = answer(response).await;
            let what = format!("{path} {:?}", String::from_utf8_lossy(key));
            assert_eq!(answer.status, 400, "{what}");
            assert_eq!(answer.error(), "invalid_idempotency_key", "{what}");
            assert!(
                answer.body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Idempotency-Key")),
                "{what}: {:?}",
                answer.body
            );
        }
        // Two keys would name two commands.
        let response = app
            .http
            .post(format!("{}{path}", app.command_url()))
            .header("Idempotency-Key", "one")
            .header("Idempotency-Key", "two")
            .send()
            .await
            .unwrap();
        let answer = answer(response).await;
        assert_eq!(
            (answer.status, answer.error()),
            (400, "invalid_idempotency_key")
        );
    }
    assert!(read_topic(&app.settings.kafka_topic).await.is_empty());
    assert_eq!(
        count(
            app.settings.database_url.expose(),
            "SELECT count(*) AS n FROM idempotency_keys"
        )
        .await,
        0
    );

    // The limits themselves are accepted.
    for key in ["k", &"k".repeat(128), "AZaz09._:-"] {
        let answer = post_keyed(&app, "/api/v1/timestamp", Some(key)).await;
        assert_eq!(answer.status, 202, "{key}");
    }
    assert_eq!(read_topic(&app.settings.kafka_topic).await.len(), 3);
    app.stop().await;
}

/// The answer is stored only after the record is in the log: when storing
/// fails, the request answers 503 and the retry produces the same command
/// again. The log then holds it twice, identical; the view one row.
#[actix_rt::test]
async fn a_503_after_the_record_was_produced_is_retried_with_the_same_id_and_timestamp() {
    let app = TestApp::spawn().await;
    let database_url = app.settings.database_url.clone();
    execute(
        database_url.expose(),
        "CREATE FUNCTION refuse_update() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
    )
    .await;
    execute(
        database_url.expose(),
        "CREATE TRIGGER refuse_update BEFORE UPDATE ON idempotency_keys \
         FOR EACH ROW EXECUTE FUNCTION refuse_update()",
    )
    .await;

    let failed = post_keyed(&app, "/api/v1/timestamp", Some("twice")).await;
    assert_eq!(
        (failed.status, failed.error()),
        (503, "unavailable"),
        "{:?}",
        failed.body
    );
    let pending = key_row(database_url.expose(), "twice").await.unwrap();
    assert_eq!((pending.partition, pending.log_offset), (None, None));
    let value = value_of(pending.command_id, &pending.event_timestamp);
    let records = read_topic(&app.settings.kafka_topic).await;
    assert_eq!(
        records.len(),
        1,
        "the record was produced before the store failed"
    );
    assert_eq!(describe(&records[0]).2, value);

    execute(
        database_url.expose(),
        "DROP TRIGGER refuse_update ON idempotency_keys",
    )
    .await;
    let retried = post_keyed(&app, "/app", Some("twice")).await;
    assert_eq!(
        (retried.status, retried.id(), retried.replayed),
        (200, pending.command_id, false),
        "the retry produces the stored command, not a new one"
    );
    let replay = post_keyed(&app, "/api/v1/timestamp", Some("twice")).await;
    assert_eq!(
        (replay.status, replay.id(), replay.replayed),
        (202, pending.command_id, true)
    );
    let (partition, offset) = replay.place();

    let records = read_topic(&app.settings.kafka_topic).await;
    assert_eq!(records.len(), 2, "the command is in the log twice");
    for record in &records {
        let (at, key, record_value, _) = describe(record);
        assert_eq!(
            (at, key, record_value),
            (partition, pending.command_id.to_string(), value.clone()),
            "both copies carry the same key and value"
        );
    }
    assert_eq!(
        records.iter().map(|r| r.offset()).max(),
        Some(offset),
        "the answer names the copy the retry produced"
    );
    wait_for_projection(&app).await;
    assert_eq!(
        app.row_ids().await,
        vec![pending.command_id],
        "one row in the view"
    );
    app.stop().await;
}

/// A broker that refuses the record: 503, nothing in the log, and the retry
/// produces the command the first request claimed.
#[actix_rt::test]
async fn a_503_from_the_broker_leaves_the_key_pending_and_the_retry_produces_its_command() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).expect("mock cluster");
    let mut settings = settings(&create_database().await);
    settings.kafka_brokers = mock.bootstrap_servers();
    settings.delivery_timeout = Duration::from_secs(2);
    for topic in [settings.kafka_topic.clone(), settings.dead_letter_topic()] {
        mock.create_topic(&topic, 3, 1).expect("topic");
    }
    let app = TestApp::spawn_with(settings.clone(), &[Role::Command]).await;
    // The producer's first record waits for its producer id.
    let warm = post_keyed(&app, "/api/v1/timestamp", None).await;
    assert_eq!(warm.status, 202);

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let refused = post_keyed(&app, "/app", Some("refused-once")).await;
    assert_eq!(
        (refused.status, refused.error()),
        (503, "unavailable"),
        "{:?}",
        refused.body
    );
    let pending = key_row(settings.database_url.expose(), "refused-once")
        .await
        .unwrap();
    assert_eq!((pending.partition, pending.log_offset), (None, None));

    // librdkafka keeps refusing the topic until it refreshes its metadata:
    // the client retries as long as it gets 503s.
    let retried = eventually("a retry is accepted", || async {
        let answer = post_keyed(&app, "/api/v1/timestamp", Some("refused-once")).await;
        if answer.status == 202 {
            return Some(answer);
        }
        assert_eq!((answer.status, answer.error()), (503, "unavailable"));
        None
    })
    .await;
    assert_eq!(
        (retried.status, retried.id(), retried.replayed),
        (202, pending.command_id, false)
    );
    let records = read_all(&settings.kafka_brokers, &settings.kafka_topic).await;
    let in_log: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let (_, key, value, _) = describe(r);
            (key, value)
        })
        .collect();
    assert_eq!(
        in_log.len(),
        2,
        "the warm-up and the retried command, once: {in_log:?}"
    );
    assert!(in_log.contains(&(
        pending.command_id.to_string(),
        value_of(pending.command_id, &pending.event_timestamp)
    )));
    app.stop().await;
}

/// A request that claimed a key and died before producing left it pending:
/// the next request produces the command it claimed.
#[actix_rt::test]
async fn a_key_left_pending_by_a_dead_owner_is_produced_with_its_id_and_timestamp() {
    let app = TestApp::spawn().await;
    let (id, at) = (Uuid::new_v4(), "2011-11-11 11:11:11.111111+00");
    execute(
        app.settings.database_url.expose(),
        &format!(
            "INSERT INTO idempotency_keys (key, command_id, event_timestamp) \
             VALUES ('orphan', '{id}', '{at}')"
        ),
    )
    .await;
    let answer = post_keyed(&app, "/api/v1/timestamp", Some("orphan")).await;
    assert_eq!(
        (answer.status, answer.id(), answer.replayed),
        (202, id, false)
    );
    let row = app.wait_visible(id).await;
    assert_eq!(row["event_timestamp"], json!("2011-11-11T11:11:11.111111Z"));
    app.stop().await;
}

/// Connections of `database_url`'s database waiting for a lock.
async fn lock_waiters(database_url: &str) -> i64 {
    let name = database_url.rsplit('/').next().unwrap();
    count(
        database_url,
        &format!(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = '{name}' AND wait_event_type = 'Lock'"
        ),
    )
    .await
}

/// Requests with a key that another request holds wait for it, then answer
/// with its command; when the holder dies, they take the key over; when it
/// holds the key too long, they answer 503 and produce nothing.
#[actix_rt::test]
async fn a_request_waits_for_the_holder_of_its_key_and_takes_over_when_it_dies() {
    let mut settings = settings(&create_database().await);
    settings.delivery_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings, &[]).await;
    let database_url = app.settings.database_url.clone();
    let id = Uuid::new_v4();
    execute(
        database_url.expose(),
        &format!(
            "INSERT INTO idempotency_keys (key, command_id, event_timestamp) \
             VALUES ('held', '{id}', now())"
        ),
    )
    .await;

    // A holder that never answers: the request gives up after the wait
    // (delivery timeout + 2 s) with a 503 and produces nothing.
    let mut holder = AsyncPgConnection::establish(database_url.expose())
        .await
        .unwrap();
    diesel::sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .unwrap();
    diesel::sql_query("SELECT 1 FROM idempotency_keys WHERE key = 'held' FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let started = Instant::now();
    let gave_up = post_keyed(&app, "/api/v1/timestamp", Some("held")).await;
    let waited = started.elapsed();
    assert_eq!(
        (gave_up.status, gave_up.error()),
        (503, "unavailable"),
        "{:?}",
        gave_up.body
    );
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(8),
        "waited {waited:?}"
    );
    assert!(read_topic(&app.settings.kafka_topic).await.is_empty());

    // A holder that dies while a request waits: the request takes over.
    let waiting = post_keyed(&app, "/api/v1/timestamp", Some("held"));
    let die = async {
        eventually("the request waits for the key's lock", || async {
            (lock_waiters(database_url.expose()).await > 0).then_some(())
        })
        .await;
        drop(holder);
    };
    let (answer, ()) = futures::join!(waiting, die);
    assert_eq!(
        (answer.status, answer.id(), answer.replayed),
        (202, id, false)
    );
    assert_eq!(read_topic(&app.settings.kafka_topic).await.len(), 1);
    app.stop().await;
}

#[actix_rt::test]
async fn keys_expire_after_the_ttl_and_expired_keys_are_purged() {
    let mut settings = settings(&create_database().await);
    settings.idempotency_key_ttl = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings, &[]).await;
    let database_url = app.settings.database_url.clone();
    for key in ["old-1", "old-2", "old-3"] {
        assert_eq!(
            post_keyed(&app, "/api/v1/timestamp", Some(key))
                .await
                .status,
            202
        );
    }
    let first = post_keyed(&app, "/api/v1/timestamp", Some("probe")).await;
    assert_eq!(first.status, 202);

    // Retries within the TTL replay; past it the key is forgotten: a new command.
    let renewed = eventually("the key expires", || async {
        let answer = post_keyed(&app, "/api/v1/timestamp", Some("probe")).await;
        assert_eq!(answer.status, 202);
        if answer.id() == first.id() {
            assert!(answer.replayed);
            return None;
        }
        Some(answer)
    })
    .await;
    assert!(!renewed.replayed);

    // Keyed requests purge what expired; the probe's row is renewed each time.
    eventually("expired keys are purged", || async {
        assert_eq!(
            post_keyed(&app, "/api/v1/timestamp", Some("probe"))
                .await
                .status,
            202
        );
        let left = count(
            database_url.expose(),
            "SELECT count(*) AS n FROM idempotency_keys WHERE key <> 'probe'",
        )
        .await;
        (left == 0).then_some(())
    })
    .await;
    app.stop().await;
}

/// The command role needs its database for keyed commands only: it starts
/// without it, serves unkeyed commands, answers keyed ones 503 without
/// producing, and prepares the store once the database is back.
#[actix_rt::test]
async fn without_its_database_the_command_role_serves_unkeyed_commands_and_refuses_keyed_ones() {
    let pg = PrivatePostgres::start();
    pg.stop();
    let settings = settings(&pg.url());
    let app = TestApp::spawn_with(settings.clone(), &[Role::Command]).await;

    let unkeyed = post_keyed(&app, "/api/v1/timestamp", None).await;
    assert_eq!(unkeyed.status, 202);
    for path in ["/api/v1/timestamp", "/app"] {
        let keyed = post_keyed(&app, path, Some("no-database")).await;
        assert_eq!(
            (keyed.status, keyed.error()),
            (503, "unavailable"),
            "{:?}",
            keyed.body
        );
    }

    pg.start_again();
    let first = eventually(
        "the store is prepared once the database is back",
        || async {
            let answer = post_keyed(&app, "/api/v1/timestamp", Some("no-database")).await;
            (answer.status == 202).then_some(answer)
        },
    )
    .await;

    pg.stop();
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            post_keyed(&app, "/api/v1/timestamp", None).await.status,
            202
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "unkeyed commands do not wait for the database: {:?}",
        started.elapsed()
    );
    let keyed = post_keyed(&app, "/api/v1/timestamp", Some("while-down")).await;
    assert_eq!((keyed.status, keyed.error()), (503, "unavailable"));

    let ids: Vec<String> = read_topic(&settings.kafka_topic)
        .await
        .iter()
        .map(|m| describe(m).1)
        .collect();
    assert_eq!(ids.len(), 22, "1 + 20 unkeyed, 1 keyed: {ids:?}");
    assert_eq!(
        ids.iter()
            .filter(|id| **id == first.id().to_string())
            .count(),
        1,
        "the keyed command once"
    );
    app.stop().await;
}
