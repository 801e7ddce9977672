//! shop's read side on a real PostgreSQL: the real command side (accounts
//! and shop store functions) writes its events into the outbox, the test
//! applies them to the views with `apply_view_event` (as the consumer
//! will), and reads every query route over HTTP from a query server bound
//! to the same database. Needs only PostgreSQL.

use std::collections::BTreeMap;

use chronolog::db::Pool;
use chronolog::domain::CorrelationId;
use chronolog::outbox::{Aggregate, Envelope};
use chronolog::shop::store::{self, ApplyError, apply_customer_event};
use chronolog::shop::views::{ViewApplied, apply_view_event};
use chronolog::shop::{NewItem, NewOrder, NewProduct, Order, ProductChange};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::create_database;

/// A fresh, migrated database with a query server reading it.
struct Views {
    url: String,
    pool: Pool,
    server: chronolog::http::RunningServer,
    http: reqwest::Client,
}

impl Views {
    async fn start() -> Self {
        let url = create_database().await;
        chronolog::db::run_migrations(&url.parse().unwrap())
            .await
            .unwrap();
        let pool = chronolog::db::pool(&url.parse().unwrap(), 4);
        let data = actix_web::web::Data::new(pool.clone());
        let mut server = chronolog::http::bind(
            "127.0.0.1:0".parse().unwrap(),
            "query",
            chronolog::metrics::Metrics::new(),
            move |cfg| {
                cfg.app_data(data.clone())
                    .configure(chronolog::http::query::routes);
            },
        )
        .unwrap();
        server.spawn();
        Self {
            url,
            pool,
            server,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("http://{}{path}", self.server.addr))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url).await.unwrap()
    }

    /// Applies `events` in one transaction, as the consumer's sink does
    /// with a batch; answers what each did.
    async fn apply(&self, events: &[(String, Envelope)]) -> Vec<ViewApplied> {
        let mut conn = self.connect().await;
        conn.transaction::<_, ApplyError, _>(async |conn| {
            let mut applied = Vec::new();
            for (topic, event) in events {
                applied.push(apply_view_event(conn, topic, event).await?);
            }
            Ok(applied)
        })
        .await
        .unwrap()
    }

    /// Applies one event alone; the error when it fails.
    async fn apply_one(&self, topic: &str, event: &Envelope) -> Result<ViewApplied, ApplyError> {
        let mut conn = self.connect().await;
        conn.transaction::<_, ApplyError, _>(async |conn| {
            apply_view_event(conn, topic, event).await
        })
        .await
    }

    /// Every event of the outbox after row `after`, in row order, with its
    /// topic (prefixed, as a deployment with `OUTBOX_TOPIC_PREFIX` has it).
    async fn outbox_after(&self, after: i64) -> (i64, Vec<(String, Envelope)>) {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
            #[diesel(sql_type = diesel::sql_types::Text)]
            aggregate_type: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            payload: String,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT id, aggregate_type, payload FROM outbox.events WHERE id > $1 ORDER BY id",
        )
        .bind::<diesel::sql_types::BigInt, _>(after)
        .load(&mut self.connect().await)
        .await
        .unwrap();
        let last = rows.last().map_or(after, |r| r.id);
        let events = rows
            .into_iter()
            .map(|row| {
                let topic = Aggregate::parse(&row.aggregate_type).unwrap().topic();
                (
                    format!("test-prefix.{topic}"),
                    serde_json::from_str(&row.payload).unwrap(),
                )
            })
            .collect();
        (last, events)
    }

    /// Feeds accounts' events to shop's own customer copy (the command
    /// side needs it to take orders).
    async fn feed_shop_copy(&self, events: &[(String, Envelope)]) {
        let mut conn = self.connect().await;
        for (topic, event) in events {
            if topic.ends_with("accounts.customer.change") {
                conn.transaction::<_, ApplyError, _>(async |conn| {
                    apply_customer_event(conn, event).await
                })
                .await
                .unwrap();
            }
        }
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

/// Applies every event of the outbox of `database_url`: accounts' to
/// shop's customer copy (so that orders can be placed), all of them to the
/// views. Both are idempotent, so events applied before change nothing.
pub async fn project_outbox(database_url: &str) {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        aggregate_type: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        payload: String,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    let rows: Vec<Row> =
        diesel::sql_query("SELECT aggregate_type, payload FROM outbox.events ORDER BY id")
            .load(&mut conn)
            .await
            .unwrap();
    conn.transaction::<_, ApplyError, _>(async |conn| {
        for row in rows {
            let aggregate = Aggregate::parse(&row.aggregate_type).unwrap();
            let event: Envelope = serde_json::from_str(&row.payload).unwrap();
            if aggregate == Aggregate::Customer {
                apply_customer_event(conn, &event).await?;
            }
            apply_view_event(conn, aggregate.topic(), &event).await?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

fn correlation() -> CorrelationId {
    CorrelationId::parse("shop-views-test").unwrap()
}

fn customer_json(id: i64, first_name: &str, city: &str) -> Value {
    json!({
        "id": id,
        "name": {"title": "Ms.", "firstName": first_name, "middleName": null,
                 "lastName": "Lovelace", "suffix": null},
        "contact": {"primaryPhone": null, "secondaryPhone": null, "email": "ada@example.com"},
        "addresses": [
            {"type": "BILLING", "description": "bills", "address1": "1 Bill Road",
             "address2": null, "city": "Billtown", "state": "CA", "postalCode": "90001"},
            {"type": "SHIPPING", "description": "home", "address1": format!("2 {city} Street"),
             "address2": "Flat 3", "city": city, "state": "CA", "postalCode": "90002"}
        ],
        "creditCards": [{"type": "VISA", "description": null, "number": "4111111111111111",
                         "expiration": "12/30", "nameOnCard": "Ada Lovelace"}]
    })
}

fn shipping(city: &str) -> Value {
    json!({"type": "SHIPPING", "description": "home", "address1": format!("2 {city} Street"),
           "address2": "Flat 3", "city": city, "state": "CA", "postalCode": "90002"})
}

fn name(first_name: &str) -> Value {
    json!({"title": "Ms.", "firstName": first_name, "middleName": null,
           "lastName": "Lovelace", "suffix": null})
}

async fn save_customer(pool: &Pool, id: i64, first_name: &str, city: &str) {
    let customer =
        chronolog::accounts::Customer::from_json(&customer_json(id, first_name, city)).unwrap();
    chronolog::accounts::store::save(pool, &customer, &correlation())
        .await
        .unwrap();
}

async fn new_product(pool: &Pool, name: &str, cents: i64, stock: i32) -> Uuid {
    let new = NewProduct {
        name: name.into(),
        price: chronolog::shop::Money::from_cents(cents).unwrap(),
        stock,
    };
    store::create_product(pool, &new, &correlation())
        .await
        .unwrap()
        .product_id
}

async fn place(pool: &Pool, customer_id: i64, items: &[(Uuid, i32)]) -> Order {
    let new = NewOrder {
        customer_id,
        items: items
            .iter()
            .enumerate()
            .map(|(i, (product_id, quantity))| NewItem {
                product_id: *product_id,
                quantity: *quantity,
                field: format!("items[{i}]"),
            })
            .collect(),
    };
    store::place_order(pool, &new, &correlation())
        .await
        .unwrap()
}

/// The order document the views should show for `order`.
fn document(order: &Order, first_name: &str) -> Value {
    let mut doc = serde_json::to_value(order).unwrap();
    doc["customerName"] = name(first_name);
    doc
}

fn sale(product: Uuid, name: &str, price: &str, sold: i64, left: i64, order: &Order) -> Value {
    let total = chronolog::shop::Money::parse(&json!(price))
        .unwrap()
        .cents()
        * sold;
    json!({
        "productId": product, "productName": name, "productPrice": price,
        "quantitySold": sold, "remainingStock": left, "stockStatus": left > 0,
        "orderId": order.order_id, "customerId": order.customer_id,
        "productTotalPrice": chronolog::shop::Money::from_cents(total).unwrap(),
    })
}

#[actix_rt::test]
async fn every_route_answers_from_the_views_exactly() {
    let views = Views::start().await;
    let pool = views.pool.clone();
    save_customer(&pool, 123456, "Ada", "Home").await;
    let (mark, events) = views.outbox_after(0).await;
    views.feed_shop_copy(&events).await;
    let kettle = new_product(&pool, "Kettle", 1999, 5).await;
    let mug = new_product(&pool, "Mug", 450, 10).await;
    let lamp = new_product(&pool, "Lamp", 3000, 0).await;
    let first = place(&pool, 123456, &[(kettle, 2), (mug, 3)]).await;
    store::update_product(
        &pool,
        kettle,
        &ProductChange {
            price: chronolog::shop::Money::from_cents(2500),
            ..ProductChange::default()
        },
        &correlation(),
    )
    .await
    .unwrap();
    save_customer(&pool, 123456, "Augusta", "Away").await;
    let (_, moved) = views.outbox_after(mark).await;
    views.feed_shop_copy(&moved).await;
    let second = place(&pool, 123456, &[(kettle, 1)]).await;
    let (mark, events) = views.outbox_after(0).await;
    let applied = views.apply(&events).await;
    assert!(
        applied.iter().all(|a| *a == ViewApplied::Applied),
        "{applied:?}"
    );

    // A product as its last event left it, and its sales.
    assert_eq!(
        views.get(&format!("/api/v1/products/{kettle}")).await,
        (
            200,
            json!({"productId": kettle, "name": "Kettle", "price": "25.00", "stock": 2,
                   "stockStatus": true})
        )
    );
    assert_eq!(
        views.get(&format!("/api/v1/products/{kettle}/sales")).await,
        (
            200,
            json!([
                sale(kettle, "Kettle", "19.99", 2, 3, &first),
                sale(kettle, "Kettle", "25.00", 1, 2, &second),
            ])
        )
    );
    assert_eq!(
        views.get(&format!("/api/v1/products/{mug}/sales")).await,
        (200, json!([sale(mug, "Mug", "4.50", 3, 7, &first)]))
    );
    assert_eq!(
        views.get(&format!("/api/v1/products/{lamp}")).await,
        (
            200,
            json!({"productId": lamp, "name": "Lamp", "price": "30.00", "stock": 0,
                   "stockStatus": false})
        )
    );
    assert_eq!(
        views.get(&format!("/api/v1/products/{lamp}/sales")).await,
        (200, json!([]))
    );

    // Orders keep the name and address of the time they were placed; the
    // customer shows the current ones.
    let first_doc = document(&first, "Ada");
    let second_doc = document(&second, "Augusta");
    assert_eq!(first_doc["shippingAddress"], shipping("Home"));
    assert_eq!(second_doc["shippingAddress"], shipping("Away"));
    assert_eq!(first_doc["totalPrice"], "53.48");
    assert_eq!(
        views
            .get(&format!("/api/v1/orders/{}", first.order_id))
            .await,
        (200, first_doc.clone())
    );
    assert_eq!(
        views.get("/orders/order/123456").await,
        (
            200,
            json!({"customerId": 123456, "name": name("Augusta"),
                   "shippingAddress": shipping("Away"),
                   "orders": [second_doc.clone(), first_doc.clone()]})
        )
    );
    assert_eq!(
        views.get("/orders/list").await,
        (
            200,
            json!({"orders": [second_doc.clone(), first_doc.clone()], "next": null})
        )
    );

    // Unknown ids are 404, malformed ones 400 naming the field.
    let absent = Uuid::new_v4();
    for path in [
        format!("/api/v1/products/{absent}"),
        format!("/api/v1/products/{absent}/sales"),
        format!("/api/v1/orders/{absent}"),
        "/orders/order/999".to_owned(),
    ] {
        let (status, body) = views.get(&path).await;
        assert_eq!(
            (status, &body["error"]),
            (404, &json!("not_found")),
            "{path}"
        );
    }
    for (path, field) in [
        ("/api/v1/products/nope", "id"),
        ("/api/v1/products/nope/sales", "id"),
        ("/api/v1/orders/12", "orderId"),
        ("/orders/order/0", "customerId"),
        ("/orders/order/-4", "customerId"),
        ("/orders/order/abc", "customerId"),
        ("/orders/order/99999999999999999999", "customerId"),
        ("/orders/list?limit=0", "limit"),
        ("/orders/list?limit=101", "limit"),
        ("/orders/list?limit=ten", "limit"),
        ("/orders/list?after=bogus", "after"),
        ("/orders/list?page=2", "page"),
    ] {
        let (status, body) = views.get(path).await;
        assert_eq!(
            (status, &body["error"], &body["field"]),
            (400, &json!("invalid_field"), &json!(field)),
            "{path}: {body}"
        );
    }
    // The routes that take no parameter refuse one rather than ignore it.
    for (path, field) in [
        (format!("/api/v1/products/{absent}?limit=1"), "limit"),
        (format!("/api/v1/products/{absent}/sales?limit=1"), "limit"),
        (format!("/api/v1/orders/{absent}?foo=bar"), "foo"),
        ("/orders/order/999?x=1".to_owned(), "x"),
    ] {
        let (status, body) = views.get(&path).await;
        assert_eq!(
            (status, body),
            (
                400,
                json!({"error": "invalid_field", "field": field,
                       "message": format!("{field}: is not a parameter of this route (it takes none)")})
            ),
            "{path}"
        );
    }

    // Deleting the first order takes it out of every view and gives its
    // stock back; deleting a product makes it unknown.
    store::delete_order(&pool, first.order_id, &correlation())
        .await
        .unwrap();
    store::delete_product(&pool, mug, &correlation())
        .await
        .unwrap();
    let (_, later) = views.outbox_after(mark).await;
    let kinds: Vec<&str> = later.iter().map(|(_, e)| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ProductUpdated",
            "ProductUpdated",
            "OrderDeleted",
            "ProductDeleted"
        ]
    );
    views.apply(&later).await;
    let (status, _) = views
        .get(&format!("/api/v1/orders/{}", first.order_id))
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        views.get("/orders/list").await,
        (200, json!({"orders": [second_doc.clone()], "next": null}))
    );
    assert_eq!(
        views.get("/orders/order/123456").await.1["orders"],
        json!([second_doc])
    );
    assert_eq!(
        views.get(&format!("/api/v1/products/{kettle}/sales")).await,
        (200, json!([sale(kettle, "Kettle", "25.00", 1, 2, &second)]))
    );
    assert_eq!(
        views.get(&format!("/api/v1/products/{kettle}")).await.1["stock"],
        json!(4)
    );
    for path in [
        format!("/api/v1/products/{mug}"),
        format!("/api/v1/products/{mug}/sales"),
    ] {
        assert_eq!(views.get(&path).await.0, 404, "{path}");
    }

    // A deleted customer with orders is shown by their newest order.
    chronolog::accounts::store::delete(&pool, 123456, &correlation())
        .await
        .unwrap();
    let (_, gone) = views.outbox_after(0).await;
    let gone: Vec<_> = gone
        .into_iter()
        .filter(|(_, e)| e.event_type == "CustomerDeleted")
        .collect();
    assert_eq!(views.apply(&gone).await, [ViewApplied::Applied]);
    assert_eq!(
        views.get("/orders/order/123456").await,
        (
            200,
            json!({"customerId": 123456, "name": name("Augusta"),
                   "shippingAddress": shipping("Away"),
                   "orders": [document(&second, "Augusta")]})
        )
    );
    views.stop().await;
}

/// Every answer of the query routes for the ids the views may hold.
async fn answers(views: &Views, orders: &[Uuid], products: &[Uuid], customers: &[i64]) -> Value {
    let mut all = BTreeMap::new();
    let mut paths = vec!["/orders/list?limit=100".to_owned()];
    paths.extend(orders.iter().map(|id| format!("/api/v1/orders/{id}")));
    for id in products {
        paths.push(format!("/api/v1/products/{id}"));
        paths.push(format!("/api/v1/products/{id}/sales"));
    }
    paths.extend(customers.iter().map(|id| format!("/orders/order/{id}")));
    for path in paths {
        let answer = views.get(&path).await;
        all.insert(path, json!([answer.0, answer.1]));
    }
    serde_json::to_value(all).unwrap()
}

/// Every row of the views, as JSON, ordered.
async fn tables(views: &Views) -> Value {
    view_tables(&views.url).await
}

/// Every row of the shop's view tables, in key order.
pub async fn view_tables(database_url: &str) -> Value {
    #[derive(QueryableByName)]
    struct Dump {
        #[diesel(sql_type = diesel::sql_types::Text)]
        rows: String,
    }
    let mut all = serde_json::Map::new();
    for (table, key) in [
        ("customers", "customer_id"),
        ("products", "product_id"),
        ("product_sold", "product_id, version"),
        ("orders", "order_id"),
    ] {
        let dump: Dump = diesel::sql_query(format!(
            "SELECT coalesce(json_agg(t ORDER BY {key}), '[]')::text AS rows \
             FROM shop_view.{table} t"
        ))
        .get_result(&mut AsyncPgConnection::establish(database_url).await.unwrap())
        .await
        .unwrap();
        all.insert(table.into(), serde_json::from_str(&dump.rows).unwrap());
    }
    Value::Object(all)
}

/// Gives shop's copy the customers saved since `mark`.
async fn feed(views: &Views, mark: &mut i64) {
    let (last, events) = views.outbox_after(*mark).await;
    views.feed_shop_copy(&events).await;
    *mark = last;
}

/// What [`history`] made.
struct History {
    events: Vec<(String, Envelope)>,
    orders: Vec<Uuid>,
    products: Vec<Uuid>,
    customers: Vec<i64>,
}

/// A history with every kind of event: customers created, moved and
/// deleted, products created, repriced, sold out, deleted, orders placed
/// and deleted. Answers the events and the ids involved.
async fn history(views: &Views) -> History {
    let pool = views.pool.clone();
    let mut mark = 0;
    save_customer(&pool, 1, "Ada", "Home").await;
    save_customer(&pool, 2, "Grace", "Arlington").await;
    feed(views, &mut mark).await;
    let kettle = new_product(&pool, "Kettle", 1999, 5).await;
    let mug = new_product(&pool, "Mug", 450, 10).await;
    let lamp = new_product(&pool, "Lamp", 3000, 1).await;
    let a = place(&pool, 1, &[(kettle, 2), (mug, 3)]).await;
    let b = place(&pool, 2, &[(lamp, 1), (mug, 1)]).await;
    save_customer(&pool, 1, "Ada", "Away").await;
    feed(views, &mut mark).await;
    let c = place(&pool, 1, &[(kettle, 1)]).await;
    store::update_product(
        &pool,
        mug,
        &ProductChange {
            name: Some("Big mug".into()),
            ..ProductChange::default()
        },
        &correlation(),
    )
    .await
    .unwrap();
    let d = place(&pool, 2, &[(mug, 2)]).await;
    store::delete_order(&pool, b.order_id, &correlation())
        .await
        .unwrap();
    store::delete_product(&pool, lamp, &correlation())
        .await
        .unwrap();
    chronolog::accounts::store::delete(&pool, 2, &correlation())
        .await
        .unwrap();
    let (_, events) = views.outbox_after(0).await;
    let orders = [&a, &b, &c, &d].map(|o| o.order_id).to_vec();
    History {
        events,
        orders,
        products: vec![kettle, mug, lamp],
        customers: vec![1, 2, 3],
    }
}

/// `events` in another order that keeps each aggregate's own events in
/// order: aggregates taken round-robin, starting from the last one seen.
fn interleave(events: &[(String, Envelope)]) -> Vec<(String, Envelope)> {
    let mut queues: Vec<(String, Vec<(String, Envelope)>)> = Vec::new();
    for event in events {
        let key = format!("{}/{}", event.0, event.1.aggregate_id);
        match queues.iter_mut().find(|(k, _)| *k == key) {
            Some((_, queue)) => queue.push(event.clone()),
            None => queues.push((key, vec![event.clone()])),
        }
    }
    queues.reverse();
    let mut out = Vec::new();
    let mut round = 0;
    while out.len() < events.len() {
        for (_, queue) in &queues {
            if let Some(event) = queue.get(round) {
                out.push(event.clone());
            }
        }
        round += 1;
    }
    out
}

#[actix_rt::test]
async fn a_rebuild_in_another_interleaving_gives_the_same_views() {
    let live = Views::start().await;
    let History {
        events,
        orders,
        products,
        customers,
    } = history(&live).await;
    assert_eq!(events.len(), 22, "the history's events");
    live.apply(&events).await;
    let expected = answers(&live, &orders, &products, &customers).await;
    let expected_rows = tables(&live).await;
    // The history shows what it should: b deleted, its sales gone, lamp
    // deleted, customer 2 deleted but shown by their newest order.
    assert_eq!(
        expected["/orders/list?limit=100"][1]["orders"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        expected[&format!("/api/v1/orders/{}", orders[1])][0],
        json!(404)
    );
    assert_eq!(
        expected[&format!("/api/v1/products/{}/sales", products[1])][1]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["orderId"].clone())
            .collect::<Vec<_>>(),
        [json!(orders[0]), json!(orders[3])]
    );
    assert_eq!(
        expected[&format!("/api/v1/products/{}", products[1])][1]["name"],
        "Big mug"
    );
    assert_eq!(expected["/orders/order/2"][1]["name"]["firstName"], "Grace");
    assert_eq!(expected["/orders/order/3"][0], json!(404));

    let shuffled = interleave(&events);
    assert_ne!(
        shuffled.iter().map(|e| e.1.event_id).collect::<Vec<_>>(),
        events.iter().map(|e| e.1.event_id).collect::<Vec<_>>()
    );
    // Topic by topic, orders first: every OrderDeleted before the sales of
    // its order, every order before its customer.
    let mut by_topic = events.clone();
    by_topic.sort_by_key(|(topic, _)| {
        [
            "shop.order.v1",
            "shop.product.v1",
            "accounts.customer.change",
        ]
        .iter()
        .position(|t| topic.ends_with(t))
    });
    for order in [shuffled, by_topic] {
        let rebuilt = Views::start().await;
        // One event per transaction, then all again as one batch: the
        // second pass changes nothing.
        for (topic, event) in &order {
            rebuilt.apply_one(topic, event).await.unwrap();
        }
        let again = rebuilt.apply(&order).await;
        assert!(again.iter().all(|a| *a == ViewApplied::Stale), "{again:?}");
        assert_eq!(
            answers(&rebuilt, &orders, &products, &customers).await,
            expected
        );
        assert_eq!(tables(&rebuilt).await, expected_rows);
        rebuilt.stop().await;
    }
    live.stop().await;
}

#[actix_rt::test]
async fn stale_duplicate_unknown_and_bad_events() {
    let views = Views::start().await;
    let pool = views.pool.clone();
    save_customer(&pool, 7, "Ada", "Home").await;
    let (_, events) = views.outbox_after(0).await;
    views.feed_shop_copy(&events).await;
    let kettle = new_product(&pool, "Kettle", 1999, 5).await;
    let order = place(&pool, 7, &[(kettle, 2)]).await;
    let (_, events) = views.outbox_after(0).await;
    assert_eq!(views.apply(&events).await, [ViewApplied::Applied; 4]);
    let ids = ([order.order_id], [kettle], [7]);
    let before = answers(&views, &ids.0, &ids.1, &ids.2).await;
    let rows = tables(&views).await;

    // The same events again, one by one and as a batch: nothing changes.
    for (topic, event) in &events {
        assert_eq!(
            views.apply_one(topic, event).await.unwrap(),
            ViewApplied::Stale
        );
    }
    assert_eq!(views.apply(&events).await, [ViewApplied::Stale; 4]);
    // An older version with other content (a redelivery from before a
    // change, or a forged one) changes nothing either.
    let (topic, created) = events
        .iter()
        .find(|(_, e)| e.event_type == "ProductCreated")
        .unwrap();
    let mut old = created.clone();
    old.event_id = Uuid::new_v4();
    old.data["stock"] = json!(99);
    old.data["name"] = json!("Forged");
    assert_eq!(
        views.apply_one(topic, &old).await.unwrap(),
        ViewApplied::Stale
    );
    let (customer_topic, customer) = events
        .iter()
        .find(|(_, e)| e.event_type == "CustomerCreated")
        .unwrap();
    let mut old = customer.clone();
    old.data["name"]["firstName"] = json!("Forged");
    assert_eq!(
        views.apply_one(customer_topic, &old).await.unwrap(),
        ViewApplied::Stale
    );
    assert_eq!(answers(&views, &ids.0, &ids.1, &ids.2).await, before);
    assert_eq!(tables(&views).await, rows);

    // Unknown types and other topics are ignored.
    let mut unknown = created.clone();
    unknown.event_type = "ProductRenamed".into();
    assert_eq!(
        views.apply_one(topic, &unknown).await.unwrap(),
        ViewApplied::Ignored
    );
    assert_eq!(
        views
            .apply_one("chronolog.timestamps", created)
            .await
            .unwrap(),
        ViewApplied::Ignored
    );
    assert_eq!(
        views.apply_one("shop.order.v1", created).await.unwrap(),
        ViewApplied::Ignored
    );

    // Bad events are errors to dead-letter, and change nothing.
    let bad = |mut event: Envelope, change: &dyn Fn(&mut Envelope)| {
        event.aggregate_version = 50;
        change(&mut event);
        event
    };
    let (order_topic, placed) = events
        .iter()
        .find(|(_, e)| e.event_type == "OrderCreated")
        .unwrap();
    let (_, sold) = events
        .iter()
        .find(|(_, e)| e.event_type == "ProductSold")
        .unwrap();
    let cases: Vec<(&str, Envelope, &str)> = vec![
        (
            topic,
            bad(created.clone(), &|e| e.aggregate_id = "42".into()),
            "aggregateId '42'",
        ),
        (
            customer_topic,
            bad(customer.clone(), &|e| e.aggregate_id = "-1".into()),
            "aggregateId '-1'",
        ),
        (
            topic,
            bad(created.clone(), &|e| e.data = json!({"name": "x"})),
            "malformed",
        ),
        (
            topic,
            bad(created.clone(), &|e| e.data["price"] = json!("1.999")),
            "malformed",
        ),
        (
            topic,
            bad(created.clone(), &|e| {
                e.data["productId"] = json!(Uuid::nil())
            }),
            "inconsistent",
        ),
        (
            topic,
            bad(created.clone(), &|e| e.data["stock"] = json!(-1)),
            "inconsistent",
        ),
        (
            topic,
            bad(sold.clone(), &|e| e.data["quantitySold"] = json!(0)),
            "inconsistent",
        ),
        (
            order_topic,
            bad(placed.clone(), &|e| e.data["items"] = json!("none")),
            "malformed",
        ),
        (
            order_topic,
            bad(placed.clone(), &|e| e.data["orderId"] = json!(Uuid::nil())),
            "inconsistent",
        ),
        (
            order_topic,
            bad(placed.clone(), &|e| e.aggregate_version = 0),
            "inconsistent",
        ),
        (
            customer_topic,
            bad(customer.clone(), &|e| {
                e.data["addresses"] = json!([{"type": "HOME"}])
            }),
            "malformed",
        ),
        (
            topic,
            bad(created.clone(), &|e| e.data["name"] = json!("Ket\u{0}tle")),
            "NUL",
        ),
        (
            topic,
            bad(created.clone(), &|e| e.data["na\u{0}me"] = json!("Kettle")),
            "NUL",
        ),
        (
            order_topic,
            bad(placed.clone(), &|e| {
                e.data["items"][0]["productName"] = json!("Ket\u{0}tle")
            }),
            "NUL",
        ),
    ];
    for (topic, event, message) in cases {
        let error = views.apply_one(topic, &event).await.unwrap_err();
        assert!(error.is_bad_event(), "{error}");
        assert!(
            error.to_string().contains(message),
            "{error} lacks {message}"
        );
    }
    assert_eq!(answers(&views, &ids.0, &ids.1, &ids.2).await, before);
    assert_eq!(tables(&views).await, rows);

    // A bad event is refused before any statement: the batch's
    // transaction goes on and commits the events after it.
    let mut renamed = created.clone();
    renamed.aggregate_version = 3;
    renamed.data["name"] = json!("Kettle 2");
    renamed.data["stock"] = json!(3);
    renamed.data["stockStatus"] = json!(true);
    let mut conn = views.connect().await;
    let outcomes = conn
        .transaction::<_, ApplyError, _>(async |conn| {
            let mut outcomes = Vec::new();
            for event in [bad(created.clone(), &|e| e.data = json!(1)), renamed] {
                outcomes.push(
                    apply_view_event(conn, topic, &event)
                        .await
                        .map_err(|e| e.is_bad_event()),
                );
            }
            Ok(outcomes)
        })
        .await
        .unwrap();
    assert_eq!(outcomes, [Err(true), Ok(ViewApplied::Applied)]);
    assert_eq!(
        views.get(&format!("/api/v1/products/{kettle}")).await,
        (
            200,
            json!({"productId": kettle, "name": "Kettle 2", "price": "19.99", "stock": 3,
                   "stockStatus": true})
        )
    );

    // What JSON writes for a NUL, spelt out in the text itself (a backslash,
    // then `u0000`), is no NUL: the event is applied.
    let mut spelt = created.clone();
    spelt.aggregate_version = 4;
    spelt.data["name"] = json!("Kettle \\u0000");
    assert_eq!(
        views.apply_one(topic, &spelt).await.unwrap(),
        ViewApplied::Applied
    );
    let (status, product) = views.get(&format!("/api/v1/products/{kettle}")).await;
    assert_eq!((status, &product["name"]), (200, &json!("Kettle \\u0000")));
    views.stop().await;
}

/// An `OrderCreated` of customer 5 placed at `at` (microseconds).
fn order_event(order_id: Uuid, at: i64) -> (String, Envelope) {
    let date = chrono::DateTime::from_timestamp_micros(at).unwrap();
    let data = json!({
        "orderId": order_id, "customerId": 5, "orderDate": date, "totalPrice": "1.00",
        "items": [{"productId": Uuid::nil(), "productName": "Pin", "quantity": 1, "price": "1.00"}],
        "shippingAddress": shipping("Home"), "customerName": name("Ada"),
    });
    (
        "shop.order.v1".into(),
        Envelope {
            event_id: Uuid::new_v4(),
            event_type: "OrderCreated".into(),
            version: 1,
            aggregate_id: order_id.to_string(),
            aggregate_version: 1,
            occurred_at: "2026-12-04T10:00:00.000000Z".into(),
            data,
        },
    )
}

#[actix_rt::test]
async fn the_order_list_pages_newest_first_without_repeats() {
    let views = Views::start().await;
    // 25 orders, three to an instant: ties are ordered by id.
    let base = 1_796_000_000_000_000;
    let mut placed: Vec<(i64, Uuid)> = (0..25)
        .map(|i| (base + (i / 3) * 1_000_000, Uuid::new_v4()))
        .collect();
    let events: Vec<_> = placed
        .iter()
        .map(|(at, id)| order_event(*id, *at))
        .collect();
    views.apply(&events).await;
    placed.sort();
    placed.reverse();
    let newest_first: Vec<Value> = placed.iter().map(|(_, id)| json!(id)).collect();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/orders/list?limit=10".to_owned();
    loop {
        let (status, page) = views.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let orders = page["orders"].as_array().unwrap();
        sizes.push(orders.len());
        seen.extend(orders.iter().map(|o| o["orderId"].clone()));
        match page["next"].as_str() {
            Some(next) => path = format!("/orders/list?limit=10&after={next}"),
            None => break,
        }
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(seen, newest_first);

    // The default page is 20; a full last page still says where it ends.
    let (_, page) = views.get("/orders/list").await;
    assert_eq!(page["orders"].as_array().unwrap().len(), 20);
    let (_, page) = views.get("/orders/list?limit=25").await;
    assert_eq!(
        (page["orders"].as_array().unwrap().len(), &page["next"]),
        (25, &Value::Null)
    );
    // A page after the last order is empty.
    let last = chronolog::shop::views::Cursor {
        order_date: chrono::DateTime::from_timestamp_micros(placed[24].0).unwrap(),
        order_id: placed[24].1,
    };
    assert_eq!(
        views
            .get(&format!("/orders/list?after={}", last.encode()))
            .await,
        (200, json!({"orders": [], "next": null}))
    );
    views.stop().await;
}
