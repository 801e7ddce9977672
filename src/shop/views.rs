//! shop's read side: the `shop_view` schema, built from the events alone
//! ([`apply_view_event`]) and read by the query API (the other functions).
//!
//! * **Idempotent.** Every row keeps the `aggregateVersion` of the last
//!   event it applied, and an event changes a row only when it is newer: a
//!   redelivered or stale event changes nothing. A sale is keyed by its
//!   product and version, so a redelivered `ProductSold` is not counted
//!   twice.
//! * **Independent of the interleaving of aggregates.** Each view row is
//!   made from its own aggregate's events only (an order document carries
//!   the customer's name as the order's event gave it, not as the customer
//!   view holds it when the order is applied), so applying the log in any
//!   order that keeps each aggregate's events in version order gives the
//!   same views: a rebuild gives what the live consumer gave. The one view
//!   fed by two aggregates, a product's sales (a product's `ProductSold`,
//!   an order's `OrderDeleted`), ends the same either way: a deleted order
//!   leaves a tombstone, its sales are removed, a sale arriving after the
//!   delete is not added, and the queries leave out the sales of deleted
//!   orders as well (two concurrent transactions may each miss the other).
//! * **Deletes are tombstones** (`deleted`, with the version), so that an
//!   older event arriving late cannot bring an aggregate back; the queries
//!   never show them.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Numeric, Text, Timestamptz};
use diesel::{OptionalExtension, QueryResult, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::outbox::{Aggregate, Envelope};
use crate::shop::store::ApplyError;
use crate::shop::{Address, CustomerName, CustomerState, Money, OrderItem, Product};

type SqlUuid = diesel::sql_types::Uuid;

/// What [`apply_view_event`] did: the same outcomes as applying an event
/// to shop's customer copy.
pub use crate::shop::store::Applied as ViewApplied;

/// An order as the query API shows it: the order as `OrderCreated`
/// carried it, with the customer's name at the time it was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderDocument {
    /// Given by shop.
    pub order_id: Uuid,
    /// Who ordered.
    pub customer_id: i64,
    /// The customer's name when the order was placed (`null` for an order
    /// whose event did not carry it).
    #[serde(default)]
    pub customer_name: Option<CustomerName>,
    /// When it was placed.
    pub order_date: DateTime<Utc>,
    /// Sum of price × quantity of the items.
    #[schema(value_type = String, example = "39.98")]
    pub total_price: Money,
    /// The items, in the order given, at the prices of the time of sale.
    pub items: Vec<OrderItem>,
    /// Where it ships, as the customer's address was when it was placed.
    pub shipping_address: Address,
}

/// A sale of a product, one per `ProductSold` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sale {
    /// The product.
    pub product_id: Uuid,
    /// Its name at the time of sale.
    pub product_name: String,
    /// Its unit price at the time of sale.
    #[schema(value_type = String, example = "19.99")]
    pub product_price: Money,
    /// How many were sold.
    pub quantity_sold: i32,
    /// The stock left after the sale.
    pub remaining_stock: i32,
    /// Whether any was left after the sale.
    pub stock_status: bool,
    /// The order.
    pub order_id: Uuid,
    /// Who ordered.
    pub customer_id: i64,
    /// Price × quantity.
    #[schema(value_type = String, example = "39.98")]
    pub product_total_price: Money,
}

/// A customer with their orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomerOrders {
    /// The customer.
    pub customer_id: i64,
    /// Their name as accounts last published it; for a customer deleted
    /// (or not yet seen) who has orders, the name of their newest order.
    pub name: Option<CustomerName>,
    /// Where their next order would ship (their first `SHIPPING` address,
    /// else their first `BILLING` one); for a customer deleted or not yet
    /// seen, where their newest order ships.
    pub shipping_address: Option<Address>,
    /// Their orders, newest first.
    pub orders: Vec<OrderDocument>,
}

/// The place of an order in the newest-first list: a page continues after
/// it. Shown to clients as an opaque string ([`Cursor::encode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The order's date.
    pub order_date: DateTime<Utc>,
    /// The order's id (orders of the same instant are ordered by id).
    pub order_id: Uuid,
}

impl Cursor {
    /// 48 hexadecimal digits: the date in microseconds, then the id.
    pub fn encode(&self) -> String {
        let micros = self.order_date.timestamp_micros().to_be_bytes();
        let mut text = String::with_capacity(48);
        for byte in micros.iter().chain(self.order_id.as_bytes()) {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }

    /// The cursor `text` encodes; `None` for anything [`Cursor::encode`]
    /// could not have made (or a date PostgreSQL cannot hold).
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() != 48 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let micros = u64::from_str_radix(&text[..16], 16).ok()?;
        let micros = i64::from_be_bytes(micros.to_be_bytes());
        let order_id = Uuid::try_parse(&text[16..]).ok()?;
        let order_date = DateTime::from_timestamp_micros(micros)?;
        // Years PostgreSQL's timestamptz holds comfortably.
        let year = chrono::Datelike::year(&order_date);
        (1..=9999).contains(&year).then_some(Self {
            order_date,
            order_id,
        })
    }

    fn of(order: &OrderDocument) -> Self {
        Self {
            order_date: order.order_date,
            order_id: order.order_id,
        }
    }
}

/// A page of the newest-first list of orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPage {
    /// Up to the limit, newest first.
    pub orders: Vec<OrderDocument>,
    /// Where the next page starts; `None` after the last order.
    pub next: Option<Cursor>,
}

/// Applies an event of `topic` (`accounts.customer.change`,
/// `shop.product.v1`, `shop.order.v1`, with any `OUTBOX_TOPIC_PREFIX` in
/// front) to the views, in the caller's transaction: it opens none, so
/// that a batch of events and the consumer's offsets commit together.
///
/// Answers [`ViewApplied::Ignored`] for another topic or an event type the
/// views do not use, [`ViewApplied::Stale`] for an event the views already
/// hold (or something newer).
///
/// An error for which [`ApplyError::is_bad_event`] holds means the event
/// can never be applied (an aggregate id of the wrong kind, malformed data,
/// data about another aggregate, a value the views cannot hold):
/// dead-letter it. Such an event is refused before any statement runs, so
/// the caller's transaction is intact and the batch can go on without it.
/// [`ApplyError::Database`] means the database failed: the transaction is
/// aborted; roll it back and retry the batch.
pub async fn apply_view_event(
    conn: &mut AsyncPgConnection,
    topic: &str,
    event: &Envelope,
) -> Result<ViewApplied, ApplyError> {
    let Some(aggregate) = Aggregate::ALL
        .into_iter()
        .find(|a| topic.ends_with(a.topic()))
    else {
        return Ok(ViewApplied::Ignored);
    };
    let kind = event.event_type.as_str();
    let known = match aggregate {
        Aggregate::Customer => {
            matches!(
                kind,
                "CustomerCreated" | "CustomerUpdated" | "CustomerDeleted"
            )
        }
        Aggregate::Product => matches!(
            kind,
            "ProductCreated" | "ProductUpdated" | "ProductSold" | "ProductDeleted"
        ),
        Aggregate::Order => matches!(kind, "OrderCreated" | "OrderDeleted"),
    };
    if !known {
        return Ok(ViewApplied::Ignored);
    }
    // PostgreSQL's text and jsonb cannot hold NUL: refused here, before a
    // statement fails on it (which would look like the database failing).
    // The characters themselves are looked at: a backslash followed by
    // `u0000` is text like any other.
    if crate::db::holds_nul(&event.data) {
        return Err(ApplyError::Inconsistent(
            "the data holds a NUL character, which PostgreSQL cannot store".into(),
        ));
    }
    if event.aggregate_version < 1 {
        return Err(ApplyError::Inconsistent(format!(
            "aggregateVersion {} is not 1 or more",
            event.aggregate_version
        )));
    }
    let changed = match aggregate {
        Aggregate::Customer => apply_customer(conn, event).await?,
        Aggregate::Product => apply_product(conn, event).await?,
        Aggregate::Order => apply_order(conn, event).await?,
    };
    Ok(if changed {
        ViewApplied::Applied
    } else {
        ViewApplied::Stale
    })
}

fn uuid_id(event: &Envelope) -> Result<Uuid, ApplyError> {
    Uuid::try_parse(&event.aggregate_id)
        .map_err(|_| ApplyError::AggregateId(event.aggregate_id.clone()))
}

fn same_id(field: &str, in_data: Uuid, aggregate: Uuid) -> Result<(), ApplyError> {
    if in_data == aggregate {
        Ok(())
    } else {
        Err(ApplyError::Inconsistent(format!(
            "{field} {in_data} is not the event's aggregateId {aggregate}"
        )))
    }
}

fn at_least(field: &str, value: i64, min: i64) -> Result<(), ApplyError> {
    if value >= min {
        Ok(())
    } else {
        Err(ApplyError::Inconsistent(format!(
            "{field} is {value}, less than {min}"
        )))
    }
}

fn to_text<T: Serialize>(value: &T) -> Result<String, ApplyError> {
    Ok(serde_json::to_string(value)?)
}

async fn apply_customer(
    conn: &mut AsyncPgConnection,
    event: &Envelope,
) -> Result<bool, ApplyError> {
    let id: i64 = event
        .aggregate_id
        .parse()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| ApplyError::AggregateId(event.aggregate_id.clone()))?;
    let (deleted, name, shipping) = if event.event_type == "CustomerDeleted" {
        (true, None, None)
    } else {
        let state: CustomerState = serde_json::from_value(event.data.clone())?;
        let shipping = crate::shop::shipping_address(&state.addresses)
            .map(to_text)
            .transpose()?;
        (false, Some(to_text(&state.name)?), shipping)
    };
    let written = diesel::sql_query(
        "INSERT INTO shop_view.customers AS c (customer_id, version, deleted, name, shipping_address) \
         VALUES ($1, $2, $3, $4::jsonb, $5::jsonb) \
         ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version, \
             deleted = excluded.deleted, name = excluded.name, \
             shipping_address = excluded.shipping_address \
         WHERE c.version < excluded.version",
    )
    .bind::<BigInt, _>(id)
    .bind::<BigInt, _>(event.aggregate_version)
    .bind::<Bool, _>(deleted)
    .bind::<Nullable<Text>, _>(name)
    .bind::<Nullable<Text>, _>(shipping)
    .execute(conn)
    .await?;
    Ok(written > 0)
}

/// What a `ProductSold` event's data holds.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sold {
    product_id: Uuid,
    product_name: String,
    product_price: Money,
    quantity_sold: i32,
    remaining_stock: i32,
    order_id: Uuid,
    customer_id: i64,
    product_total_price: Money,
}

async fn apply_product(conn: &mut AsyncPgConnection, event: &Envelope) -> Result<bool, ApplyError> {
    let id = uuid_id(event)?;
    let version = event.aggregate_version;
    match event.event_type.as_str() {
        "ProductDeleted" => {
            let written = diesel::sql_query(
                "INSERT INTO shop_view.products AS p (product_id, version, deleted) \
                 VALUES ($1, $2, true) \
                 ON CONFLICT (product_id) DO UPDATE SET version = excluded.version, deleted = true \
                 WHERE p.version < excluded.version",
            )
            .bind::<SqlUuid, _>(id)
            .bind::<BigInt, _>(version)
            .execute(conn)
            .await?;
            Ok(written > 0)
        }
        "ProductSold" => {
            let sold: Sold = serde_json::from_value(event.data.clone())?;
            same_id("productId", sold.product_id, id)?;
            at_least("quantitySold", sold.quantity_sold.into(), 1)?;
            at_least("remainingStock", sold.remaining_stock.into(), 0)?;
            at_least("customerId", sold.customer_id, 1)?;
            let product = Product::new(
                id,
                sold.product_name.clone(),
                sold.product_price,
                sold.remaining_stock,
            );
            let changed = upsert_product(conn, &product, version).await?;
            // Not for an order already deleted: its sales left the views
            // with it.
            let added = diesel::sql_query(
                "INSERT INTO shop_view.product_sold (product_id, version, event_id, order_id, \
                     customer_id, product_name, product_price, quantity_sold, remaining_stock, \
                     stock_status, product_total_price) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
                 WHERE NOT EXISTS (SELECT 1 FROM shop_view.orders o \
                                   WHERE o.order_id = $4 AND o.deleted) \
                 ON CONFLICT DO NOTHING",
            )
            .bind::<SqlUuid, _>(id)
            .bind::<BigInt, _>(version)
            .bind::<SqlUuid, _>(event.event_id)
            .bind::<SqlUuid, _>(sold.order_id)
            .bind::<BigInt, _>(sold.customer_id)
            .bind::<Text, _>(&sold.product_name)
            .bind::<Numeric, _>(sold.product_price.to_decimal())
            .bind::<Integer, _>(sold.quantity_sold)
            .bind::<Integer, _>(sold.remaining_stock)
            .bind::<Bool, _>(sold.remaining_stock > 0)
            .bind::<Numeric, _>(sold.product_total_price.to_decimal())
            .execute(conn)
            .await?;
            Ok(changed || added > 0)
        }
        // ProductCreated, ProductUpdated: the product as it now is.
        _ => {
            let product: Product = serde_json::from_value(event.data.clone())?;
            same_id("productId", product.product_id, id)?;
            at_least("stock", product.stock.into(), 0)?;
            let product = Product::new(id, product.name, product.price, product.stock);
            upsert_product(conn, &product, version).await
        }
    }
}

async fn upsert_product(
    conn: &mut AsyncPgConnection,
    product: &Product,
    version: i64,
) -> Result<bool, ApplyError> {
    let written = diesel::sql_query(
        "INSERT INTO shop_view.products AS p \
             (product_id, version, deleted, name, price, stock, stock_status) \
         VALUES ($1, $2, false, $3, $4, $5, $6) \
         ON CONFLICT (product_id) DO UPDATE SET version = excluded.version, deleted = false, \
             name = excluded.name, price = excluded.price, stock = excluded.stock, \
             stock_status = excluded.stock_status \
         WHERE p.version < excluded.version",
    )
    .bind::<SqlUuid, _>(product.product_id)
    .bind::<BigInt, _>(version)
    .bind::<Text, _>(&product.name)
    .bind::<Numeric, _>(product.price.to_decimal())
    .bind::<Integer, _>(product.stock)
    .bind::<Bool, _>(product.stock_status)
    .execute(conn)
    .await?;
    Ok(written > 0)
}

/// What an `OrderDeleted` event's data holds.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderGone {
    order_id: Uuid,
    customer_id: i64,
}

async fn apply_order(conn: &mut AsyncPgConnection, event: &Envelope) -> Result<bool, ApplyError> {
    let id = uuid_id(event)?;
    let version = event.aggregate_version;
    if event.event_type == "OrderDeleted" {
        let gone: OrderGone = serde_json::from_value(event.data.clone())?;
        same_id("orderId", gone.order_id, id)?;
        at_least("customerId", gone.customer_id, 1)?;
        let written = diesel::sql_query(
            "INSERT INTO shop_view.orders AS o (order_id, version, deleted, customer_id) \
             VALUES ($1, $2, true, $3) \
             ON CONFLICT (order_id) DO UPDATE SET version = excluded.version, deleted = true, \
                 doc = NULL \
             WHERE o.version < excluded.version",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<BigInt, _>(version)
        .bind::<BigInt, _>(gone.customer_id)
        .execute(conn)
        .await?;
        if written > 0 {
            diesel::sql_query("DELETE FROM shop_view.product_sold WHERE order_id = $1")
                .bind::<SqlUuid, _>(id)
                .execute(conn)
                .await?;
        }
        return Ok(written > 0);
    }
    let order: OrderDocument = serde_json::from_value(event.data.clone())?;
    same_id("orderId", order.order_id, id)?;
    at_least("customerId", order.customer_id, 1)?;
    let written = diesel::sql_query(
        "INSERT INTO shop_view.orders AS o (order_id, version, deleted, customer_id, order_date, doc) \
         VALUES ($1, $2, false, $3, $4, $5::jsonb) \
         ON CONFLICT (order_id) DO UPDATE SET version = excluded.version, deleted = false, \
             customer_id = excluded.customer_id, order_date = excluded.order_date, \
             doc = excluded.doc \
         WHERE o.version < excluded.version",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<BigInt, _>(version)
    .bind::<BigInt, _>(order.customer_id)
    .bind::<Timestamptz, _>(order.order_date)
    .bind::<Text, _>(to_text(&order)?)
    .execute(conn)
    .await?;
    Ok(written > 0)
}

// ---- Queries: each one snapshot. A query of one statement has one as any
// statement does; the two that read twice open a read-only, repeatable-read
// transaction.

async fn begin_snapshot(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(conn)
        .await
        .map(|_| ())
}

fn corrupt(what: String) -> diesel::result::Error {
    diesel::result::Error::DeserializationError(what.into())
}

fn money(value: &bigdecimal::BigDecimal, what: &str) -> QueryResult<Money> {
    Money::from_decimal(value).ok_or_else(|| corrupt(format!("{what} out of range")))
}

#[derive(QueryableByName)]
struct DocRow {
    #[diesel(sql_type = Text)]
    doc: String,
}

fn documents(rows: Vec<DocRow>) -> QueryResult<Vec<OrderDocument>> {
    rows.into_iter()
        .map(|row| {
            serde_json::from_str(&row.doc)
                .map_err(|e| corrupt(format!("an order document is malformed: {e}")))
        })
        .collect()
}

/// The orders newest first (by date, then id), `limit` of them, starting
/// after `after`.
pub async fn list_orders(
    conn: &mut AsyncPgConnection,
    limit: i64,
    after: Option<Cursor>,
) -> QueryResult<OrderPage> {
    // One more than asked: whether there is a next page.
    let rows: Vec<DocRow> = match after {
        None => {
            diesel::sql_query(
                "SELECT doc::text AS doc FROM shop_view.orders WHERE NOT deleted \
                 ORDER BY order_date DESC, order_id DESC LIMIT $1",
            )
            .bind::<BigInt, _>(limit + 1)
            .load(conn)
            .await?
        }
        Some(cursor) => {
            diesel::sql_query(
                "SELECT doc::text AS doc FROM shop_view.orders \
                 WHERE NOT deleted AND (order_date, order_id) < ($2, $3) \
                 ORDER BY order_date DESC, order_id DESC LIMIT $1",
            )
            .bind::<BigInt, _>(limit + 1)
            .bind::<Timestamptz, _>(cursor.order_date)
            .bind::<SqlUuid, _>(cursor.order_id)
            .load(conn)
            .await?
        }
    };
    let mut orders = documents(rows)?;
    let more = orders.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    orders.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = if more {
        orders.last().map(Cursor::of)
    } else {
        None
    };
    Ok(OrderPage { orders, next })
}

/// The order `id`, unless unknown or deleted.
pub async fn find_order(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<OrderDocument>> {
    let row: Option<DocRow> = diesel::sql_query(
        "SELECT doc::text AS doc FROM shop_view.orders WHERE order_id = $1 AND NOT deleted",
    )
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?;
    Ok(documents(row.into_iter().collect())?.pop())
}

#[derive(QueryableByName)]
struct CustomerRow {
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    shipping_address: Option<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(text: Option<String>) -> QueryResult<Option<T>> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| corrupt(format!("a customer view row is malformed: {e}")))
}

/// The customer `id` with their orders, newest first; `None` when the
/// views know neither the customer (alive) nor an order of theirs.
pub async fn customer_orders(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> QueryResult<Option<CustomerOrders>> {
    conn.transaction(async |conn| {
        begin_snapshot(conn).await?;
        let customer: Option<CustomerRow> = diesel::sql_query(
            "SELECT name::text AS name, shipping_address::text AS shipping_address \
             FROM shop_view.customers WHERE customer_id = $1 AND NOT deleted",
        )
        .bind::<BigInt, _>(id)
        .get_result(conn)
        .await
        .optional()?;
        let rows: Vec<DocRow> = diesel::sql_query(
            "SELECT doc::text AS doc FROM shop_view.orders \
             WHERE customer_id = $1 AND NOT deleted \
             ORDER BY order_date DESC, order_id DESC",
        )
        .bind::<BigInt, _>(id)
        .load(conn)
        .await?;
        let orders = documents(rows)?;
        let (name, shipping_address) = match (customer, <[OrderDocument]>::first(&orders)) {
            (Some(row), _) => (parse_json(row.name)?, parse_json(row.shipping_address)?),
            (None, Some(newest)) => (
                newest.customer_name.clone(),
                Some(newest.shipping_address.clone()),
            ),
            (None, None) => return Ok(None),
        };
        Ok(Some(CustomerOrders {
            customer_id: id,
            name,
            shipping_address,
            orders,
        }))
    })
    .await
}

#[derive(QueryableByName)]
struct ProductRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Numeric)]
    price: bigdecimal::BigDecimal,
    #[diesel(sql_type = Integer)]
    stock: i32,
}

async fn live_product(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Product>> {
    let row: Option<ProductRow> = diesel::sql_query(
        "SELECT name, price, stock FROM shop_view.products WHERE product_id = $1 AND NOT deleted",
    )
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()?;
    row.map(|row| {
        let price = money(&row.price, "a product's price")?;
        Ok(Product::new(id, row.name, price, row.stock))
    })
    .transpose()
}

/// The product `id`, unless unknown or deleted.
pub async fn find_product(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Product>> {
    live_product(conn, id).await
}

#[derive(QueryableByName)]
struct SaleRow {
    #[diesel(sql_type = Text)]
    product_name: String,
    #[diesel(sql_type = Numeric)]
    product_price: bigdecimal::BigDecimal,
    #[diesel(sql_type = Integer)]
    quantity_sold: i32,
    #[diesel(sql_type = Integer)]
    remaining_stock: i32,
    #[diesel(sql_type = Bool)]
    stock_status: bool,
    #[diesel(sql_type = SqlUuid)]
    order_id: Uuid,
    #[diesel(sql_type = BigInt)]
    customer_id: i64,
    #[diesel(sql_type = Numeric)]
    product_total_price: bigdecimal::BigDecimal,
}

/// The sales of product `id`, in the order they happened (of orders not
/// deleted); `None` when the product is unknown or deleted.
pub async fn product_sales(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<Vec<Sale>>> {
    conn.transaction(async |conn| {
        begin_snapshot(conn).await?;
        if live_product(conn, id).await?.is_none() {
            return Ok(None);
        }
        let rows: Vec<SaleRow> = diesel::sql_query(
            "SELECT s.product_name, s.product_price, s.quantity_sold, s.remaining_stock, \
                    s.stock_status, s.order_id, s.customer_id, s.product_total_price \
             FROM shop_view.product_sold s \
             WHERE s.product_id = $1 \
               AND NOT EXISTS (SELECT 1 FROM shop_view.orders o \
                               WHERE o.order_id = s.order_id AND o.deleted) \
             ORDER BY s.version",
        )
        .bind::<SqlUuid, _>(id)
        .load(conn)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(Sale {
                    product_id: id,
                    product_name: row.product_name,
                    product_price: money(&row.product_price, "a sale's price")?,
                    quantity_sold: row.quantity_sold,
                    remaining_stock: row.remaining_stock,
                    stock_status: row.stock_status,
                    order_id: row.order_id,
                    customer_id: row.customer_id,
                    product_total_price: money(&row.product_total_price, "a sale's total")?,
                })
            })
            .collect::<QueryResult<Vec<Sale>>>()
            .map(Some)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_nothing_else() {
        let cursor = Cursor {
            order_date: DateTime::from_timestamp_micros(1_796_000_000_123_456).unwrap_or_default(),
            order_id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        };
        let text = cursor.encode();
        assert_eq!(text, "00066173d60622400123456789abcdef0123456789abcdef");
        assert_eq!(Cursor::decode(&text), Some(cursor));
        let before_1970 = Cursor {
            order_date: DateTime::from_timestamp_micros(-5).unwrap_or_default(),
            ..cursor
        };
        assert_eq!(Cursor::decode(&before_1970.encode()), Some(before_1970));
        for bad in [
            "",
            "xyz",
            &text[..47],
            &format!("{text}0"),
            &text.to_uppercase(),
            "7fffffffffffffff0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
