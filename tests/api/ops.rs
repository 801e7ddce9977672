//! The operations kit: metrics as a real Prometheus scrapes
//! them, every dashboard query answered, lag, actor restarts, the k6 smoke
//! tests and the compose file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use chronolog::config::Role;
use chronolog::metrics::{ACTOR_MESSAGES, Metrics};
use uuid::Uuid;

use crate::helpers::{
    ChildProcess, TestApp, create_database, eventually, post_many, settings, start_consumer,
};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    found.unwrap_or_else(|| panic!("{name} is not installed: scripts/test.sh installs it"))
}

/// Every PromQL expression of every panel of the shipped dashboards.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(repo("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push((
                    panel["title"].as_str().unwrap().to_owned(),
                    target["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    queries
}

struct Prometheus {
    _process: ChildProcess,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// A real Prometheus scraping `targets` every second.
    async fn scraping(targets: &[String]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("chronolog-prometheus-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: chronolog\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Self {
            _process: ChildProcess::new(child),
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        eventually("prometheus is ready", || async {
            let response = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        prometheus
    }

    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let response: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(response["status"], "success", "{expr}: {response}");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[actix_rt::test]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let app = TestApp::spawn().await;
    let prometheus = Prometheus::scraping(&[
        app.command_url().trim_start_matches("http://").to_owned(),
        app.query_url().trim_start_matches("http://").to_owned(),
    ])
    .await;
    // A pipeline, for the pipelines row.
    crate::pipeline_run::apply(
        &app,
        serde_json::json!({
            "name": crate::helpers::unique("dash"),
            "topics": [app.settings.kafka_topic],
            "filters": [".n = 1"],
            "sink": {"type": "postgres", "table": crate::helpers::unique("dash").replace('-', "_")},
        }),
    )
    .await;
    // Load: commands, reads, and a few refusals.
    let ids = post_many(&app, 300, Arc::default()).await;
    for id in ids.iter().take(20) {
        app.wait_visible(*id).await;
    }
    for _ in 0..5 {
        assert_eq!(
            app.post(Some("yesterday"), None).await.status().as_u16(),
            400
        );
    }
    // rate() needs two samples in its window; wait for a few scrapes.
    eventually(
        "prometheus has scraped both servers a few times",
        || async {
            let samples = prometheus.query("min(count_over_time(up[1m]))").await;
            let count: f64 = samples.first()?["value"][1].as_str()?.parse().ok()?;
            (count >= 4.0).then_some(())
        },
    )
    .await;
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let mut empty = Vec::new();
    for (panel, expr) in &queries {
        if prometheus.query(expr).await.is_empty() {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels whose query returns nothing:\n{}",
        empty.join("\n")
    );
    app.stop().await;
}

fn lag(m: &Metrics, topic: &str) -> (i64, f64) {
    (0..3).fold((0, 0.0), |(records, seconds), p| {
        let labels = [topic, &p.to_string()];
        (
            records + m.consumer_lag_records.with_label_values(&labels).get(),
            f64::max(
                seconds,
                m.consumer_lag_seconds.with_label_values(&labels).get(),
            ),
        )
    })
}

#[actix_rt::test]
async fn lag_counts_records_and_seconds_while_the_consumer_is_stopped_and_returns_to_zero() {
    let database_url = create_database().await;
    let settings = settings(&database_url);
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command, Role::Query]).await;
    let consumer = start_consumer(&settings).await;
    let first = post_many(&front, 10, Arc::default()).await;
    crate::helpers::wait_for_exact_ids(&database_url, &first).await;
    consumer.stop().await;

    let n = 120;
    post_many(&front, n, Arc::default()).await;
    let topic = settings.kafka_topic.clone();
    // The command role's process measures lag too, from outside the group.
    let front_metrics = front.metrics();
    let (_, first_age) = eventually("lag reaches N", || async {
        let (records, seconds) = lag(&front_metrics, &topic);
        (records == n as i64 && seconds > 0.0).then_some((records, seconds))
    })
    .await;
    eventually(
        "the lag in seconds grows while nothing is consumed",
        || async {
            let (records, seconds) = lag(&front_metrics, &topic);
            assert_eq!(records, n as i64);
            (seconds > first_age + 0.5).then_some(())
        },
    )
    .await;

    let consumer = start_consumer(&settings).await;
    eventually("lag returns to zero", || async {
        (lag(&front_metrics, &topic) == (0, 0.0)).then_some(())
    })
    .await;
    consumer.stop().await;
    front.stop().await;
}

async fn set_connections_allowed(database_url: &str, allowed: bool) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let admin = std::env::var("DATABASE_URL").unwrap();
    let name = database_url.rsplit('/').next().unwrap();
    let mut conn = AsyncPgConnection::establish(&admin).await.unwrap();
    diesel::sql_query(format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {allowed}"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    if !allowed {
        diesel::sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

#[actix_rt::test]
async fn every_actor_handles_messages_and_a_writer_that_loses_its_database_is_restarted() {
    let app = TestApp::spawn().await;
    let ids = post_many(&app, 50, Arc::default()).await;
    crate::helpers::wait_for_exact_ids(app.settings.database_url.expose(), &ids).await;
    let metrics = app.metrics();
    let handled = |actor: &str, message: &str| {
        metrics
            .actor_messages
            .with_label_values(&[actor, message, "ok"])
            .get()
    };
    for (actor, message) in [
        ("ingestion", "SubmitCommand"),
        ("kafka_producer", "PublishCommand"),
        ("partition_consumer", "RecordBatch"),
        ("db_writer", "WriteBatch"),
    ] {
        assert!(handled(actor, message) > 0, "{actor} handled no {message}");
        assert!(
            ACTOR_MESSAGES
                .iter()
                .any(|(a, ms)| *a == actor && ms.contains(&message))
        );
    }

    // The writer's connections are cut and new ones refused: a real lost
    // database, without stopping the server the other tests share.
    let restarts = || {
        metrics
            .actor_restarts
            .with_label_values(&["db_writer"])
            .get()
    };
    let before = restarts();
    set_connections_allowed(app.settings.database_url.expose(), false).await;
    let during = app.accept(None).await;
    eventually("the db writer is restarted", || async {
        (restarts() > before).then_some(())
    })
    .await;
    set_connections_allowed(app.settings.database_url.expose(), true).await;
    app.wait_visible(during).await;
    app.stop().await;
}

fn k6(script: &str, env: &[(&str, String)]) -> std::process::Output {
    let mut command = Command::new(tool("k6"));
    command.args(["run", "--quiet", "--no-color", "-e", "SMOKE=1"]);
    for (key, value) in env {
        command.args(["-e", &format!("{key}={value}")]);
    }
    command.arg(repo(script)).output().expect("k6 runs")
}

#[actix_rt::test]
async fn the_k6_smoke_scripts_pass_their_thresholds() {
    let app = TestApp::spawn().await;
    let (command_url, query_url) = (app.command_url(), app.query_url());
    let outputs = tokio::task::spawn_blocking(move || {
        [
            k6(
                "loadtest/ingestion.js",
                &[("BASE_URL", command_url.clone())],
            ),
            k6(
                "loadtest/e2e.js",
                &[("COMMAND_URL", command_url), ("QUERY_URL", query_url)],
            ),
        ]
    })
    .await
    .unwrap();
    for output in outputs {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "k6 thresholds failed:\n{text}");
    }
    app.stop().await;
}

#[test]
fn the_compose_file_is_valid_and_prometheus_scrapes_every_role() {
    let output = Command::new(tool("docker-compose"))
        .args(["-f", repo("docker-compose.yml").to_str().unwrap(), "config"])
        .output()
        .expect("docker-compose runs");
    let config = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for service in [
        "kafka",
        "postgres",
        "command",
        "consumer",
        "query",
        "prometheus",
        "grafana",
    ] {
        assert!(
            config.contains(&format!("\n  {service}:\n")),
            "service {service} missing"
        );
    }
    let scrape = std::fs::read_to_string(repo("prometheus/prometheus.yml")).unwrap();
    for target in ["command:7080", "consumer:7082", "query:7081"] {
        assert!(
            scrape.contains(target),
            "prometheus does not scrape {target}"
        );
    }
}
