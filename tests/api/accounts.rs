//! The accounts context: customers created, updated, read and deleted
//! through the command API, stored in 3NF, published through the outbox
//! with their card numbers masked everywhere.

use std::io::Read;

use chronolog::config::{Role, Settings};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use serde_json::{Value, json};

use crate::helpers::{
    BIN, ChildProcess, TestApp, create_database, eventually, read_topic, settings,
};

/// A command-role application with its own database and event topics.
pub async fn shop_app() -> TestApp {
    TestApp::spawn_with(shop_settings(&create_database().await), &[Role::Command]).await
}

/// Test settings whose event topics no other test uses.
pub fn shop_settings(database_url: &str) -> Settings {
    let mut settings = settings(database_url);
    settings.outbox_topic_prefix = format!("{}.", settings.kafka_topic);
    settings
}

/// The topic of `aggregate`'s events (`accounts.customer.change`, ...).
pub fn topic(settings: &Settings, name: &str) -> String {
    format!("{}{name}", settings.outbox_topic_prefix)
}

/// An answer of the command API.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// `method path` with an optional body.
pub async fn call(app: &TestApp, method: &str, path: &str, body: Option<Body>) -> Answer {
    let url = format!("{}{path}", app.command_url());
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.http.request(method, url);
    match body {
        Some(Body::Json(value)) => request = request.json(&value),
        None => {}
    }
    let response = request.send().await.expect("the command API answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    Answer { status, body }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    Json(Value),
}

pub async fn post(app: &TestApp, path: &str, body: Value) -> Answer {
    call(app, "POST", path, Some(Body::Json(body))).await
}

pub async fn get(app: &TestApp, path: &str) -> Answer {
    call(app, "GET", path, None).await
}

pub async fn delete(app: &TestApp, path: &str) -> Answer {
    call(app, "DELETE", path, None).await
}

/// The accounts service's sample customer, with a full card number.
pub fn john(id: i64) -> Value {
    json!({
        "id": id,
        "name": {"title": "Mr.", "firstName": "John", "middleName": "S.",
                 "lastName": "Doe", "suffix": "Jr."},
        "contact": {"primaryPhone": "555-666-7777", "secondaryPhone": "555-444-9898",
                    "email": "john.doe@internet.com"},
        "addresses": [
            {"type": "BILLING", "description": "My cc billing address",
             "address1": "123 Oak Street", "address2": null, "city": "Sunrise",
             "state": "CA", "postalCode": "12345"},
            {"type": "SHIPPING", "description": "My home address",
             "address1": "123 Oak Street", "address2": null, "city": "Sunrise",
             "state": "CA", "postalCode": "12345"}
        ],
        "creditCards": [
            {"type": "VISA", "description": "My personal credit card",
             "number": "4916-6734-7572-5015", "expiration": "11/19",
             "nameOnCard": "John S. Doe"}
        ]
    })
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The result of a `SELECT count(*) AS n ...`.
pub async fn count(database_url: &str, sql: &str) -> i64 {
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

/// The value of header `name` of a record.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key == name)
            .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
    })
}

/// The events of `key` on `topic` once there are at least `n` of them.
pub async fn events(topic: &str, key: &str, n: usize) -> Vec<(OwnedMessage, Value)> {
    eventually(&format!("{n} events of {key} on {topic}"), || async {
        let records: Vec<(OwnedMessage, Value)> = read_topic(topic)
            .await
            .into_iter()
            .filter(|m| m.key() == Some(key.as_bytes()))
            .map(|m| {
                let value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                (m, value)
            })
            .collect();
        (records.len() >= n).then_some(records)
    })
    .await
}

#[actix_rt::test]
async fn a_customer_is_created_updated_read_and_deleted_with_its_events_in_order() {
    let app = shop_app().await;
    let db = app.settings.database_url.expose().to_owned();
    let created = post(&app, "/accounts/customer/create", john(123456)).await;
    assert_eq!(
        (created.status, &created.body),
        (200, &json!({"id": 123456, "version": 1}))
    );

    let read = get(&app, "/accounts/customer/123456").await;
    assert_eq!(read.status, 200);
    let mut expected = john(123456);
    expected["creditCards"][0]["number"] = json!("************5015");
    expected["version"] = json!(1);
    assert_eq!(read.body, expected);

    // 3NF: one row per name and contact, one per address and card.
    for (table, rows) in [
        ("accounts.customers", 1),
        ("accounts.customer_names", 1),
        ("accounts.customer_contacts", 1),
        ("accounts.addresses", 2),
        ("accounts.credit_cards", 1),
    ] {
        let sql = format!("SELECT count(*) AS n FROM {table}");
        assert_eq!(count(&db, &sql).await, rows, "{table}");
    }

    let mut moved = john(123456);
    moved["addresses"] = json!([{"type": "SHIPPING", "address1": "1 New Road", "city": "Dusk"}]);
    moved["creditCards"] = json!([]);
    let updated = post(&app, "/accounts/customer/create", moved).await;
    assert_eq!(
        (updated.status, &updated.body),
        (200, &json!({"id": 123456, "version": 2}))
    );
    let read = get(&app, "/accounts/customer/123456").await;
    assert_eq!(
        read.body["addresses"],
        json!([{"type": "SHIPPING", "description": null, "address1": "1 New Road",
                "address2": null, "city": "Dusk", "state": null, "postalCode": null}])
    );
    assert_eq!(read.body["creditCards"], json!([]));
    assert_eq!(read.body["version"], 2);
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM accounts.addresses").await,
        1
    );

    assert_eq!(delete(&app, "/accounts/customer/123456").await.status, 204);
    let gone = get(&app, "/accounts/customer/123456").await;
    assert_eq!(
        (gone.status, gone.body["error"].as_str()),
        (404, Some("not_found"))
    );
    let again = delete(&app, "/accounts/customer/123456").await;
    assert_eq!(again.status, 404);
    for table in ["customers", "customer_names", "addresses", "credit_cards"] {
        let sql = format!("SELECT count(*) AS n FROM accounts.{table}");
        assert_eq!(count(&db, &sql).await, 0, "{table}");
    }

    // Created again, the customer's versions carry on: a consumer that
    // saw the deletion takes the new customer as newer.
    let back = post(&app, "/accounts/customer/create", john(123456)).await;
    assert_eq!(back.body, json!({"id": 123456, "version": 4}));

    let topic = topic(&app.settings, "accounts.customer.change");
    let events = events(&topic, "123456", 4).await;
    let seen: Vec<(String, i64, Option<String>)> = events
        .iter()
        .map(|(m, v)| {
            (
                v["type"].as_str().unwrap().to_owned(),
                v["aggregateVersion"].as_i64().unwrap(),
                header(m, "eventType"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("CustomerCreated".into(), 1, Some("CustomerCreated".into())),
            ("CustomerUpdated".into(), 2, Some("CustomerUpdated".into())),
            ("CustomerDeleted".into(), 3, Some("CustomerDeleted".into())),
            ("CustomerCreated".into(), 4, Some("CustomerCreated".into())),
        ]
    );
    let (_, first) = &events[0];
    assert_eq!(first["version"], 1);
    assert_eq!(first["aggregateId"], "123456");
    assert_eq!(
        first["data"]["creditCards"][0]["number"],
        "************5015"
    );
    assert_eq!(first["data"]["name"]["lastName"], "Doe");
    assert_eq!(events[2].1["data"], json!({"id": 123456}));
    app.stop().await;
}

#[actix_rt::test]
async fn the_correlation_id_of_the_request_is_a_header_of_its_event() {
    let app = shop_app().await;
    let response = app
        .http
        .post(format!("{}/accounts/customer/create", app.command_url()))
        .header("correlationId", "corr-accounts-1")
        .json(&john(77))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let topic = topic(&app.settings, "accounts.customer.change");
    let events = events(&topic, "77", 1).await;
    assert_eq!(
        header(&events[0].0, "correlationId").as_deref(),
        Some("corr-accounts-1")
    );
    app.stop().await;
}

/// A `chronolog serve --role command` process with `settings`' database,
/// broker and topics, logging JSON at `level` into `log_path`; answers it
/// and the address its command API listens on.
pub async fn spawn_command_binary(
    settings: &Settings,
    log_path: &std::path::Path,
    level: &str,
) -> (ChildProcess, String) {
    let log = std::fs::File::create(log_path).unwrap();
    let child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--role",
            "command",
            "--command-addr",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", settings.database_url.expose())
        .env("KAFKA_BROKERS", &settings.kafka_brokers)
        .env("KAFKA_TOPIC", &settings.kafka_topic)
        .env("KAFKA_TOPIC_RETENTION_MS", i64::MAX.to_string())
        .env("OUTBOX_TOPIC_PREFIX", &settings.outbox_topic_prefix)
        .env("OUTBOX_BATCH_SIZE", settings.outbox_batch_size.to_string())
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", level)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let child = ChildProcess::new(child);
    let command = eventually("the binary listens", || async {
        let mut text = String::new();
        std::fs::File::open(log_path)
            .ok()?
            .read_to_string(&mut text)
            .ok()?;
        text.lines().find_map(|line| {
            let line: Value = serde_json::from_str(line).ok()?;
            (line["message"] == "listening" && line["server"] == "command")
                .then(|| line["addr"].as_str().map(str::to_owned))
                .flatten()
        })
    })
    .await;
    (child, command)
}

/// Every spelling of the full number that must never be seen.
const FULL_NUMBERS: [&str; 3] = ["4916-6734-7572-5015", "4916673475725015", "491667347572"];

fn assert_no_card_number(place: &str, text: &str) {
    for number in FULL_NUMBERS {
        assert!(
            !text.contains(number),
            "the full card number {number} is in {place}"
        );
    }
}

#[actix_rt::test]
async fn a_full_card_number_is_in_no_table_no_event_and_no_log_line() {
    let database_url = create_database().await;
    let settings = shop_settings(&database_url);
    let log_path =
        std::env::temp_dir().join(format!("chronolog-cards-{}.log", uuid::Uuid::new_v4()));
    // Every log line chronolog writes at debug, its dependencies' included.
    let (mut child, command) = spawn_command_binary(&settings, &log_path, "debug").await;
    let http = reqwest::Client::new();
    let base = format!("http://{command}");
    let mut spaced = john(4242);
    spaced["creditCards"][0]["number"] = json!("4916 6734 7572 5015");
    let mut plain = john(4343);
    plain["creditCards"][0]["number"] = json!("4916673475725015");
    for body in [john(4141), spaced, plain] {
        let response = http
            .post(format!("{base}/accounts/customer/create"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
    // A refused number is not echoed either.
    let mut bad = john(4444);
    bad["creditCards"][0]["number"] = json!("4916-6734-7572-5015-99999");
    let refused = http
        .post(format!("{base}/accounts/customer/create"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let refused = refused.text().await.unwrap();
    assert_no_card_number("the refusal", &refused);
    assert!(refused.contains("creditCards[0].number"), "{refused}");

    let topic = topic(&settings, "accounts.customer.change");
    for key in ["4141", "4242", "4343"] {
        let events = events(&topic, key, 1).await;
        assert_eq!(
            events[0].1["data"]["creditCards"][0]["number"],
            "************5015"
        );
    }
    let records: Vec<String> = read_topic(&topic)
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(records.len(), 3);
    assert_no_card_number("the topic", &records.join("\n"));

    let dump = std::process::Command::new("pg_dump")
        .args(["--data-only", &database_url])
        .output()
        .expect("pg_dump runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("************5015"),
        "the masked number is stored"
    );
    assert_no_card_number("the database", &dump);

    child.kill();
    let mut logged = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut logged)
        .unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(logged.contains("customer saved"), "the log was captured");
    assert_no_card_number("the log", &logged);
}
