//! Test plumbing: a fresh database and topic per test, chronolog started on
//! port 0 against them, and helpers to talk to it, to the broker and to the
//! view directly.
//!
//! The real servers come from the environment: `DATABASE_URL` (a PostgreSQL
//! server's maintenance database) and `KAFKA_BROKERS`, as exported by
//! `scripts/with-deps.sh`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::{Duration, Instant};

use chronolog::config::{Role, Settings};
use chronolog::startup::Application;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use uuid::Uuid;

/// Longest a test waits for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(60);

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/with-deps.sh (or scripts/test.sh)")
    })
}

/// Logs of the application under test, shown when `TEST_LOG` is set.
fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
                .with_test_writer()
                .try_init();
        }
    });
}

/// The broker every test uses.
pub fn brokers() -> String {
    required_env("KAFKA_BROKERS")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

/// Creates an empty database on the test server and returns its URL.
pub async fn create_database() -> String {
    let admin = required_env("DATABASE_URL");
    let name = format!("chronolog_test_{}", Uuid::new_v4().simple());
    let mut conn = AsyncPgConnection::establish(&admin)
        .await
        .expect("cannot connect to the test PostgreSQL");
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .expect("cannot create the test database");
    let (server, _) = admin
        .rsplit_once('/')
        .expect("DATABASE_URL has a database path");
    format!("{server}/{name}")
}

/// Settings for a test: chronolog's defaults with a fresh topic and group,
/// ephemeral ports and short timeouts.
pub fn settings(database_url: &str) -> Settings {
    let topic = unique("chronolog-test");
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let mut settings = Settings::parse_from(["chronolog"]).expect("default settings");
    settings.kafka_brokers = brokers();
    settings.kafka_group_id = format!("{topic}-projector");
    settings.kafka_topic = topic;
    settings.kafka_partitions = 3;
    // tansu 0.6.0 deletes every record of a topic whose retention.ms is -1.
    settings.kafka_topic_retention_ms = i64::MAX;
    settings.kafka_session_timeout = Duration::from_secs(10);
    settings.delivery_timeout = Duration::from_secs(10);
    settings.database_url = database_url.parse().expect("a valid DATABASE_URL");
    settings.database_pool_size = 4;
    settings.batch_max_records = 500;
    settings.command_addr = any_port;
    settings.query_addr = any_port;
    settings.consumer_addr = any_port;
    settings.drain_timeout = Duration::from_secs(10);
    settings.lag_interval = Duration::from_millis(500);
    settings
}

/// chronolog running against a fresh database and topic.
pub struct TestApp {
    /// The settings it runs with.
    pub settings: Settings,
    /// The process' roles (all of them unless a test split them).
    pub app: Option<Application>,
    /// HTTP client.
    pub http: reqwest::Client,
    command: Option<SocketAddr>,
    query: Option<SocketAddr>,
}

impl TestApp {
    /// Every role in one process, as `chronolog serve` runs them.
    pub async fn spawn() -> Self {
        let database_url = create_database().await;
        Self::spawn_with(settings(&database_url), &[]).await
    }

    /// The given roles with the given settings.
    pub async fn spawn_with(settings: Settings, roles: &[Role]) -> Self {
        init_logs();
        let app = Application::build(&settings, roles)
            .await
            .expect("chronolog starts");
        Self {
            command: app.command_addr(),
            query: app.query_addr(),
            settings,
            app: Some(app),
            // No idle connections: they would hold the servers' graceful
            // stop until their keep-alive expires.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client"),
        }
    }

    /// Base URL of the command API.
    pub fn command_url(&self) -> String {
        format!(
            "http://{}",
            self.command.expect("this app runs the command role")
        )
    }

    /// Base URL of the query API.
    pub fn query_url(&self) -> String {
        format!(
            "http://{}",
            self.query.expect("this app runs the query role")
        )
    }

    /// `POST /api/v1/timestamp[/{ts}]`, with a correlation id when given.
    pub async fn post(
        &self,
        timestamp: Option<&str>,
        correlation_id: Option<&str>,
    ) -> reqwest::Response {
        let url = match timestamp {
            Some(ts) => format!("{}/api/v1/timestamp/{ts}", self.command_url()),
            None => format!("{}/api/v1/timestamp", self.command_url()),
        };
        let mut request = self.http.post(url);
        if let Some(id) = correlation_id {
            request = request.header("correlationId", id);
        }
        request.send().await.expect("the command API answers")
    }

    /// Posts and returns the id of the accepted command; fails unless 202.
    pub async fn accept(&self, timestamp: Option<&str>) -> Uuid {
        let response = self.post(timestamp, None).await;
        assert_eq!(response.status().as_u16(), 202, "POST {timestamp:?}");
        let body: serde_json::Value = response.json().await.expect("JSON body");
        body["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .expect("an id")
    }

    /// `GET /api/v1/timestamp/{id}`.
    pub async fn get(&self, id: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/api/v1/timestamp/{id}", self.query_url()))
            .send()
            .await
            .expect("the query API answers")
    }

    /// Polls the query API until the record is visible; returns its JSON.
    pub async fn wait_visible(&self, id: Uuid) -> serde_json::Value {
        eventually(&format!("record {id} visible"), || async move {
            let response = self.get(&id.to_string()).await;
            match response.status().as_u16() {
                200 => Some(response.json().await.expect("JSON body")),
                404 => None,
                other => panic!("unexpected status {other} for {id}"),
            }
        })
        .await
    }

    /// Every id in the view, with duplicates if there were any (there
    /// cannot be: the id is the primary key, so a count is compared too).
    pub async fn row_ids(&self) -> Vec<Uuid> {
        row_ids(self.settings.database_url.expose()).await
    }

    /// The metrics of the application under test (its own registry).
    pub fn metrics(&self) -> Arc<chronolog::metrics::Metrics> {
        self.app.as_ref().expect("running").metrics()
    }

    /// Stops every role gracefully.
    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }
}

/// Every id in the view at `database_url`.
pub async fn row_ids(database_url: &str) -> Vec<Uuid> {
    use chronolog::db::schema::timestamp_records::dsl::*;
    let mut conn = AsyncPgConnection::establish(database_url)
        .await
        .expect("view reachable");
    timestamp_records
        .select(id)
        .load(&mut conn)
        .await
        .expect("view readable")
}

/// Polls `check` every 50 ms until it yields a value; panics after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert_broker_alive();
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails at once, naming the cause, when the rig's tansu broker has died:
/// a test waiting on a dead broker would otherwise only time out.
pub fn assert_broker_alive() {
    let Ok(pid) = std::env::var("TANSU_PID") else {
        return;
    };
    // A dead child of the rig's shell stays a zombie until the rig reaps it.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        });
    if matches!(state, None | Some('Z' | 'X')) {
        let log = std::env::var("CHRONOLOG_RIG_DIR").unwrap_or_default();
        panic!("the tansu broker (pid {pid}) has died; see {log}/tansu.log");
    }
}

/// Waits until the view holds exactly `expected` (and nothing else).
pub async fn wait_for_exact_ids(database_url: &str, expected: &HashSet<Uuid>) {
    let ids = eventually("the view to hold every accepted id", || async {
        let ids = row_ids(database_url).await;
        (ids.len() >= expected.len()).then_some(ids)
    })
    .await;
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "an id is in the view twice");
    let missing: Vec<_> = expected.difference(&unique).collect();
    let extra: Vec<_> = unique.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
}

/// Produces one raw record straight to the broker.
pub async fn produce_raw(
    topic: &str,
    partition: Option<i32>,
    key: Option<&str>,
    value: &[u8],
    correlation_id: Option<&str>,
) -> (i32, i64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut record = FutureRecord::<str, [u8]>::to(topic).payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(id) = correlation_id {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: "correlationId",
            value: Some(id),
        }));
    }
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("record produced");
    (delivery.partition, delivery.offset)
}

/// Every record of `topic`, read from the beginning up to the high watermarks.
pub async fn read_topic(topic: &str) -> Vec<OwnedMessage> {
    read_topic_at(&brokers(), topic).await
}

/// [`read_topic`] on the broker at `bootstrap` (a mock cluster).
pub async fn read_topic_at(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let (topic, bootstrap) = (topic.to_owned(), bootstrap.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", unique("inspector"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions: Vec<i32> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        let mut assignment = TopicPartitionList::new();
        let mut remaining = 0;
        for &p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .expect("watermarks");
            remaining += high - low;
            assignment
                .add_partition_offset(&topic, p, Offset::Beginning)
                .expect("assignable");
        }
        consumer.assign(&assignment).expect("assigned");
        let mut records = Vec::new();
        let started = Instant::now();
        while remaining > 0 {
            assert!(
                started.elapsed() < DEADLINE,
                "could not read {topic} to its end"
            );
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                records.push(message.expect("readable record").detach());
                remaining -= 1;
            }
        }
        records
    })
    .await
    .expect("reader thread")
}

/// The partition a record is in, its key and value as text, and its correlation header.
pub fn describe(message: &OwnedMessage) -> (i32, String, String, Option<String>) {
    use rdkafka::message::Headers;
    let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
    let header = message.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key == "correlationId")
            .map(|h| text(h.value))
    });
    (
        message.partition(),
        text(message.key()),
        text(message.payload()),
        header,
    )
}

/// A PostgreSQL server of one test's own, which the test may stop and start.
pub struct PrivatePostgres {
    dir: std::path::PathBuf,
    port: u16,
}

pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

pub fn as_postgres_user(program: &str, args: &[&str]) -> std::process::Command {
    // PostgreSQL refuses to run as root.
    if is_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--", program]).args(args);
        command
    } else {
        let mut command = std::process::Command::new(program);
        command.args(args);
        command
    }
}

pub fn run(mut command: std::process::Command) {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivatePostgres {
    /// initdb and start on a free port.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("chronolog-pg"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        if is_root() {
            let mut chown = std::process::Command::new("chown");
            chown.args(["-R", "postgres:", dir.to_str().expect("utf-8 path")]);
            run(chown);
        }
        let data = dir.join("data");
        run(as_postgres_user(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-instructions",
            ],
        ));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pg = Self { dir, port };
        pg.start_again();
        pg
    }

    /// Starts the stopped server on the same port and data.
    pub fn start_again(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        run(as_postgres_user(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "start",
                "-o",
                &options,
            ],
        ));
    }

    /// Stops the server at once (`-m immediate`: connections drop as in a crash).
    pub fn stop(&self) {
        let data = self.dir.join("data");
        run(as_postgres_user(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        ));
    }

    /// URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres_user(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ],
        )
        .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Count and order-independent digest of the view: id, event and acceptance time.
pub async fn view_checksum(database_url: &str) -> (i64, String) {
    #[derive(QueryableByName)]
    struct Sum {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        digest: String,
    }
    let mut conn = AsyncPgConnection::establish(database_url)
        .await
        .expect("view reachable");
    let sum: Sum = diesel::sql_query(
        "SELECT count(*) AS n, coalesce(md5(string_agg(id::text || '|' || event_timestamp::text || '|' || created_at::text, ',' ORDER BY id)), '') AS digest FROM timestamp_records",
    )
    .get_result(&mut conn)
    .await
    .expect("checksum");
    (sum.n, sum.digest)
}

/// The `chronolog` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_chronolog");

/// A child process that is killed when the test ends, passed or not.
pub struct ChildProcess(std::process::Child);

impl ChildProcess {
    /// Takes charge of `child`.
    pub fn new(child: std::process::Child) -> Self {
        Self(child)
    }

    /// The process itself.
    pub fn child(&mut self) -> &mut std::process::Child {
        &mut self.0
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The consumer role alone, in this process, with `settings`.
pub async fn start_consumer(settings: &Settings) -> Application {
    Application::build(settings, &[Role::Consumer])
        .await
        .expect("the consumer role starts")
}

/// A consumer-only `chronolog serve` process with `settings`.
pub fn spawn_consumer_process(settings: &Settings) -> ChildProcess {
    spawn_consumer_process_with(settings, &[])
}

/// A consumer-only `chronolog serve` process with `settings` and extra
/// environment variables.
pub fn spawn_consumer_process_with(settings: &Settings, env: &[(&str, &str)]) -> ChildProcess {
    spawn_consumer_process_at(settings, "127.0.0.1:0", env)
}

/// [`spawn_consumer_process_with`], its operations endpoints on `addr`.
pub fn spawn_consumer_process_at(
    settings: &Settings,
    addr: &str,
    env: &[(&str, &str)],
) -> ChildProcess {
    let child = std::process::Command::new(BIN)
        .args(["serve", "--role", "consumer", "--consumer-addr", addr])
        .env("DATABASE_URL", settings.database_url.expose())
        .env("KAFKA_BROKERS", &settings.kafka_brokers)
        .env("KAFKA_TOPIC", &settings.kafka_topic)
        .env("KAFKA_GROUP_ID", &settings.kafka_group_id)
        .env(
            "KAFKA_TOPIC_RETENTION_MS",
            settings.kafka_topic_retention_ms.to_string(),
        )
        .env(
            "KAFKA_SESSION_TIMEOUT",
            humantime::format_duration(settings.kafka_session_timeout).to_string(),
        )
        .env(
            "LOG_LEVEL",
            std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(env.iter().copied())
        .stdout(process_log(&format!(
            "consumer-{}",
            settings.kafka_group_id
        )))
        .spawn()
        .expect("consumer process starts");
    ChildProcess::new(child)
}

/// Where a spawned process logs: a file in the rig's directory, which the
/// rig keeps when a test fails; nowhere outside the rig.
fn process_log(name: &str) -> std::process::Stdio {
    let Some(dir) = std::env::var_os("CHRONOLOG_RIG_DIR") else {
        return std::process::Stdio::null();
    };
    let path = std::path::Path::new(&dir).join(format!("{name}.log"));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(file) => file.into(),
        Err(_) => std::process::Stdio::null(),
    }
}

/// Posts `count` commands, `concurrency` at a time; returns the accepted ids.
pub async fn post_many(app: &TestApp, count: usize, accepted: Arc<AtomicUsize>) -> HashSet<Uuid> {
    let client = app.http.clone();
    let url = format!(
        "{}/api/v1/timestamp/2009-09-28T19:03:12Z",
        app.command_url()
    );
    futures::stream::iter(0..count)
        .map(|_| {
            let (client, url, accepted) = (client.clone(), url.clone(), accepted.clone());
            async move {
                let response = client.post(url).send().await.expect("command API answers");
                assert_eq!(response.status().as_u16(), 202);
                let body: serde_json::Value = response.json().await.expect("JSON");
                accepted.fetch_add(1, Ordering::SeqCst);
                Uuid::parse_str(body["id"].as_str().expect("id")).expect("uuid")
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// Waits for `child` to exit, polling; panics after [`DEADLINE`].
pub async fn wait_for_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(exit) = child.try_wait().expect("child status") {
            return exit;
        }
        assert!(started.elapsed() < DEADLINE, "no exit after {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `chronolog rebuild` with `settings`' broker and topic into
/// `database_url`, with `args` added, and returns its output.
pub async fn run_rebuild(
    settings: &Settings,
    database_url: &str,
    args: &[&str],
) -> std::process::Output {
    let mut command = std::process::Command::new(BIN);
    command
        .args(["rebuild", "--database-url", database_url])
        .args(args)
        .env("KAFKA_BROKERS", &settings.kafka_brokers)
        .env("KAFKA_TOPIC", &settings.kafka_topic)
        .env("KAFKA_GROUP_ID", &settings.kafka_group_id)
        .env("OUTBOX_TOPIC_PREFIX", &settings.outbox_topic_prefix)
        .env(
            "LOG_LEVEL",
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    tokio::task::spawn_blocking(move || command.output().expect("rebuild runs"))
        .await
        .expect("rebuild thread")
}
