//! The shop context's Diesel queries. Every command is one transaction that
//! writes its rows and its events (into the outbox of the same database).
//!
//! Locks are taken in one order everywhere, so that concurrent commands
//! wait for each other instead of deadlocking: an order row, then the
//! customer copy, then products by ascending id, then aggregate versions
//! (products by ascending id, then the order).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use crate::db::{DbError, Pool};
use crate::domain::CorrelationId;
use crate::outbox::{self, Aggregate, Envelope};
use crate::shop::schema::shop::{customer_addresses, customers, order_items, orders, products};
use crate::shop::{
    Address, AddressType, CustomerName, CustomerState, MAX_STOCK, Money, NewOrder, NewProduct,
    Order, OrderItem, Product, ProductChange, ShopError, shipping_address,
};

/// The customer copy's row as an order reads it: deleted, then the name.
type NameRow = (
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A product row: id, name, price, stock.
type ProductRow = (Uuid, String, bigdecimal::BigDecimal, i32);

fn product(row: ProductRow) -> Result<Product, ShopError> {
    let (id, name, price, stock) = row;
    let price = Money::from_decimal(&price).ok_or_else(|| {
        // The column is numeric(12,2) with a check: this is a bug.
        ShopError::Database(DbError::Query(diesel::result::Error::DeserializationError(
            format!("price of product {id} out of range").into(),
        )))
    })?;
    Ok(Product::new(id, name, price, stock))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, diesel::result::Error> {
    serde_json::to_value(value).map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
}

/// Creates a product and records `ProductCreated`.
pub async fn create_product(
    pool: &Pool,
    new: &NewProduct,
    correlation_id: &CorrelationId,
) -> Result<Product, ShopError> {
    let created = Product::new(Uuid::new_v4(), new.name.clone(), new.price, new.stock);
    pool.get()
        .await
        .map_err(DbError::from)?
        .transaction::<_, ShopError, _>(async |conn| {
            diesel::insert_into(products::table)
                .values((
                    products::id.eq(created.product_id),
                    products::name.eq(&created.name),
                    products::price.eq(created.price.to_decimal()),
                    products::stock.eq(created.stock),
                ))
                .execute(conn)
                .await?;
            let key = created.product_id.to_string();
            let data = to_json(&created)?;
            outbox::record(
                conn,
                Aggregate::Product,
                &key,
                "ProductCreated",
                correlation_id,
                data,
            )
            .await?;
            Ok(created.clone())
        })
        .await
}

/// Changes a product's name, price or stock and records `ProductUpdated`.
pub async fn update_product(
    pool: &Pool,
    id: Uuid,
    change: &ProductChange,
    correlation_id: &CorrelationId,
) -> Result<Product, ShopError> {
    pool.get()
        .await
        .map_err(DbError::from)?
        .transaction::<_, ShopError, _>(async |conn| {
            let row: Option<ProductRow> = products::table
                .find(id)
                .select((
                    products::id,
                    products::name,
                    products::price,
                    products::stock,
                ))
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let current = product(row.ok_or(ShopError::NotFound {
                what: "product",
                id,
            })?)?;
            let updated = Product::new(
                id,
                change.name.clone().unwrap_or(current.name),
                change.price.unwrap_or(current.price),
                change.stock.unwrap_or(current.stock),
            );
            diesel::update(products::table.find(id))
                .set((
                    products::name.eq(&updated.name),
                    products::price.eq(updated.price.to_decimal()),
                    products::stock.eq(updated.stock),
                    products::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            let data = to_json(&updated)?;
            outbox::record(
                conn,
                Aggregate::Product,
                &id.to_string(),
                "ProductUpdated",
                correlation_id,
                data,
            )
            .await?;
            Ok(updated)
        })
        .await
}

/// Deletes a product and records `ProductDeleted`. Orders that hold it
/// keep their items (name and price at the time of sale).
pub async fn delete_product(
    pool: &Pool,
    id: Uuid,
    correlation_id: &CorrelationId,
) -> Result<(), ShopError> {
    pool.get()
        .await
        .map_err(DbError::from)?
        .transaction::<_, ShopError, _>(async |conn| {
            let removed = diesel::delete(products::table.find(id))
                .execute(conn)
                .await?;
            if removed == 0 {
                return Err(ShopError::NotFound {
                    what: "product",
                    id,
                });
            }
            outbox::record(
                conn,
                Aggregate::Product,
                &id.to_string(),
                "ProductDeleted",
                correlation_id,
                json!({ "productId": id }),
            )
            .await?;
            Ok(())
        })
        .await
}

/// The products of `ids`, locked for update in ascending id order.
async fn lock_products(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Product>, ShopError> {
    let rows: Vec<ProductRow> = products::table
        .filter(products::id.eq_any(ids))
        .order(products::id)
        .select((
            products::id,
            products::name,
            products::price,
            products::stock,
        ))
        .for_update()
        .load(conn)
        .await?;
    rows.into_iter()
        .map(|row| product(row).map(|p| (p.product_id, p)))
        .collect()
}

/// Places an order: see the module documentation. Refusals (unknown
/// customer or product, insufficient stock) write nothing.
pub async fn place_order(
    pool: &Pool,
    new: &NewOrder,
    correlation_id: &CorrelationId,
) -> Result<Order, ShopError> {
    let order_id = Uuid::new_v4();
    pool.get()
        .await
        .map_err(DbError::from)?
        .transaction::<_, ShopError, _>(async |conn| {
            let customer_id = new.customer_id;
            // FOR SHARE: the copy cannot change under the order; orders of
            // one customer do not wait for each other.
            let known = customers::table
                .find(customer_id)
                .select((
                    customers::deleted,
                    customers::title,
                    customers::first_name,
                    customers::middle_name,
                    customers::last_name,
                    customers::suffix,
                ))
                .for_share()
                .first::<NameRow>(conn)
                .await
                .optional()?;
            let customer_name = match known {
                Some((false, title, first_name, middle_name, last_name, suffix)) => CustomerName {
                    title,
                    first_name,
                    middle_name,
                    last_name,
                    suffix,
                },
                _ => return Err(ShopError::UnknownCustomer(customer_id)),
            };
            let addresses = customer_addresses_of(conn, customer_id).await?;
            let ship_to = shipping_address(&addresses)
                .cloned()
                .ok_or(ShopError::NoShippingAddress(customer_id))?;

            let mut ids: Vec<Uuid> = new.items.iter().map(|i| i.product_id).collect();
            ids.sort();
            let mut locked = lock_products(conn, &ids).await?;
            let mut items = Vec::with_capacity(new.items.len());
            let mut total: i128 = 0;
            for item in &new.items {
                let Some(product) = locked.get(&item.product_id) else {
                    return Err(ShopError::UnknownProduct {
                        field: format!("{}.productId", item.field),
                        product_id: item.product_id,
                    });
                };
                if product.stock < item.quantity {
                    return Err(ShopError::InsufficientStock {
                        field: format!("{}.quantity", item.field),
                        product_id: product.product_id,
                        product_name: product.name.clone(),
                        requested: item.quantity,
                        available: product.stock,
                    });
                }
                total += i128::from(product.price.cents()) * i128::from(item.quantity);
                items.push(OrderItem {
                    product_id: product.product_id,
                    product_name: product.name.clone(),
                    quantity: item.quantity,
                    price: product.price,
                });
            }
            let total_price = i64::try_from(total)
                .ok()
                .and_then(Money::from_cents)
                .ok_or_else(|| {
                    crate::input::FieldError::new(
                        "items",
                        "the order's total exceeds 9999999999.99",
                    )
                })?;
            let order_date = now_micros();

            // Products in ascending id order: their version rows are locked in
            // the same order by every order.
            let quantities: HashMap<Uuid, i32> = new
                .items
                .iter()
                .map(|i| (i.product_id, i.quantity))
                .collect();
            for id in &ids {
                let (Some(product), Some(&quantity)) = (locked.get_mut(id), quantities.get(id))
                else {
                    continue;
                };
                product.stock -= quantity;
                product.stock_status = product.stock > 0;
                diesel::update(products::table.find(id))
                    .set((
                        products::stock.eq(products::stock - quantity),
                        products::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute(conn)
                    .await?;
                let line_total = Money::from_cents(product.price.cents() * i64::from(quantity));
                let sold = json!({
                    "productId": id,
                    "productName": product.name,
                    "productPrice": product.price,
                    "quantitySold": quantity,
                    "remainingStock": product.stock,
                    "stockStatus": product.stock_status,
                    "orderId": order_id,
                    "customerId": customer_id,
                    "productTotalPrice": line_total,
                    "orderDate": order_date,
                });
                outbox::record(
                    conn,
                    Aggregate::Product,
                    &id.to_string(),
                    "ProductSold",
                    correlation_id,
                    sold,
                )
                .await?;
            }

            diesel::insert_into(orders::table)
                .values((
                    orders::id.eq(order_id),
                    orders::customer_id.eq(customer_id),
                    orders::order_date.eq(order_date),
                    orders::ship_address_type.eq(ship_to.address_type.as_str()),
                    orders::ship_description.eq(&ship_to.description),
                    orders::ship_address1.eq(&ship_to.address1),
                    orders::ship_address2.eq(&ship_to.address2),
                    orders::ship_city.eq(&ship_to.city),
                    orders::ship_state.eq(&ship_to.state),
                    orders::ship_postal_code.eq(&ship_to.postal_code),
                ))
                .execute(conn)
                .await?;
            let rows: Vec<_> = items
                .iter()
                .zip(0_i16..)
                .map(|(item, line)| {
                    (
                        order_items::order_id.eq(order_id),
                        order_items::line.eq(line),
                        order_items::product_id.eq(item.product_id),
                        order_items::product_name.eq(&item.product_name),
                        order_items::quantity.eq(item.quantity),
                        order_items::price.eq(item.price.to_decimal()),
                    )
                })
                .collect();
            diesel::insert_into(order_items::table)
                .values(&rows)
                .execute(conn)
                .await?;
            let order = Order {
                order_id,
                customer_id,
                order_date,
                total_price,
                items,
                shipping_address: ship_to,
            };
            // The event carries the order as answered plus the customer's
            // name as shop's copy holds it now: the read side's order
            // document shows who ordered without a customer lookup that
            // would depend on which events it applied first.
            let mut data = to_json(&order)?;
            data["customerName"] = to_json(&customer_name)?;
            outbox::record(
                conn,
                Aggregate::Order,
                &order_id.to_string(),
                "OrderCreated",
                correlation_id,
                data,
            )
            .await?;
            Ok(order)
        })
        .await
}

/// Deletes an order, puts its items back into stock (`ProductUpdated` for
/// each product that still exists) and records `OrderDeleted`.
pub async fn delete_order(
    pool: &Pool,
    order_id: Uuid,
    correlation_id: &CorrelationId,
) -> Result<(), ShopError> {
    pool.get()
        .await
        .map_err(DbError::from)?
        .transaction::<_, ShopError, _>(async |conn| {
            let customer_id = orders::table
                .find(order_id)
                .select(orders::customer_id)
                .for_update()
                .first::<i64>(conn)
                .await
                .optional()?
                .ok_or(ShopError::NotFound {
                    what: "order",
                    id: order_id,
                })?;
            let lines: Vec<(Uuid, i32)> = order_items::table
                .filter(order_items::order_id.eq(order_id))
                .select((order_items::product_id, order_items::quantity))
                .load(conn)
                .await?;
            let quantities: HashMap<Uuid, i32> = lines.iter().copied().collect();
            let mut ids: Vec<Uuid> = quantities.keys().copied().collect();
            ids.sort();
            let locked = lock_products(conn, &ids).await?;
            for id in &ids {
                let (Some(product), Some(&quantity)) = (locked.get(id), quantities.get(id)) else {
                    // Deleted since: nothing to give back to.
                    continue;
                };
                // The stock was raised since the order took its items: the
                // limit holds (and `integer` cannot overflow), the order stays.
                if i64::from(product.stock) + i64::from(quantity) > MAX_STOCK {
                    return Err(ShopError::StockLimit {
                        product_id: *id,
                        product_name: product.name.clone(),
                        stock: product.stock,
                        returned: quantity,
                    });
                }
                diesel::update(products::table.find(id))
                    .set((
                        products::stock.eq(products::stock + quantity),
                        products::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute(conn)
                    .await?;
                let restocked = Product::new(
                    *id,
                    product.name.clone(),
                    product.price,
                    product.stock + quantity,
                );
                let data = to_json(&restocked)?;
                outbox::record(
                    conn,
                    Aggregate::Product,
                    &id.to_string(),
                    "ProductUpdated",
                    correlation_id,
                    data,
                )
                .await?;
            }
            diesel::delete(orders::table.find(order_id))
                .execute(conn)
                .await?;
            outbox::record(
                conn,
                Aggregate::Order,
                &order_id.to_string(),
                "OrderDeleted",
                correlation_id,
                json!({ "orderId": order_id, "customerId": customer_id }),
            )
            .await?;
            Ok(())
        })
        .await
}

/// Now, at PostgreSQL's precision, so that the event and the row agree.
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

type AddressRow = (
    String,
    Option<String>,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

async fn customer_addresses_of(
    conn: &mut AsyncPgConnection,
    customer_id: i64,
) -> Result<Vec<Address>, ShopError> {
    let rows: Vec<AddressRow> = customer_addresses::table
        .filter(customer_addresses::customer_id.eq(customer_id))
        .order(customer_addresses::position)
        .select((
            customer_addresses::address_type,
            customer_addresses::description,
            customer_addresses::address1,
            customer_addresses::address2,
            customer_addresses::city,
            customer_addresses::state,
            customer_addresses::postal_code,
        ))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(kind, description, address1, address2, city, state, postal_code)| {
                Some(Address {
                    address_type: AddressType::parse(&kind)?,
                    description,
                    address1,
                    address2,
                    city,
                    state,
                    postal_code,
                })
            },
        )
        .collect())
}

/// What applying an event did, to shop's customer copy
/// ([`apply_customer_event`]) or to the read side's views
/// (`shop::views::apply_view_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The copy (or the views) now holds the event's state.
    Applied,
    /// What it holds is as new as the event or newer: nothing changed.
    Stale,
    /// Not an event it uses (another topic, an unknown type): nothing
    /// changed.
    Ignored,
}

/// Why an event cannot be applied: to shop's customer copy
/// ([`apply_customer_event`]) or to the read side's views
/// (`shop::views::apply_view_event`). Every variant but `Database` means
/// the event itself is bad and can never be applied: a consumer should
/// dead-letter it. `Database` is the database failing: retry.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The aggregate id is not an id of the topic's aggregates (a positive
    /// integer for customers, a UUID for products and orders).
    #[error("aggregateId '{0}' is not an id of this topic's aggregates")]
    AggregateId(String),
    /// The data does not have the shape of the event's type.
    #[error("the event's data is malformed: {0}")]
    Data(#[from] serde_json::Error),
    /// The data contradicts the envelope (another aggregate's id) or holds
    /// a value the view cannot keep.
    #[error("the event's data is inconsistent: {0}")]
    Inconsistent(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

impl ApplyError {
    /// Whether the event can never be applied (dead-letter it), as opposed
    /// to the database failing (retry).
    pub fn is_bad_event(&self) -> bool {
        !matches!(self, ApplyError::Database(_))
    }
}

/// Applies an event of `accounts.customer.change` to shop's copy of the
/// customer, in the caller's transaction, if and only if its
/// `aggregateVersion` is newer than the copy's: a stale or duplicate event
/// changes nothing. `CustomerDeleted` leaves a tombstone with its version,
/// so that an older event arriving later cannot bring the customer back.
pub async fn apply_customer_event(
    conn: &mut AsyncPgConnection,
    event: &Envelope,
) -> Result<Applied, ApplyError> {
    let id: i64 = event
        .aggregate_id
        .parse()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| ApplyError::AggregateId(event.aggregate_id.clone()))?;
    let deleted = match event.event_type.as_str() {
        "CustomerCreated" | "CustomerUpdated" => false,
        "CustomerDeleted" => true,
        _ => return Ok(Applied::Ignored),
    };
    let state: CustomerState = if deleted {
        CustomerState {
            name: Default::default(),
            addresses: Vec::new(),
        }
    } else {
        serde_json::from_value(event.data.clone())?
    };
    let version = event.aggregate_version;
    // Inserts the copy, or updates it only when the event is newer; no row
    // back means the copy was as new or newer. The row stays locked until
    // the caller commits.
    let name = &state.name;
    let upsert = diesel::insert_into(customers::table)
        .values((
            customers::id.eq(id),
            customers::version.eq(version),
            customers::deleted.eq(deleted),
            customers::title.eq(&name.title),
            customers::first_name.eq(&name.first_name),
            customers::middle_name.eq(&name.middle_name),
            customers::last_name.eq(&name.last_name),
            customers::suffix.eq(&name.suffix),
        ))
        .on_conflict(customers::id)
        .do_update()
        .set((
            customers::version.eq(version),
            customers::deleted.eq(deleted),
            customers::title.eq(&name.title),
            customers::first_name.eq(&name.first_name),
            customers::middle_name.eq(&name.middle_name),
            customers::last_name.eq(&name.last_name),
            customers::suffix.eq(&name.suffix),
        ));
    let written: Option<i64> =
        diesel::query_dsl::methods::FilterDsl::filter(upsert, customers::version.lt(version))
            .returning(customers::id)
            .get_result(conn)
            .await
            .optional()?;
    if written.is_none() {
        return Ok(Applied::Stale);
    }
    diesel::delete(customer_addresses::table.filter(customer_addresses::customer_id.eq(id)))
        .execute(conn)
        .await?;
    let rows: Vec<_> = state
        .addresses
        .iter()
        .zip(0_i16..)
        .map(|(a, position)| {
            (
                customer_addresses::customer_id.eq(id),
                customer_addresses::position.eq(position),
                customer_addresses::address_type.eq(a.address_type.as_str()),
                customer_addresses::description.eq(&a.description),
                customer_addresses::address1.eq(&a.address1),
                customer_addresses::address2.eq(&a.address2),
                customer_addresses::city.eq(&a.city),
                customer_addresses::state.eq(&a.state),
                customer_addresses::postal_code.eq(&a.postal_code),
            )
        })
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(customer_addresses::table)
            .values(&rows)
            .execute(conn)
            .await?;
    }
    Ok(Applied::Applied)
}

/// Reads shop's copy of a customer: its version, whether it is deleted,
/// and its addresses; `None` when shop has none.
pub async fn customer_copy(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<Option<(i64, bool, Vec<Address>)>, ShopError> {
    let Some((version, deleted)) = customers::table
        .find(id)
        .select((customers::version, customers::deleted))
        .first::<(i64, bool)>(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    Ok(Some((
        version,
        deleted,
        customer_addresses_of(conn, id).await?,
    )))
}
