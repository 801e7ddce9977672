//! The command API (DESIGN §2) and the record it puts into the log (§5).

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, describe, read_topic};

const SEED_CORRELATION: &str = "52f2665d-c087-42e5-a571-89061021a37c";

#[actix_rt::test]
async fn seed_examples_are_accepted_and_readable_through_the_query_api() {
    let app = TestApp::spawn().await;
    let before = Utc::now();

    let first = app.post(Some("2009-09-28T19:03:12Z"), None).await;
    assert_eq!(first.status().as_u16(), 202);
    let generated = first.headers()["correlationId"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        Uuid::parse_str(&generated).is_ok(),
        "a correlation id is generated: {generated}"
    );
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let first: serde_json::Value = first.json().await.unwrap();
    let first_id = Uuid::parse_str(first["id"].as_str().unwrap()).unwrap();
    assert_eq!(first_id.get_version_num(), 4);
    assert_eq!(location, format!("/api/v1/timestamp/{first_id}"));

    let second = app
        .post(Some("2006-01-02T15:04:05Z"), Some(SEED_CORRELATION))
        .await;
    assert_eq!(second.status().as_u16(), 202);
    assert_eq!(second.headers()["correlationId"], SEED_CORRELATION);
    let second_id: serde_json::Value = second.json().await.unwrap();
    let second_id = Uuid::parse_str(second_id["id"].as_str().unwrap()).unwrap();

    let now_id = app.accept(None).await;
    let after = Utc::now();

    assert_eq!(
        app.wait_visible(first_id).await["event_timestamp"],
        json!("2009-09-28T19:03:12Z")
    );
    let second = app.wait_visible(second_id).await;
    assert_eq!(second["command_id"], json!(second_id.to_string()));
    assert_eq!(second["event_timestamp"], json!("2006-01-02T15:04:05Z"));

    let now = app.wait_visible(now_id).await;
    let event: DateTime<Utc> = now["event_timestamp"].as_str().unwrap().parse().unwrap();
    assert!(
        before <= event && event <= after,
        "{event} is the server's time of the POST"
    );
    for record in [&second, &now] {
        let created: DateTime<Utc> = record["created_at"].as_str().unwrap().parse().unwrap();
        let slack = chrono::Duration::seconds(1);
        assert!(
            before - slack <= created && created <= after + slack,
            "created_at {created} is the acceptance time"
        );
        assert!(record["created_at"].as_str().unwrap().ends_with('Z'));
    }
    app.stop().await;
}

#[actix_rt::test]
async fn offsets_and_fractions_are_stored_as_the_utc_instant() {
    let app = TestApp::spawn().await;
    let cases = [
        ("2009-09-28T21:03:12+02:00", "2009-09-28T19:03:12Z"),
        ("2009-09-28T19:03:12.123456Z", "2009-09-28T19:03:12.123456Z"),
        ("2009-09-28T19:03:12.5-01:30", "2009-09-28T20:33:12.500Z"),
        (
            "2009-09-28T19:03:12.123456789Z",
            "2009-09-28T19:03:12.123456Z",
        ),
    ];
    for (given, stored) in cases {
        let id = app.accept(Some(given)).await;
        assert_eq!(
            app.wait_visible(id).await["event_timestamp"],
            json!(stored),
            "{given}"
        );
    }
    app.stop().await;
}

#[actix_rt::test]
async fn the_record_in_kafka_has_the_id_as_key_the_json_value_and_the_correlation_header() {
    let app = TestApp::spawn().await;
    let response = app
        .post(Some("2006-01-02T15:04:05Z"), Some(SEED_CORRELATION))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();

    let records = read_topic(&app.settings.kafka_topic).await;
    assert_eq!(records.len(), 1, "exactly one record per accepted command");
    let (_, key, value, correlation) = describe(&records[0]);
    assert_eq!(key, id);
    assert_eq!(
        value,
        format!(r#"{{"command_id":"{id}","event_timestamp":"2006-01-02T15:04:05Z"}}"#)
    );
    assert_eq!(correlation.as_deref(), Some(SEED_CORRELATION));
    app.stop().await;
}

#[actix_rt::test]
async fn malformed_commands_get_a_json_4xx_and_nothing_reaches_the_log() {
    let app = TestApp::spawn().await;
    let cases: [(&str, &str, &str, u16, &str); 9] = [
        (
            "POST",
            "/api/v1/timestamp/not-a-time",
            "",
            400,
            "invalid_timestamp",
        ),
        (
            "POST",
            "/api/v1/timestamp/2009-09-28",
            "",
            400,
            "invalid_timestamp",
        ),
        (
            "POST",
            "/api/v1/timestamp/2009-09-28T19:03:12",
            "",
            400,
            "invalid_timestamp",
        ),
        (
            "POST",
            "/api/v1/timestamp/2016-12-31T23:59:60Z",
            "",
            400,
            "invalid_timestamp",
        ),
        (
            "POST",
            "/api/v1/timestamp/0000-01-01T00:00:00Z",
            "",
            400,
            "invalid_timestamp",
        ),
        (
            "POST",
            "/api/v1/timestamp/2009-09-28T19:03:12Z",
            "bad id with spaces",
            400,
            "invalid_correlation_id",
        ),
        (
            "GET",
            "/api/v1/timestamp/2009-09-28T19:03:12Z",
            "",
            405,
            "method_not_allowed",
        ),
        ("DELETE", "/api/v1/timestamp", "", 405, "method_not_allowed"),
        ("POST", "/api/v2/timestamp", "", 404, "not_found"),
    ];
    for (method, path, correlation, status, code) in cases {
        let mut request = app.http.request(
            method.parse().unwrap(),
            format!("{}{path}", app.command_url()),
        );
        if !correlation.is_empty() {
            request = request.header("correlationId", correlation);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], json!(code), "{method} {path}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // Still serving, and the log holds only the one good command.
    app.accept(Some("2009-09-28T19:03:12Z")).await;
    assert_eq!(read_topic(&app.settings.kafka_topic).await.len(), 1);
    app.stop().await;
}
