//! The one mapping from errors to HTTP answers.
//!
//! Policy: every error answer is JSON `{"error": <code>, "message": <text>}`.
//! Client mistakes are 4xx with a message that says what to fix; a missing
//! dependency is 503; a 500 means a bug and is logged where it is made. A
//! message echoes at most [`ECHO_LIMIT`] characters of anything the client sent.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

pub use crate::echo::{ECHO_LIMIT, Echo, shorten};

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
    /// The `Prefer` header asks for a wait that is not a number of seconds.
    #[error("{0}")]
    InvalidPrefer(String),
    /// Any other malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// No record with that id in the view.
    #[error("no timestamp record with id {0}")]
    NotFound(uuid::Uuid),
    /// No such route.
    #[error("no route for {method} {path}")]
    RouteNotFound {
        /// Request method, shortened.
        method: String,
        /// Request path, shortened.
        path: String,
    },
    /// The route exists, the method does not.
    #[error("method {method} is not allowed here")]
    MethodNotAllowed {
        /// Request method, shortened.
        method: String,
        /// The methods the route has, for the `Allow` header.
        allow: &'static str,
    },
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
            ApiError::InvalidPrefer(_) => "invalid_prefer",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::RouteNotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    /// The JSON body of the answer.
    pub fn body(&self) -> Bytes {
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
        };
        // Serialising a struct of two strings cannot fail.
        serde_json::to_vec(&body).unwrap_or_default().into()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidTimestamp(_)
            | ApiError::InvalidId(_)
            | ApiError::InvalidCorrelationId(_)
            | ApiError::InvalidPrefer(_)
            | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        response.body(self.body())
    }
}

/// An error of the accounts and shop commands, answered in the same JSON
/// shape with the fields a client needs to act on it: `field` names the
/// request field at fault, a stock refusal names the product and what is left.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A request field is missing, of the wrong type or out of bounds.
    #[error("{0}")]
    Invalid(#[from] crate::input::FieldError),
    /// The path's id is not a valid id.
    #[error("'{0}' is not a valid id")]
    InvalidId(String),
    /// An `Idempotency-Key` on a command that does not take one.
    #[error(
        "this command takes no Idempotency-Key (the timestamp POSTs do): sent again, it would run again, so it is refused rather than run without that promise"
    )]
    IdempotencyKeyUnsupported,
    /// No such customer, product or order.
    #[error("no {what} with id {id}")]
    NotFound {
        /// `customer`, `product`, `order`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The request names something that does not exist.
    #[error("{message}")]
    Unknown {
        /// `unknown_customer`, `unknown_product`.
        code: &'static str,
        /// The request field that names it.
        field: String,
        /// What is missing.
        message: String,
    },
    /// An order asks for more than the stock.
    #[error(
        "insufficient stock of product {product_id} ({product_name}): {requested} asked, {available} left"
    )]
    InsufficientStock {
        /// The request field of the item.
        field: String,
        /// The product.
        product_id: uuid::Uuid,
        /// Its name.
        product_name: String,
        /// The quantity asked for.
        requested: i64,
        /// What is left.
        available: i64,
    },
    /// Deleting an order would give a product back more than its stock
    /// has room for.
    #[error("{message}")]
    StockLimit {
        /// What is wrong, in the shop's words.
        message: String,
        /// The product.
        product_id: uuid::Uuid,
        /// Its name.
        product_name: String,
        /// Its stock now.
        stock: i64,
        /// What the order would give back.
        returned: i64,
    },
    /// The database failed; a lost connection is a 503, anything else a bug.
    #[error("{0}")]
    Database(#[from] crate::db::DbError),
}

impl ContextError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ContextError::Invalid(_) => "invalid_field",
            ContextError::InvalidId(_) => "invalid_id",
            ContextError::IdempotencyKeyUnsupported => "idempotency_key_unsupported",
            ContextError::NotFound { .. } => "not_found",
            ContextError::Unknown { code, .. } => code,
            ContextError::InsufficientStock { .. } => "insufficient_stock",
            ContextError::StockLimit { .. } => "stock_limit",
            ContextError::Database(e) if e.is_connection_lost() => "unavailable",
            ContextError::Database(_) => "internal",
        }
    }
}

impl ResponseError for ContextError {
    fn status_code(&self) -> StatusCode {
        match self {
            ContextError::Invalid(_)
            | ContextError::InvalidId(_)
            | ContextError::IdempotencyKeyUnsupported => StatusCode::BAD_REQUEST,
            ContextError::NotFound { .. } => StatusCode::NOT_FOUND,
            ContextError::Unknown { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ContextError::InsufficientStock { .. } | ContextError::StockLimit { .. } => {
                StatusCode::CONFLICT
            }
            ContextError::Database(e) if e.is_connection_lost() => StatusCode::SERVICE_UNAVAILABLE,
            ContextError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = serde_json::json!({"error": self.code(), "message": self.to_string()});
        match self {
            ContextError::Invalid(e) => body["field"] = e.field.clone().into(),
            ContextError::InvalidId(_) => body["field"] = "id".into(),
            ContextError::IdempotencyKeyUnsupported => body["field"] = "Idempotency-Key".into(),
            ContextError::Unknown { field, .. } => body["field"] = field.clone().into(),
            ContextError::InsufficientStock {
                field,
                product_id,
                product_name,
                requested,
                available,
            } => {
                body["field"] = field.clone().into();
                stock_fields(&mut body, product_id, product_name, *requested, *available);
            }
            ContextError::StockLimit {
                product_id,
                product_name,
                stock,
                returned,
                ..
            } => stock_fields(
                &mut body,
                product_id,
                product_name,
                *returned,
                crate::shop::MAX_STOCK - stock,
            ),
            ContextError::Database(error) => {
                if error.is_connection_lost() {
                    tracing::warn!(%error, "database unavailable");
                } else {
                    tracing::error!(%error, "database command failed");
                    body["message"] = "internal error".into();
                }
            }
            ContextError::NotFound { .. } => {}
        }
        HttpResponse::build(self.status_code()).json(body)
    }
}

/// The product a stock refusal is about, the units in question and the
/// units there is room for: what a client needs to ask again.
fn stock_fields(
    body: &mut serde_json::Value,
    product_id: &uuid::Uuid,
    product_name: &str,
    requested: i64,
    available: i64,
) {
    body["productId"] = product_id.to_string().into();
    body["productName"] = product_name.into();
    body["requested"] = requested.into();
    body["available"] = available.into();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_json_error_shape() {
        let body = ApiError::BadRequest("no".into()).body();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"error": "bad_request", "message": "no"})
        );
    }
}
