//! Operations endpoints served by every role (DESIGN §4): `/health`,
//! `/ready`, `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, guard, web};
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;
use serde_json::json;

use crate::config::Settings;
use crate::db::{Pool, queries};
use crate::kafka::group::GroupStatus;
use crate::kafka::{TracingContext, base_config, topic_partitions};
use crate::metrics::Metrics;

/// How long one dependency check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes of the operations endpoints.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // Guarded like `ServiceConfig::route`: other methods fall through to 404.
    for (pattern, route) in [
        ("/health", web::get().to(health)),
        ("/ready", web::get().to(ready)),
        ("/metrics", web::get().to(render_metrics)),
    ] {
        cfg.service(super::resource(pattern).guard(guard::Get()).route(route));
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "UP"}))
}

async fn render_metrics(metrics: web::Data<Metrics>) -> HttpResponse {
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
#[derive(Clone, Default)]
pub struct Readiness {
    /// The view, for the query and consumer roles.
    pub database: Option<Pool>,
    /// The broker, for the command and consumer roles.
    pub broker: Option<Arc<BrokerProbe>>,
    /// The group's partitions, for the consumer role: not ready while one is blocked.
    pub partitions: Option<Arc<GroupStatus>>,
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
}

async fn ready(readiness: web::Data<Readiness>) -> HttpResponse {
    let mut components = BTreeMap::new();
    if let Some(pool) = &readiness.database {
        let check = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            queries::ping(&mut conn).await.map_err(|e| e.to_string())
        };
        let result = tokio::time::timeout(CHECK_TIMEOUT, check)
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        components.insert("database", Component::from_result(result));
    }
    if let Some(probe) = &readiness.broker {
        let result = tokio::time::timeout(CHECK_TIMEOUT * 2, probe.clone().check())
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        components.insert("broker", Component::from_result(result));
    }
    if let Some(status) = &readiness.partitions {
        let blocked = status.blocked();
        components.insert(
            "partitions",
            Component {
                status: if blocked.is_empty() { "UP" } else { "DOWN" },
                detail: json!({ "assigned": status.assigned(), "blocked": blocked }),
            },
        );
    }
    let up = components.values().all(|c| c.status == "UP");
    let body = json!({ "status": if up { "UP" } else { "DOWN" }, "components": components });
    if up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
