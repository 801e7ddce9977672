//! The shop end to end in a running service: accounts' events reach shop's
//! copy of the customer through the log (event-carried state transfer), and
//! the outbox's events build the read views the query API serves.

use serde_json::{Value, json};

use crate::accounts::{Answer, count, header, john, post, shop_settings, topic};
use crate::helpers::{TestApp, create_database, eventually, produce_raw, read_topic, run_rebuild};
use crate::shop::{order, product};
use crate::shop_views::view_tables;

/// `GET path` on the query port once `ready` holds for its answer.
async fn query_until(
    app: &TestApp,
    path: &str,
    what: &str,
    ready: impl Fn(&Answer) -> bool,
) -> Answer {
    let url = format!("{}{path}", app.query_url());
    eventually(what, || async {
        let response = app.http.get(&url).send().await.ok()?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let answer = Answer { status, body };
        ready(&answer).then_some(answer)
    })
    .await
}

/// An order for `customer`, retried while shop has no copy of the customer yet.
async fn order_once_known(app: &TestApp, customer: i64, items: &[(&str, i64)]) -> Answer {
    eventually("shop has a copy of the customer", || async {
        let placed = order(app, customer, items).await;
        (placed.status != 422).then_some(placed)
    })
    .await
}

fn shipping(city: &str, address1: &str) -> Value {
    json!({"type": "SHIPPING", "description": "My home address", "address1": address1,
           "address2": null, "city": city, "state": "CA", "postalCode": "12345"})
}

#[actix_rt::test]
async fn a_customer_created_in_accounts_can_order_in_shop_and_the_views_show_it() {
    let app = TestApp::spawn_with(shop_settings(&create_database().await), &[]).await;
    let kettle = product(&app, "Kettle", json!("19.99"), 5).await;

    // Before accounts has the customer, shop has no copy.
    let early = order(&app, 123456, &[(&kettle, 1)]).await;
    assert_eq!(
        (early.status, &early.body["error"]),
        (422, &json!("unknown_customer"))
    );

    let created = post(&app, "/accounts/customer/create", john(123456)).await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let first = order_once_known(&app, 123456, &[(&kettle, 2)]).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(
        first.body["shippingAddress"],
        shipping("Sunrise", "123 Oak Street")
    );
    let first_id = first.body["orderId"].as_str().unwrap().to_owned();

    // The customer moves: later orders ship to the new address once the
    // event arrives, the first order keeps its own.
    let mut moved = john(123456);
    moved["addresses"][1]["address1"] = json!("9 Elm Street");
    moved["addresses"][1]["city"] = json!("Sunset");
    let updated = post(&app, "/accounts/customer/create", moved).await;
    assert_eq!(
        (updated.status, &updated.body),
        (200, &json!({"id": 123456, "version": 2}))
    );
    let db = app.settings.database_url.expose().to_owned();
    eventually("version 2 of the customer reaches shop's copy", || async {
        let sql = "SELECT count(*) AS n FROM shop.customers WHERE id = 123456 AND version = 2";
        (count(&db, sql).await == 1).then_some(())
    })
    .await;
    let second = order(&app, 123456, &[(&kettle, 1)]).await;
    assert_eq!(second.status, 201, "{:?}", second.body);
    assert_eq!(
        second.body["shippingAddress"],
        shipping("Sunset", "9 Elm Street")
    );
    let second_id = second.body["orderId"].as_str().unwrap().to_owned();

    // The read side: the customer's orders, each with its own address.
    let customer = query_until(
        &app,
        "/orders/order/123456",
        "both orders in the view",
        |a| a.status == 200 && a.body["orders"].as_array().map(Vec::len) == Some(2),
    )
    .await;
    assert_eq!(customer.body["customerId"], 123456);
    assert_eq!(
        customer.body["shippingAddress"],
        shipping("Sunset", "9 Elm Street")
    );
    let cities: Vec<(&str, &Value)> = customer.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["orderId"].as_str().unwrap(),
                &o["shippingAddress"]["city"],
            )
        })
        .collect();
    assert_eq!(
        cities,
        [
            (second_id.as_str(), &json!("Sunset")),
            (first_id.as_str(), &json!("Sunrise"))
        ],
        "newest first, each with the address it shipped to"
    );
    let one = query_until(
        &app,
        &format!("/api/v1/orders/{first_id}"),
        "the first order in the view",
        |a| a.status == 200,
    )
    .await;
    assert_eq!(
        one.body["shippingAddress"],
        shipping("Sunrise", "123 Oak Street")
    );
    assert_eq!(one.body["totalPrice"], "39.98");
    let stocked = query_until(
        &app,
        &format!("/api/v1/products/{kettle}"),
        "the product's stock in the view",
        |a| a.status == 200 && a.body["stock"] == json!(5 - 3),
    )
    .await;
    assert_eq!(
        stocked.body,
        json!({"productId": kettle, "name": "Kettle", "price": "19.99", "stock": 2, "stockStatus": true})
    );
    let sales = query_until(
        &app,
        &format!("/api/v1/products/{kettle}/sales"),
        "both sales in the view",
        |a| a.status == 200 && a.body.as_array().map(Vec::len) == Some(2),
    )
    .await;
    let mut sold: Vec<i64> = sales
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["quantitySold"].as_i64().unwrap())
        .collect();
    sold.sort_unstable();
    assert_eq!(sold, [1, 2]);

    // Thrown away and rebuilt from the log: the same views.
    let live = view_tables(&db).await;
    assert_eq!(live["orders"].as_array().map(Vec::len), Some(2));
    let settings = app.settings.clone();
    app.stop().await;
    let empty = create_database().await;
    let rebuilt = run_rebuild(&settings, &empty, &[]).await;
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert_eq!(view_tables(&empty).await, live);
}

#[actix_rt::test]
async fn hostile_customer_events_are_dead_lettered_and_stale_ones_change_nothing() {
    let app = TestApp::spawn_with(shop_settings(&create_database().await), &[]).await;
    let db = app.settings.database_url.expose().to_owned();
    let accounts = topic(&app.settings, "accounts.customer.change");
    let created = post(&app, "/accounts/customer/create", john(4242)).await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let mut moved = john(4242);
    moved["addresses"][1]["city"] = json!("Sunset");
    let updated = post(&app, "/accounts/customer/create", moved).await;
    assert_eq!(updated.body["version"], 2);
    let copy = "SELECT count(*) AS n FROM shop.customers WHERE id = 4242 AND version = 2";
    eventually("version 2 in shop's copy", || async {
        (count(&db, copy).await == 1).then_some(())
    })
    .await;

    // Version 1 again (an old event produced late), then hostile records,
    // all on the customer's partition, then a good event for another
    // customer behind them.
    let envelope = |id: &str, version: i64, city: &str| {
        let mut data = john(id.parse().unwrap_or(1));
        data["addresses"][1]["city"] = json!(city);
        json!({"eventId": uuid::Uuid::new_v4(), "type": "CustomerUpdated", "version": 1,
               "aggregateId": id, "aggregateVersion": version,
               "occurredAt": "2026-12-04T10:00:00Z", "data": data})
        .to_string()
    };
    let (partition, stale_offset) = produce_raw(
        &accounts,
        None,
        Some("4242"),
        envelope("4242", 1, "Stale").as_bytes(),
        None,
    )
    .await;
    let hostile: [(&str, String, &str); 6] = [
        (
            "4242",
            envelope("4242", 0, "Zero"),
            "aggregateVersion 0 is not positive",
        ),
        (
            "4242",
            "not json".to_owned(),
            "the value is not an event envelope",
        ),
        (
            "4243",
            envelope("4242", 3, "Elsewhere"),
            "the record's key is not the event's aggregateId",
        ),
        (
            "4242",
            envelope("-4242", 3, "Negative"),
            "the record's key is not the event's aggregateId",
        ),
        (
            "4242",
            envelope("4242", 3, "x")
                .replace("\"addresses\"", "\"addresses_\"")
                .replace("\"name\"", "\"nom\""),
            "missing field `name`",
        ),
        (
            "4242",
            envelope("4242", 3, "Nul").replace("\"John\"", "\"Jo\\u0000hn\""),
            "NUL character",
        ),
    ];
    let mut offsets = Vec::new();
    for (key, value, _) in &hostile {
        let (p, offset) = produce_raw(
            &accounts,
            Some(partition),
            Some(key),
            value.as_bytes(),
            None,
        )
        .await;
        assert_eq!(p, partition);
        offsets.push(offset);
    }
    let (_, good_offset) = produce_raw(
        &accounts,
        Some(partition),
        Some("777"),
        envelope("777", 1, "Goodtown").as_bytes(),
        None,
    )
    .await;

    // The good event behind them arrives: nothing stopped the partition.
    let good = "SELECT count(*) AS n FROM shop.customers WHERE id = 777 AND version = 1";
    eventually(
        "the good event behind the hostile ones is applied",
        || async { (count(&db, good).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(count(&db, copy).await, 1, "the stale event changed nothing");
    let stale_city = "SELECT count(*) AS n FROM shop.customer_addresses \
                      WHERE customer_id = 4242 AND city IN ('Stale', 'Zero', 'Elsewhere', 'x')";
    assert_eq!(count(&db, stale_city).await, 0);
    assert!(good_offset > stale_offset);

    // Each hostile record is in the topic's dead-letter topic, once, with
    // its reason and place in the log (shop's copy and the views both
    // refuse it: one dead letter per consumer group).
    let letters = read_topic(&format!("{accounts}.dlq")).await;
    for ((_, _, error), offset) in hostile.iter().zip(&offsets) {
        let found: Vec<_> = letters
            .iter()
            .filter(|m| header(m, "dlq.source.offset") == Some(offset.to_string()))
            .collect();
        assert!(
            !found.is_empty(),
            "no dead letter for offset {offset} ({error})"
        );
        for letter in found {
            assert_eq!(
                header(letter, "dlq.reason").as_deref(),
                Some("invalid_event")
            );
            assert_eq!(
                header(letter, "dlq.source.partition"),
                Some(partition.to_string())
            );
            assert!(
                header(letter, "dlq.error").is_some_and(|e| e.contains(error)),
                "{:?} does not say {error}",
                header(letter, "dlq.error")
            );
        }
    }
    let ready = app
        .http
        .get(format!("{}/ready", app.query_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["components"]["shop_customer_copy"]["status"], "UP");
    assert_eq!(ready["components"]["shop_view_customer"]["status"], "UP");
    app.stop().await;
}
