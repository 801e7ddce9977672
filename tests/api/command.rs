//! The command API and the record it puts into the log.

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

/// One malformed request: method, port, path, extra header, body size, and
/// the expected status, error code and a word the message must contain.
struct Bad {
    method: &'static str,
    query_port: bool,
    path: String,
    correlation: Option<Vec<u8>>,
    body: usize,
    status: u16,
    code: &'static str,
    names: Option<&'static str>,
}

fn bad(method: &'static str, path: impl Into<String>, status: u16, code: &'static str) -> Bad {
    Bad {
        method,
        query_port: false,
        path: path.into(),
        correlation: None,
        body: 0,
        status,
        code,
        names: None,
    }
}

fn malformed_requests() -> Vec<Bad> {
    let ts = |t: &str| format!("/api/v1/timestamp/{t}");
    let mut cases: Vec<Bad> = [
        "not-a-time",
        "2009-09-28",
        "2009-09-28T19:03:12",
        "2009-09-28T19:03Z",
        "2009-13-01T00:00:00Z",
        "2009-02-30T00:00:00Z",
        "2009-09-28T24:00:00Z",
        "2009-09-28T19:60:00Z",
        "2016-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "10000-01-01T00:00:00Z",
        "9999-12-31T23:59:59-01:00",
        "2009-09-28T19:03:12+25:00",
        "2009-09-28T19:03:12.Z",
        "2009-09-28T19:03:12ZZ",
        "-2009-09-28T19:03:12Z",
        "%202009-09-28T19:03:12Z",
        "%E2%8C%9A",
        "%00",
    ]
    .into_iter()
    .map(|t| bad("POST", ts(t), 400, "invalid_timestamp"))
    .collect();
    cases.push(bad("POST", ts(&"9".repeat(8000)), 400, "invalid_timestamp"));
    // actix-web decodes invalid UTF-8 lossily: the timestamp is then invalid.
    cases.push(bad("POST", ts("%FF%FE"), 400, "invalid_timestamp"));
    // Too long, spaces, non-ASCII, punctuation: the message names the header.
    for header in [
        vec![b'a'; 8000],
        b"has spaces".to_vec(),
        b"caf\xc3\xa9".to_vec(),
        b"semi;colon".to_vec(),
    ] {
        let mut case = bad(
            "POST",
            ts("2009-09-28T19:03:12Z"),
            400,
            "invalid_correlation_id",
        );
        case.correlation = Some(header);
        case.names = Some("correlationId");
        cases.push(case);
    }
    let mut huge_body = bad("POST", ts("2009-09-28T19:03:12Z"), 413, "payload_too_large");
    huge_body.body = 1 << 20;
    huge_body.names = Some("4096 bytes");
    cases.push(huge_body);
    cases.extend([
        bad("GET", ts("2009-09-28T19:03:12Z"), 405, "method_not_allowed"),
        bad("PUT", "/api/v1/timestamp", 405, "method_not_allowed"),
        bad("DELETE", ts("x"), 405, "method_not_allowed"),
        bad("PATCH", "/api/v1/timestamp", 405, "method_not_allowed"),
        bad("POST", "/api/v1/timestamp/", 404, "not_found"),
        bad("POST", "/api/v1/timestamps", 404, "not_found"),
        bad("POST", "/api/v1/timestamp/a/b", 404, "not_found"),
        bad("POST", "/", 404, "not_found"),
        bad("GET", "/api/v1", 404, "not_found"),
    ]);
    for (path, status, code) in [
        (ts("not-a-uuid"), 400, "invalid_id"),
        (ts(&"f".repeat(8000)), 400, "invalid_id"),
        (ts("%FF"), 400, "invalid_id"),
        (ts("add1f52d-7c56-4c9f-b319-1a266c355f6"), 400, "invalid_id"),
    ] {
        let mut case = bad("GET", path, status, code);
        case.query_port = true;
        cases.push(case);
    }
    let mut post_on_query = bad(
        "POST",
        ts("add1f52d-7c56-4c9f-b319-1a266c355f6b"),
        405,
        "method_not_allowed",
    );
    post_on_query.query_port = true;
    cases.push(post_on_query);
    cases
}

#[actix_rt::test]
async fn malformed_requests_get_a_json_4xx_and_nothing_reaches_the_log() {
    let app = TestApp::spawn().await;
    let cases = malformed_requests();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in cases {
        let base = if case.query_port {
            app.query_url()
        } else {
            app.command_url()
        };
        let mut request = app
            .http
            .request(case.method.parse().unwrap(), format!("{base}{}", case.path));
        if let Some(value) = &case.correlation {
            request = request.header(
                "correlationId",
                reqwest::header::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        if case.body > 0 {
            request = request.body(vec![b'x'; case.body]);
        }
        let what = format!("{} {}", case.method, &case.path[..case.path.len().min(80)]);
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status().as_u16(), case.status, "{what}");
        // A 405 lists the methods the route has (RFC 9110), nothing else does.
        let allow = response.headers().get("allow").map(|v| v.to_str().unwrap());
        let expected = match (case.status, case.query_port) {
            (405, true) => Some("GET, HEAD"),
            (405, false) => Some("POST"),
            _ => None,
        };
        assert_eq!(allow, expected, "{what}");
        let body: serde_json::Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
        assert_eq!(body["error"], json!(case.code), "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: {body}");
        if let Some(word) = case.names {
            assert!(
                message.contains(word),
                "{what}: {body} does not name {word}"
            );
        }
        // A message repeats at most 64 characters of what the client sent.
        assert!(message.chars().count() < 200, "{what}: {body}");
    }
    // Still serving, and the log holds only the one good command.
    app.accept(Some("2009-09-28T19:03:12Z")).await;
    assert_eq!(read_topic(&app.settings.kafka_topic).await.len(), 1);
    app.stop().await;
}
