//! Bad input on every accounts and shop route: malformed JSON, wrong
//! types, zero or negative quantities, unknown ids, over-long strings,
//! money with three decimals. Each gets a 4xx JSON error naming the field,
//! and nothing is written.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::accounts::{count, john};
use crate::helpers::TestApp;
use crate::shop::{product, shop_with_customer};

/// What a request sends as its body.
enum Sent {
    None,
    Json(Value),
    Text(&'static str),
}

/// One bad request and the answer it must get.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Sent,
    status: u16,
    error: &'static str,
    /// The field the error names; `None` when the error is not about one.
    field: Option<&'static str>,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: Sent,
    (status, error, field): (u16, &'static str, Option<&'static str>),
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        body,
        status,
        error,
        field,
    }
}

const INVALID: (u16, &str) = (400, "invalid_field");

fn invalid(field: &'static str) -> (u16, &'static str, Option<&'static str>) {
    (INVALID.0, INVALID.1, Some(field))
}

/// A customer body with `pointer` set to `value`.
fn customer_with(pointer: &str, value: Value) -> Sent {
    let mut body = john(31337);
    *body.pointer_mut(pointer).expect("a field of the sample") = value;
    Sent::Json(body)
}

/// Row counts of every table a command writes.
async fn rows(database_url: &str) -> BTreeMap<&'static str, i64> {
    let mut rows = BTreeMap::new();
    for table in [
        "accounts.customers",
        "accounts.customer_names",
        "accounts.customer_contacts",
        "accounts.addresses",
        "accounts.credit_cards",
        "shop.products",
        "shop.customers",
        "shop.orders",
        "shop.order_items",
        "outbox.events",
        "outbox.aggregate_versions",
    ] {
        let sql = format!("SELECT count(*) AS n FROM {table}");
        rows.insert(table, count(database_url, &sql).await);
    }
    rows
}

async fn send(app: &TestApp, case: &Case) -> (u16, Option<String>, Value) {
    let url = format!("{}{}", app.command_url(), case.path);
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut request = app.http.request(method, url);
    match &case.body {
        Sent::None => {}
        Sent::Json(value) => request = request.json(value),
        Sent::Text(text) => {
            request = request
                .header("content-type", "application/json")
                .body(*text)
        }
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, content_type, body)
}

#[actix_rt::test]
async fn every_route_refuses_bad_input_naming_the_field_and_writes_nothing() {
    let app = shop_with_customer(5).await;
    let db = app.settings.database_url.expose().to_owned();
    // Something real for the requests to aim at.
    let kettle = product(&app, "Kettle", json!("19.99"), 5).await;
    let kettle_path = format!("/api/v1/products/{kettle}");
    let item = |quantity: Value| json!({"customerId": 5, "items": [{"productId": kettle, "quantity": quantity}]});
    let unknown = Uuid::new_v4();
    let long = |n: usize| Value::String("x".repeat(n));
    let create = "/accounts/customer/create";

    let cases = vec![
        // accounts: POST /accounts/customer/create
        case(
            "malformed JSON",
            "POST",
            create,
            Sent::Text("{\"id\": 1,"),
            invalid("body"),
        ),
        case("no body", "POST", create, Sent::None, invalid("body")),
        case(
            "an array",
            "POST",
            create,
            Sent::Json(json!([1])),
            invalid("body"),
        ),
        case(
            "id as a string",
            "POST",
            create,
            customer_with("/id", json!("31337")),
            invalid("id"),
        ),
        case(
            "id zero",
            "POST",
            create,
            customer_with("/id", json!(0)),
            invalid("id"),
        ),
        case(
            "id negative",
            "POST",
            create,
            customer_with("/id", json!(-4)),
            invalid("id"),
        ),
        case(
            "id fractional",
            "POST",
            create,
            customer_with("/id", json!(1.5)),
            invalid("id"),
        ),
        case(
            "id beyond bigint",
            "POST",
            create,
            customer_with("/id", json!(1e20)),
            invalid("id"),
        ),
        case(
            "name missing",
            "POST",
            create,
            customer_with("/name", Value::Null),
            invalid("name"),
        ),
        case(
            "name not an object",
            "POST",
            create,
            customer_with("/name", json!("John")),
            invalid("name"),
        ),
        case(
            "first name a number",
            "POST",
            create,
            customer_with("/name/firstName", json!(7)),
            invalid("name.firstName"),
        ),
        case(
            "first name blank",
            "POST",
            create,
            customer_with("/name/firstName", json!("  ")),
            invalid("name.firstName"),
        ),
        case(
            "last name too long",
            "POST",
            create,
            customer_with("/name/lastName", long(101)),
            invalid("name.lastName"),
        ),
        case(
            "email too long",
            "POST",
            create,
            customer_with("/contact/email", long(255)),
            invalid("contact.email"),
        ),
        case(
            "contact not an object",
            "POST",
            create,
            customer_with("/contact", json!([])),
            invalid("contact"),
        ),
        case(
            "addresses not an array",
            "POST",
            create,
            customer_with("/addresses", json!({})),
            invalid("addresses"),
        ),
        case(
            "address type unknown",
            "POST",
            create,
            customer_with("/addresses/1/type", json!("HOME")),
            invalid("addresses[1].type"),
        ),
        case(
            "address city missing",
            "POST",
            create,
            customer_with("/addresses/0/city", Value::Null),
            invalid("addresses[0].city"),
        ),
        case(
            "card number too short",
            "POST",
            create,
            customer_with("/creditCards/0/number", json!("1234")),
            invalid("creditCards[0].number"),
        ),
        case(
            "card number with letters",
            "POST",
            create,
            customer_with("/creditCards/0/number", json!("4916-abcd-7572-5015")),
            invalid("creditCards[0].number"),
        ),
        case(
            "card number a number",
            "POST",
            create,
            customer_with("/creditCards/0/number", json!(4916673475725015_i64)),
            invalid("creditCards[0].number"),
        ),
        // accounts: GET / DELETE /accounts/customer/{id}
        case(
            "GET an unknown customer",
            "GET",
            "/accounts/customer/999999",
            Sent::None,
            (404, "not_found", None),
        ),
        case(
            "GET a customer id that is not a number",
            "GET",
            "/accounts/customer/abc",
            Sent::None,
            (400, "invalid_id", Some("id")),
        ),
        case(
            "DELETE an unknown customer",
            "DELETE",
            "/accounts/customer/999999",
            Sent::None,
            (404, "not_found", None),
        ),
        case(
            "DELETE customer id zero",
            "DELETE",
            "/accounts/customer/0",
            Sent::None,
            (400, "invalid_id", Some("id")),
        ),
        // shop: POST /api/v1/products
        case(
            "product malformed JSON",
            "POST",
            "/api/v1/products",
            Sent::Text("{name"),
            invalid("body"),
        ),
        case(
            "price with three decimals",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"name": "A", "price": 1.999, "stock": 1})),
            invalid("price"),
        ),
        case(
            "price string with three decimals",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"name": "A", "price": "1.999", "stock": 1})),
            invalid("price"),
        ),
        // A JSON number is read as written, not through a float: 19.990 has
        // three decimals, and 1e3 is not an amount like 19.99.
        case(
            "price number with a third decimal zero",
            "POST",
            "/api/v1/products",
            Sent::Text(r#"{"name": "A", "price": 19.990, "stock": 1}"#),
            invalid("price"),
        ),
        case(
            "price number with an exponent",
            "POST",
            "/api/v1/products",
            Sent::Text(r#"{"name": "A", "price": 1e3, "stock": 1}"#),
            invalid("price"),
        ),
        case(
            "price number with more digits than a float keeps",
            "POST",
            "/api/v1/products",
            Sent::Text(r#"{"name": "A", "price": 19.9999999999999999, "stock": 1}"#),
            invalid("price"),
        ),
        case(
            "price negative",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"name": "A", "price": -1, "stock": 1})),
            invalid("price"),
        ),
        case(
            "price not an amount",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"name": "A", "price": "cheap", "stock": 1})),
            invalid("price"),
        ),
        case(
            "price too large",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"name": "A", "price": "10000000000", "stock": 1})),
            invalid("price"),
        ),
        case(
            "stock negative",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"name": "A", "price": 1, "stock": -1})),
            invalid("stock"),
        ),
        case(
            "stock a string",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"name": "A", "price": 1, "stock": "5"})),
            invalid("stock"),
        ),
        case(
            "product name too long",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"name": long(201), "price": 1, "stock": 1})),
            invalid("name"),
        ),
        case(
            "product name missing",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"price": 1, "stock": 1})),
            invalid("name"),
        ),
        case(
            "unknown product field",
            "POST",
            "/api/v1/products",
            Sent::Json(json!({"name": "A", "price": 1, "stock": 1, "colour": "red"})),
            invalid("colour"),
        ),
        // shop: PUT / DELETE /api/v1/products/{id}
        case(
            "PUT nothing to change",
            "PUT",
            kettle_path.clone(),
            Sent::Json(json!({})),
            invalid("body"),
        ),
        case(
            "PUT price with three decimals",
            "PUT",
            kettle_path.clone(),
            Sent::Json(json!({"price": "0.001"})),
            invalid("price"),
        ),
        case(
            "PUT stock fractional",
            "PUT",
            kettle_path.clone(),
            Sent::Json(json!({"stock": 2.5})),
            invalid("stock"),
        ),
        case(
            "PUT an unknown product",
            "PUT",
            format!("/api/v1/products/{unknown}"),
            Sent::Json(json!({"stock": 1})),
            (404, "not_found", None),
        ),
        case(
            "PUT a product id that is not a UUID",
            "PUT",
            "/api/v1/products/42",
            Sent::Json(json!({"stock": 1})),
            (400, "invalid_id", Some("id")),
        ),
        case(
            "DELETE an unknown product",
            "DELETE",
            format!("/api/v1/products/{unknown}"),
            Sent::None,
            (404, "not_found", None),
        ),
        // shop: POST /api/v1/orders
        case(
            "order malformed JSON",
            "POST",
            "/api/v1/orders",
            Sent::Text("[{]"),
            invalid("body"),
        ),
        case(
            "quantity zero",
            "POST",
            "/api/v1/orders",
            Sent::Json(item(json!(0))),
            invalid("items[0].quantity"),
        ),
        case(
            "quantity negative",
            "POST",
            "/api/v1/orders",
            Sent::Json(item(json!(-2))),
            invalid("items[0].quantity"),
        ),
        case(
            "quantity a string",
            "POST",
            "/api/v1/orders",
            Sent::Json(item(json!("2"))),
            invalid("items[0].quantity"),
        ),
        case(
            "quantity fractional",
            "POST",
            "/api/v1/orders",
            Sent::Json(item(json!(1.5))),
            invalid("items[0].quantity"),
        ),
        case(
            "quantity missing",
            "POST",
            "/api/v1/orders",
            Sent::Json(item(Value::Null)),
            invalid("items[0].quantity"),
        ),
        case(
            "customer id a string",
            "POST",
            "/api/v1/orders",
            Sent::Json(json!({"customerId": "5", "items": [{"productId": kettle, "quantity": 1}]})),
            invalid("customerId"),
        ),
        case(
            "no items",
            "POST",
            "/api/v1/orders",
            Sent::Json(json!({"customerId": 5, "items": []})),
            invalid("items"),
        ),
        case(
            "items not an array",
            "POST",
            "/api/v1/orders",
            Sent::Json(json!({"customerId": 5, "items": {"productId": kettle}})),
            invalid("items"),
        ),
        case(
            "product id not a UUID",
            "POST",
            "/api/v1/orders",
            Sent::Json(json!({"customerId": 5, "items": [{"productId": "kettle", "quantity": 1}]})),
            invalid("items[0].productId"),
        ),
        case(
            "product id too long",
            "POST",
            "/api/v1/orders",
            Sent::Json(json!({"customerId": 5, "items": [{"productId": long(37), "quantity": 1}]})),
            invalid("items[0].productId"),
        ),
        case(
            "the same product twice",
            "POST",
            "/api/v1/orders",
            Sent::Json(
                json!({"customerId": 5, "items": [{"productId": kettle, "quantity": 1}, {"productId": kettle, "quantity": 1}]}),
            ),
            invalid("items[1].productId"),
        ),
        case(
            "an unknown product",
            "POST",
            "/api/v1/orders",
            Sent::Json(json!({"customerId": 5, "items": [{"productId": unknown, "quantity": 1}]})),
            (422, "unknown_product", Some("items[0].productId")),
        ),
        case(
            "an unknown customer",
            "POST",
            "/api/v1/orders",
            Sent::Json(json!({"customerId": 6, "items": [{"productId": kettle, "quantity": 1}]})),
            (422, "unknown_customer", Some("customerId")),
        ),
        case(
            "more than the stock",
            "POST",
            "/api/v1/orders",
            Sent::Json(item(json!(6))),
            (409, "insufficient_stock", Some("items[0].quantity")),
        ),
        // shop: DELETE /api/v1/orders/{id}
        case(
            "DELETE an unknown order",
            "DELETE",
            format!("/api/v1/orders/{unknown}"),
            Sent::None,
            (404, "not_found", None),
        ),
        case(
            "DELETE an order id that is not a UUID",
            "DELETE",
            "/api/v1/orders/%00",
            Sent::None,
            (400, "invalid_id", Some("id")),
        ),
    ];
    assert!(cases.len() >= 30);

    let before = rows(&db).await;
    let mut failures = Vec::new();
    for case in &cases {
        let (status, content_type, body) = send(&app, case).await;
        let expected = (case.status, Some(case.error), case.field);
        let got = (status, body["error"].as_str(), body["field"].as_str());
        if got != expected
            || content_type.as_deref() != Some("application/json")
            || !body["message"].is_string()
        {
            failures.push(format!(
                "{}: {} {} expected {expected:?}, got {got:?} {content_type:?} {body}",
                case.what, case.method, case.path
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(rows(&db).await, before, "a refused request wrote something");
    app.stop().await;
}
