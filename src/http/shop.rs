//! The shop routes of the command API: products and orders.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use uuid::Uuid;

use crate::db::Pool;
use crate::domain::CorrelationId;
use crate::http::error::{ContextError, shorten};
use crate::http::middleware::NoIdempotencyKey;
use crate::input::parse_body;
use crate::shop::{NewOrder, NewProduct, ProductChange, ShopError, store};

/// The shop context's database.
#[derive(Clone)]
pub struct ShopDb(pub Pool);

/// Routes of the shop context.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/api/v1/products")
            .route(web::post().to(create_product))
            .default_service(super::not_allowed("POST")),
    )
    .service(
        super::resource("/api/v1/products/{id}")
            .route(web::put().to(update_product))
            .route(web::delete().to(delete_product))
            .default_service(super::not_allowed("PUT, DELETE")),
    )
    .service(
        super::resource("/api/v1/orders")
            .route(web::post().to(place_order))
            .default_service(super::not_allowed("POST")),
    )
    .service(
        super::resource("/api/v1/orders/{id}")
            .route(web::delete().to(delete_order))
            .default_service(super::not_allowed("DELETE")),
    );
}

impl From<ShopError> for ContextError {
    fn from(error: ShopError) -> Self {
        // The shop's own words, for the answers that carry them as they are.
        let message = error.to_string();
        match error {
            ShopError::Invalid(e) => ContextError::Invalid(e),
            ShopError::UnknownCustomer(_) => ContextError::Unknown {
                code: "unknown_customer",
                field: "customerId".into(),
                message,
            },
            ShopError::NoShippingAddress(_) => ContextError::Unknown {
                code: "no_shipping_address",
                field: "customerId".into(),
                message,
            },
            ShopError::UnknownProduct { field, .. } => ContextError::Unknown {
                code: "unknown_product",
                field,
                message,
            },
            ShopError::InsufficientStock {
                field,
                product_id,
                product_name,
                requested,
                available,
            } => ContextError::InsufficientStock {
                field,
                product_id,
                product_name,
                requested: requested.into(),
                available: available.into(),
            },
            ShopError::StockLimit {
                product_id,
                product_name,
                stock,
                returned,
            } => ContextError::StockLimit {
                message,
                product_id,
                product_name,
                stock: stock.into(),
                returned: returned.into(),
            },
            ShopError::NotFound { what, id } => ContextError::NotFound {
                what,
                id: id.to_string(),
            },
            ShopError::Database(e) => ContextError::Database(e),
        }
    }
}

fn uuid(raw: &str) -> Result<Uuid, ContextError> {
    Uuid::parse_str(raw).map_err(|_| ContextError::InvalidId(shorten(raw)))
}

/// Creates a product (a ProductCreated event).
#[utoipa::path(post, path = "/api/v1/products", tag = "shop",
    params(super::openapi::CorrelationIdHeader),
    request_body(content = super::openapi::NewProductSchema),
    responses(
        (status = 201, description = "Created; `Location` names it", body = crate::shop::Product),
        (status = 400, description = "Malformed JSON, a wrong type, a value out of bounds (names the field)", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn create_product(
    _: NoIdempotencyKey,
    body: web::Bytes,
    db: web::Data<ShopDb>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ContextError> {
    let new = NewProduct::from_json(&parse_body(&body)?)?;
    let product = store::create_product(&db.0, &new, &correlation_id).await?;
    tracing::info!(product_id = %product.product_id, "product created");
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/v1/products/{}", product.product_id),
        ))
        .json(product))
}

/// Changes any of a product's name, price and stock (a ProductUpdated event).
#[utoipa::path(put, path = "/api/v1/products/{id}", tag = "shop",
    params(("id" = uuid::Uuid, Path, description = "The product id"), super::openapi::CorrelationIdHeader),
    request_body(content = super::openapi::ProductChangeSchema),
    responses(
        (status = 200, description = "The product", body = crate::shop::Product),
        (status = 400, description = "Malformed input (names the field)", body = super::openapi::ContextErrorSchema),
        (status = 404, description = "No such product", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn update_product(
    _: NoIdempotencyKey,
    id: web::Path<String>,
    body: web::Bytes,
    db: web::Data<ShopDb>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ContextError> {
    let id = uuid(&id)?;
    let change = ProductChange::from_json(&parse_body(&body)?)?;
    let product = store::update_product(&db.0, id, &change, &correlation_id).await?;
    tracing::info!(product_id = %id, "product updated");
    Ok(HttpResponse::Ok().json(product))
}

/// Deletes a product (a ProductDeleted event).
#[utoipa::path(delete, path = "/api/v1/products/{id}", tag = "shop",
    params(("id" = uuid::Uuid, Path, description = "The product id"), super::openapi::CorrelationIdHeader),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a UUID", body = super::openapi::ContextErrorSchema),
        (status = 404, description = "No such product", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn delete_product(
    _: NoIdempotencyKey,
    id: web::Path<String>,
    db: web::Data<ShopDb>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ContextError> {
    let id = uuid(&id)?;
    store::delete_product(&db.0, id, &correlation_id).await?;
    tracing::info!(product_id = %id, "product deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Places an order: in one transaction, locks and checks the stock,
/// decrements it, prices the items at the current price and writes the
/// order with its events (OrderCreated, a ProductSold per item).
#[utoipa::path(post, path = "/api/v1/orders", tag = "shop",
    params(super::openapi::CorrelationIdHeader),
    request_body(content = super::openapi::NewOrderSchema),
    responses(
        (status = 201, description = "Placed; ships to the customer's SHIPPING address (else BILLING)", body = crate::shop::Order),
        (status = 400, description = "Malformed input, a quantity below 1 (names the field)", body = super::openapi::ContextErrorSchema),
        (status = 409, description = "insufficient_stock: names the product and what is left; nothing written", body = super::openapi::ContextErrorSchema),
        (status = 422, description = "unknown_customer (shop has no copy of the customer yet) or unknown_product", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn place_order(
    _: NoIdempotencyKey,
    body: web::Bytes,
    db: web::Data<ShopDb>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ContextError> {
    let new = NewOrder::from_json(&parse_body(&body)?)?;
    let order = store::place_order(&db.0, &new, &correlation_id).await?;
    tracing::info!(order_id = %order.order_id, customer_id = order.customer_id, "order placed");
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/api/v1/orders/{}", order.order_id),
        ))
        .json(order))
}

/// Deletes an order and returns its stock (an OrderDeleted event).
#[utoipa::path(delete, path = "/api/v1/orders/{id}", tag = "shop",
    params(("id" = uuid::Uuid, Path, description = "The order id"), super::openapi::CorrelationIdHeader),
    responses(
        (status = 204, description = "Deleted; the stock is back"),
        (status = 400, description = "Not a UUID", body = super::openapi::ContextErrorSchema),
        (status = 404, description = "No such order", body = super::openapi::ContextErrorSchema),
        (status = 409, description = "stock_limit: a product's stock has no room for the items; nothing changes", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn delete_order(
    _: NoIdempotencyKey,
    id: web::Path<String>,
    db: web::Data<ShopDb>,
    correlation_id: CorrelationId,
) -> Result<HttpResponse, ContextError> {
    let id = uuid(&id)?;
    store::delete_order(&db.0, id, &correlation_id).await?;
    tracing::info!(order_id = %id, "order deleted");
    Ok(HttpResponse::NoContent().finish())
}
