//! The shop context's command side: products with exact prices and stock,
//! orders that lock, check and decrement stock in one transaction with
//! their events, shop's own customer copy fed by accounts' events.

use std::collections::BTreeMap;

use chronolog::outbox::Envelope;
use chronolog::shop::store::{Applied, apply_customer_event};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::accounts::{Answer, count, delete, events, header, post, shop_app, topic};
use crate::helpers::TestApp;

/// An accounts event as `accounts.customer.change` carries it.
pub fn customer_event(id: i64, version: i64, kind: &str, addresses: Value) -> Envelope {
    Envelope {
        event_id: Uuid::new_v4(),
        event_type: kind.to_owned(),
        version: 1,
        aggregate_id: id.to_string(),
        aggregate_version: version,
        occurred_at: "2026-12-04T10:00:00.000000Z".into(),
        data: json!({
            "id": id,
            "name": {"title": "Ms.", "firstName": "Ada", "middleName": null,
                     "lastName": format!("Lovelace-{version}"), "suffix": null},
            "contact": {"primaryPhone": null, "secondaryPhone": null, "email": "ada@example.com"},
            "addresses": addresses,
            "creditCards": [{"type": "VISA", "number": "************1111"}],
        }),
    }
}

pub fn address(kind: &str, city: &str) -> Value {
    json!({"type": kind, "description": null, "address1": format!("1 {city} Road"),
           "address2": null, "city": city, "state": "CA", "postalCode": "90000"})
}

/// Applies an accounts event to the shop database, as the consumer will.
pub async fn apply(app: &TestApp, event: &Envelope) -> Applied {
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    conn.transaction::<_, chronolog::shop::store::ApplyError, _>(async |conn| {
        apply_customer_event(conn, event).await
    })
    .await
    .unwrap()
}

/// The shop's command side with customer `id` in its copy, shipping to
/// their home.
pub async fn shop_with_customer(id: i64) -> TestApp {
    let app = shop_app().await;
    apply(
        &app,
        &customer_event(
            id,
            1,
            "CustomerCreated",
            json!([address("SHIPPING", "Home")]),
        ),
    )
    .await;
    app
}

/// Creates a product; answers its id.
pub async fn product(app: &TestApp, name: &str, price: Value, stock: i64) -> String {
    let created = post(
        app,
        "/api/v1/products",
        json!({"name": name, "price": price, "stock": stock}),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    created.body["productId"].as_str().unwrap().to_owned()
}

pub async fn order(app: &TestApp, customer: i64, items: &[(&str, i64)]) -> Answer {
    let items: Vec<Value> = items
        .iter()
        .map(|(id, q)| json!({"productId": id, "quantity": q}))
        .collect();
    post(
        app,
        "/api/v1/orders",
        json!({"customerId": customer, "items": items}),
    )
    .await
}

#[derive(QueryableByName)]
struct Stock {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    stock: i32,
}

pub async fn stock(app: &TestApp, product: &str) -> i32 {
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    diesel::sql_query("SELECT stock FROM shop.products WHERE id = $1::uuid")
        .bind::<diesel::sql_types::Text, _>(product)
        .get_result::<Stock>(&mut conn)
        .await
        .unwrap()
        .stock
}

#[actix_rt::test]
async fn products_keep_exact_prices_and_publish_their_changes() {
    let app = shop_app().await;
    let created = post(
        &app,
        "/api/v1/products",
        json!({"name": "Kettle", "price": 19.99, "stock": 3}),
    )
    .await;
    assert_eq!(created.status, 201);
    let id = created.body["productId"].as_str().unwrap().to_owned();
    assert_eq!(
        created.body,
        json!({"productId": id, "name": "Kettle", "price": "19.99", "stock": 3, "stockStatus": true})
    );
    let path = format!("/api/v1/products/{id}");
    let changed = crate::accounts::call(
        &app,
        "PUT",
        &path,
        Some(crate::accounts::Body::Json(
            json!({"price": "21.5", "stock": 0}),
        )),
    )
    .await;
    assert_eq!(
        (changed.status, &changed.body),
        (
            200,
            &json!({"productId": id, "name": "Kettle", "price": "21.50", "stock": 0, "stockStatus": false})
        )
    );
    assert_eq!(delete(&app, &path).await.status, 204);
    assert_eq!(delete(&app, &path).await.status, 404);
    let gone = crate::accounts::call(
        &app,
        "PUT",
        &path,
        Some(crate::accounts::Body::Json(json!({"stock": 1}))),
    )
    .await;
    assert_eq!(
        (gone.status, gone.body["error"].as_str()),
        (404, Some("not_found"))
    );

    let events = events(&topic(&app.settings, "shop.product.v1"), &id, 3).await;
    let seen: Vec<(String, i64)> = events
        .iter()
        .map(|(m, v)| {
            assert_eq!(
                header(m, "eventType"),
                v["type"].as_str().map(str::to_owned)
            );
            (
                v["type"].as_str().unwrap().to_owned(),
                v["aggregateVersion"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("ProductCreated".into(), 1),
            ("ProductUpdated".into(), 2),
            ("ProductDeleted".into(), 3)
        ]
    );
    assert_eq!(events[0].1["data"]["price"], "19.99");
    assert_eq!(events[1].1["data"]["price"], "21.50");
    app.stop().await;
}

#[actix_rt::test]
async fn the_customer_copy_takes_only_newer_versions() {
    let app = shop_app().await;
    let v1 = customer_event(9, 1, "CustomerCreated", json!([address("BILLING", "One")]));
    let v2 = customer_event(9, 2, "CustomerUpdated", json!([address("SHIPPING", "Two")]));
    let v3 = customer_event(
        9,
        3,
        "CustomerUpdated",
        json!([address("SHIPPING", "Three")]),
    );
    assert_eq!(apply(&app, &v1).await, Applied::Applied);
    assert_eq!(apply(&app, &v1).await, Applied::Stale, "a duplicate");
    assert_eq!(apply(&app, &v3).await, Applied::Applied);
    assert_eq!(apply(&app, &v2).await, Applied::Stale, "an older version");

    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    let (version, deleted, addresses) = chronolog::shop::store::customer_copy(&mut conn, 9)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((version, deleted), (3, false));
    assert_eq!(
        addresses
            .iter()
            .map(|a| a.city.as_str())
            .collect::<Vec<_>>(),
        vec!["Three"]
    );

    let gone = customer_event(9, 4, "CustomerDeleted", json!(null));
    let gone = Envelope {
        data: json!({"id": 9}),
        ..gone
    };
    assert_eq!(apply(&app, &gone).await, Applied::Applied);
    // An older creation arriving late does not bring the customer back.
    assert_eq!(apply(&app, &v2).await, Applied::Stale);
    let refused = order(&app, 9, &[(&Uuid::new_v4().to_string(), 1)]).await;
    assert_eq!(
        (refused.status, refused.body["error"].as_str()),
        (422, Some("unknown_customer"))
    );
    let other = customer_event(10, 1, "SomethingElse", json!([]));
    assert_eq!(apply(&app, &other).await, Applied::Ignored);
    app.stop().await;
}

#[actix_rt::test]
async fn an_order_locks_prices_decrements_stock_and_ships_where_the_copy_says() {
    let app = shop_app().await;
    let db = app.settings.database_url.expose().to_owned();
    let kettle = product(&app, "Kettle", json!("19.99"), 5).await;
    let mug = product(&app, "Mug", json!(4.5), 10).await;

    let early = order(&app, 123456, &[(&kettle, 1)]).await;
    assert_eq!(
        (early.status, &early.body["error"], &early.body["field"]),
        (422, &json!("unknown_customer"), &json!("customerId"))
    );
    assert_eq!(count(&db, "SELECT count(*) AS n FROM shop.orders").await, 0);

    let created = customer_event(
        123456,
        1,
        "CustomerCreated",
        json!([address("BILLING", "Billing"), address("SHIPPING", "Home")]),
    );
    assert_eq!(apply(&app, &created).await, Applied::Applied);
    let placed = order(&app, 123456, &[(&kettle, 2), (&mug, 3)]).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let order_id = placed.body["orderId"].as_str().unwrap().to_owned();
    assert_eq!(placed.body["customerId"], 123456);
    assert_eq!(placed.body["totalPrice"], "53.48");
    assert_eq!(
        placed.body["items"],
        json!([
            {"productId": kettle, "productName": "Kettle", "quantity": 2, "price": "19.99"},
            {"productId": mug, "productName": "Mug", "quantity": 3, "price": "4.50"}
        ])
    );
    assert_eq!(placed.body["shippingAddress"], address("SHIPPING", "Home"));
    assert_eq!(
        (stock(&app, &kettle).await, stock(&app, &mug).await),
        (3, 7)
    );

    // A later price does not change the order; a new address ships the
    // next order elsewhere while the first keeps its own.
    let path = format!("/api/v1/products/{kettle}");
    let repriced = crate::accounts::call(
        &app,
        "PUT",
        &path,
        Some(crate::accounts::Body::Json(json!({"price": 25}))),
    )
    .await;
    assert_eq!(repriced.status, 200);
    let moved = customer_event(
        123456,
        2,
        "CustomerUpdated",
        json!([address("SHIPPING", "Away")]),
    );
    assert_eq!(apply(&app, &moved).await, Applied::Applied);
    let second = order(&app, 123456, &[(&kettle, 1)]).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.body["totalPrice"], "25.00");
    assert_eq!(second.body["shippingAddress"]["city"], "Away");
    let first_city = count(
        &db,
        &format!(
            "SELECT count(*) AS n FROM shop.orders WHERE id = '{order_id}' AND ship_city = 'Home'"
        ),
    )
    .await;
    assert_eq!(first_city, 1);
    let first_price = count(
        &db,
        &format!(
            "SELECT count(*) AS n FROM shop.order_items WHERE order_id = '{order_id}' AND price = 19.99"
        ),
    )
    .await;
    assert_eq!(first_price, 1);

    // A customer with only a billing address is shipped there.
    let billing_only = customer_event(
        777,
        1,
        "CustomerCreated",
        json!([address("BILLING", "Bill")]),
    );
    apply(&app, &billing_only).await;
    let billed = order(&app, 777, &[(&mug, 1)]).await;
    assert_eq!(billed.body["shippingAddress"]["type"], "BILLING");

    let orders = events(&topic(&app.settings, "shop.order.v1"), &order_id, 1).await;
    assert_eq!(orders[0].1["type"], "OrderCreated");
    // The order as answered, plus the customer's name as shop's copy
    // held it when the order was placed (the read side's order document
    // shows it).
    let mut expected_data = placed.body.clone();
    expected_data["customerName"] = json!({"title": "Ms.", "firstName": "Ada",
        "middleName": null, "lastName": "Lovelace-1", "suffix": null});
    assert_eq!(orders[0].1["data"], expected_data);
    let sold = events(&topic(&app.settings, "shop.product.v1"), &kettle, 4).await;
    let kinds: Vec<(&str, i64, Value)> = sold
        .iter()
        .map(|(_, v)| {
            (
                v["type"].as_str().unwrap(),
                v["aggregateVersion"].as_i64().unwrap(),
                v["data"]["remainingStock"].clone(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("ProductCreated", 1, Value::Null),
            ("ProductSold", 2, json!(3)),
            ("ProductUpdated", 3, Value::Null),
            ("ProductSold", 4, json!(2)),
        ]
    );
    let first_sale = &sold[1].1["data"];
    assert_eq!(first_sale["quantitySold"], 2);
    assert_eq!(first_sale["productTotalPrice"], "39.98");
    assert_eq!(first_sale["orderId"], json!(order_id));
    assert_eq!(first_sale["customerId"], 123456);
    assert_eq!(first_sale["stockStatus"], true);

    // Deleting the order puts its items back.
    assert_eq!(
        delete(&app, &format!("/api/v1/orders/{order_id}"))
            .await
            .status,
        204
    );
    assert_eq!(
        (stock(&app, &kettle).await, stock(&app, &mug).await),
        (4, 9)
    );
    assert_eq!(
        delete(&app, &format!("/api/v1/orders/{order_id}"))
            .await
            .status,
        404
    );
    let orders = events(&topic(&app.settings, "shop.order.v1"), &order_id, 2).await;
    assert_eq!(
        (
            orders[1].1["type"].as_str(),
            orders[1].1["aggregateVersion"].as_i64()
        ),
        (Some("OrderDeleted"), Some(2))
    );
    app.stop().await;
}

#[actix_rt::test]
async fn fifty_orders_race_for_the_last_ten_items_and_exactly_ten_win() {
    let app = shop_with_customer(1).await;
    let db = app.settings.database_url.expose().to_owned();
    let last = product(&app, "Last ten", json!("9.99"), 10).await;
    let items = [(last.as_str(), 1)];
    let answers = futures::future::join_all((0..50).map(|_| order(&app, 1, &items))).await;
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for answer in &answers {
        *statuses.entry(answer.status).or_default() += 1;
        if answer.status == 409 {
            assert_eq!(answer.body["error"], "insufficient_stock");
            assert_eq!(answer.body["productId"], json!(last));
            assert_eq!(answer.body["productName"], "Last ten");
            assert_eq!(answer.body["available"], 0);
            assert_eq!(answer.body["field"], "items[0].quantity");
        }
    }
    assert_eq!(statuses, BTreeMap::from([(201, 10), (409, 40)]));
    assert_eq!(stock(&app, &last).await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM shop.orders").await,
        10
    );
    let sold = events(&topic(&app.settings, "shop.product.v1"), &last, 11).await;
    let remaining: Vec<i64> = sold[1..]
        .iter()
        .map(|(_, v)| v["data"]["remainingStock"].as_i64().unwrap())
        .collect();
    assert_eq!(remaining, (0..10).rev().collect::<Vec<_>>());
    app.stop().await;
}

#[actix_rt::test]
async fn orders_naming_shared_products_in_opposite_orders_do_not_deadlock() {
    let app = shop_with_customer(2).await;
    let a = product(&app, "A", json!(1), 1000).await;
    let b = product(&app, "B", json!(2), 1000).await;
    let answers = futures::future::join_all((0..40).map(|i| {
        let items = if i % 2 == 0 {
            vec![(a.as_str(), 1), (b.as_str(), 1)]
        } else {
            vec![(b.as_str(), 1), (a.as_str(), 1)]
        };
        let app = &app;
        async move { order(app, 2, &items).await.status }
    }))
    .await;
    assert!(answers.iter().all(|&s| s == 201), "{answers:?}");
    assert_eq!((stock(&app, &a).await, stock(&app, &b).await), (960, 960));
    app.stop().await;
}

/// The accounts and shop commands take no `Idempotency-Key`: one sent is
/// refused before anything runs, not ignored (a retry would run again).
#[actix_rt::test]
async fn a_command_that_takes_no_idempotency_key_refuses_one_and_writes_nothing() {
    let app = shop_with_customer(8).await;
    let db = app.settings.database_url.expose().to_owned();
    let kettle = product(&app, "Kettle", json!("19.99"), 5).await;
    let placed = order(&app, 8, &[(&kettle, 1)]).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let order_id = placed.body["orderId"].as_str().unwrap().to_owned();
    let events = count(&db, "SELECT count(*) AS n FROM outbox.events").await;
    let requests = [
        (
            "POST",
            "/api/v1/products".to_owned(),
            Some(json!({"name": "Mug", "price": 1, "stock": 1})),
        ),
        (
            "PUT",
            format!("/api/v1/products/{kettle}"),
            Some(json!({"stock": 9})),
        ),
        ("DELETE", format!("/api/v1/products/{kettle}"), None),
        (
            "POST",
            "/api/v1/orders".to_owned(),
            Some(json!({"customerId": 8, "items": [{"productId": kettle, "quantity": 1}]})),
        ),
        ("DELETE", format!("/api/v1/orders/{order_id}"), None),
        (
            "POST",
            "/accounts/customer/create".to_owned(),
            Some(crate::accounts::john(8)),
        ),
        ("DELETE", "/accounts/customer/8".to_owned(), None),
    ];
    for (method, path, body) in requests {
        let mut request = app
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", app.command_url()),
            )
            .header("Idempotency-Key", "retry-me-1");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{method} {path}");
        assert_eq!(
            answer.json::<Value>().await.unwrap(),
            json!({"error": "idempotency_key_unsupported", "field": "Idempotency-Key",
                   "message": "this command takes no Idempotency-Key (the timestamp POSTs do): \
                               sent again, it would run again, so it is refused rather than run \
                               without that promise"}),
            "{method} {path}"
        );
    }
    // A method the route does not have: 405, with the methods it has.
    let patched = app
        .http
        .patch(format!("{}/api/v1/products/{kettle}", app.command_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            patched.status().as_u16(),
            patched.headers()["allow"].to_str().unwrap()
        ),
        (405, "PUT, DELETE")
    );
    assert_eq!(stock(&app, &kettle).await, 4);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM shop.orders").await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM outbox.events").await,
        events
    );
    app.stop().await;
}

/// Deleting an order gives its items back only while each stock has room
/// for them: past the limit the delete is refused and nothing changes.
#[actix_rt::test]
async fn deleting_an_order_past_the_stock_limit_is_refused_and_changes_nothing() {
    let app = shop_with_customer(4).await;
    let db = app.settings.database_url.expose().to_owned();
    let full = product(&app, "Full", json!(1), 1_000_000).await;
    // The delete gives stock back in product id order: with the other
    // product first, its stock is given back before the refusal and must
    // be rolled back with it. (Ids are random: half of them sort first.)
    let mut other = product(&app, "Other", json!(1), 10).await;
    while other > full {
        other = product(&app, "Other", json!(1), 10).await;
    }
    let placed = order(&app, 4, &[(&other, 2), (&full, 400_000)]).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    let path = format!(
        "/api/v1/orders/{}",
        placed.body["orderId"].as_str().unwrap()
    );
    let restock = |stock: i64| {
        let (app, full) = (&app, &full);
        async move {
            let answer = crate::accounts::call(
                app,
                "PUT",
                &format!("/api/v1/products/{full}"),
                Some(crate::accounts::Body::Json(json!({ "stock": stock }))),
            )
            .await;
            assert_eq!(answer.status, 200, "{:?}", answer.body);
        }
    };
    // Restocked to near the limit since the order was placed.
    restock(999_800_000).await;
    let events = count(&db, "SELECT count(*) AS n FROM outbox.events").await;

    let refused = delete(&app, &path).await;
    assert_eq!(
        (refused.status, refused.body),
        (
            409,
            json!({"error": "stock_limit",
                   "message": format!("giving back 400000 of product {full} (Full) would put \
                                       its stock of 999800000 past 1000000000"),
                   "productId": full, "productName": "Full",
                   "requested": 400_000, "available": 200_000})
        )
    );
    assert_eq!(
        (stock(&app, &other).await, stock(&app, &full).await),
        (8, 999_800_000),
        "neither product got anything back"
    );
    assert_eq!(count(&db, "SELECT count(*) AS n FROM shop.orders").await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM outbox.events").await,
        events
    );

    // With room again, the same delete goes through.
    restock(999_600_000).await;
    assert_eq!(delete(&app, &path).await.status, 204);
    assert_eq!(
        (stock(&app, &other).await, stock(&app, &full).await),
        (10, 1_000_000_000)
    );
    app.stop().await;
}

#[actix_rt::test]
async fn an_order_refused_for_one_item_writes_nothing() {
    let app = shop_with_customer(3).await;
    let db = app.settings.database_url.expose().to_owned();
    let plenty = product(&app, "Plenty", json!(1), 100).await;
    let scarce = product(&app, "Scarce", json!(1), 2).await;
    let refused = order(&app, 3, &[(&plenty, 5), (&scarce, 3)]).await;
    assert_eq!(refused.status, 409);
    assert_eq!(refused.body["field"], "items[1].quantity");
    assert_eq!(
        (&refused.body["requested"], &refused.body["available"]),
        (&json!(3), &json!(2))
    );
    let unknown = Uuid::new_v4().to_string();
    let missing = order(&app, 3, &[(&plenty, 1), (&unknown, 1)]).await;
    assert_eq!(
        (
            missing.status,
            &missing.body["error"],
            &missing.body["field"]
        ),
        (422, &json!("unknown_product"), &json!("items[1].productId"))
    );
    // Two of the dearest product cost more than an order's total can be.
    let dearest = product(&app, "Dearest", json!("9999999999.99"), 5).await;
    let too_dear = order(&app, 3, &[(&plenty, 1), (&dearest, 2)]).await;
    assert_eq!(
        (too_dear.status, too_dear.body),
        (
            400,
            json!({"error": "invalid_field", "field": "items",
                   "message": "items: the order's total exceeds 9999999999.99"})
        )
    );
    // A customer with no address has nowhere to ship to.
    apply(&app, &customer_event(6, 1, "CustomerCreated", json!([]))).await;
    let homeless = order(&app, 6, &[(&plenty, 1)]).await;
    assert_eq!(
        (homeless.status, homeless.body),
        (
            422,
            json!({"error": "no_shipping_address", "field": "customerId",
                   "message": "customer 6 has no SHIPPING or BILLING address to ship to"})
        )
    );
    assert_eq!(
        (
            stock(&app, &plenty).await,
            stock(&app, &scarce).await,
            stock(&app, &dearest).await
        ),
        (100, 2, 5)
    );
    assert_eq!(count(&db, "SELECT count(*) AS n FROM shop.orders").await, 0);
    // Three ProductCreated events, nothing else.
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM outbox.events").await,
        3
    );
    app.stop().await;
}
