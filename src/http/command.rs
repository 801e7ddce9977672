//! Command API: `POST /api/v1/timestamp[/{ts}]`, and `POST /app`, the
//! original timestamp service's route, kept for its clients.
//!
//! Every route takes an optional `Idempotency-Key` header: all requests with
//! one key are answered with the same command (see `db::idempotency`).

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Serialize;

use crate::actors::ingestion::{CommandAccepted, Ingestion, SubmitCommand, SubmitError};
use crate::db::idempotency::IdempotencyError;
use crate::domain::{CorrelationId, IdempotencyKey, IdempotencyKeyError};
use crate::http::error::ApiError;

/// The request header that names a command for safe retries.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The response header that marks an answer remembered from an earlier
/// request with the same `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Routes of the command API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/api/v1/timestamp")
            .route(web::post().to(submit_now))
            .default_service(super::not_allowed("POST")),
    )
    .service(
        super::resource("/api/v1/timestamp/{timestamp}")
            .route(web::post().to(submit_at))
            .default_service(super::not_allowed("POST")),
    )
    .service(
        super::resource("/app")
            .route(web::post().to(submit_app))
            .default_service(super::not_allowed("POST")),
    );
}

/// The `202` body: the command id and the record's place in the log, so
/// that a client can wait for its own write.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The command id (a UUID v4), also in `Location`.
    id: uuid::Uuid,
    /// The partition of the command topic that holds the record.
    partition: i32,
    /// The record's offset in that partition.
    offset: i64,
}

/// The `200` body of `POST /app`: the id alone, as the original service
/// answered.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    /// The command id (a UUID v4).
    id: uuid::Uuid,
}

/// How a route answers an accepted command.
#[derive(Clone, Copy)]
enum Answer {
    /// `202`, `Location` and the place in the log.
    Versioned,
    /// `200 {"id"}`, as the original service answered `POST /app`.
    Original,
}

/// A command for the event at `timestamp` (RFC 3339), answered once the
/// broker has the record.
#[utoipa::path(
    post,
    path = "/api/v1/timestamp/{timestamp}",
    tag = "timestamp",
    params(
        ("timestamp" = String, Path, description = "The event's instant, RFC 3339 (`2009-09-28T19:03:12Z`, `...+02:00`), years 0001 to 9999"),
        super::openapi::CorrelationIdHeader,
        super::openapi::IdempotencyKeyHeader,
    ),
    responses(
        (status = 202, description = "In the log; `Location` names the query URL", body = Accepted),
        (status = 400, description = "Invalid timestamp, correlation id or Idempotency-Key", body = super::openapi::ErrorSchema),
        (status = 422, description = "An Idempotency-Key reused for another timestamp", body = super::openapi::ErrorSchema),
        (status = 503, description = "The broker did not acknowledge the record in time: not known to be in the log", body = super::openapi::ErrorSchema),
    )
)]
pub(crate) async fn submit_at(
    req: HttpRequest,
    timestamp: web::Path<String>,
    ingestion: web::Data<Addr<Ingestion>>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, CommandError> {
    let timestamp = Some(timestamp.into_inner());
    submit(
        &req,
        &ingestion,
        timestamp,
        correlation_id,
        Answer::Versioned,
    )
    .await
}

/// A command for the event at the server's current time.
#[utoipa::path(
    post,
    path = "/api/v1/timestamp",
    tag = "timestamp",
    params(super::openapi::CorrelationIdHeader, super::openapi::IdempotencyKeyHeader),
    responses(
        (status = 202, description = "In the log; `Location` names the query URL", body = Accepted),
        (status = 400, description = "Invalid correlation id or Idempotency-Key", body = super::openapi::ErrorSchema),
        (status = 503, description = "The broker did not acknowledge the record in time: not known to be in the log", body = super::openapi::ErrorSchema),
    )
)]
pub(crate) async fn submit_now(
    req: HttpRequest,
    ingestion: web::Data<Addr<Ingestion>>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, CommandError> {
    submit(&req, &ingestion, None, correlation_id, Answer::Versioned).await
}

/// The original timestamp service's route: a command at the server's current
/// time, answered `200 {"id"}` as the original answered it (same guarantees
/// as `POST /api/v1/timestamp`).
#[utoipa::path(
    post,
    path = "/app",
    tag = "timestamp",
    params(super::openapi::CorrelationIdHeader, super::openapi::IdempotencyKeyHeader),
    responses(
        (status = 200, description = "In the log", body = Created),
        (status = 400, description = "Invalid correlation id or Idempotency-Key", body = super::openapi::ErrorSchema),
        (status = 503, description = "The broker did not acknowledge the record in time: not known to be in the log", body = super::openapi::ErrorSchema),
    )
)]
pub(crate) async fn submit_app(
    req: HttpRequest,
    ingestion: web::Data<Addr<Ingestion>>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, CommandError> {
    submit(&req, &ingestion, None, correlation_id, Answer::Original).await
}

/// The request's `Idempotency-Key`: none, one valid key, or a 400 (an
/// invalid value, or several headers, which would name several commands).
fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, CommandError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY_HEADER);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CommandError::InvalidIdempotencyKey(
            "give one Idempotency-Key header, not several".into(),
        ));
    }
    let key = value
        .to_str()
        .map_err(|_| IdempotencyKeyError)
        .and_then(IdempotencyKey::parse)
        .map_err(|e| CommandError::InvalidIdempotencyKey(e.to_string()))?;
    Ok(Some(key))
}

async fn submit(
    req: &HttpRequest,
    ingestion: &Addr<Ingestion>,
    event_timestamp: Option<String>,
    correlation_id: CorrelationId,
    answer: Answer,
) -> Result<HttpResponse, CommandError> {
    let idempotency_key = idempotency_key(req)?;
    let accepted = ingestion
        .send(SubmitCommand {
            event_timestamp,
            correlation_id,
            idempotency_key,
        })
        .await
        .map_err(|e| ApiError::Unavailable(format!("ingestion is not running: {e}")))??;
    Ok(respond(accepted, answer))
}

fn respond(accepted: CommandAccepted, answer: Answer) -> HttpResponse {
    let id = accepted.command_id;
    let mut response = match answer {
        Answer::Versioned => {
            let mut response = HttpResponse::Accepted();
            response.insert_header((header::LOCATION, format!("/api/v1/timestamp/{id}")));
            response
        }
        Answer::Original => HttpResponse::Ok(),
    };
    if accepted.replayed {
        response.insert_header((
            HeaderName::from_static(REPLAYED_HEADER),
            HeaderValue::from_static("true"),
        ));
    }
    match answer {
        Answer::Versioned => response.json(Accepted {
            id,
            partition: accepted.place.partition,
            offset: accepted.place.offset,
        }),
        Answer::Original => response.json(Created { id }),
    }
}

/// Errors of the command routes: the shared API errors plus the
/// `Idempotency-Key` refusals, answered in the same JSON shape.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// Any error the other routes answer too.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The `Idempotency-Key` header is malformed.
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    /// The `Idempotency-Key` was first used for another command.
    #[error("{0}")]
    IdempotencyKeyReused(String),
}

impl CommandError {
    fn code(&self) -> &'static str {
        match self {
            CommandError::Api(e) => e.code(),
            CommandError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            CommandError::IdempotencyKeyReused(_) => "idempotency_key_reused",
        }
    }
}

impl From<SubmitError> for CommandError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::InvalidTimestamp(e) => ApiError::InvalidTimestamp(e.to_string()).into(),
            SubmitError::Unavailable(e)
            | SubmitError::Idempotency(IdempotencyError::Produce(e)) => {
                ApiError::Unavailable(e.to_string()).into()
            }
            SubmitError::Idempotency(e @ IdempotencyError::Reused { .. }) => {
                CommandError::IdempotencyKeyReused(e.to_string())
            }
            SubmitError::Idempotency(
                e @ (IdempotencyError::Store { .. } | IdempotencyError::Unsettled(_)),
            ) => ApiError::Unavailable(e.to_string()).into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ResponseError for CommandError {
    fn status_code(&self) -> StatusCode {
        match self {
            CommandError::Api(e) => e.status_code(),
            CommandError::InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            CommandError::IdempotencyKeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            CommandError::Api(e) => e.error_response(),
            _ => HttpResponse::build(self.status_code()).json(ErrorBody {
                error: self.code(),
                message: self.to_string(),
            }),
        }
    }
}
