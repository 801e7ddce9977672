//! Operations endpoints served by every role: `/health`, `/ready`,
//! `/metrics` (`GET` and `HEAD`; any other method is 405).
//!
//! `/ready` checks the database and the broker at most once per
//! [`READY_CACHE`], one check at a time, whatever the number of callers: a
//! burst of probes (or a client hammering it) costs one database ping and
//! one broker metadata request, not one each. A change of state (UP to DOWN,
//! DOWN to UP) is logged once, where it is seen, rather than once per 503.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;
use serde_json::json;

use crate::config::Settings;
use crate::db::{Pool, queries};
use crate::domain::format_timestamp;
use crate::engine::status::GroupStatus;
use crate::http::middleware::Reported;
use crate::kafka::admin::TopicReport;
use crate::kafka::{TracingContext, base_config, topic_partitions};
use crate::metrics::Metrics;

/// How long one dependency check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the result of a dependency check answers `/ready`.
pub const READY_CACHE: Duration = Duration::from_secs(1);

/// Routes of the operations endpoints.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/health")
            .route(super::get_or_head().to(health))
            .default_service(super::not_allowed("GET, HEAD")),
    )
    .service(
        super::resource("/ready")
            .route(super::get_or_head().to(ready))
            .default_service(super::not_allowed("GET, HEAD")),
    )
    .service(
        super::resource("/metrics")
            .route(super::get_or_head().to(render_metrics))
            .default_service(super::not_allowed("GET, HEAD")),
    )
    .service(
        super::resource("/openapi.json")
            .route(super::get_or_head().to(super::openapi::openapi_json))
            .default_service(super::not_allowed("GET, HEAD")),
    );
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is up", body = super::openapi::HealthSchema)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "UP"}))
}

/// Prometheus metrics of this process, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn render_metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}

/// Asks the broker for the command topic's metadata.
pub struct BrokerProbe {
    client: BaseConsumer<TracingContext>,
    topic: String,
}

impl BrokerProbe {
    /// A probe with its own small client.
    pub fn new(settings: &Settings) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            client: base_config(settings).create_with_context(TracingContext)?,
            topic: settings.kafka_topic.clone(),
        })
    }

    async fn check(self: Arc<Self>) -> Result<(), String> {
        // librdkafka's metadata call blocks; the readiness cache makes sure
        // that at most one such thread runs at a time.
        tokio::task::spawn_blocking(move || {
            let partitions = topic_partitions(&self.client, &self.topic, CHECK_TIMEOUT)
                .map_err(|e| e.to_string())?;
            if partitions.is_empty() {
                return Err(format!("topic {} is not available", self.topic));
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// The dependencies `/ready` checks: those of the roles this process runs.
/// Clones share one [`ReadyChecks`], so a process checks once for all its
/// servers.
#[derive(Clone, Default)]
pub struct Readiness {
    /// The view, for the query and consumer roles.
    pub database: Option<Pool>,
    /// The broker, for the command and consumer roles.
    pub broker: Option<Arc<BrokerProbe>>,
    /// The group's partitions, for the consumer role: not ready while one is blocked.
    pub partitions: Option<Arc<GroupStatus>>,
    /// The other projections of the consumer role (the shop's), by name:
    /// each is a component of its own, down while a partition is blocked.
    pub projections: Vec<(String, Arc<GroupStatus>)>,
    /// What the start found about chronolog's topics (finite retention is a
    /// warning: the service works, a rebuild from the log would not).
    pub topics: Option<Arc<TopicReport>>,
    /// The last dependency check and the last state logged.
    pub checks: Arc<ReadyChecks>,
}

/// The last check of the database and the broker, reused for
/// [`READY_CACHE`], and the state last logged.
#[derive(Default)]
pub struct ReadyChecks {
    /// Held while a check runs: callers meanwhile wait for its result.
    last: tokio::sync::Mutex<Option<Checked>>,
    /// [`State`] last logged.
    logged: AtomicU8,
}

/// The result of one round of dependency checks.
#[derive(Clone)]
struct Checked {
    finished: Instant,
    at: DateTime<Utc>,
    database: Option<Result<(), String>>,
    broker: Option<Result<(), String>>,
}

/// Readiness states, as stored in [`ReadyChecks::logged`].
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl State {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => State::Up,
            2 => State::Down,
            _ => State::Unknown,
        }
    }
}

impl Readiness {
    /// The dependencies' state, checked now unless the last check is recent.
    async fn dependencies(&self) -> Checked {
        let mut last = self.checks.last.lock().await;
        if let Some(checked) = last.as_ref().filter(|c| c.finished.elapsed() < READY_CACHE) {
            return checked.clone();
        }
        let database = async {
            let pool = self.database.as_ref()?;
            let check = async {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                queries::ping(&mut conn).await.map_err(|e| e.to_string())
            };
            Some(
                tokio::time::timeout(CHECK_TIMEOUT, check)
                    .await
                    .unwrap_or_else(|_| Err("timed out".into())),
            )
        };
        let broker = async {
            let probe = self.broker.clone()?;
            Some(
                tokio::time::timeout(CHECK_TIMEOUT * 2, probe.check())
                    .await
                    .unwrap_or_else(|_| Err("timed out".into())),
            )
        };
        let (database, broker) = futures::join!(database, broker);
        let checked = Checked {
            finished: Instant::now(),
            at: Utc::now(),
            database,
            broker,
        };
        *last = Some(checked.clone());
        checked
    }
}

impl ReadyChecks {
    /// Logs a change of state once, by whichever request sees it first.
    fn log_change(&self, up: bool, components: &BTreeMap<String, Component>) {
        let now = if up { State::Up } else { State::Down };
        let before = State::from_u8(self.logged.swap(now as u8, Ordering::Relaxed));
        if before == now {
            return;
        }
        let components = serde_json::to_string(components).unwrap_or_default();
        match (before, now) {
            (_, State::Down) => tracing::warn!(%components, "not ready"),
            (State::Down, _) => tracing::info!(%components, "ready again"),
            _ => tracing::info!(%components, "ready"),
        }
    }
}

#[derive(Serialize)]
struct Component {
    status: &'static str,
    #[serde(flatten)]
    detail: serde_json::Value,
}

impl Component {
    fn from_result(result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Self {
                status: "UP",
                detail: json!({}),
            },
            Err(error) => Self {
                status: "DOWN",
                detail: json!({ "error": error }),
            },
        }
    }

    /// A consumer group's partitions: down while one is blocked or has a
    /// problem.
    fn of_group(status: &GroupStatus) -> Self {
        let blocked = status.blocked();
        let problems = status.problems();
        Self {
            status: if blocked.is_empty() && problems.is_empty() {
                "UP"
            } else {
                "DOWN"
            },
            detail: json!({
                "assigned": status.assigned(),
                "blocked": blocked,
                "problems": problems,
            }),
        }
    }
}

/// Readiness: the dependencies of this process's roles, each `UP`, `DOWN`
/// (or `WARN`, shown and not failed on), checked at most once a second.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "No component is DOWN", body = super::openapi::ReadySchema),
        (status = 503, description = "A component is DOWN", body = super::openapi::ReadySchema),
    ))]
pub async fn ready(readiness: web::Data<Readiness>) -> HttpResponse {
    let checked = readiness.dependencies().await;
    let mut components = BTreeMap::new();
    if let Some(result) = checked.database {
        components.insert("database".to_owned(), Component::from_result(result));
    }
    if let Some(result) = checked.broker {
        components.insert("broker".to_owned(), Component::from_result(result));
    }
    if let Some(status) = &readiness.partitions {
        components.insert("partitions".to_owned(), Component::of_group(status));
    }
    for (name, status) in &readiness.projections {
        components.insert(name.clone(), Component::of_group(status));
    }
    if let Some(topics) = &readiness.topics {
        components.insert(
            "topics".to_owned(),
            Component {
                status: if topics.finite_retention.is_empty() {
                    "UP"
                } else {
                    "WARN"
                },
                detail: json!({
                    "finite_retention": topics.finite_retention,
                    "unchecked": topics.unchecked,
                }),
            },
        );
    }
    // A warning is shown, not failed on: only a component that is down
    // makes the process unready.
    let up = components.values().all(|c| c.status != "DOWN");
    readiness.checks.log_change(up, &components);
    let body = json!({
        "status": if up { "UP" } else { "DOWN" },
        "checked_at": format_timestamp(&checked.at),
        "components": components,
    });
    let mut response = if up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    };
    response.extensions_mut().insert(Reported);
    response
}
