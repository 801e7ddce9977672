//! Query API: `GET /api/v1/timestamp/{id}` (and `HEAD`), read from the view;
//! the shop routes are in [`super::shop_query`].
//!
//! With `Prefer: wait=N` (RFC 7240) an id that is not in the view yet is
//! waited for, up to N seconds (at most [`MAX_WAIT_SECONDS`]; a larger N
//! is cut to it), before the 404; the answer then carries
//! `Preference-Applied: wait=N`. A malformed `wait` is 400 `invalid_prefer`.
//! Other preferences are ignored, as RFC 7240 asks.

use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Serialize;
use uuid::Uuid;

use crate::db::models::TimestampRecord;
use crate::db::{Pool, queries};
use crate::domain::format_timestamp;
use crate::http::error::{ApiError, shorten};
use crate::http::wait::{MAX_WAIT_SECONDS, ViewWatcher};

/// Routes of the query API: the timestamp view's and shop's
/// ([`super::shop_query`]), all read from the view database.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/api/v1/timestamp/{id}")
            .route(super::get_or_head().to(get_timestamp))
            .default_service(super::not_allowed("GET, HEAD")),
    )
    .configure(super::shop_query::routes);
}

/// A record of the view as the API shows it. `id` repeats `command_id`:
/// the original timestamp service answered `id`, and its clients read it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    /// The command id.
    command_id: Uuid,
    /// The command id again, as the original timestamp service named it.
    id: Uuid,
    /// When the event happened (RFC 3339, UTC).
    #[schema(format = DateTime)]
    event_timestamp: String,
    /// When the command was accepted into the log (the record's log time).
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<TimestampRecord> for RecordView {
    fn from(record: TimestampRecord) -> Self {
        Self {
            command_id: record.id,
            id: record.id,
            event_timestamp: format_timestamp(&record.event_timestamp),
            created_at: format_timestamp(&record.created_at),
        }
    }
}

const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// A record of the view. With `Prefer: wait=N` (N ≤ 30), waits up to N
/// seconds for a record not yet in the view (read-your-writes after a POST).
#[utoipa::path(
    get,
    path = "/api/v1/timestamp/{id}",
    tag = "timestamp",
    params(
        ("id" = String, Path, description = "The command id (UUID)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: wait up to N seconds (at most 30) for the record"),
        super::openapi::CorrelationIdHeader,
    ),
    responses(
        (status = 200, description = "The record; `id` and `command_id` carry the same value", body = RecordView),
        (status = 400, description = "Not a UUID, or an invalid Prefer", body = super::openapi::ErrorSchema),
        (status = 404, description = "Not in the view (after the wait, if any)", body = super::openapi::ErrorSchema),
        (status = 503, description = "The view's database is unavailable", body = super::openapi::ErrorSchema),
    )
)]
pub async fn get_timestamp(
    req: HttpRequest,
    id: web::Path<String>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::InvalidId(shorten(&id)))?;
    let Some(wait) = prefer_wait(req.headers())? else {
        let record = find(&pool, id).await?.ok_or(ApiError::NotFound(id))?;
        return Ok(HttpResponse::Ok().json(RecordView::from(record)));
    };
    let applied =
        HeaderValue::from_str(&format!("wait={wait}")).unwrap_or(HeaderValue::from_static("wait"));
    // Registered before the first read: a record committed between the two
    // is then seen by one or the other.
    let mut waiter = match req.app_data::<web::Data<ViewWatcher>>() {
        Some(watcher) if wait > 0 => watcher.wait_for(id),
        _ => None,
    };
    let applied = (wait == 0 || waiter.is_some()).then_some(applied);
    let mut record = find(&pool, id).await?;
    if let (None, Some(waiter)) = (&record, waiter.as_mut()) {
        record = tokio::time::timeout(Duration::from_secs(wait), waiter.found())
            .await
            .ok()
            .flatten();
    }
    let mut response = match record {
        Some(record) => HttpResponse::Ok().json(RecordView::from(record)),
        None => ApiError::NotFound(id).error_response(),
    };
    if let Some(applied) = applied {
        response.headers_mut().insert(PREFERENCE_APPLIED, applied);
    }
    Ok(response)
}

async fn find(pool: &Pool, id: Uuid) -> Result<Option<TimestampRecord>, ApiError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| ApiError::Unavailable(format!("the database is not available: {e}")))?;
    queries::find_record(&mut conn, id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the database query failed: {e}")))
}

/// The `wait` preference in seconds, cut to [`MAX_WAIT_SECONDS`]; `None`
/// when the request states none. The first `wait` counts.
fn prefer_wait(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    for value in headers.get_all(&PREFER) {
        let value = value.to_str().map_err(|_| {
            ApiError::InvalidPrefer("the Prefer header must be visible ASCII".into())
        })?;
        for preference in value.split(',') {
            let token = preference.split(';').next().unwrap_or_default();
            let Some((name, seconds)) = token.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("wait") {
                continue;
            }
            let seconds = seconds.trim();
            let seconds = seconds
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(seconds);
            if seconds.is_empty() || !seconds.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ApiError::InvalidPrefer(format!(
                    "wait must be a whole number of seconds (at most {MAX_WAIT_SECONDS}), not '{}'",
                    shorten(seconds)
                )));
            }
            // All digits: only too many of them fail to parse.
            let seconds = seconds.parse::<u64>().unwrap_or(u64::MAX);
            return Ok(Some(seconds.min(MAX_WAIT_SECONDS)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_of(values: &[&str]) -> Result<Option<u64>, String> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                HeaderName::from_static("prefer"),
                HeaderValue::from_str(value).map_err(|e| e.to_string())?,
            );
        }
        prefer_wait(&headers).map_err(|e| e.code().to_owned())
    }

    #[test]
    fn the_wait_preference_is_read_as_rfc_7240_writes_it() {
        assert_eq!(wait_of(&[]), Ok(None));
        assert_eq!(wait_of(&["wait=5"]), Ok(Some(5)));
        assert_eq!(wait_of(&["WAIT = 7"]), Ok(Some(7)));
        assert_eq!(wait_of(&["wait=\"3\""]), Ok(Some(3)));
        assert_eq!(wait_of(&["respond-async, wait=2"]), Ok(Some(2)));
        assert_eq!(wait_of(&["return=minimal", "wait=4;x=y"]), Ok(Some(4)));
        assert_eq!(wait_of(&["wait=1, wait=9"]), Ok(Some(1)));
        assert_eq!(wait_of(&["return=minimal"]), Ok(None));
        assert_eq!(wait_of(&["wait=0"]), Ok(Some(0)));
    }

    #[test]
    fn a_long_wait_is_cut_and_a_malformed_one_refused() {
        assert_eq!(wait_of(&["wait=31"]), Ok(Some(MAX_WAIT_SECONDS)));
        assert_eq!(
            wait_of(&["wait=99999999999999999999999"]),
            Ok(Some(MAX_WAIT_SECONDS))
        );
        for bad in ["wait=", "wait=-1", "wait=1.5", "wait=5s", "wait=abc"] {
            assert_eq!(wait_of(&[bad]), Err("invalid_prefer".to_owned()), "{bad}");
        }
    }
}
