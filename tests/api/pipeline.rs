//! The whole pipeline under load and across consumer restarts: every
//! accepted id ends up in the view exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chronolog::config::Role;
use rdkafka::mocking::MockCluster;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    TestApp, create_database, eventually, post_many, produce_raw, row_ids, settings,
    start_consumer, wait_for_exact_ids,
};

#[actix_rt::test]
async fn a_thousand_and_one_commands_become_exactly_those_rows() {
    let app = TestApp::spawn().await;
    let ids = post_many(&app, 1001, Arc::default()).await;
    assert_eq!(ids.len(), 1001, "every accepted id is fresh");
    wait_for_exact_ids(app.settings.database_url.expose(), &ids).await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_record_delivered_twice_is_one_row_and_is_not_overwritten() {
    let app = TestApp::spawn().await;
    let topic = app.settings.kafka_topic.clone();
    let id = Uuid::new_v4().to_string();
    let original = format!(r#"{{"command_id":"{id}","event_timestamp":"2009-09-28T19:03:12Z"}}"#);
    produce_raw(&topic, Some(0), Some(&id), original.as_bytes(), None).await;
    let first = app.wait_visible(id.parse().unwrap()).await;

    // The same record again, and a conflicting one with the same id.
    produce_raw(&topic, Some(0), Some(&id), original.as_bytes(), None).await;
    let conflicting =
        format!(r#"{{"command_id":"{id}","event_timestamp":"2020-01-01T00:00:00Z"}}"#);
    produce_raw(&topic, Some(0), Some(&id), conflicting.as_bytes(), None).await;
    // Order within a partition: once this one is visible, both were applied.
    let sentinel = Uuid::new_v4();
    let sentinel_value =
        format!(r#"{{"command_id":"{sentinel}","event_timestamp":"2009-09-28T19:03:12Z"}}"#);
    produce_raw(
        &topic,
        Some(0),
        Some(&sentinel.to_string()),
        sentinel_value.as_bytes(),
        None,
    )
    .await;
    app.wait_visible(sentinel).await;

    let again = app.wait_visible(id.parse().unwrap()).await;
    assert_eq!(again, first, "the first version stays, created_at included");
    assert_eq!(again["event_timestamp"], json!("2009-09-28T19:03:12Z"));
    let mut ids = app.row_ids().await;
    ids.sort();
    let mut expected = vec![id.parse().unwrap(), sentinel];
    expected.sort();
    assert_eq!(ids, expected);
    app.stop().await;
}

#[actix_rt::test]
async fn two_records_with_one_id_in_one_batch_make_one_row_the_first_one() {
    let database_url = create_database().await;
    let settings = settings(&database_url);
    // The command role creates the topic.
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command, Role::Query]).await;
    let (id, sentinel) = (Uuid::new_v4(), Uuid::new_v4());
    // In the log before the consumer starts, so that one fetch brings all
    // three and one statement inserts them.
    for (command_id, at) in [
        (id, "2009-09-28T19:03:12Z"),
        (id, "2020-01-01T00:00:00Z"),
        (sentinel, "2009-09-28T19:03:12Z"),
    ] {
        let value = format!(r#"{{"command_id":"{command_id}","event_timestamp":"{at}"}}"#);
        let key = command_id.to_string();
        produce_raw(
            &settings.kafka_topic,
            Some(0),
            Some(&key),
            value.as_bytes(),
            None,
        )
        .await;
    }
    let consumer = start_consumer(&settings).await;
    front.wait_visible(sentinel).await;
    // Stopping drains the writer, so that its counters are final.
    let m = consumer.metrics();
    consumer.stop().await;
    assert_eq!(
        m.db_transactions.with_label_values(&["committed"]).get(),
        1,
        "the three records came in one batch"
    );
    assert_eq!(
        m.db_rows_written.get(),
        2,
        "the second record inserted nothing"
    );
    assert_eq!(m.db_records_skipped.get(), 0);
    let row = front.wait_visible(id).await;
    assert_eq!(
        row["event_timestamp"],
        json!("2009-09-28T19:03:12Z"),
        "the first one stays"
    );
    let mut ids = row_ids(&database_url).await;
    ids.sort();
    let mut expected = vec![id, sentinel];
    expected.sort();
    assert_eq!(ids, expected);
    front.stop().await;
}

#[actix_rt::test]
async fn stopping_the_consumer_mid_stream_and_starting_it_again_loses_and_doubles_nothing() {
    let database_url = create_database().await;
    let settings = settings(&database_url);
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command, Role::Query]).await;
    let consumer = start_consumer(&settings).await;
    let accepted = Arc::new(AtomicUsize::new(0));

    // Commands flow while the consumer projects; it is stopped once part of
    // them are in the view.
    let stop = async {
        eventually("some rows projected", || async {
            (row_ids(&database_url).await.len() >= 200).then_some(())
        })
        .await;
        consumer.stop().await;
        row_ids(&database_url).await.len()
    };
    let (mut ids, projected_when_stopped) =
        futures::join!(post_many(&front, 900, accepted.clone()), stop);
    // Commands go on while no consumer runs: they pile up in the log. (Each
    // phase has its own commands: had the first phase ended before the stop,
    // waiting on it for more commands would have waited forever.)
    ids.extend(post_many(&front, 300, accepted.clone()).await);
    assert_eq!(
        row_ids(&database_url).await.len(),
        projected_when_stopped,
        "nothing is projected while the consumer is stopped"
    );
    // A new consumer starts on the backlog while commands keep coming.
    let (more, restarted) = futures::join!(
        post_many(&front, 300, accepted.clone()),
        start_consumer(&settings)
    );
    ids.extend(more);
    assert_eq!(ids.len(), 1500);
    assert_eq!(accepted.load(Ordering::SeqCst), 1500);
    wait_for_exact_ids(&database_url, &ids).await;
    restarted.stop().await;
    front.stop().await;
}

#[actix_rt::test]
async fn a_command_the_broker_does_not_acknowledge_is_503_never_202_and_all_resumes_after() {
    let mock = MockCluster::new(1).expect("mock cluster");
    let mut settings = settings(&create_database().await);
    settings.kafka_brokers = mock.bootstrap_servers();
    settings.delivery_timeout = std::time::Duration::from_secs(1);
    for topic in [settings.kafka_topic.clone(), settings.dead_letter_topic()] {
        mock.create_topic(&topic, 3, 1).expect("topic");
    }
    let app = TestApp::spawn_with(settings, &[]).await;
    let before = app.accept(Some("2009-09-28T19:03:12Z")).await;
    app.wait_visible(before).await;

    mock.broker_down(1).expect("broker down");
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let response = app.post(Some("2009-09-28T19:03:12Z"), None).await;
        let took = started.elapsed();
        assert_eq!(response.status().as_u16(), 503);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], json!("unavailable"));
        assert!(
            took < std::time::Duration::from_secs(3),
            "answered within the delivery timeout, took {took:?}"
        );
    }

    mock.broker_up(1).expect("broker up");
    let after = eventually("ingestion resumes after the broker is back", || async {
        let response = app.post(Some("2006-01-02T15:04:05Z"), None).await;
        if response.status().as_u16() != 202 {
            return None;
        }
        let body: serde_json::Value = response.json().await.ok()?;
        body["id"].as_str()?.parse::<Uuid>().ok()
    })
    .await;
    assert_eq!(
        app.wait_visible(after).await["event_timestamp"],
        json!("2006-01-02T15:04:05Z"),
        "consumption resumes too"
    );
    app.stop().await;
}
