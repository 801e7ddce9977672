//! The query API and the operations endpoints: reads, `Prefer: wait`
//! (read-your-writes) and the HTTP metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chronolog::config::Role;
use chronolog::http::wait::ViewWatcher;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    DEADLINE, TestApp, create_database, eventually, produce_raw, settings, start_consumer,
};

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
    assert_eq!(send(Method::POST, "/health", None).await, 405);
    assert_eq!(send(Method::HEAD, "/health", None).await, 200);

    let m = app.metrics();
    let count = |route: &str, method: &str, status: &str| {
        m.http_requests
            .with_label_values(&[route, method, status])
            .get()
    };
    let pattern = "/api/v1/timestamp/{timestamp}";
    assert_eq!(count(pattern, "POST", "202"), 1);
    assert_eq!(count(pattern, "POST", "400"), 2);
    assert_eq!(count(pattern, "DELETE", "405"), 1);
    assert_eq!(count("unmatched", "GET", "404"), 1);
    assert_eq!(count("/health", "POST", "405"), 1);
    assert_eq!(count("/health", "HEAD", "200"), 1);
    // What /metrics shows is that registry.
    let text = app
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!(
            "chronolog_http_requests_total{{method=\"POST\",route=\"{pattern}\",status=\"202\"}} 1"
        )),
        "{text}"
    );
    app.stop().await;
}

/// `GET /api/v1/timestamp/{id}` with `Prefer: wait=...`.
async fn get_waiting(
    http: &reqwest::Client,
    base: &str,
    id: Uuid,
    prefer: &str,
) -> (u16, Option<String>, serde_json::Value, Duration) {
    let started = Instant::now();
    let response = http
        .get(format!("{base}/api/v1/timestamp/{id}"))
        .header("Prefer", prefer)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let applied = response
        .headers()
        .get("preference-applied")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap();
    (status, applied, body, started.elapsed())
}

#[actix_rt::test]
async fn two_hundred_waiters_hold_no_thread_and_get_404_at_their_deadline() {
    let app = TestApp::spawn().await;
    let base = app.query_url();
    let http = reqwest::Client::new();
    let done = Arc::new(AtomicBool::new(false));
    let waiters = async {
        let answers = futures::future::join_all(
            (0..200).map(|_| get_waiting(&http, &base, Uuid::new_v4(), "wait=3")),
        )
        .await;
        done.store(true, Ordering::SeqCst);
        answers
    };
    let health = async {
        let mut answered = 0;
        let mut slowest = Duration::ZERO;
        let mut every = tokio::time::interval(Duration::from_millis(50));
        while !done.load(Ordering::SeqCst) {
            every.tick().await;
            let started = Instant::now();
            let response = http.get(format!("{base}/health")).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            slowest = slowest.max(started.elapsed());
            answered += 1;
        }
        (answered, slowest)
    };
    let (answers, (answered, slowest)) = futures::join!(waiters, health);
    for (status, applied, body, waited) in answers {
        assert_eq!(status, 404);
        assert_eq!(body["error"], json!("not_found"));
        assert_eq!(applied.as_deref(), Some("wait=3"));
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
            "answered after {waited:?}"
        );
    }
    // /health answered all along: a server that spent a thread (or its
    // event loop) on each waiter would have held /health for the whole
    // 3 s wait. (How fast it answers is the benchmark's business:
    // `loadtest/bench.sh --only waiters` compares GET rates with and without
    // 200 waiters in one run; a latency bound here would fail with the
    // machine's load, not with the code.)
    assert!(answered >= 20, "{answered} health checks in the wait");
    assert!(slowest < Duration::from_secs(3), "{slowest:?}");
    app.stop().await;
}

/// Polls the view directly until `id` is in it; returns when it was first seen.
async fn first_seen(database_url: &str, id: Uuid) -> Instant {
    use chronolog::db::schema::timestamp_records::dsl as t;
    use diesel::{ExpressionMethods, QueryDsl};
    use diesel_async::RunQueryDsl;
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    let started = Instant::now();
    loop {
        let found: i64 = t::timestamp_records
            .filter(t::id.eq(id))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap();
        if found == 1 {
            return Instant::now();
        }
        assert!(started.elapsed() < DEADLINE, "{id} never reached the view");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn a_waiter_in_a_query_process_without_consumer_gets_the_record_once_projected() {
    let database_url = create_database().await;
    let settings = settings(&database_url);
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command, Role::Query]).await;
    // In the log, not in the view: no consumer runs yet.
    let id = front.accept(Some("2009-09-28T19:03:12Z")).await;
    assert_eq!(front.get(&id.to_string()).await.status().as_u16(), 404);
    let http = reqwest::Client::new();
    let base = front.query_url();
    let waiter = get_waiting(&http, &base, id, "wait=30");
    let projected = async {
        let consumer = start_consumer(&settings).await;
        (consumer, first_seen(&database_url, id).await)
    };
    let ((status, applied, body, waited), (consumer, seen)) = futures::join!(waiter, projected);
    let answered = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(applied.as_deref(), Some("wait=30"));
    assert_eq!(body["id"], json!(id.to_string()));
    assert_eq!(body["event_timestamp"], json!("2009-09-28T19:03:12Z"));
    assert!(waited < Duration::from_secs(30));
    assert!(
        answered.duration_since(seen) < Duration::from_secs(1),
        "answered {:?} after the commit",
        answered.duration_since(seen)
    );
    consumer.stop().await;
    front.stop().await;
}

#[actix_rt::test]
async fn a_waiter_gets_a_record_committed_by_its_own_process_while_it_waits() {
    let app = TestApp::spawn().await;
    let id = Uuid::new_v4();
    let http = reqwest::Client::new();
    let base = app.query_url();
    let waiter = get_waiting(&http, &base, id, "wait=20");
    let produced = async {
        let value = format!(r#"{{"command_id":"{id}","event_timestamp":"2006-01-02T15:04:05Z"}}"#);
        produce_raw(
            &app.settings.kafka_topic,
            None,
            Some(&id.to_string()),
            value.as_bytes(),
            None,
        )
        .await;
        first_seen(app.settings.database_url.expose(), id).await
    };
    let ((status, applied, body, _), seen) = futures::join!(waiter, produced);
    let answered = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(applied.as_deref(), Some("wait=20"));
    assert_eq!(body["command_id"], json!(id.to_string()));
    assert_eq!(body["event_timestamp"], json!("2006-01-02T15:04:05Z"));
    assert!(
        answered.duration_since(seen) < Duration::from_secs(1),
        "answered {:?} after the commit",
        answered.duration_since(seen)
    );
    app.stop().await;
}

#[actix_rt::test]
async fn prefer_wait_is_cut_to_30_seconds_and_a_malformed_one_is_400() {
    let app = TestApp::spawn().await;
    let base = app.query_url();
    let http = reqwest::Client::new();
    let id = app.accept(None).await;
    app.wait_visible(id).await;
    let (status, applied, body, waited) = get_waiting(&http, &base, id, "wait=600").await;
    assert_eq!(
        (status, applied.as_deref()),
        (200, Some("wait=30")),
        "{body}"
    );
    assert!(waited < Duration::from_secs(5));
    let (status, applied, _, waited) =
        get_waiting(&http, &base, Uuid::new_v4(), "respond-async, wait=0").await;
    assert_eq!((status, applied.as_deref()), (404, Some("wait=0")));
    assert!(waited < Duration::from_secs(5));
    for bad in ["wait=soon", "wait=-1", "wait=2.5", "wait="] {
        let (status, applied, body, _) = get_waiting(&http, &base, id, bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(applied, None, "{bad}");
        assert_eq!(body["error"], json!("invalid_prefer"), "{bad}");
    }
    // Other preferences are not this server's business.
    let (status, applied, _, _) = get_waiting(&http, &base, id, "return=minimal").await;
    assert_eq!((status, applied), (200, None));
    app.stop().await;
}

#[actix_rt::test]
async fn a_stopping_server_answers_its_waiting_requests_at_once() {
    // Every role in the process: the consumer group and the command server
    // stop beside the query server. (Up to actix-server 2.9 a worker could
    // see its connection channel close before its stop command and drop the
    // waiting request's connection unanswered: 13 stops in 200 on a
    // saturated machine.)
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let base = app.query_url();
    let mut waiter = std::pin::pin!(get_waiting(&http, &base, Uuid::new_v4(), "wait=30"));
    // The server holds the request (not merely: it has not answered yet,
    // which a request still in the accept queue would not either).
    let metrics = app.metrics();
    let held = async {
        eventually("the request waits in the server", || async {
            (metrics.query_waiting_requests.get() == 1).then_some(())
        })
        .await
    };
    tokio::select! {
        () = held => {}
        answer = waiter.as_mut() => panic!("a request for an unknown id waits, got {answer:?}"),
    }
    let started = Instant::now();
    let ((status, _, body, _), ()) = futures::join!(waiter, app.stop());
    assert_eq!(status, 404);
    assert_eq!(body["error"], json!("not_found"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stop waited {:?} for a waiting request",
        started.elapsed()
    );
}

/// A fresh view with the migrations applied, and a pool on it.
async fn fresh_view() -> (String, chronolog::db::Pool) {
    let url = create_database().await;
    chronolog::db::run_migrations(&url.parse().unwrap())
        .await
        .unwrap();
    let pool = chronolog::db::pool(&url.parse().unwrap(), 2);
    (url, pool)
}

async fn insert_rows(database_url: &str, ids: &[Uuid]) {
    use diesel_async::RunQueryDsl;
    let values: Vec<String> = ids
        .iter()
        .map(|id| format!("('{id}', now(), now())"))
        .collect();
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    diesel::sql_query(format!(
        "INSERT INTO timestamp_records (id, event_timestamp, created_at) VALUES {}",
        values.join(", ")
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

#[actix_rt::test]
async fn the_watcher_looks_up_every_waiting_id_in_one_query_per_commit() {
    let (url, pool) = fresh_view().await;
    let (commit, commits) = tokio::sync::watch::channel(0u64);
    // A tick of an hour: only the commit signal can wake anyone here.
    let (watcher, task) = ViewWatcher::start(pool, Some(commits), Duration::from_secs(3600), None);
    let ids: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    let mut waiters: Vec<_> = ids
        .iter()
        .map(|id| watcher.wait_for(*id).unwrap())
        .collect();
    assert_eq!(watcher.waiting(), 200);
    insert_rows(&url, &ids[..100]).await;
    let looks = watcher.looks();
    commit.send_modify(|n| *n += 1);
    for (waiter, id) in waiters.iter_mut().zip(&ids).take(100) {
        let record = tokio::time::timeout(DEADLINE, waiter.found())
            .await
            .expect("woken after the commit")
            .expect("a record");
        assert_eq!(record.id, *id);
    }
    assert_eq!(watcher.looks(), looks + 1, "one query for the 200 ids");
    assert_eq!(watcher.waiting(), 100);
    // A waiter that gives up leaves nothing behind.
    drop(waiters);
    assert_eq!(watcher.waiting(), 0);
    task.abort();
}

#[actix_rt::test]
async fn the_watcher_without_commit_signal_looks_on_its_tick_only_while_someone_waits() {
    let (url, pool) = fresh_view().await;
    let (watcher, task) = ViewWatcher::start(pool, None, Duration::from_millis(50), None);
    let id = Uuid::new_v4();
    let mut waiter = watcher.wait_for(id).unwrap();
    insert_rows(&url, &[id]).await;
    let record = tokio::time::timeout(DEADLINE, waiter.found())
        .await
        .expect("found on a tick")
        .expect("a record");
    assert_eq!(record.id, id);
    drop(waiter);
    // Nobody waits: the ticks stop querying.
    let idle = watcher.looks();
    // An observation window of ten ticks, not a wait for a condition.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(watcher.looks(), idle);
    task.abort();
}
