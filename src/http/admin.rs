//! The admin API of pipelines, under `/admin/pipelines`: list, read,
//! create or change, delete, and the history of one.
//!
//! Served on the query port and on `CONSUMER_ADDR` only when `ADMIN_TOKEN`
//! is set; without it the routes do not exist (404, like any unknown route).
//! Every request must carry `Authorization: Bearer <ADMIN_TOKEN>`: a missing
//! or wrong token is 401, compared in constant time (the SHA-256 digests of
//! both are compared, so not even the length shows).
//!
//! Changes go through the same validation and the same store as
//! `chronolog pipelines apply|delete`: a definition is refused whole (its
//! filters compiled, a VRL error located by filter index, line and column)
//! before anything is stored, and every consumer process picks up a stored
//! change within seconds.
//!
//! What a pipeline is doing (`status`, `records`, `lag`, `partitions`) is
//! known only in a process that runs the pipelines (the consumer role);
//! elsewhere those fields are `null`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use chrono::{DateTime, SecondsFormat, Utc};
use prometheus::core::Collector as _;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::db::{DbError, Pool};
use crate::engine::pipeline_manager::{PipelineManager, PipelineStatus, PipelineStatuses};
use crate::http::error::shorten;
use crate::metrics::Metrics;
use crate::pipelines::Definition;
use crate::pipelines::definition::DefinitionError;
use crate::pipelines::store::{self, Action, Applied, StoreError, Stored};

/// How long a request waits for the pipeline manager's status, and for the
/// broker's high watermarks.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of the admin API's own pool (it reads and writes
/// definitions, a few rows at a time).
const POOL_SIZE: u32 = 2;

/// What the admin routes need, shared by a server's workers.
pub struct Admin {
    /// SHA-256 of `ADMIN_TOKEN`.
    token_digest: [u8; 32],
    /// `DATABASE_URL`, where the definitions are.
    pool: Pool,
    /// The pipelines of this process, in the consumer role.
    manager: Option<Addr<PipelineManager>>,
    /// For the broker's high watermarks (the lag).
    settings: Settings,
}

impl Admin {
    /// The admin API of a process, when `ADMIN_TOKEN` is set; `manager`
    /// when the process runs the pipelines.
    pub fn new(settings: &Settings, manager: Option<Addr<PipelineManager>>) -> Option<Self> {
        let token = settings.admin_token.as_ref()?;
        Some(Self {
            token_digest: digest(token.expose()),
            pool: crate::db::pool(&settings.database_url, POOL_SIZE),
            manager,
            settings: settings.clone(),
        })
    }

    /// Checks the request's bearer token.
    fn authorize(&self, req: &HttpRequest) -> Result<(), AdminError> {
        // `Bearer` with nothing after it (HTTP trims the trailing space)
        // is a bearer token, an empty one.
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let v = v.trim();
                let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            })
            .ok_or(AdminError::MissingToken)?;
        if same_digest(&digest(given), &self.token_digest) {
            Ok(())
        } else {
            Err(AdminError::WrongToken)
        }
    }

    /// What each pipeline does in this process; `None` without a manager
    /// (or when it does not answer).
    async fn statuses(&self) -> Option<HashMap<String, PipelineStatus>> {
        let manager = self.manager.as_ref()?;
        match tokio::time::timeout(STATUS_TIMEOUT, manager.send(PipelineStatuses)).await {
            Ok(Ok(statuses)) => Some(statuses),
            _ => {
                tracing::warn!("the pipeline manager did not answer; status not shown");
                None
            }
        }
    }
}

/// Registers the admin routes, with `admin` as their data.
pub fn routes(cfg: &mut web::ServiceConfig, admin: web::Data<Admin>) {
    cfg.service(
        super::resource("/admin/pipelines")
            .app_data(admin.clone())
            .route(super::get_or_head().to(list))
            .default_service(super::not_allowed("GET, HEAD")),
    )
    .service(
        super::resource("/admin/pipelines/{name}")
            .app_data(admin.clone())
            .route(super::get_or_head().to(get))
            .route(web::put().to(put))
            .route(web::delete().to(delete))
            .default_service(super::not_allowed("GET, HEAD, PUT, DELETE")),
    )
    .service(
        super::resource("/admin/pipelines/{name}/history")
            .app_data(admin)
            .route(super::get_or_head().to(history))
            .default_service(super::not_allowed("GET, HEAD")),
    );
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two digests in time that does not depend on where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// An error of the admin API, answered as JSON `{"error", "message"}` (plus
/// `filter`, `line`, `column` and `report` for a filter that does not
/// compile).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No bearer token.
    #[error("this route needs Authorization: Bearer <ADMIN_TOKEN>")]
    MissingToken,
    /// A bearer token that is not the admin token.
    #[error("the bearer token is not the admin token")]
    WrongToken,
    /// The body is not a JSON object.
    #[error("{0}")]
    BadRequest(String),
    /// The body names another pipeline than the path.
    #[error("the body names pipeline {body}, the path {path}: they must be the same")]
    NameMismatch {
        /// The name in the path.
        path: String,
        /// The name in the body.
        body: String,
    },
    /// The definition is refused.
    #[error(transparent)]
    Invalid(#[from] DefinitionError),
    /// The change is refused by what is stored (topics or sink changed).
    #[error(transparent)]
    Refused(StoreError),
    /// No pipeline of that name.
    #[error("no pipeline named {0}")]
    NotFound(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Db(error) => AdminError::Database(error),
            StoreError::Unknown(name) => AdminError::NotFound(name),
            refused => AdminError::Refused(refused),
        }
    }
}

impl AdminError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::MissingToken | AdminError::WrongToken => "unauthorized",
            AdminError::BadRequest(_) => "bad_request",
            AdminError::NameMismatch { .. } => "name_mismatch",
            AdminError::Invalid(DefinitionError::Filter { .. }) => "invalid_filter",
            AdminError::Invalid(_) => "invalid_definition",
            AdminError::Refused(_) => "immutable_change",
            AdminError::NotFound(_) => "not_found",
            AdminError::Database(e) if e.is_connection_lost() => "unavailable",
            AdminError::Database(_) => "internal",
        }
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::MissingToken | AdminError::WrongToken => StatusCode::UNAUTHORIZED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NameMismatch { .. } | AdminError::Invalid(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AdminError::Refused(_) => StatusCode::CONFLICT,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Database(e) if e.is_connection_lost() => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({"error": self.code(), "message": self.to_string()});
        let mut response = HttpResponse::build(self.status_code());
        match self {
            AdminError::MissingToken | AdminError::WrongToken => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"chronolog admin\""),
                ));
            }
            AdminError::Invalid(DefinitionError::Filter { error, .. }) => {
                body["filter"] = error.index.into();
                body["line"] = error.line.into();
                body["column"] = error.column.into();
                body["report"] = error.report.clone().into();
            }
            AdminError::Database(error) => {
                if error.is_connection_lost() {
                    tracing::warn!(%error, "database unavailable");
                } else {
                    tracing::error!(%error, "admin request failed");
                    body["message"] = "internal error".into();
                }
            }
            _ => {}
        }
        response.json(body)
    }
}

/// Records of a pipeline counted by this process since it started, by
/// outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Records {
    /// Read from its topics.
    #[serde(rename = "in")]
    pub read: u64,
    /// Written to its sink.
    pub out: u64,
    /// Dropped by a filter (`abort`).
    pub dropped: u64,
    /// Dead-lettered: empty or not JSON, a filter failed, or the sink
    /// refused the output.
    pub failed: u64,
}

/// A partition a pipeline reads in this process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PartitionView {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset this process has made durable in the sink; `null`
    /// until its first batch here.
    pub committed: Option<i64>,
    /// Records in the log after `committed` (high watermark − committed);
    /// `null` when either is unknown.
    pub lag: Option<i64>,
    /// Why the partition is stopped or retrying, if it is.
    pub problem: Option<String>,
}

/// A pipeline: its current definition and, in a process that runs the
/// pipelines, what it is doing there.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PipelineView {
    /// The pipeline's name.
    pub name: String,
    /// Its current (stored) version.
    pub version: i32,
    /// When that version was applied (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub applied_at: String,
    /// The definition: the same fields as the TOML.
    #[schema(value_type = PipelineDefinitionSchema)]
    pub definition: Value,
    /// `running`; `failing` (a partition is blocked, retrying or stopped
    /// with a problem, or the pipeline could not start here and is tried
    /// again every few seconds: see `problem`); `stopped` (stored but not
    /// picked up by this process yet). `null`: this process does not run the
    /// pipelines (it has no consumer role): ask the consumer port.
    pub status: Option<String>,
    /// Why the pipeline could not start in this process (for instance, a
    /// table of its sink's name that cannot take its rows); `null` when it
    /// runs or is not run here.
    pub problem: Option<String>,
    /// The version this process runs (it may trail `version` for up to a
    /// poll after a change); `null` when not running here.
    pub running_version: Option<i32>,
    /// Records counted by this process since it started; `null` without
    /// the consumer role.
    pub records: Option<Records>,
    /// Sum of `lag` over `partitions` where it is known; `null` when none
    /// is, and always in the list (it asks the broker).
    pub lag: Option<i64>,
    /// The partitions assigned to this process; `null` without the
    /// consumer role.
    pub partitions: Option<Vec<PartitionView>>,
}

/// `GET /admin/pipelines`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PipelineList {
    /// Every current pipeline, by name.
    pub pipelines: Vec<PipelineView>,
}

/// The answer to a `PUT`: what was stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppliedView {
    /// The pipeline.
    pub name: String,
    /// `created`, `updated` or `unchanged` (nothing stored).
    pub action: String,
    /// Its current version afterwards.
    pub version: i32,
}

/// One version of a pipeline.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionView {
    /// The version.
    pub version: i32,
    /// `created`, `updated` or `deleted`.
    pub action: String,
    /// When it was applied (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub applied_at: String,
    /// The definition (for a deletion, the one deleted).
    #[schema(value_type = PipelineDefinitionSchema)]
    pub definition: Value,
}

/// `GET /admin/pipelines/{name}/history`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    /// The pipeline.
    pub name: String,
    /// Every version, oldest first, deletions included.
    pub versions: Vec<VersionView>,
}

/// A pipeline's definition: the fields of a `[[pipeline]]` table.
#[derive(utoipa::ToSchema)]
#[schema(as = PipelineDefinition)]
#[allow(dead_code)] // Describes `Definition`'s JSON form; never built.
pub struct PipelineDefinitionSchema {
    /// 1 to 63 of `a-z`, `0-9` and `-`. In a `PUT`, optional: the path's
    /// name; when given it must be the path's.
    name: String,
    /// The topics it reads (at least one; answered sorted).
    topics: Vec<String>,
    /// `earliest` (default) or `latest`: where a new pipeline begins.
    start: Option<String>,
    /// VRL programs, run in order on each record's JSON value.
    filters: Option<Vec<String>>,
    /// Where what the filters keep is written.
    sink: SinkSchema,
}

/// A pipeline's sink: `{"type": "postgres", "table", "key"?}`,
/// `{"type": "kafka", "topic", "key"?}` or `{"type": "file", "path"}`.
#[derive(utoipa::ToSchema)]
#[schema(as = PipelineSink)]
#[allow(dead_code)] // Describes `Sink`'s JSON form; never built.
pub struct SinkSchema {
    /// `postgres`, `kafka` or `file`.
    #[serde(rename = "type")]
    kind: String,
    /// postgres: the table (a lowercase SQL identifier).
    table: Option<String>,
    /// kafka: the topic written to.
    topic: Option<String>,
    /// postgres and kafka: a path into the value (`.id`) naming the key.
    key: Option<String>,
    /// file: an absolute path.
    path: Option<String>,
}

/// The error of the admin API: the common shape, plus where a filter that
/// does not compile is wrong.
#[derive(utoipa::ToSchema)]
#[schema(as = AdminError)]
#[allow(dead_code)] // Describes the body `AdminError` writes; never built.
pub struct AdminErrorSchema {
    /// `unauthorized`, `bad_request`, `name_mismatch`, `invalid_definition`,
    /// `invalid_filter`, `immutable_change`, `not_found`, `unavailable`,
    /// `internal`.
    error: String,
    /// What was wrong, for people.
    message: String,
    /// `invalid_filter`: the filter's index in `filters`, from 0.
    filter: Option<usize>,
    /// `invalid_filter`: the line of the first error in it, from 1.
    line: Option<usize>,
    /// `invalid_filter`: its column, from 1.
    column: Option<usize>,
    /// `invalid_filter`: VRL's report, with the source marked.
    report: Option<String>,
}

fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The records of pipeline `name` counted in `metrics`, read without
/// creating a series for it.
fn records(metrics: &Metrics, name: &str) -> Records {
    let mut records = Records::default();
    for family in metrics.pipeline_records.collect() {
        for metric in family.get_metric() {
            let label = |wanted: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == wanted)
                    .map(|l| l.value())
            };
            if label("pipeline") != Some(name) {
                continue;
            }
            // Counters hold whole numbers.
            let value = metric.get_counter().get_value() as u64;
            match label("outcome") {
                Some("in") => records.read = value,
                Some("out") => records.out = value,
                Some("dropped") => records.dropped = value,
                Some("failed") => records.failed = value,
                _ => {}
            }
        }
    }
    records
}

/// High watermarks of the partitions of `topics`, by topic; a topic the
/// broker did not answer for is absent.
async fn high_watermarks(
    settings: &Settings,
    topics: &[String],
) -> HashMap<String, BTreeMap<i32, i64>> {
    let settings = settings.clone();
    let topics = topics.to_vec();
    let fetch = tokio::task::spawn_blocking(move || {
        topics
            .into_iter()
            .filter_map(|topic| {
                let marks = crate::kafka::admin::watermarks(&settings, &topic).ok()?;
                Some((
                    topic,
                    marks.into_iter().map(|(p, (_, high))| (p, high)).collect(),
                ))
            })
            .collect()
    });
    match tokio::time::timeout(STATUS_TIMEOUT * 2, fetch).await {
        Ok(Ok(marks)) => marks,
        _ => HashMap::new(),
    }
}

/// `stored` as the API shows it. `statuses` is `None` in a process without
/// the pipelines; `highs` `None` when the lag is not asked for.
fn view(
    stored: &Stored,
    statuses: Option<&HashMap<String, PipelineStatus>>,
    metrics: &Metrics,
    highs: Option<&HashMap<String, BTreeMap<i32, i64>>>,
) -> PipelineView {
    let definition = &stored.definition;
    let mut view = PipelineView {
        name: definition.name.clone(),
        version: stored.version,
        applied_at: rfc3339(&stored.applied_at),
        definition: definition.to_json(),
        status: None,
        problem: None,
        running_version: None,
        records: None,
        lag: None,
        partitions: None,
    };
    let Some(statuses) = statuses else {
        return view;
    };
    view.records = Some(records(metrics, &definition.name));
    let (version, groups) = match statuses.get(&definition.name) {
        Some(PipelineStatus::Running { version, groups }) => (*version, groups),
        Some(PipelineStatus::NotStarted { problem }) => {
            view.status = Some("failing".into());
            view.problem = Some(problem.clone());
            view.partitions = Some(Vec::new());
            return view;
        }
        None => {
            view.status = Some("stopped".into());
            view.partitions = Some(Vec::new());
            return view;
        }
    };
    view.running_version = Some(version);
    // The manager runs one group per topic, in the definition's (sorted)
    // order; topics cannot change without a restart under the same name.
    let mut partitions = Vec::new();
    if groups.len() == definition.topics.len() {
        for (topic, group) in definition.topics.iter().zip(groups) {
            let committed = group.committed();
            let problems = group.problems();
            let blocked = group.blocked();
            let write_errors = group.write_errors();
            let mut numbers = group.assigned();
            numbers.extend(problems.keys().copied());
            numbers.extend(blocked.iter().copied());
            numbers.sort_unstable();
            numbers.dedup();
            for partition in numbers {
                let committed = committed.get(&partition).copied();
                let high = highs
                    .and_then(|h| h.get(topic))
                    .and_then(|h| h.get(&partition))
                    .copied();
                let problem = problems.get(&partition).cloned().or_else(|| {
                    blocked
                        .contains(&partition)
                        .then(|| match write_errors.get(&partition) {
                            Some(error) => format!("retrying a failed write: {error}"),
                            None => "retrying a failed write".to_owned(),
                        })
                });
                partitions.push(PartitionView {
                    topic: topic.clone(),
                    partition,
                    committed,
                    lag: committed.zip(high).map(|(c, h)| (h - c).max(0)),
                    problem,
                });
            }
        }
    }
    let failing = partitions.iter().any(|p| p.problem.is_some());
    view.status = Some(if failing { "failing" } else { "running" }.into());
    if highs.is_some() {
        let known: Vec<i64> = partitions.iter().filter_map(|p| p.lag).collect();
        view.lag = (!known.is_empty()).then(|| known.iter().sum());
    }
    view.partitions = Some(partitions);
    view
}

/// Every current pipeline (without `lag`, which would ask the broker for
/// each topic: see one pipeline for it).
#[utoipa::path(
    get,
    path = "/admin/pipelines",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every current pipeline, by name", body = PipelineList),
        (status = 401, description = "No bearer token, or not `ADMIN_TOKEN`", body = AdminErrorSchema),
        (status = 503, description = "The database is unavailable", body = AdminErrorSchema),
    )
)]
pub async fn list(
    req: HttpRequest,
    admin: web::Data<Admin>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, AdminError> {
    admin.authorize(&req)?;
    let stored = {
        let mut conn = crate::db::checkout(&admin.pool).await?;
        store::list(&mut conn).await?
    };
    let statuses = admin.statuses().await;
    let pipelines = stored
        .iter()
        .map(|s| view(s, statuses.as_ref(), &metrics, None))
        .collect();
    Ok(HttpResponse::Ok().json(PipelineList { pipelines }))
}

/// One pipeline: its definition and, on a process that runs the pipelines,
/// its status, records, lag and partitions there.
#[utoipa::path(
    get,
    path = "/admin/pipelines/{name}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The pipeline's name")),
    responses(
        (status = 200, description = "The pipeline", body = PipelineView),
        (status = 401, description = "No bearer token, or not `ADMIN_TOKEN`", body = AdminErrorSchema),
        (status = 404, description = "No such pipeline (or it is deleted)", body = AdminErrorSchema),
        (status = 503, description = "The database is unavailable", body = AdminErrorSchema),
    )
)]
pub async fn get(
    req: HttpRequest,
    admin: web::Data<Admin>,
    metrics: web::Data<Metrics>,
    name: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    admin.authorize(&req)?;
    let name = name.into_inner();
    let stored = {
        let mut conn = crate::db::checkout(&admin.pool).await?;
        store::get(&mut conn, &name).await?
    }
    .ok_or_else(|| AdminError::NotFound(shorten(&name)))?;
    let statuses = admin.statuses().await;
    let highs = match &statuses {
        Some(s) if s.contains_key(&name) => {
            Some(high_watermarks(&admin.settings, &stored.definition.topics).await)
        }
        _ => None,
    };
    Ok(HttpResponse::Ok().json(view(&stored, statuses.as_ref(), &metrics, highs.as_ref())))
}

/// Creates or changes a pipeline, validated exactly as `pipelines apply`
/// does. The body is one pipeline's JSON, the TOML's fields; its `name` may
/// be left out (the path's is used), and when given must be the path's.
#[utoipa::path(
    put,
    path = "/admin/pipelines/{name}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The pipeline's name")),
    request_body(content = PipelineDefinitionSchema, content_type = "application/json"),
    responses(
        (status = 201, description = "Created: version 1, or the first after a deletion", body = AppliedView),
        (status = 200, description = "Updated (a new version), or unchanged (nothing stored)", body = AppliedView),
        (status = 400, description = "The body is not a JSON object", body = AdminErrorSchema),
        (status = 401, description = "No bearer token, or not `ADMIN_TOKEN`", body = AdminErrorSchema),
        (status = 409, description = "Its topics or sink would change: apply it under a new name, or replay", body = AdminErrorSchema),
        (status = 422, description = "The definition is refused (a filter that does not compile: `invalid_filter` with its place); nothing stored", body = AdminErrorSchema),
        (status = 503, description = "The database is unavailable", body = AdminErrorSchema),
    )
)]
pub async fn put(
    req: HttpRequest,
    admin: web::Data<Admin>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AdminError> {
    admin.authorize(&req)?;
    let name = name.into_inner();
    let mut value: Value = serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("the body is not JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(AdminError::BadRequest(
            "the body is not a JSON object: send one pipeline's definition".into(),
        ));
    };
    match object.get("name") {
        None => {
            object.insert("name".into(), Value::String(name.clone()));
        }
        Some(Value::String(given)) if *given == name => {}
        Some(given) => {
            let given = match given {
                Value::String(given) => given.clone(),
                other => other.to_string(),
            };
            return Err(AdminError::NameMismatch {
                path: shorten(&name),
                body: shorten(&given),
            });
        }
    }
    // Compiling the filters takes CPU: off the worker's event loop.
    let definition = web::block(move || Definition::from_json(value))
        .await
        .map_err(|_| AdminError::BadRequest("the definition could not be checked".into()))??;
    let applied = {
        let mut conn = crate::db::checkout(&admin.pool).await?;
        store::apply(&mut conn, std::slice::from_ref(&definition)).await?
    };
    let Some(Applied {
        name,
        action,
        version,
    }) = applied.into_iter().next()
    else {
        return Err(AdminError::BadRequest("nothing to apply".into()));
    };
    tracing::info!(pipeline = name, %action, version, sink = store::describe_sink(&definition.sink), "pipeline applied through the admin API");
    let status = if action == Action::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(AppliedView {
        name,
        action: action.to_string(),
        version,
    }))
}

/// Deletes a pipeline: it stops in every consumer process; its sink and
/// its history are kept.
#[utoipa::path(
    delete,
    path = "/admin/pipelines/{name}",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The pipeline's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No bearer token, or not `ADMIN_TOKEN`", body = AdminErrorSchema),
        (status = 404, description = "No such pipeline (or already deleted)", body = AdminErrorSchema),
        (status = 503, description = "The database is unavailable", body = AdminErrorSchema),
    )
)]
pub async fn delete(
    req: HttpRequest,
    admin: web::Data<Admin>,
    name: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    admin.authorize(&req)?;
    let name = name.into_inner();
    let version = {
        let mut conn = crate::db::checkout(&admin.pool).await?;
        store::delete(&mut conn, &name).await.map_err(|e| match e {
            StoreError::Unknown(name) => AdminError::NotFound(shorten(&name)),
            other => other.into(),
        })?
    };
    tracing::info!(
        pipeline = name,
        version,
        "pipeline deleted through the admin API"
    );
    Ok(HttpResponse::NoContent().finish())
}

/// Every version of a pipeline, oldest first, deletions included (also of
/// a deleted pipeline).
#[utoipa::path(
    get,
    path = "/admin/pipelines/{name}/history",
    tag = "admin",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The pipeline's name")),
    responses(
        (status = 200, description = "Its versions", body = History),
        (status = 401, description = "No bearer token, or not `ADMIN_TOKEN`", body = AdminErrorSchema),
        (status = 404, description = "The name was never used", body = AdminErrorSchema),
        (status = 503, description = "The database is unavailable", body = AdminErrorSchema),
    )
)]
pub async fn history(
    req: HttpRequest,
    admin: web::Data<Admin>,
    name: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    admin.authorize(&req)?;
    let name = name.into_inner();
    let versions = {
        let mut conn = crate::db::checkout(&admin.pool).await?;
        store::history(&mut conn, &name).await?
    };
    if versions.is_empty() {
        return Err(AdminError::NotFound(shorten(&name)));
    }
    Ok(HttpResponse::Ok().json(History {
        name,
        versions: versions
            .into_iter()
            .map(|v| VersionView {
                version: v.version,
                action: v.action.to_string(),
                applied_at: rfc3339(&v.applied_at),
                definition: v.definition.to_json(),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn digests_compare_equal_only_when_the_tokens_are_equal() {
        let token = digest("a-token-of-sixteen+");
        assert!(same_digest(&token, &digest("a-token-of-sixteen+")));
        assert!(!same_digest(&token, &digest("a-token-of-sixteen")));
        assert!(!same_digest(&token, &digest("")));
    }

    #[test]
    fn a_filter_error_is_unprocessable_with_its_place() {
        let error = Definition::from_json(json!({
            "name": "p",
            "topics": ["t"],
            "filters": [".a = 1", ".b = 2\n.c = upcase(.d)"],
            "sink": {"type": "file", "path": "/x"},
        }))
        .expect_err("refused");
        let DefinitionError::Filter { error: place, .. } = &error else {
            panic!("not a filter error: {error}");
        };
        assert_eq!((place.index, place.line, place.column), (1, 2, 6));
        let error = AdminError::from(error);
        assert_eq!(error.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.code(), "invalid_filter");
    }
}
