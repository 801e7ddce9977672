//! Request middleware shared by every server: the request's framing and
//! body, the correlation id and the HTTP metrics, in one place.
//!
//! * A request with both `Content-Length` and `Transfer-Encoding` is refused
//!   with 400 and its connection closed: a proxy in front may have framed it
//!   the other way, so whatever follows on that connection is not trusted.
//! * Only the accounts and shop routes take a body (small JSON documents):
//!   one larger than [`BODY_LIMIT`] is refused with
//!   413. The refused body is read and thrown away first (up to
//!   [`DRAIN_LIMIT`], for at most [`DRAIN_TIMEOUT`]), so that a client that
//!   sends its whole body before reading gets the 413 rather than a reset
//!   connection; beyond that bound the answer closes the connection.
//! * The `correlationId` header is taken from the request (or generated),
//!   refused with 400 when malformed, stored in the request for handlers,
//!   recorded as a span field so that every log line of the request carries
//!   it, and echoed in every response, refusals included (a generated one
//!   when the given one was refused).
//! * The `method` label of the metrics takes a fixed set of values: clients
//!   choose methods, and every distinct value would be a new series.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures::StreamExt;
use tracing::Instrument;

use crate::domain::{CorrelationId, CorrelationIdError};
use crate::http::Route;
use crate::http::error::{ApiError, ContextError, Echo};
use crate::metrics::Metrics;

/// The header that carries the correlation id, `correlationId` (header
/// names are case-insensitive; a static name costs no conversion per request).
pub const CORRELATION_HEADER: HeaderName = HeaderName::from_static("correlationid");

/// Largest request body accepted: the accounts and shop routes take JSON
/// documents well under it (a customer, an order of up to 50 items); the
/// other routes take none, so a larger one is a client error rather than
/// something to ignore.
pub const BODY_LIMIT: usize = 4 * 1024;

/// Most bytes of a refused body read (and thrown away) before answering.
pub const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;

/// Longest a refused body is read before answering, and longest a chunked
/// body may take to arrive.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Marks a response whose outcome its handler has already logged, so that
/// the middleware does not log a server error a second time.
#[derive(Debug, Clone, Copy)]
pub struct Reported;

/// The `method` label: the request method when it is a common one, else `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Framing, body size, correlation id, HTTP metrics and the request span.
pub async fn observe(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let (correlation_id, bad_correlation) = correlation(&req);
    let refusal = match admit_body(&mut req).await {
        Err(refusal) => Some(refusal),
        Ok(()) => bad_correlation.map(Refusal::Answer),
    };
    let mut response = match refusal {
        None => {
            let span = tracing::info_span!(
                "request",
                correlation_id = %correlation_id,
                method = %Echo(req.method().as_str()),
                path = %Echo(req.path()),
            );
            req.extensions_mut().insert(correlation_id.clone());
            next.call(req).instrument(span).await?.map_into_boxed_body()
        }
        Some(refusal) => {
            let (http_req, _) = req.into_parts();
            ServiceResponse::new(http_req, refusal.into_response())
        }
    };
    if let Ok(value) = HeaderValue::from_str(correlation_id.as_str()) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    let status = response.status();
    let route = route_label(response.request());
    let Some(m) = response
        .request()
        .app_data::<actix_web::web::Data<Metrics>>()
    else {
        return Ok(response);
    };
    m.http_requests
        .with_label_values(&[&route, method, status.as_str()])
        .inc();
    m.http_request_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    if status.is_server_error() && !response.response().extensions().contains::<Reported>() {
        tracing::warn!(status = status.as_u16(), route = %route, "request failed");
    }
    Ok(response)
}

/// The request's correlation id, and the error to answer when the given one
/// is malformed (the refusal then carries a generated id).
fn correlation(req: &ServiceRequest) -> (CorrelationId, Option<ApiError>) {
    let Some(given) = req.headers().get(&CORRELATION_HEADER) else {
        return (CorrelationId::generate(), None);
    };
    match given.to_str().map(CorrelationId::parse) {
        Ok(Ok(id)) => (id, None),
        _ => (
            CorrelationId::generate(),
            Some(ApiError::InvalidCorrelationId(
                CorrelationIdError.to_string(),
            )),
        ),
    }
}

/// How the middleware refuses a request.
enum Refusal {
    /// Answer; the connection stays usable.
    Answer(ApiError),
    /// Answer, then close the connection.
    Close(ApiError),
}

impl Refusal {
    fn into_response(self) -> HttpResponse {
        match self {
            Refusal::Answer(error) => error.error_response(),
            Refusal::Close(error) => HttpResponse::build(error.status_code())
                .insert_header((
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ))
                .force_close()
                .body(BoxBody::new(ThenClose::new(error.body()))),
        }
    }
}

/// Checks the request's framing and body size; a chunked body is read here
/// (it has no declared size) and handed on when small enough.
async fn admit_body(req: &mut ServiceRequest) -> Result<(), Refusal> {
    let headers = req.headers();
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
    match (declared, chunked) {
        (None, false) => Ok(()),
        (Some(_), true) => {
            drain(&mut req.take_payload(), 0).await;
            Err(Refusal::Close(ApiError::BadRequest(
                "a request may not carry both Content-Length and Transfer-Encoding".into(),
            )))
        }
        (Some(Some(length)), false) if length <= BODY_LIMIT as u64 => Ok(()),
        // actix has already refused a Content-Length that is not a number.
        (Some(length), false) => {
            let length = length.unwrap_or(u64::MAX);
            let error = ApiError::PayloadTooLarge(format!(
                "request bodies are limited to {BODY_LIMIT} bytes; this one declares {length}"
            ));
            if length > DRAIN_LIMIT {
                return Err(Refusal::Close(error));
            }
            Err(match drain(&mut req.take_payload(), 0).await {
                Drained::Complete => Refusal::Answer(error),
                Drained::Abandoned | Drained::Broken => Refusal::Close(error),
            })
        }
        (None, true) => {
            let mut payload = req.take_payload();
            let body = read_chunked(&mut payload).await?;
            req.set_payload(Payload::from(body));
            Ok(())
        }
    }
}

/// Reads a chunked body of at most [`BODY_LIMIT`] bytes.
async fn read_chunked(payload: &mut Payload) -> Result<Bytes, Refusal> {
    let mut body = BytesMut::new();
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                Refusal::Close(ApiError::BadRequest(format!("malformed request body: {e}")))
            })?;
            if body.len() + chunk.len() > BODY_LIMIT {
                let error = ApiError::PayloadTooLarge(format!(
                    "request bodies are limited to {BODY_LIMIT} bytes; this one is longer"
                ));
                let taken = (body.len() + chunk.len()) as u64;
                return Err(match drain(payload, taken).await {
                    Drained::Complete => Refusal::Answer(error),
                    Drained::Abandoned | Drained::Broken => Refusal::Close(error),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(body.freeze()),
        Ok(Err(refusal)) => Err(refusal),
        Err(_) => Err(Refusal::Close(ApiError::BadRequest(format!(
            "the request body did not arrive within {}s",
            DRAIN_TIMEOUT.as_secs()
        )))),
    }
}

/// How reading a refused body ended.
enum Drained {
    /// Read to its end: the connection can carry the next request.
    Complete,
    /// Longer than [`DRAIN_LIMIT`] or slower than [`DRAIN_TIMEOUT`].
    Abandoned,
    /// Not valid framing (bad chunked encoding).
    Broken,
}

/// Reads the rest of a refused body and throws it away; `taken` bytes of it
/// were read already.
async fn drain(payload: &mut Payload, mut taken: u64) -> Drained {
    let read = async {
        while let Some(chunk) = payload.next().await {
            match chunk {
                Ok(chunk) => {
                    taken += chunk.len() as u64;
                    if taken > DRAIN_LIMIT {
                        return Drained::Abandoned;
                    }
                }
                Err(_) => return Drained::Broken,
            }
        }
        Drained::Complete
    };
    tokio::time::timeout(DRAIN_TIMEOUT, read)
        .await
        .unwrap_or(Drained::Abandoned)
}

/// A body after which actix drops the connection.
///
/// actix-web 4 gives a handler no way to close a connection: an answer with
/// `Connection: close` is followed by the answers to whatever requests the
/// client pipelined behind it. A body stream that fails makes the dispatcher
/// drop the connection at once, so this body yields the answer, waits one
/// turn (the dispatcher writes the answer out meanwhile) and then fails.
struct ThenClose {
    size: u64,
    state: CloseState,
}

enum CloseState {
    Answer(Bytes),
    Flush,
    Close,
}

/// The error that ends a [`ThenClose`] body.
#[derive(Debug, thiserror::Error)]
#[error("connection closed after a refused request")]
struct ConnectionClosed;

impl ThenClose {
    fn new(answer: Bytes) -> Self {
        Self {
            size: answer.len() as u64,
            state: CloseState::Answer(answer),
        }
    }
}

impl MessageBody for ThenClose {
    type Error = ConnectionClosed;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.size)
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        match std::mem::replace(&mut self.state, CloseState::Close) {
            CloseState::Answer(answer) => {
                self.state = CloseState::Flush;
                Poll::Ready(Some(Ok(answer)))
            }
            CloseState::Flush => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            CloseState::Close => Poll::Ready(Some(Err(ConnectionClosed))),
        }
    }
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

/// A command of the accounts or shop context, which takes no
/// `Idempotency-Key`: a client that sends one counts on a retry being safe,
/// which it is not there, so the request is refused before anything runs.
pub struct NoIdempotencyKey;

impl FromRequest for NoIdempotencyKey {
    type Error = ContextError;
    type Future = std::future::Ready<Result<Self, ContextError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(
            if req
                .headers()
                .contains_key(crate::http::command::IDEMPOTENCY_KEY_HEADER)
            {
                Err(ContextError::IdempotencyKeyUnsupported)
            } else {
                Ok(NoIdempotencyKey)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_label_takes_a_fixed_set_of_values() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        for bogus in ["BREW", "get", "X".repeat(1000).as_str()] {
            let method = Method::from_bytes(bogus.as_bytes()).unwrap_or(Method::TRACE);
            assert_eq!(method_label(&method), "other", "{bogus}");
        }
    }

    #[actix_rt::test]
    async fn a_closing_body_yields_the_answer_then_fails() {
        let mut body = std::pin::pin!(ThenClose::new(Bytes::from_static(b"{}")));
        assert_eq!(body.size(), BodySize::Sized(2));
        let first = futures::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await;
        assert_eq!(first.and_then(Result::ok), Some(Bytes::from_static(b"{}")));
        let second = futures::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await;
        assert!(matches!(second, Some(Err(ConnectionClosed))));
    }
}
