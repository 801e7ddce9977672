//! The one mapping from errors to HTTP answers.
//!
//! Policy: every error answer is JSON `{"error": <code>, "message": <text>}`.
//! Client mistakes are 4xx with a message that says what to fix; a missing
//! dependency is 503; a 500 means a bug and is logged where it is made.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The timestamp is not a storable RFC 3339 instant.
    #[error("{0}")]
    InvalidTimestamp(String),
    /// The id is not a UUID.
    #[error("'{0}' is not a UUID")]
    InvalidId(String),
    /// The correlationId header is malformed.
    #[error("{0}")]
    InvalidCorrelationId(String),
    /// Any other malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// No record with that id in the view.
    #[error("no timestamp record with id {0}")]
    NotFound(uuid::Uuid),
    /// No such route.
    #[error("no route for {method} {path}")]
    RouteNotFound {
        /// Request method.
        method: String,
        /// Request path, shortened.
        path: String,
    },
    /// The route exists, the method does not.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// The request body is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A dependency (broker, database) did not answer in time.
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidTimestamp(_) => "invalid_timestamp",
            ApiError::InvalidId(_) => "invalid_id",
            ApiError::InvalidCorrelationId(_) => "invalid_correlation_id",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::RouteNotFound { .. } => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidTimestamp(_)
            | ApiError::InvalidId(_)
            | ApiError::InvalidCorrelationId(_)
            | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        })
    }
}

/// Shortens client-supplied text before it is echoed in a message.
pub fn shorten(s: &str) -> String {
    const LIMIT: usize = 64;
    match s.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}
