//! The shop routes of the query API, read from the views that
//! `shop::views` builds from the events: orders (a list newest first with
//! a cursor, by customer, one by id), a product and its sales. Each answer
//! is read in one snapshot.
//!
//! A malformed id or parameter is a 400 `invalid_field` naming it
//! (`customerId`, `orderId`, `id`, `limit`, `after`).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use uuid::Uuid;

use crate::db::{DbError, Pool};
use crate::http::error::{ContextError, shorten};
use crate::input::FieldError;
use crate::shop::views::{self, Cursor, CustomerOrders, OrderDocument, Sale};

/// Orders in a page when the request names no `limit`.
pub const DEFAULT_LIMIT: i64 = 20;
/// Most orders in a page.
pub const MAX_LIMIT: i64 = 100;

/// Routes of the shop's query side.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/orders/list")
            .route(super::get_or_head().to(list_orders))
            .default_service(super::not_allowed("GET, HEAD")),
    )
    .service(
        super::resource("/orders/order/{customerId}")
            .route(super::get_or_head().to(customer_orders))
            .default_service(super::not_allowed("GET, HEAD")),
    )
    .service(
        super::resource("/api/v1/orders/{orderId}")
            .route(super::get_or_head().to(get_order))
            .default_service(super::not_allowed("GET, HEAD")),
    )
    .service(
        super::resource("/api/v1/products/{id}")
            .route(super::get_or_head().to(get_product))
            .default_service(super::not_allowed("GET, HEAD")),
    )
    .service(
        super::resource("/api/v1/products/{id}/sales")
            .route(super::get_or_head().to(product_sales))
            .default_service(super::not_allowed("GET, HEAD")),
    );
}

/// A page of orders, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderList {
    /// Up to `limit` orders, newest first, each with its items, the
    /// customer's name and the address it ships to.
    orders: Vec<OrderDocument>,
    /// Give it as `after` for the next page; `null` after the last order.
    next: Option<String>,
}

fn database(error: diesel::result::Error) -> ContextError {
    ContextError::Database(DbError::from(error))
}

fn uuid_field(field: &str, raw: &str) -> Result<Uuid, ContextError> {
    Uuid::try_parse(raw)
        .map_err(|_| FieldError::new(field, format!("'{}' is not a UUID", shorten(raw))).into())
}

/// The pairs of a query string.
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, FieldError> {
    web::Query::<Vec<(String, String)>>::from_query(query)
        .map(web::Query::into_inner)
        .map_err(|_| FieldError::new("query", "is not a valid query string"))
}

/// Refuses any parameter: the route takes none, and one it ignored could
/// be a client's mistake (`?limit=` on a route that does not page).
fn no_parameters(query: &str) -> Result<(), FieldError> {
    match query_pairs(query)?.into_iter().next() {
        None => Ok(()),
        Some((name, _)) => Err(FieldError::new(
            shorten(&name),
            "is not a parameter of this route (it takes none)",
        )),
    }
}

/// `limit` and `after` of `/orders/list`; any other parameter is refused.
fn list_parameters(query: &str) -> Result<(i64, Option<Cursor>), FieldError> {
    let pairs = query_pairs(query)?;
    let (mut limit, mut after) = (None, None);
    for (name, value) in pairs {
        let slot = match name.as_str() {
            "limit" => &mut limit,
            "after" => &mut after,
            _ => {
                return Err(FieldError::new(
                    shorten(&name),
                    "is not a parameter of this route (limit, after)",
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(FieldError::new(name, "is given more than once"));
        }
    }
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                FieldError::new("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
            })?,
    };
    let after = after
        .map(|text| {
            Cursor::decode(&text).ok_or_else(|| {
                FieldError::new(
                    "after",
                    "is not a cursor: give the `next` of the previous page as it is",
                )
            })
        })
        .transpose()?;
    Ok((limit, after))
}

/// The orders, newest first, a page at a time.
#[utoipa::path(get, path = "/orders/list", tag = "shop",
    params(
        ("limit" = Option<i64>, Query, description = "Orders in the page, 1 to 100; 20 when absent"),
        ("after" = Option<String>, Query, description = "The `next` of the previous page (opaque)"),
    ),
    responses(
        (status = 200, description = "A page of orders, newest first", body = OrderList),
        (status = 400, description = "A bad `limit` or `after`, or another parameter (names it)", body = super::openapi::ContextErrorSchema),
        (status = 503, description = "The view's database is unavailable", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn list_orders(
    req: HttpRequest,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ContextError> {
    let (limit, after) = list_parameters(req.query_string())?;
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let page = views::list_orders(&mut conn, limit, after)
        .await
        .map_err(database)?;
    Ok(HttpResponse::Ok().json(OrderList {
        orders: page.orders,
        next: page.next.map(|c| c.encode()),
    }))
}

/// A customer with their orders, newest first.
#[utoipa::path(get, path = "/orders/order/{customerId}", tag = "shop",
    params(("customerId" = i64, Path, description = "The customer id, a positive integer")),
    responses(
        (status = 200, description = "The customer's name and shipping address, and their orders", body = CustomerOrders),
        (status = 400, description = "Not a positive integer, or a query parameter (names it)", body = super::openapi::ContextErrorSchema),
        (status = 404, description = "The views know neither the customer nor an order of theirs", body = super::openapi::ContextErrorSchema),
        (status = 503, description = "The view's database is unavailable", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn customer_orders(
    req: HttpRequest,
    id: web::Path<String>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ContextError> {
    no_parameters(req.query_string())?;
    let customer_id = id.parse::<i64>().ok().filter(|&n| n > 0).ok_or_else(|| {
        FieldError::new(
            "customerId",
            format!("'{}' is not a positive integer", shorten(&id)),
        )
    })?;
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let found = views::customer_orders(&mut conn, customer_id)
        .await
        .map_err(database)?
        .ok_or_else(|| ContextError::NotFound {
            what: "customer",
            id: customer_id.to_string(),
        })?;
    Ok(HttpResponse::Ok().json(found))
}

/// An order.
#[utoipa::path(get, path = "/api/v1/orders/{orderId}", tag = "shop",
    params(("orderId" = uuid::Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order with its items, the customer's name and the address it ships to", body = OrderDocument),
        (status = 400, description = "Not a UUID, or a query parameter (names it)", body = super::openapi::ContextErrorSchema),
        (status = 404, description = "No such order (or it was deleted)", body = super::openapi::ContextErrorSchema),
        (status = 503, description = "The view's database is unavailable", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn get_order(
    req: HttpRequest,
    id: web::Path<String>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ContextError> {
    no_parameters(req.query_string())?;
    let id = uuid_field("orderId", &id)?;
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let order = views::find_order(&mut conn, id)
        .await
        .map_err(database)?
        .ok_or_else(|| ContextError::NotFound {
            what: "order",
            id: id.to_string(),
        })?;
    Ok(HttpResponse::Ok().json(order))
}

/// A product as its last event left it.
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "shop",
    params(("id" = uuid::Uuid, Path, description = "The product id")),
    responses(
        (status = 200, description = "The product", body = crate::shop::Product),
        (status = 400, description = "Not a UUID, or a query parameter (names it)", body = super::openapi::ContextErrorSchema),
        (status = 404, description = "No such product (or it was deleted)", body = super::openapi::ContextErrorSchema),
        (status = 503, description = "The view's database is unavailable", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn get_product(
    req: HttpRequest,
    id: web::Path<String>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ContextError> {
    no_parameters(req.query_string())?;
    let id = uuid_field("id", &id)?;
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let product = views::find_product(&mut conn, id)
        .await
        .map_err(database)?
        .ok_or_else(|| ContextError::NotFound {
            what: "product",
            id: id.to_string(),
        })?;
    Ok(HttpResponse::Ok().json(product))
}

/// The sales of a product, in the order they happened; those of deleted
/// orders are left out.
#[utoipa::path(get, path = "/api/v1/products/{id}/sales", tag = "shop",
    params(("id" = uuid::Uuid, Path, description = "The product id")),
    responses(
        (status = 200, description = "Its sales (`[]` for none), each with the stock left after it", body = Vec<Sale>),
        (status = 400, description = "Not a UUID, or a query parameter (names it)", body = super::openapi::ContextErrorSchema),
        (status = 404, description = "No such product (or it was deleted)", body = super::openapi::ContextErrorSchema),
        (status = 503, description = "The view's database is unavailable", body = super::openapi::ContextErrorSchema),
    ))]
pub(crate) async fn product_sales(
    req: HttpRequest,
    id: web::Path<String>,
    pool: web::Data<Pool>,
) -> Result<HttpResponse, ContextError> {
    no_parameters(req.query_string())?;
    let id = uuid_field("id", &id)?;
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let sales = views::product_sales(&mut conn, id)
        .await
        .map_err(database)?
        .ok_or_else(|| ContextError::NotFound {
            what: "product",
            id: id.to_string(),
        })?;
    Ok(HttpResponse::Ok().json(sales))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(query: &str) -> String {
        list_parameters(query)
            .map(|_| "ok".to_owned())
            .unwrap_or_else(|e| e.field)
    }

    #[test]
    fn routes_without_parameters_name_the_first_one_given() {
        assert_eq!(no_parameters(""), Ok(()));
        for (query, field) in [("limit=1", "limit"), ("x", "x"), ("a=1&b=2", "a")] {
            let error = no_parameters(query).unwrap_err();
            assert_eq!(
                (error.field.as_str(), error.message.as_str()),
                (field, "is not a parameter of this route (it takes none)")
            );
        }
        let long = "p".repeat(300);
        let error = no_parameters(&format!("{long}=1")).unwrap_err();
        assert_eq!(error.field, format!("{}…", "p".repeat(64)));
    }

    #[test]
    fn list_parameters_name_what_is_wrong() {
        assert_eq!(list_parameters("").ok(), Some((DEFAULT_LIMIT, None)));
        assert_eq!(list_parameters("limit=100").ok(), Some((100, None)));
        assert_eq!(list_parameters("limit=1").ok(), Some((1, None)));
        for bad in [
            "limit=0",
            "limit=101",
            "limit=-1",
            "limit=x",
            "limit=",
            "limit=1.5",
        ] {
            assert_eq!(field(bad), "limit", "{bad}");
        }
        assert_eq!(field("limit=5&limit=6"), "limit");
        assert_eq!(field("after="), "after");
        assert_eq!(field("after=abc"), "after");
        assert_eq!(field("page=2"), "page");
        let cursor = Cursor {
            order_date: chrono::DateTime::from_timestamp_micros(1_000).unwrap_or_default(),
            order_id: Uuid::nil(),
        };
        assert_eq!(
            list_parameters(&format!("after={}&limit=3", cursor.encode())).ok(),
            Some((3, Some(cursor)))
        );
    }
}
