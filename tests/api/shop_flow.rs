//! The shop end to end in a running service: accounts' events reach shop's
//! copy of the customer through the log (event-carried state transfer), and
//! the outbox's events build the read views the query API serves.

use serde_json::{Value, json};

use crate::accounts::{Answer, count, john, post, shop_settings};
use crate::helpers::{TestApp, create_database, eventually, run_rebuild};
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
