//! The original timestamp service's contract, exactly as its clients and its
//! own end-to-end suite use it: `POST /app` on the command service answers
//! `200 {"id"}`, and the query service answers `id`, `event_timestamp` and
//! `created_at` for that id, each record readable within the suite's
//! patience (10 retries, 250 ms apart).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    BIN, ChildProcess, TestApp, brokers, create_database, describe, eventually, read_topic, unique,
};

/// The suite's client retries a `404` this many times...
const RETRIES: usize = 10;
/// ...this long apart.
const RETRY_WAIT: Duration = Duration::from_millis(250);

/// A correlation id as the suite makes them (`uuid.NewUUID()`: version 1).
const SUITE_CORRELATION: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

/// The suite's `submitCommand`: `POST /app` with a correlation id; anything
/// but a `200` fails the test; the id is read from the body's `id`.
async fn submit_command(http: &reqwest::Client, command_url: &str) -> Uuid {
    let response = http
        .post(format!("{command_url}/app"))
        .header("correlationId", SUITE_CORRELATION)
        .send()
        .await
        .expect("the command service answers");
    assert_eq!(response.status().as_u16(), 200, "POST /app");
    let body: serde_json::Value = response.json().await.expect("a JSON body");
    Uuid::parse_str(body["id"].as_str().expect("an id")).expect("a UUID")
}

/// The suite's `getTimestampRecord`: `GET /api/v1/timestamp/{id}`, retried
/// on `404` at most [`RETRIES`] times [`RETRY_WAIT`] apart (the client's
/// patience is the contract under test, hence the fixed pauses), the body
/// read as a map of strings, as the suite's Go client reads it.
async fn get_timestamp_record(
    http: &reqwest::Client,
    query_url: &str,
    id: Uuid,
) -> Result<HashMap<String, String>, String> {
    for attempt in 0..=RETRIES {
        let response = http
            .get(format!("{query_url}/api/v1/timestamp/{id}"))
            .header("correlationId", SUITE_CORRELATION)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => {
                return response
                    .json::<HashMap<String, String>>()
                    .await
                    .map_err(|e| format!("not a map of strings: {e}"));
            }
            404 if attempt < RETRIES => tokio::time::sleep(RETRY_WAIT).await,
            status => return Err(format!("status {status} for {id}")),
        }
    }
    Err(format!("{id} not readable within the suite's patience"))
}

/// The suite's check of one record: `id`, `event_timestamp`, `created_at`.
fn check_record(record: &HashMap<String, String>, id: Uuid) {
    assert_eq!(record.get("id"), Some(&id.to_string()), "{record:?}");
    for field in ["event_timestamp", "created_at"] {
        let value = record
            .get(field)
            .unwrap_or_else(|| panic!("no {field}: {record:?}"));
        value
            .parse::<DateTime<Utc>>()
            .unwrap_or_else(|e| panic!("{field} {value} is not RFC 3339: {e}"));
    }
}

#[actix_rt::test]
async fn post_app_answers_as_the_original_service_did() {
    let app = TestApp::spawn().await;
    let before = Utc::now();
    let response = app
        .http
        .post(format!("{}/app", app.command_url()))
        .header("correlationId", SUITE_CORRELATION)
        .send()
        .await
        .unwrap();
    let after = Utc::now();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["correlationId"], SUITE_CORRELATION);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().get("location").is_none());
    let body: serde_json::Value = response.json().await.unwrap();
    let id = Uuid::parse_str(body["id"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"id": id.to_string()}),
        "the id and nothing else"
    );
    assert_eq!(id.get_version_num(), 4);

    // Sent only once the broker had it: the record is in the log.
    let records = read_topic(&app.settings.kafka_topic).await;
    assert_eq!(records.len(), 1);
    let (_, key, value, correlation) = describe(&records[0]);
    assert_eq!(key, id.to_string());
    assert_eq!(correlation.as_deref(), Some(SUITE_CORRELATION));
    let value: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(value["command_id"], json!(id.to_string()));

    let record = get_timestamp_record(&app.http, &app.query_url(), id)
        .await
        .unwrap();
    check_record(&record, id);
    let event: DateTime<Utc> = record["event_timestamp"].parse().unwrap();
    assert!(
        before <= event && event <= after,
        "{event} is the server's time of the POST"
    );
    assert_eq!(value["event_timestamp"], json!(record["event_timestamp"]));
    app.stop().await;
}

#[actix_rt::test]
async fn post_app_refuses_bad_input_as_the_versioned_route_does() {
    let app = TestApp::spawn().await;
    let url = format!("{}/app", app.command_url());
    let cases = [
        (
            "POST",
            Some(("correlationId", "has spaces")),
            400,
            "invalid_correlation_id",
        ),
        (
            "POST",
            Some(("Idempotency-Key", "has spaces")),
            400,
            "invalid_idempotency_key",
        ),
        ("GET", None, 405, "method_not_allowed"),
        ("PUT", None, 405, "method_not_allowed"),
    ];
    for (method, header, status, code) in cases {
        let mut request = app.http.request(method.parse().unwrap(), &url);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {header:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], json!(code), "{method} {header:?}: {body}");
    }
    assert!(read_topic(&app.settings.kafka_topic).await.is_empty());
    app.stop().await;
}

/// The suite's `TestE2E_bunkRecordsCreated`: 1,000 commands one after the
/// other, then each record read with the suite's patience.
async fn bulk_records_created(http: &reqwest::Client, command_url: &str, query_url: &str) {
    let mut ids = Vec::with_capacity(1000);
    for _ in 0..1000 {
        ids.push(submit_command(http, command_url).await);
    }
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000, "1000 ids");
    for id in ids {
        let record = get_timestamp_record(http, query_url, id).await;
        check_record(&record.unwrap_or_else(|e| panic!("{e}")), id);
    }
}

#[actix_rt::test]
async fn a_thousand_commands_through_app_are_each_readable_within_the_suites_patience() {
    let app = TestApp::spawn().await;
    bulk_records_created(&app.http, &app.command_url(), &app.query_url()).await;
    app.stop().await;
}

/// A `chronolog serve` process whose JSON log lines are kept.
struct Service {
    process: ChildProcess,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Service {
    /// `chronolog serve` with `args`, against `database_url` and `topic`.
    fn start(args: &[&str], database_url: &str, topic: &str) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env("DATABASE_URL", database_url)
            .env("KAFKA_BROKERS", brokers())
            .env("KAFKA_TOPIC", topic)
            .env("KAFKA_GROUP_ID", format!("{topic}-projector"))
            .env("KAFKA_PARTITIONS", "3")
            // tansu 0.6.0 deletes every record of a topic whose retention.ms is -1.
            .env("KAFKA_TOPIC_RETENTION_MS", i64::MAX.to_string())
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(parsed) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(parsed);
                }
            }
        });
        Self {
            process: ChildProcess::new(child),
            lines,
        }
    }

    /// The base URL the process's `server` listens on, once it does.
    async fn url(&mut self, server: &str) -> String {
        let lines = self.lines.clone();
        let pid = self.process.child().id();
        let addr = eventually(&format!("the {server} process (pid {pid}) listens"), || {
            let lines = lines.clone();
            async move {
                lines.lock().unwrap().iter().find_map(|l| {
                    (l["message"] == "listening" && l["server"] == server)
                        .then(|| l["addr"].as_str().unwrap_or_default().to_owned())
                })
            }
        })
        .await;
        format!("http://{addr}")
    }
}

/// The suite's health checks: `GET /health` with a correlation id, `200`.
async fn healthy(http: &reqwest::Client, url: &str) {
    let response = http
        .get(format!("{url}/health"))
        .header("correlationId", SUITE_CORRELATION)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{url}/health");
}

/// The original's layout: three processes, the command service, the
/// consumer's health endpoint and the query service, each on its own port
/// (7080, 7081 and 7082 in production; any free port here), started with the
/// flags the README gives, then the suite's whole flow against them.
#[actix_rt::test]
async fn the_original_suite_passes_against_three_chronolog_processes() {
    let database_url = create_database().await;
    let topic = unique("chronolog-compat");
    let any = "127.0.0.1:0";
    let mut command = Service::start(
        &["--role", "command", "--command-addr", any],
        &database_url,
        &topic,
    );
    let mut consumer = Service::start(
        &["--role", "consumer", "--consumer-addr", any],
        &database_url,
        &topic,
    );
    let mut query = Service::start(
        &["--role", "query", "--query-addr", any],
        &database_url,
        &topic,
    );
    let command_url = command.url("command").await;
    let consumer_url = consumer.url("consumer").await;
    let query_url = query.url("query").await;
    let http = reqwest::Client::new();

    // Deployed and ready, as the suite expects: the consumer has its partitions.
    eventually("the consumer has its partitions", || async {
        let response = http
            .get(format!("{consumer_url}/ready"))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        let assigned = body["components"]["partitions"]["assigned"]
            .as_array()?
            .len();
        (assigned == 3).then_some(())
    })
    .await;

    // TestCommandService_healthy, TestConsumerService_healthy, TestQueryService_healthy.
    for url in [&command_url, &consumer_url, &query_url] {
        healthy(&http, url).await;
    }

    // TestE2E_recordCreated.
    let id = submit_command(&http, &command_url).await;
    let record = get_timestamp_record(&http, &query_url, id).await;
    check_record(&record.unwrap_or_else(|e| panic!("{e}")), id);

    // TestE2E_bunkRecordsCreated.
    bulk_records_created(&http, &command_url, &query_url).await;

    // Each role stops cleanly on SIGTERM, as the original's containers did.
    for role in [&mut command, &mut consumer, &mut query] {
        let pid = role.process.child().id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let exit = crate::helpers::wait_for_exit(role.process.child()).await;
        assert!(exit.success(), "{exit}");
    }
}
