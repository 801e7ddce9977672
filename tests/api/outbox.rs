//! The transactional outbox and its relay: commit order against sequence
//! order, rolled-back transactions, one active relay among processes and
//! the takeover when it dies, at least once across kill -9, clean-up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chronolog::config::Role;
use chronolog::domain::CorrelationId;
use chronolog::outbox::{self, Aggregate, NewEvent};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rdkafka::Message;
use serde_json::{Value, json};

use crate::accounts::{
    count, events, header, john, post, shop_app, shop_settings, spawn_command_binary, topic,
};
use crate::helpers::{TestApp, create_database, eventually, read_topic};

async fn connect(database_url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(database_url).await.unwrap()
}

async fn execute(conn: &mut AsyncPgConnection, sql: &str) {
    diesel::sql_query(sql).execute(conn).await.unwrap();
}

/// Appends a product event with an explicit version in `conn`'s open transaction.
async fn append(conn: &mut AsyncPgConnection, product: &str, version: i64) {
    let correlation_id = CorrelationId::parse("outbox-test").unwrap();
    outbox::append(
        conn,
        NewEvent {
            aggregate: Aggregate::Product,
            aggregate_id: product,
            aggregate_version: version,
            event_type: "ProductUpdated",
            correlation_id: &correlation_id,
            data: json!({ "version": version }),
        },
    )
    .await
    .unwrap();
}

/// Versions of `key`'s events on the product topic, in log order.
async fn versions(app: &TestApp, key: &str, n: usize) -> Vec<i64> {
    events(&topic(&app.settings, "shop.product.v1"), key, n)
        .await
        .iter()
        .map(|(_, v)| v["aggregateVersion"].as_i64().unwrap())
        .collect()
}

/// Keys on the product topic.
async fn product_keys(app: &TestApp) -> BTreeSet<String> {
    read_topic(&topic(&app.settings, "shop.product.v1"))
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
        .collect()
}

#[actix_rt::test]
async fn an_aggregate_reaches_the_topic_in_version_order_whatever_the_commit_and_sequence_order() {
    let app = shop_app().await;
    let db = app.settings.database_url.expose().to_owned();
    let (mut first, mut second) = (connect(&db).await, connect(&db).await);

    // Transaction 1 takes the lower id for version 2; transaction 2 the
    // higher id for version 1. Version 2 commits first.
    execute(&mut first, "BEGIN").await;
    append(&mut first, "p-ordered", 2).await;
    execute(&mut second, "BEGIN").await;
    append(&mut second, "p-ordered", 1).await;
    execute(&mut first, "COMMIT").await;

    // A marker committed after version 2: once it is on the topic, the
    // relay has seen version 2 and held it back.
    let mut marker = connect(&db).await;
    append(&mut marker, "p-marker-1", 1).await;
    assert_eq!(versions(&app, "p-marker-1", 1).await, vec![1]);
    assert!(
        !product_keys(&app).await.contains("p-ordered"),
        "version 2 was published before version 1"
    );

    execute(&mut second, "COMMIT").await;
    assert_eq!(versions(&app, "p-ordered", 2).await, vec![1, 2]);

    // A lower id committed after a higher one is not skipped either.
    execute(&mut first, "BEGIN").await;
    append(&mut first, "p-late", 1).await;
    append(&mut second, "p-early", 1).await;
    assert_eq!(versions(&app, "p-early", 1).await, vec![1]);
    execute(&mut first, "COMMIT").await;
    assert_eq!(versions(&app, "p-late", 1).await, vec![1]);
    app.stop().await;
}

#[actix_rt::test]
async fn nothing_of_a_rolled_back_transaction_is_published() {
    let app = shop_app().await;
    let db = app.settings.database_url.expose().to_owned();
    let mut conn = connect(&db).await;
    execute(&mut conn, "BEGIN").await;
    append(&mut conn, "p-rolled-back", 1).await;
    execute(&mut conn, "ROLLBACK").await;
    append(&mut conn, "p-committed", 1).await;
    assert_eq!(versions(&app, "p-committed", 1).await, vec![1]);
    assert_eq!(
        product_keys(&app).await,
        BTreeSet::from(["p-committed".to_owned()])
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM outbox.events").await,
        1
    );
    app.stop().await;
}

fn active(app: &TestApp) -> i64 {
    app.metrics()
        .outbox_relay_active
        .with_label_values(&["accounts_shop"])
        .get()
}

fn published(app: &TestApp) -> u64 {
    app.metrics()
        .outbox_events_published
        .with_label_values(&["customer"])
        .get()
}

#[actix_rt::test]
async fn one_relay_publishes_among_processes_and_another_takes_over_when_it_stops() {
    let first = shop_app().await;
    eventually("the first relay to be active", || async {
        (active(&first) == 1).then_some(())
    })
    .await;
    let second = TestApp::spawn_with(first.settings.clone(), &[Role::Command]).await;
    for id in 1..=20 {
        assert_eq!(
            post(&second, "/accounts/customer/create", john(id))
                .await
                .status,
            200
        );
    }
    let customers = topic(&first.settings, "accounts.customer.change");
    eventually("20 customers published", || async {
        (read_topic(&customers).await.len() == 20).then_some(())
    })
    .await;
    // The second process's relay ran all along, standing by.
    assert_eq!((active(&first), active(&second)), (1, 0));
    assert_eq!((published(&first), published(&second)), (20, 0));

    first.stop().await;
    eventually("the second relay to take over", || async {
        (active(&second) == 1).then_some(())
    })
    .await;
    assert_eq!(
        post(&second, "/accounts/customer/create", john(21))
            .await
            .status,
        200
    );
    assert_eq!(events(&customers, "21", 1).await.len(), 1);
    assert_eq!(published(&second), 1);
    second.stop().await;
}

#[actix_rt::test]
async fn a_relay_killed_mid_publish_loses_nothing_and_another_process_takes_over() {
    let database_url = create_database().await;
    let mut settings = shop_settings(&database_url);
    // One event per round: the relay is still publishing when it is killed.
    settings.outbox_batch_size = 1;
    let log_path =
        std::env::temp_dir().join(format!("chronolog-relay-{}.log", uuid::Uuid::new_v4()));
    let (mut killed, command) = spawn_command_binary(&settings, &log_path, "info").await;
    let http = reqwest::Client::new();
    eventually("the process's relay to be active", || async {
        let metrics = http
            .get(format!("http://{command}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .contains("chronolog_outbox_relay_active{relay=\"accounts_shop\"} 1")
            .then_some(())
    })
    .await;
    // The in-process standby, started second, waits for the lock.
    let standby = TestApp::spawn_with(settings.clone(), &[Role::Command]).await;

    let ids: Vec<i64> = (1..=200).collect();
    let answers = futures::future::join_all(ids.iter().map(|&id| {
        let (http, command) = (http.clone(), command.clone());
        async move {
            http.post(format!("http://{command}/accounts/customer/create"))
                .json(&john(id))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(answers.iter().all(|&s| s == 200), "{answers:?}");
    // Killed while its relay is publishing what was just committed.
    killed.kill();
    let _ = std::fs::remove_file(&log_path);
    let left = count(
        &database_url,
        "SELECT count(*) AS n FROM outbox.events WHERE published_at IS NULL",
    )
    .await;
    assert!(
        left > 0,
        "the relay had published everything before the kill"
    );

    eventually("the standby to take over", || async {
        (active(&standby) == 1).then_some(())
    })
    .await;
    let customers = topic(&settings, "accounts.customer.change");
    let by_key: BTreeMap<String, Vec<Value>> = eventually("every customer published", || async {
        let mut by_key: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for message in read_topic(&customers).await {
            let key = String::from_utf8_lossy(message.key().unwrap()).into_owned();
            assert_eq!(
                header(&message, "eventType").as_deref(),
                Some("CustomerCreated")
            );
            by_key
                .entry(key)
                .or_default()
                .push(serde_json::from_slice(message.payload().unwrap()).unwrap());
        }
        (by_key.len() == ids.len()).then_some(by_key)
    })
    .await;
    let expected: BTreeSet<String> = ids.iter().map(i64::to_string).collect();
    assert_eq!(by_key.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (key, copies) in &by_key {
        // At least once: a copy published again is the same event.
        assert!(copies.iter().all(|c| c == &copies[0]), "{key}: {copies:?}");
        assert_eq!(copies[0]["aggregateVersion"], 1);
    }
    // The standby published at least what the killed relay had not marked.
    assert!(published(&standby) >= left as u64);
    eventually("every event marked published", || async {
        let left = count(
            &database_url,
            "SELECT count(*) AS n FROM outbox.events WHERE published_at IS NULL",
        )
        .await;
        (left == 0).then_some(())
    })
    .await;
    standby.stop().await;
}

#[actix_rt::test]
async fn published_events_are_removed_after_the_retention_and_lag_is_a_metric() {
    let mut settings = shop_settings(&create_database().await);
    settings.outbox_retention = Duration::from_millis(500);
    let app = TestApp::spawn_with(settings, &[Role::Command]).await;
    let db = app.settings.database_url.expose().to_owned();
    assert_eq!(
        post(&app, "/accounts/customer/create", john(5))
            .await
            .status,
        200
    );
    let customers = topic(&app.settings, "accounts.customer.change");
    assert_eq!(events(&customers, "5", 1).await.len(), 1);
    eventually("the published event to be removed", || async {
        (count(&db, "SELECT count(*) AS n FROM outbox.events").await == 0).then_some(())
    })
    .await;
    // The aggregate's version is kept: the next change is version 2.
    assert_eq!(
        post(&app, "/accounts/customer/create", john(5)).await.body,
        json!({"id": 5, "version": 2})
    );
    let metrics = app
        .http
        .get(format!("{}/metrics", app.command_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "chronolog_outbox_relay_lag_seconds{relay=\"accounts_shop\"}",
        "chronolog_outbox_relay_active{relay=\"accounts_shop\"} 1",
        "chronolog_outbox_events_published_total{aggregate=\"customer\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing from {metrics}");
    }
    app.stop().await;
}

#[actix_rt::test]
async fn accounts_and_shop_in_databases_of_their_own_each_get_a_relay() {
    let main = create_database().await;
    let (accounts, shop) = (create_database().await, create_database().await);
    let mut settings = shop_settings(&main);
    settings.accounts_database_url = Some(accounts.parse().unwrap());
    settings.shop_database_url = Some(shop.parse().unwrap());
    let app = TestApp::spawn_with(settings, &[Role::Command]).await;
    assert_eq!(
        post(&app, "/accounts/customer/create", john(8))
            .await
            .status,
        200
    );
    let product = crate::shop::product(&app, "Lamp", json!("5.00"), 1).await;

    let customers = topic(&app.settings, "accounts.customer.change");
    assert_eq!(events(&customers, "8", 1).await.len(), 1);
    let products = topic(&app.settings, "shop.product.v1");
    assert_eq!(events(&products, &product, 1).await.len(), 1);
    for (database, customers, products) in [(&accounts, 1, 0), (&shop, 0, 1)] {
        let rows = (
            count(database, "SELECT count(*) AS n FROM accounts.customers").await,
            count(database, "SELECT count(*) AS n FROM shop.products").await,
            count(database, "SELECT count(*) AS n FROM outbox.events").await,
        );
        assert_eq!(rows, (customers, products, 1));
    }
    let relays = |name: &str| {
        app.metrics()
            .outbox_relay_active
            .with_label_values(&[name])
            .get()
    };
    assert_eq!((relays("accounts"), relays("shop")), (1, 1));
    app.stop().await;
}

#[actix_rt::test]
async fn the_relay_is_woken_by_each_commit_not_by_its_poll() {
    let mut settings = shop_settings(&create_database().await);
    // Only a notification can wake the relay within the test's deadline.
    settings.outbox_poll_interval = Duration::from_secs(3600);
    let app = TestApp::spawn_with(settings, &[Role::Command]).await;
    eventually("the relay to be active", || async {
        (active(&app) == 1).then_some(())
    })
    .await;
    let customers = topic(&app.settings, "accounts.customer.change");
    for id in [61, 62, 63] {
        assert_eq!(
            post(&app, "/accounts/customer/create", john(id))
                .await
                .status,
            200
        );
        assert_eq!(events(&customers, &id.to_string(), 1).await.len(), 1);
    }
    app.stop().await;
}
