//! The OpenAPI 3.1 document of each port: valid (checked by the Python
//! `openapi-spec-validator`, which `scripts/test.sh` installs), naming
//! exactly the routes the port serves, and matched by real answers.

use std::collections::{BTreeMap, BTreeSet};

use chronolog::config::Role;
use serde_json::{Value, json};

use crate::helpers::{TestApp, create_database, settings};

/// Every route of each port, as `METHOD path`: the API's contract.
pub const OPERATIONS: [&str; 4] = [
    "get /health",
    "get /ready",
    "get /metrics",
    "get /openapi.json",
];
const COMMAND: [&str; 11] = [
    "post /api/v1/timestamp",
    "post /api/v1/timestamp/{timestamp}",
    "post /app",
    "post /accounts/customer/create",
    "get /accounts/customer/{id}",
    "delete /accounts/customer/{id}",
    "post /api/v1/products",
    "put /api/v1/products/{id}",
    "delete /api/v1/products/{id}",
    "post /api/v1/orders",
    "delete /api/v1/orders/{id}",
];
pub const QUERY: [&str; 6] = [
    "get /api/v1/timestamp/{id}",
    "get /orders/list",
    "get /orders/order/{customerId}",
    "get /api/v1/orders/{orderId}",
    "get /api/v1/products/{id}",
    "get /api/v1/products/{id}/sales",
];

pub async fn document(http: &reqwest::Client, base: &str) -> Value {
    let response = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("application/json")
    );
    response.json().await.expect("JSON")
}

pub fn operations(doc: &Value) -> BTreeSet<String> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| format!("{method} {path}"))
        })
        .collect()
}

/// Validates the document with the reference validator of the OpenAPI
/// Initiative's schemas.
pub fn validate_document(doc: &Value) {
    let dir = std::env::temp_dir().join(crate::helpers::unique("openapi"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("openapi.json");
    std::fs::write(&file, doc.to_string()).expect("written");
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate\n\
             from openapi_spec_validator.validation import OpenAPIV31SpecValidator\n\
             validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)\n\
             print('valid')",
        ])
        .arg(&file)
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'openapi_spec_validator'"),
        "openapi-spec-validator is not installed: scripts/test.sh installs it"
    );
    assert!(output.status.success(), "invalid document: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "valid");
}

/// Checks `value` against `schema` for what chronolog's schemas use:
/// `$ref`, `allOf`, `type` (one or several), `properties`, `required`, `format`
/// (`uuid`, `date-time`), `additionalProperties`, `items`. Returns the
/// first mismatch.
pub fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: unsupported $ref {reference}"))?;
        return check(doc, &doc["components"]["schemas"][name], value, at);
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        check(doc, part, value, at)?;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed = types.is_empty()
        || types.contains(&kind)
        || (kind == "integer" && types.contains(&"number"));
    if !allowed {
        return Err(format!("{at}: {kind}, schema says {types:?}"));
    }
    if let (Some(format), Value::String(text)) = (schema["format"].as_str(), value) {
        let ok = match format {
            "uuid" => uuid::Uuid::parse_str(text).is_ok(),
            "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            _ => true,
        };
        if !ok {
            return Err(format!("{at}: '{text}' is not a {format}"));
        }
    }
    if let Value::Object(fields) = value {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !fields.contains_key(name) {
                return Err(format!("{at}: lacks required '{name}'"));
            }
        }
        for (name, field) in fields {
            let path = format!("{at}.{name}");
            match (&schema["properties"][name], &schema["additionalProperties"]) {
                (Value::Null, Value::Bool(false)) => {
                    return Err(format!("{path}: not in the schema"));
                }
                (Value::Null, Value::Null | Value::Bool(true)) => {}
                (Value::Null, extra) => check(doc, extra, field, &path)?,
                (property, _) => check(doc, property, field, &path)?,
            }
        }
    }
    if let (Value::Array(items), item_schema) = (value, &schema["items"])
        && !item_schema.is_null()
    {
        for (i, item) in items.iter().enumerate() {
            check(doc, item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Sends `method path` and checks that the status is one the document
/// gives for that operation and that a JSON body matches its schema.
async fn exercise(
    http: &reqwest::Client,
    doc: &Value,
    base: &str,
    operation: &str,
    concrete: &str,
    expected_status: u16,
) -> Value {
    exercise_with(http, doc, base, operation, concrete, None, expected_status).await
}

/// [`exercise`] with a JSON request body; returns the answer's JSON body
/// (`null` when it has none).
async fn exercise_with(
    http: &reqwest::Client,
    doc: &Value,
    base: &str,
    operation: &str,
    concrete: &str,
    body: Option<Value>,
    expected_status: u16,
) -> Value {
    let (method, path) = operation.split_once(' ').expect("METHOD path");
    let url = format!("{base}{concrete}");
    let mut request = match method {
        "get" => http.get(url),
        "post" => http.post(url),
        "put" => http.put(url),
        "delete" => http.delete(url),
        other => panic!("no request for {other}"),
    };
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request
        .header("correlationId", "openapi-check")
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    assert_eq!(status, expected_status, "{operation} as {concrete}");
    let documented = &doc["paths"][path][method]["responses"][status.to_string()];
    assert!(
        documented.is_object(),
        "{operation}: status {status} is not documented"
    );
    let body = response.text().await.expect("body");
    if documented["content"].is_null() {
        assert!(body.is_empty(), "{operation}: undocumented body {body}");
        return Value::Null;
    }
    let Some(schema) = documented["content"]["application/json"]["schema"].as_object() else {
        return Value::Null;
    };
    let value: Value = serde_json::from_str(&body).expect("a JSON body");
    check(doc, &Value::Object(schema.clone()), &value, operation)
        .unwrap_or_else(|e| panic!("{operation}: {e}\n{body}"));
    value
}

#[actix_rt::test]
async fn every_port_documents_exactly_its_routes_and_answers_as_documented() {
    let app = TestApp::spawn().await;
    let (command, query) = (app.command_url(), app.query_url());

    let command_doc = document(&app.http, &command).await;
    let query_doc = document(&app.http, &query).await;
    for doc in [&command_doc, &query_doc] {
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "chronolog");
        validate_document(doc);
    }
    let set = |routes: &[&str]| routes.iter().map(|r| (*r).to_owned()).collect();
    assert_eq!(
        operations(&command_doc),
        set(&[&OPERATIONS[..], &COMMAND[..]].concat())
    );
    assert_eq!(
        operations(&query_doc),
        set(&[&OPERATIONS[..], &QUERY[..]].concat())
    );
    // A method a path does not have is answered 405 with `Allow` naming
    // exactly the methods the document gives it (and HEAD with GET).
    for (doc, base) in [(&command_doc, &command), (&query_doc, &query)] {
        let mut methods: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for operation in operations(doc) {
            let (method, path) = operation.split_once(' ').unwrap();
            let documented = methods.entry(path.to_owned()).or_default();
            documented.insert(method.to_uppercase());
            if method == "get" {
                documented.insert("HEAD".to_owned());
            }
        }
        for (path, documented) in methods {
            let concrete: Vec<&str> = path
                .split('/')
                .map(|s| if s.starts_with('{') { "1" } else { s })
                .collect();
            let url = format!("{base}{}", concrete.join("/"));
            let response = app.http.patch(&url).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 405, "PATCH {url}");
            let allow: BTreeSet<String> = response.headers()["allow"]
                .to_str()
                .unwrap()
                .split(", ")
                .map(str::to_owned)
                .collect();
            assert_eq!(allow, documented, "PATCH {url}");
        }
    }
    let record = &command_doc["components"]["schemas"]["Accepted"];
    assert_eq!(record["required"], json!(["id", "partition", "offset"]));
    let view = &query_doc["components"]["schemas"]["RecordView"];
    assert!(
        view["properties"]["id"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("original timestamp service")),
        "the document says why `id` repeats `command_id`: {view}"
    );

    for (doc, base) in [(&command_doc, &command), (&query_doc, &query)] {
        for operation in OPERATIONS {
            let path = operation
                .split_once(' ')
                .map(|(_, p)| p)
                .unwrap_or_default();
            exercise(&app.http, doc, base, operation, path, 200).await;
        }
    }
    let c = &command_doc;
    exercise(&app.http, c, &command, COMMAND[0], "/api/v1/timestamp", 202).await;
    exercise(
        &app.http,
        c,
        &command,
        COMMAND[1],
        "/api/v1/timestamp/2009-09-28T19:03:12Z",
        202,
    )
    .await;
    exercise(
        &app.http,
        c,
        &command,
        COMMAND[1],
        "/api/v1/timestamp/yesterday",
        400,
    )
    .await;
    exercise(&app.http, c, &command, COMMAND[2], "/app", 200).await;

    // The accounts and shop routes, each answer checked against its schema.
    let customer_id = 1_000_000 + i64::from(rand_suffix());
    let customer = json!({
        "id": customer_id,
        "name": {"title": "Ms", "firstName": "Ada", "lastName": "Lovelace"},
        "contact": {"email": "ada@example.com"},
        "addresses": [{"type": "SHIPPING", "address1": "1 Analytical Way", "city": "London"}],
        "creditCards": [{"type": "VISA", "number": "4111 1111 1111 1111", "expiration": "12/30"}],
    });
    let saved = exercise_with(
        &app.http,
        c,
        &command,
        COMMAND[3],
        "/accounts/customer/create",
        Some(customer),
        200,
    )
    .await;
    assert_eq!(saved["id"], customer_id);
    let path = format!("/accounts/customer/{customer_id}");
    let stored = exercise(&app.http, c, &command, COMMAND[4], &path, 200).await;
    assert_eq!(stored["creditCards"][0]["number"], "************1111");
    exercise_with(
        &app.http,
        c,
        &command,
        COMMAND[3],
        "/accounts/customer/create",
        Some(json!({"id": "x"})),
        400,
    )
    .await;
    exercise(&app.http, c, &command, COMMAND[5], &path, 204).await;
    exercise(&app.http, c, &command, COMMAND[4], &path, 404).await;

    let product = exercise_with(
        &app.http,
        c,
        &command,
        COMMAND[6],
        "/api/v1/products",
        Some(json!({"name": "Difference Engine", "price": "19.99", "stock": 3})),
        201,
    )
    .await;
    let product_id = product["productId"].as_str().expect("an id").to_owned();
    let path = format!("/api/v1/products/{product_id}");
    let changed = exercise_with(
        &app.http,
        c,
        &command,
        COMMAND[7],
        &path,
        Some(json!({"price": 17.5})),
        200,
    )
    .await;
    assert_eq!(changed["price"], "17.50");
    // The deleted customer is unknown to shop: its copy is brought up to
    // the deletion here, because the app's own copy consumer may have
    // copied the creation and not yet the deletion (an order would then
    // be 201).
    let db = app.settings.database_url.expose().to_owned();
    crate::shop_views::project_outbox(&db).await;
    exercise_with(
        &app.http,
        c,
        &command,
        COMMAND[9],
        "/api/v1/orders",
        Some(
            json!({"customerId": customer_id, "items": [{"productId": product_id, "quantity": 1}]}),
        ),
        422,
    )
    .await;
    exercise_with(
        &app.http,
        c,
        &command,
        COMMAND[9],
        "/api/v1/orders",
        Some(
            json!({"customerId": customer_id, "items": [{"productId": product_id, "quantity": 0}]}),
        ),
        400,
    )
    .await;
    exercise(&app.http, c, &command, COMMAND[8], &path, 204).await;
    exercise(&app.http, c, &command, COMMAND[8], &path, 404).await;
    let absent = uuid::Uuid::new_v4();
    exercise(
        &app.http,
        c,
        &command,
        COMMAND[10],
        &format!("/api/v1/orders/{absent}"),
        404,
    )
    .await;

    let id = app.accept(Some("2009-09-28T19:03:12Z")).await;
    app.wait_visible(id).await;
    let q = &query_doc;
    exercise(
        &app.http,
        q,
        &query,
        QUERY[0],
        &format!("/api/v1/timestamp/{id}"),
        200,
    )
    .await;
    let absent = uuid::Uuid::new_v4();
    exercise(
        &app.http,
        q,
        &query,
        QUERY[0],
        &format!("/api/v1/timestamp/{absent}"),
        404,
    )
    .await;
    exercise(
        &app.http,
        q,
        &query,
        QUERY[0],
        "/api/v1/timestamp/not-a-uuid",
        400,
    )
    .await;

    // shop's views, fed from the outbox as the consumer does: a customer
    // known to shop orders a product that exists.
    let buyer = customer_id + 1;
    let customer = json!({
        "id": buyer,
        "name": {"firstName": "Grace", "lastName": "Hopper"},
        "addresses": [{"type": "SHIPPING", "address1": "1 Navy Way", "city": "Arlington"}],
    });
    exercise_with(
        &app.http,
        c,
        &command,
        COMMAND[3],
        "/accounts/customer/create",
        Some(customer),
        200,
    )
    .await;
    crate::shop_views::project_outbox(&db).await;
    let product = exercise_with(
        &app.http,
        c,
        &command,
        COMMAND[6],
        "/api/v1/products",
        Some(json!({"name": "Compiler", "price": "5.00", "stock": 2})),
        201,
    )
    .await;
    let product_id = product["productId"].as_str().expect("an id").to_owned();
    let order = exercise_with(
        &app.http,
        c,
        &command,
        COMMAND[9],
        "/api/v1/orders",
        Some(json!({"customerId": buyer, "items": [{"productId": product_id, "quantity": 1}]})),
        201,
    )
    .await;
    let order_id = order["orderId"].as_str().expect("an id").to_owned();
    crate::shop_views::project_outbox(&db).await;
    let page = exercise(&app.http, q, &query, QUERY[1], "/orders/list?limit=1", 200).await;
    assert_eq!(page["orders"][0]["orderId"], json!(order_id));
    exercise(&app.http, q, &query, QUERY[1], "/orders/list?limit=0", 400).await;
    let mine = exercise(
        &app.http,
        q,
        &query,
        QUERY[2],
        &format!("/orders/order/{buyer}"),
        200,
    )
    .await;
    assert_eq!(mine["name"]["firstName"], "Grace");
    exercise(&app.http, q, &query, QUERY[2], "/orders/order/0", 400).await;
    exercise(
        &app.http,
        q,
        &query,
        QUERY[2],
        &format!("/orders/order/{}", buyer + 1),
        404,
    )
    .await;
    let doc = exercise(
        &app.http,
        q,
        &query,
        QUERY[3],
        &format!("/api/v1/orders/{order_id}"),
        200,
    )
    .await;
    assert_eq!(doc["customerName"]["lastName"], "Hopper");
    exercise(&app.http, q, &query, QUERY[3], "/api/v1/orders/x", 400).await;
    exercise(
        &app.http,
        q,
        &query,
        QUERY[3],
        &format!("/api/v1/orders/{absent}"),
        404,
    )
    .await;
    let shown = exercise(
        &app.http,
        q,
        &query,
        QUERY[4],
        &format!("/api/v1/products/{product_id}"),
        200,
    )
    .await;
    assert_eq!(shown["stock"], 1);
    exercise(&app.http, q, &query, QUERY[4], "/api/v1/products/x", 400).await;
    exercise(
        &app.http,
        q,
        &query,
        QUERY[4],
        &format!("/api/v1/products/{absent}"),
        404,
    )
    .await;
    let sales = exercise(
        &app.http,
        q,
        &query,
        QUERY[5],
        &format!("/api/v1/products/{product_id}/sales"),
        200,
    )
    .await;
    assert_eq!(sales[0]["productTotalPrice"], "5.00");
    exercise(
        &app.http,
        q,
        &query,
        QUERY[5],
        "/api/v1/products/x/sales",
        400,
    )
    .await;
    exercise(
        &app.http,
        q,
        &query,
        QUERY[5],
        &format!("/api/v1/products/{absent}/sales"),
        404,
    )
    .await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_consumer_port_documents_the_operations_endpoints() {
    let app = TestApp::spawn_with(settings(&create_database().await), &[Role::Consumer]).await;
    let base = format!(
        "http://{}",
        app.app
            .as_ref()
            .and_then(|a| a.consumer_addr())
            .expect("consumer port")
    );
    let doc = document(&app.http, &base).await;
    validate_document(&doc);
    assert_eq!(
        operations(&doc),
        OPERATIONS.iter().map(|r| (*r).to_owned()).collect()
    );
    for operation in OPERATIONS {
        let path = operation
            .split_once(' ')
            .map(|(_, p)| p)
            .unwrap_or_default();
        exercise(&app.http, &doc, &base, operation, path, 200).await;
    }
    app.stop().await;
}

/// A number no other run of this test uses for its customer id.
fn rand_suffix() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32 % 1_000_000
}
