//! Faults survived with nothing lost or doubled, poison records,
//! and disaster recovery: every test ends by asserting the exact id set.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chronolog::config::Role;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    PrivatePostgres, TestApp, create_database, eventually, post_many, produce_raw, read_topic,
    row_ids, run_rebuild, settings, spawn_consumer_process, spawn_consumer_process_with,
    start_consumer, view_checksum, wait_for_exact_ids,
};

fn good_value(id: Uuid) -> String {
    format!(r#"{{"command_id":"{id}","event_timestamp":"2009-09-28T19:03:12Z"}}"#)
}

#[actix_rt::test]
async fn disaster_recovery_rebuilds_the_same_view_from_the_log() {
    let app = TestApp::spawn().await;
    let ids = post_many(&app, 1001, Arc::default()).await;
    wait_for_exact_ids(app.settings.database_url.expose(), &ids).await;
    let before = view_checksum(app.settings.database_url.expose()).await;
    assert_eq!(before.0, 1001);

    // Into a new database, while the live consumer keeps serving its own.
    let fresh = create_database().await;
    let output = run_rebuild(&app.settings, &fresh, &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rebuild failed: {stderr}");
    assert!(
        stderr.contains("rebuild: 1001/1001 records (100.0%)"),
        "{stderr}"
    );
    assert!(stderr.contains("records/s, ETA"), "{stderr}");
    assert_eq!(
        view_checksum(&fresh).await,
        before,
        "the rebuilt view equals the original"
    );

    // Into the live database, after its table was lost.
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    diesel::sql_query("TRUNCATE timestamp_records")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(view_checksum(app.settings.database_url.expose()).await.0, 0);
    let output = run_rebuild(&app.settings, app.settings.database_url.expose(), &[]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        view_checksum(app.settings.database_url.expose()).await,
        before
    );
    app.stop().await;
}

#[actix_rt::test]
async fn poison_records_go_to_the_dead_letter_topic_and_the_good_ones_around_them_are_projected() {
    let app = TestApp::spawn().await;
    let topic = app.settings.kafka_topic.clone();
    let key = Uuid::new_v4().to_string();
    let poison: Vec<(Option<String>, Vec<u8>, &str)> = vec![
        (None, b"not json".to_vec(), "not_json"),
        (
            Some(key.clone()),
            br#"{"event_timestamp":"2009-09-28T19:03:12Z"}"#.to_vec(),
            "missing_field",
        ),
        (
            None,
            br#"{"command_id":"nope","event_timestamp":"2009-09-28T19:03:12Z"}"#.to_vec(),
            "invalid_id",
        ),
        (
            None,
            format!(r#"{{"command_id":"{key}","event_timestamp":"2009-09-28T25:03:12Z"}}"#)
                .into_bytes(),
            "invalid_timestamp",
        ),
        (
            Some(Uuid::new_v4().to_string()),
            good_value(Uuid::new_v4()).into_bytes(),
            "key_mismatch",
        ),
        (None, Vec::new(), "empty_value"),
    ];
    let mut good = HashSet::new();
    let mut expected_dead = Vec::new();
    for (i, (key, value, reason)) in poison.iter().enumerate() {
        let id = Uuid::new_v4();
        produce_raw(
            &topic,
            Some(0),
            Some(&id.to_string()),
            good_value(id).as_bytes(),
            None,
        )
        .await;
        good.insert(id);
        let correlation = format!("poison-{i}");
        let (partition, offset) =
            produce_raw(&topic, Some(0), key.as_deref(), value, Some(&correlation)).await;
        expected_dead.push((
            key.clone(),
            value.clone(),
            *reason,
            partition,
            offset,
            correlation,
        ));
    }
    let last = Uuid::new_v4();
    produce_raw(
        &topic,
        Some(0),
        Some(&last.to_string()),
        good_value(last).as_bytes(),
        None,
    )
    .await;
    good.insert(last);

    wait_for_exact_ids(app.settings.database_url.expose(), &good).await;
    let dead = read_topic(&app.settings.dead_letter_topic()).await;
    assert_eq!(dead.len(), expected_dead.len());
    for (key, value, reason, partition, offset, correlation) in expected_dead {
        let header = |m: &rdkafka::message::OwnedMessage, name: &str| {
            m.headers().and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let letter = dead
            .iter()
            .find(|m| header(m, "dlq.source.offset") == Some(offset.to_string()))
            .unwrap_or_else(|| panic!("no dead letter for offset {offset}"));
        assert_eq!(
            letter.key(),
            key.as_deref().map(str::as_bytes),
            "original key"
        );
        assert_eq!(
            letter.payload().unwrap_or_default(),
            value.as_slice(),
            "original value"
        );
        assert_eq!(header(letter, "dlq.reason").as_deref(), Some(reason));
        assert!(header(letter, "dlq.error").is_some_and(|e| !e.is_empty()));
        assert_eq!(header(letter, "dlq.source.topic"), Some(topic.clone()));
        assert_eq!(
            header(letter, "dlq.source.partition"),
            Some(partition.to_string())
        );
        assert_eq!(
            header(letter, "correlationId"),
            Some(correlation),
            "original headers kept"
        );
        assert_eq!(
            app.metrics()
                .dead_letters
                .with_label_values(&[reason])
                .get(),
            1,
            "{reason} counted"
        );
    }
    app.stop().await;
}

/// Runs `work` on a blocking thread with a client of the group (which never
/// joins it) and the topic.
async fn with_group_client<T: Send + 'static>(
    settings: &chronolog::config::Settings,
    work: impl FnOnce(&BaseConsumer, &str) -> T + Send + 'static,
) -> T {
    let (brokers, topic, group) = (
        settings.kafka_brokers.clone(),
        settings.kafka_topic.clone(),
        settings.kafka_group_id.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        work(&consumer, &topic)
    })
    .await
    .unwrap()
}

/// Moves the group's committed Kafka offsets back to the start of every
/// partition, as a Kafka commit that lagged behind the view's would leave them.
async fn rewind_kafka_offsets(settings: &chronolog::config::Settings) {
    with_group_client(settings, move |consumer, topic| {
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(topic, p, Offset::Offset(0))
                .unwrap();
        }
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await;
}

#[actix_rt::test]
async fn an_assignment_resumes_from_the_offsets_stored_with_the_view_not_from_kafka() {
    let database_url = create_database().await;
    let settings = settings(&database_url);
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command, Role::Query]).await;
    let consumer = start_consumer(&settings).await;
    let ids = post_many(&front, 60, Arc::default()).await;
    wait_for_exact_ids(&database_url, &ids).await;
    consumer.stop().await;
    assert_eq!(
        kafka_committed_sum(&settings).await,
        60,
        "leaving the group commits exactly the offsets the view holds"
    );

    rewind_kafka_offsets(&settings).await;
    let consumer = start_consumer(&settings).await;
    let metrics = consumer.metrics();
    // One new record per partition: each partition's consumer must get past
    // everything before it, replayed or not.
    let mut all = ids.clone();
    for partition in 0..3 {
        let id = Uuid::new_v4();
        produce_raw(
            &settings.kafka_topic,
            Some(partition),
            Some(&id.to_string()),
            good_value(id).as_bytes(),
            None,
        )
        .await;
        all.insert(id);
    }
    wait_for_exact_ids(&database_url, &all).await;
    // The rows are visible at the commit, a moment before the writer counts
    // them; stopping drains every batch, so the counters are final after it.
    consumer.stop().await;
    assert_eq!(metrics.db_rows_written.get(), 3);
    assert_eq!(
        metrics.db_records_skipped.get(),
        0,
        "nothing below the stored offsets was read again"
    );
    front.stop().await;
}

#[actix_rt::test]
async fn a_consumer_joining_and_one_leaving_mid_stream_lose_and_double_nothing() {
    let database_url = create_database().await;
    let settings = settings(&database_url);
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command, Role::Query]).await;
    let first = start_consumer(&settings).await;
    let stream = post_many(&front, 3000, Arc::default());
    let churn = async {
        eventually("first consumer projects", || async {
            (row_ids(&database_url).await.len() >= 300).then_some(())
        })
        .await;
        let second = start_consumer(&settings).await;
        eventually("both consumers project", || async {
            (row_ids(&database_url).await.len() >= 1200).then_some(())
        })
        .await;
        first.stop().await;
        second
    };
    let (ids, second) = futures::join!(stream, churn);
    wait_for_exact_ids(&database_url, &ids).await;
    second.stop().await;
    front.stop().await;
}

async fn ready(http: &reqwest::Client, addr: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let response = http
        .get(format!("http://{addr}/ready"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[actix_rt::test]
async fn with_the_database_down_the_consumer_blocks_and_resumes_with_nothing_lost_or_doubled() {
    let pg = PrivatePostgres::start();
    let mut settings = settings(&pg.url());
    settings.database_url = pg.url().parse().unwrap();
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command]).await;
    let consumer = start_consumer(&settings).await;
    let consumer_addr = consumer.consumer_addr().unwrap();
    let metrics = consumer.metrics();
    let restarts = metrics
        .actor_restarts
        .with_label_values(&["db_writer"])
        .get();

    let mut ids = post_many(&front, 200, Arc::default()).await;
    wait_for_exact_ids(&pg.url(), &ids).await;
    assert_eq!(ready(&front.http, consumer_addr).await.0, 200);

    pg.stop();
    // The command side does not need the view: it keeps accepting.
    ids.extend(post_many(&front, 300, Arc::default()).await);
    let (status, body) = eventually("the consumer reports blocked partitions", || async {
        let (status, body) = ready(&front.http, consumer_addr).await;
        (status == 503
            && !body["components"]["partitions"]["blocked"]
                .as_array()?
                .is_empty())
        .then_some((status, body))
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        body["components"]["database"]["status"],
        json!("DOWN"),
        "{body}"
    );
    let blocked: i64 = (0..3)
        .map(|p| {
            metrics
                .partition_blocked
                .with_label_values(&[
                    &settings.kafka_group_id,
                    &settings.kafka_topic,
                    &p.to_string(),
                ])
                .get()
        })
        .sum();
    assert!(blocked >= 1, "the blocked gauge shows it");
    let committed = kafka_committed_sum(&settings).await;
    assert!(
        committed <= 200,
        "no offset advanced past what the view holds: {committed}"
    );

    pg.start_again();
    wait_for_exact_ids(&pg.url(), &ids).await;
    eventually("ready again", || async {
        (ready(&front.http, consumer_addr).await.0 == 200).then_some(())
    })
    .await;
    assert!(
        metrics
            .actor_restarts
            .with_label_values(&["db_writer"])
            .get()
            > restarts,
        "the writer rebuilt its pool"
    );
    consumer.stop().await;
    front.stop().await;
}

/// Sum over partitions of the group's committed Kafka offsets.
async fn kafka_committed_sum(settings: &chronolog::config::Settings) -> i64 {
    with_group_client(settings, move |consumer, topic| {
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum::<i64>()
    })
    .await
}

/// Runs against librdkafka's mock cluster, hosted in this test process and
/// reached by the consumer processes over TCP: tansu 0.6.0's SQLite engine
/// stops serving when a client dies with a request in flight (its storage
/// loop in `tansu-storage/src/service.rs` ends when a reply cannot be sent),
/// so a consumer killed with SIGKILL takes that broker down with it. The
/// processes, the kills and PostgreSQL are real; graceful restarts and
/// rebalances are tested on tansu above.
#[actix_rt::test]
async fn killing_the_consumer_process_ten_times_mid_stream_loses_and_doubles_nothing() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let database_url = create_database().await;
    let mut settings = settings(&database_url);
    settings.kafka_brokers = mock.bootstrap_servers();
    // A killed member's partitions move after its session times out; the
    // mock's group coordinator needs more than its 3 s initial rebalance delay.
    settings.kafka_session_timeout = Duration::from_secs(4);
    for topic in [settings.kafka_topic.clone(), settings.dead_letter_topic()] {
        mock.create_topic(&topic, 3, 1).expect("topic");
    }
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command, Role::Query]).await;
    // Ten rounds of 1,000 commands; each round's consumer is killed at a
    // random moment while it projects, so every kill lands mid-stream.
    let mut ids = HashSet::new();
    for round in 0..10 {
        let mut child = spawn_consumer_process(&settings);
        let before = row_ids(&database_url).await.len();
        let kill = async {
            eventually(&format!("consumer {round} projects"), || async {
                (row_ids(&database_url).await.len() > before).then_some(())
            })
            .await;
            let pause = Duration::from_millis((Uuid::new_v4().as_u128() % 200) as u64);
            tokio::time::sleep(pause).await;
            child.kill();
        };
        let (chunk, ()) = futures::join!(post_many(&front, 1000, Arc::default()), kill);
        ids.extend(chunk);
    }
    assert_eq!(ids.len(), 10_000, "every command accepted with a fresh id");
    let mut last = spawn_consumer_process(&settings);
    wait_for_exact_ids(&database_url, &ids).await;
    last.kill();
    front.stop().await;
}

/// SIGTERM is a bounded shutdown even when the broker is gone: librdkafka's
/// consumer close would otherwise wait for the group coordinator forever.
#[actix_rt::test]
async fn sigterm_with_the_broker_gone_still_exits_within_the_drain_timeout() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let mut settings = settings(&create_database().await);
    settings.kafka_brokers = mock.bootstrap_servers();
    settings.kafka_session_timeout = Duration::from_secs(4);
    for topic in [settings.kafka_topic.clone(), settings.dead_letter_topic()] {
        mock.create_topic(&topic, 3, 1).expect("topic");
    }
    // The view is read before the process could have migrated it.
    chronolog::db::run_migrations(&settings.database_url)
        .await
        .expect("migrated");
    let mut consumer = spawn_consumer_process_with(&settings, &[("DRAIN_TIMEOUT", "3s")]);
    // Let it join and project, then take the broker away.
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command]).await;
    let id = front.accept(None).await;
    wait_for_exact_ids(settings.database_url.expose(), &HashSet::from([id])).await;
    front.stop().await;
    drop(mock);
    let started = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &consumer.child().id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let exit = crate::helpers::wait_for_exit(consumer.child()).await;
    assert!(exit.success(), "{exit}");
    // Drain timeout (3 s) plus the close deadline's margin (5 s) and start-up slack.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}
