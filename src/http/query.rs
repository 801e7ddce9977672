//! Query API: `GET /api/v1/timestamp/{id}`, read from the view.

use actix_web::web;
use serde::Serialize;
use uuid::Uuid;

use crate::db::{Pool, queries};
use crate::domain::format_timestamp;
use crate::http::error::{ApiError, shorten};

/// Routes of the query API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/api/v1/timestamp/{id}")
            .route(web::get().to(get_timestamp))
            .default_service(web::to(super::method_not_allowed)),
    );
}

/// A record of the view as the API shows it. `id` repeats `command_id`:
/// the original timestamp service answered `id`, and its clients read it.
#[derive(Debug, Serialize)]
struct RecordView {
    command_id: Uuid,
    id: Uuid,
    event_timestamp: String,
    created_at: String,
}

async fn get_timestamp(
    id: web::Path<String>,
    pool: web::Data<Pool>,
) -> Result<web::Json<RecordView>, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::InvalidId(shorten(&id)))?;
    let mut conn = pool
        .get()
        .await
        .map_err(|e| ApiError::Unavailable(format!("the database is not available: {e}")))?;
    let record = queries::find_record(&mut conn, id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the database query failed: {e}")))?
        .ok_or(ApiError::NotFound(id))?;
    Ok(web::Json(RecordView {
        command_id: record.id,
        id: record.id,
        event_timestamp: format_timestamp(&record.event_timestamp),
        created_at: format_timestamp(&record.created_at),
    }))
}
