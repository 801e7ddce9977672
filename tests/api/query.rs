//! The query API (DESIGN §3) and the operations endpoints (§4).

use serde_json::json;
use uuid::Uuid;

use crate::helpers::TestApp;

#[actix_rt::test]
async fn ids_that_are_not_uuids_are_400_and_unknown_ids_404() {
    let app = TestApp::spawn().await;
    let response = app.get("not-a-uuid").await;
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], json!("invalid_id"));

    let unknown = Uuid::new_v4();
    let response = app.get(&unknown.to_string()).await;
    assert_eq!(response.status().as_u16(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], json!("not_found"));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&unknown.to_string())
    );
    app.stop().await;
}

#[actix_rt::test]
async fn health_ready_and_metrics_are_served_on_both_ports() {
    let app = TestApp::spawn().await;
    app.accept(None).await;
    for base in [app.command_url(), app.query_url()] {
        let health: serde_json::Value = app
            .http
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health, json!({"status": "UP"}));

        let ready = app.http.get(format!("{base}/ready")).send().await.unwrap();
        assert_eq!(ready.status().as_u16(), 200);
        let ready: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(ready["status"], json!("UP"));
        for component in ["database", "broker", "partitions"] {
            assert_eq!(
                ready["components"][component]["status"],
                json!("UP"),
                "{ready}"
            );
        }

        let metrics = app
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        assert!(
            metrics.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = metrics.text().await.unwrap();
        assert!(
            text.contains(
                r#"chronolog_records_produced_total{kind="command",outcome="delivered"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("chronolog_http_requests_total"), "{text}");
    }
    app.stop().await;
}

#[actix_rt::test]
async fn http_metrics_are_labelled_with_the_route_pattern_that_served_the_request() {
    let app = TestApp::spawn().await;
    let base = app.command_url();
    let send = |method: reqwest::Method, path: &str, correlation: Option<&str>| {
        let mut request = app.http.request(method, format!("{base}{path}"));
        if let Some(value) = correlation {
            request = request.header("correlationId", value);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    use reqwest::Method;
    let timestamp = "/api/v1/timestamp/2009-09-28T19:03:12Z";
    assert_eq!(send(Method::POST, timestamp, None).await, 202);
    assert_eq!(
        send(Method::POST, "/api/v1/timestamp/yesterday", None).await,
        400
    );
    // Refused by the middleware before routing: still labelled by its route.
    assert_eq!(send(Method::POST, timestamp, Some("not valid")).await, 400);
    assert_eq!(send(Method::DELETE, timestamp, None).await, 405);
    assert_eq!(send(Method::GET, "/no/such/route", None).await, 404);
    assert_eq!(send(Method::POST, "/health", None).await, 404);

    let metrics = app
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |route: &str, method: &str, status: &str| -> Option<String> {
        let series = format!(
            "chronolog_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} "
        );
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series).map(str::to_owned))
    };
    let pattern = "/api/v1/timestamp/{timestamp}";
    assert_eq!(count(pattern, "POST", "202").as_deref(), Some("1"));
    assert_eq!(count(pattern, "POST", "400").as_deref(), Some("2"));
    assert_eq!(count(pattern, "DELETE", "405").as_deref(), Some("1"));
    assert_eq!(count("unmatched", "GET", "404").as_deref(), Some("1"));
    assert_eq!(count("/health", "POST", "404").as_deref(), Some("1"));
    app.stop().await;
}
