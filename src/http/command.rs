//! Command API (DESIGN §2): `POST /api/v1/timestamp[/{ts}]`.

use actix::Addr;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::actors::ingestion::{Ingestion, SubmitCommand, SubmitError};
use crate::domain::CorrelationId;
use crate::http::error::ApiError;

/// Routes of the command API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/api/v1/timestamp")
            .route(web::post().to(submit_now))
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        super::resource("/api/v1/timestamp/{timestamp}")
            .route(web::post().to(submit_at))
            .default_service(web::to(super::method_not_allowed)),
    );
}

#[derive(Serialize)]
struct Accepted {
    id: uuid::Uuid,
}

async fn submit_at(
    timestamp: web::Path<String>,
    ingestion: web::Data<Addr<Ingestion>>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ApiError> {
    submit(&ingestion, Some(timestamp.into_inner()), correlation_id).await
}

async fn submit_now(
    ingestion: web::Data<Addr<Ingestion>>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ApiError> {
    submit(&ingestion, None, correlation_id).await
}

async fn submit(
    ingestion: &Addr<Ingestion>,
    event_timestamp: Option<String>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ApiError> {
    let accepted = ingestion
        .send(SubmitCommand {
            event_timestamp,
            correlation_id,
        })
        .await
        .map_err(|e| ApiError::Unavailable(format!("ingestion is not running: {e}")))?
        .map_err(|e| match e {
            SubmitError::InvalidTimestamp(e) => ApiError::InvalidTimestamp(e.to_string()),
            SubmitError::Unavailable(e) => ApiError::Unavailable(e.to_string()),
        })?;
    let id = accepted.command_id;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/v1/timestamp/{id}")))
        .json(Accepted { id }))
}
