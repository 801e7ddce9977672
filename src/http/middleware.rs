//! Request middleware shared by every server: the correlation id and the
//! HTTP metrics, in one place.
//!
//! The `correlationId` header is taken from the request (or generated),
//! refused with 400 when malformed, stored in the request for handlers,
//! recorded as a span field so that every log line of the request carries it,
//! and echoed in the response.

use std::borrow::Cow;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest, ResponseError};
use tracing::Instrument;

use crate::domain::CorrelationId;
use crate::http::Route;
use crate::http::error::ApiError;
use crate::metrics::Metrics;

/// The header that carries the correlation id.
pub const CORRELATION_HEADER: &str = "correlationId";

/// Largest request body accepted; no route takes a body, so a larger one is
/// a client error rather than something to ignore.
pub const BODY_LIMIT: usize = 4 * 1024;

/// Refuses a request whose declared body is larger than [`BODY_LIMIT`].
fn check_body_size(req: &ServiceRequest) -> Result<(), ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > BODY_LIMIT as u64 => Err(ApiError::PayloadTooLarge(format!(
            "request bodies are limited to {BODY_LIMIT} bytes; this one declares {length}"
        ))),
        _ => Ok(()),
    }
}

/// Body size check, correlation id, HTTP metrics and the request span.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let given = req
        .headers()
        .get(CORRELATION_HEADER)
        .map(|v| v.to_str().map(str::to_owned));
    let correlation = check_body_size(&req).and_then(|()| match given {
        None => Ok(CorrelationId::generate()),
        Some(Ok(value)) => {
            CorrelationId::parse(&value).map_err(|e| ApiError::InvalidCorrelationId(e.to_string()))
        }
        Some(Err(_)) => Err(ApiError::InvalidCorrelationId(
            crate::domain::CorrelationIdError.to_string(),
        )),
    });
    let response = match correlation {
        Ok(correlation_id) => {
            let span = tracing::info_span!(
                "request",
                correlation_id = %correlation_id,
                %method,
                path = req.path()
            );
            req.extensions_mut().insert(correlation_id.clone());
            let mut response = next.call(req).instrument(span).await?.map_into_boxed_body();
            if let Ok(value) = HeaderValue::from_str(correlation_id.as_str()) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static("correlationid"), value);
            }
            response
        }
        Err(error) => {
            let (http_req, _) = req.into_parts();
            ServiceResponse::new(http_req, error.error_response())
        }
    };
    let status = response.status();
    let route = route_label(response.request());
    let Some(m) = response
        .request()
        .app_data::<actix_web::web::Data<Metrics>>()
    else {
        return Ok(response);
    };
    m.http_requests
        .with_label_values(&[&route, method.as_str(), status.as_str()])
        .inc();
    m.http_request_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), route = %route, "request failed");
    }
    Ok(response)
}

/// The `route` label: the pattern of the resource that served the request;
/// for a request refused before routing, the pattern its path matches.
fn route_label(req: &HttpRequest) -> Cow<'static, str> {
    match req.app_data::<Route>() {
        Some(Route(pattern)) => Cow::Borrowed(pattern),
        None => req
            .match_pattern()
            .map_or(Cow::Borrowed("unmatched"), Cow::Owned),
    }
}

impl FromRequest for CorrelationId {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // The middleware has always stored one by the time a handler runs.
        let id = req
            .extensions()
            .get::<CorrelationId>()
            .cloned()
            .unwrap_or_else(CorrelationId::generate);
        std::future::ready(Ok(id))
    }
}
