//! The accounts routes of the command API: create or update a customer
//! from the accounts service's JSON, read it back, delete it.

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::accounts::{Customer, store};
use crate::db::Pool;
use crate::domain::CorrelationId;
use crate::http::error::{ContextError, shorten};
use crate::input::parse_body;

/// The accounts context's database.
#[derive(Clone)]
pub struct AccountsDb(pub Pool);

/// Routes of the accounts context.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/accounts/customer/create")
            .route(web::post().to(create))
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        super::resource("/accounts/customer/{id}")
            .route(super::get_or_head().to(get))
            .route(web::delete().to(delete))
            .default_service(web::to(super::method_not_allowed)),
    );
}

#[derive(Serialize)]
struct Saved {
    id: i64,
    version: i64,
}

async fn create(
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

/// A customer as stored, with its version.
#[derive(Serialize)]
struct Stored {
    #[serde(flatten)]
    customer: Customer,
    version: i64,
}

async fn get(
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

async fn delete(
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
