//! The accounts routes of the command API: create or update a customer
//! from the accounts service's JSON, read it back, delete it.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::accounts::{Customer, store};
use crate::db::Pool;
use crate::domain::CorrelationId;
use crate::http::error::{ContextError, shorten};
use crate::http::middleware::NoIdempotencyKey;
use crate::input::parse_body;

/// The accounts context's database.
#[derive(Clone)]
pub struct AccountsDb(pub Pool);

/// Routes of the accounts context.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/accounts/customer/create")
            .route(web::post().to(create))
            .default_service(super::not_allowed("POST")),
    )
    .service(
        super::resource("/accounts/customer/{id}")
            .route(super::get_or_head().to(get))
            .route(web::delete().to(delete))
            .default_service(super::not_allowed("GET, HEAD, DELETE")),
    );
}

/// The answer of `POST /accounts/customer/create`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Saved {
    /// The customer id.
    id: i64,
    /// The customer's version after this change (1 for a new customer).
    version: i64,
}

/// Creates or updates customer `id` from the accounts service's JSON; card
/// numbers are masked to their last four digits before anything stores,
/// logs or publishes them. The change and its event commit together.
#[utoipa::path(post, path = "/accounts/customer/create", tag = "accounts",
    params(super::openapi::CorrelationIdHeader),
    request_body(content = crate::accounts::Customer, description = "The accounts service's customer JSON"),
    responses(
        (status = 200, description = "Saved", body = Saved),
        (status = 400, description = "Malformed JSON, a wrong type, a value out of bounds (names the field)", body = super::openapi::ContextErrorSchema),
        (status = 503, description = "The accounts database is unavailable", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn create(
    _: NoIdempotencyKey,
    body: web::Bytes,
    db: web::Data<AccountsDb>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ContextError> {
    let customer = Customer::from_json(&parse_body(&body)?)?;
    let saved = store::save(&db.0, &customer, &correlation_id).await?;
    tracing::info!(
        customer_id = saved.id,
        version = saved.version,
        created = saved.created,
        "customer saved"
    );
    Ok(HttpResponse::Ok().json(Saved {
        id: saved.id,
        version: saved.version,
    }))
}

/// The customer id of a path: a positive integer.
pub fn customer_id(raw: &str) -> Result<i64, ContextError> {
    raw.parse::<i64>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| ContextError::InvalidId(shorten(raw)))
}

/// A customer as stored (card numbers masked), with its version.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Stored {
    #[serde(flatten)]
    customer: Customer,
    version: i64,
}

/// A customer as stored.
#[utoipa::path(get, path = "/accounts/customer/{id}", tag = "accounts",
    params(("id" = i64, Path, description = "The customer id, a positive integer")),
    responses(
        (status = 200, description = "The customer", body = Stored),
        (status = 400, description = "Not a positive integer", body = super::openapi::ContextErrorSchema),
        (status = 404, description = "No such customer", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn get(
    id: web::Path<String>,
    db: web::Data<AccountsDb>,
) -> Result<HttpResponse, ContextError> {
    let id = customer_id(&id)?;
    match store::find(&db.0, id).await? {
        Some((customer, version)) => Ok(HttpResponse::Ok().json(Stored { customer, version })),
        None => Err(ContextError::NotFound {
            what: "customer",
            id: id.to_string(),
        }),
    }
}

/// Deletes a customer (a CustomerDeleted event).
#[utoipa::path(delete, path = "/accounts/customer/{id}", tag = "accounts",
    params(("id" = i64, Path, description = "The customer id, a positive integer"), super::openapi::CorrelationIdHeader),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a positive integer", body = super::openapi::ContextErrorSchema),
        (status = 404, description = "No such customer", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn delete(
    _: NoIdempotencyKey,
    id: web::Path<String>,
    db: web::Data<AccountsDb>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ContextError> {
    let id = customer_id(&id)?;
    match store::delete(&db.0, id, &correlation_id).await? {
        Some(version) => {
            tracing::info!(customer_id = id, version, "customer deleted");
            Ok(HttpResponse::NoContent().finish())
        }
        None => Err(ContextError::NotFound {
            what: "customer",
            id: id.to_string(),
        }),
    }
}
