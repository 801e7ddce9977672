//! The accounts context's Diesel queries: a customer in its 3NF tables, and
//! its events in the outbox of the same database, in one transaction.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::accounts::schema::accounts::{
    addresses, credit_cards, customer_contacts, customer_names, customers,
};
use crate::accounts::{Address, AddressType, Contact, CreditCard, Customer, Name};
use crate::db::{DbError, Pool};
use crate::domain::CorrelationId;
use crate::outbox::{self, Aggregate, NewEvent};

/// The answer to a create or update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// The customer's id.
    pub id: i64,
    /// The customer's version after the change.
    pub version: i64,
    /// Whether the customer is new (`CustomerCreated`) or was updated.
    pub created: bool,
}

/// Creates or replaces the customer and records `CustomerCreated` or
/// `CustomerUpdated` with its whole (masked) state.
pub async fn save(
    pool: &Pool,
    customer: &Customer,
    correlation_id: &CorrelationId,
) -> Result<Saved, DbError> {
    let mut conn = pool.get().await?;
    let data = serde_json::to_value(customer)
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    let id = customer.id;
    let saved = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            let key = id.to_string();
            // Locks the customer's version: concurrent saves and deletes of
            // one customer run one after the other.
            let version = outbox::next_version(conn, Aggregate::Customer, &key).await?;
            let created = customers::table
                .find(id)
                .select(customers::id)
                .first::<i64>(conn)
                .await
                .optional()?
                .is_none();
            diesel::insert_into(customers::table)
                .values((customers::id.eq(id), customers::version.eq(version)))
                .on_conflict(customers::id)
                .do_update()
                .set((
                    customers::version.eq(version),
                    customers::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            if !created {
                delete_parts(conn, id).await?;
            }
            insert_parts(conn, customer).await?;
            outbox::append(
                conn,
                NewEvent {
                    aggregate: Aggregate::Customer,
                    aggregate_id: &key,
                    aggregate_version: version,
                    event_type: if created {
                        "CustomerCreated"
                    } else {
                        "CustomerUpdated"
                    },
                    correlation_id,
                    data,
                },
            )
            .await?;
            Ok(Saved {
                id,
                version,
                created,
            })
        })
        .await?;
    Ok(saved)
}

/// Deletes the customer and records `CustomerDeleted`; `None` when there
/// is no such customer (and nothing is written).
pub async fn delete(
    pool: &Pool,
    id: i64,
    correlation_id: &CorrelationId,
) -> Result<Option<i64>, DbError> {
    let mut conn = pool.get().await?;
    let deleted = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            let key = id.to_string();
            let version = outbox::next_version(conn, Aggregate::Customer, &key).await?;
            let removed = diesel::delete(customers::table.find(id))
                .execute(conn)
                .await?;
            if removed == 0 {
                // Gives the version back.
                return Err(diesel::result::Error::RollbackTransaction);
            }
            outbox::append(
                conn,
                NewEvent {
                    aggregate: Aggregate::Customer,
                    aggregate_id: &key,
                    aggregate_version: version,
                    event_type: "CustomerDeleted",
                    correlation_id,
                    data: serde_json::json!({ "id": id }),
                },
            )
            .await?;
            Ok(version)
        })
        .await;
    match deleted {
        Ok(version) => Ok(Some(version)),
        Err(diesel::result::Error::RollbackTransaction) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The customer as stored, with its version; `None` when unknown.
pub async fn find(pool: &Pool, id: i64) -> Result<Option<(Customer, i64)>, DbError> {
    let mut conn = pool.get().await?;
    // One snapshot for the six reads: a save or a delete committing between
    // them would otherwise give a customer mixed from two versions, or a
    // name missing under a version (a 500 instead of a 404).
    let read = conn
        .transaction::<_, DbError, _>(async |conn| {
            diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(conn)
                .await?;
            read_customer(conn, id).await
        })
        .await?;
    Ok(read)
}

/// The reads of [`find`], in the caller's transaction.
async fn read_customer(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<Option<(Customer, i64)>, DbError> {
    let Some(version) = customers::table
        .find(id)
        .select(customers::version)
        .first::<i64>(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    type NameRow = (
        Option<String>,
        String,
        Option<String>,
        String,
        Option<String>,
    );
    let Some(name): Option<NameRow> = customer_names::table
        .find(id)
        .select((
            customer_names::title,
            customer_names::first_name,
            customer_names::middle_name,
            customer_names::last_name,
            customer_names::suffix,
        ))
        .first(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let contact: Option<(Option<String>, Option<String>, Option<String>)> =
        customer_contacts::table
            .find(id)
            .select((
                customer_contacts::primary_phone,
                customer_contacts::secondary_phone,
                customer_contacts::email,
            ))
            .first(conn)
            .await
            .optional()?;
    type AddressRow = (
        String,
        Option<String>,
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    );
    let address_rows: Vec<AddressRow> = addresses::table
        .filter(addresses::customer_id.eq(id))
        .order(addresses::position)
        .select((
            addresses::address_type,
            addresses::description,
            addresses::address1,
            addresses::address2,
            addresses::city,
            addresses::state,
            addresses::postal_code,
        ))
        .load(conn)
        .await?;
    type CardRow = (
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    );
    let card_rows: Vec<CardRow> = credit_cards::table
        .filter(credit_cards::customer_id.eq(id))
        .order(credit_cards::position)
        .select((
            credit_cards::card_type,
            credit_cards::description,
            credit_cards::masked_number,
            credit_cards::expiration,
            credit_cards::name_on_card,
        ))
        .load(conn)
        .await?;
    let (title, first_name, middle_name, last_name, suffix) = name;
    let (primary_phone, secondary_phone, email) = contact.unwrap_or_default();
    let customer = Customer {
        id,
        name: Name {
            title,
            first_name,
            middle_name,
            last_name,
            suffix,
        },
        contact: Contact {
            primary_phone,
            secondary_phone,
            email,
        },
        addresses: address_rows
            .into_iter()
            .map(
                |(kind, description, address1, address2, city, state, postal_code)| Address {
                    // The column's check admits only the two types.
                    address_type: AddressType::parse(&kind).unwrap_or(AddressType::Billing),
                    description,
                    address1,
                    address2,
                    city,
                    state,
                    postal_code,
                },
            )
            .collect(),
        credit_cards: card_rows
            .into_iter()
            .map(
                |(card_type, description, number, expiration, name_on_card)| CreditCard {
                    card_type,
                    description,
                    number,
                    expiration,
                    name_on_card,
                },
            )
            .collect(),
    };
    Ok(Some((customer, version)))
}

async fn delete_parts(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<()> {
    diesel::delete(customer_names::table.find(id))
        .execute(conn)
        .await?;
    diesel::delete(customer_contacts::table.find(id))
        .execute(conn)
        .await?;
    diesel::delete(addresses::table.filter(addresses::customer_id.eq(id)))
        .execute(conn)
        .await?;
    diesel::delete(credit_cards::table.filter(credit_cards::customer_id.eq(id)))
        .execute(conn)
        .await?;
    Ok(())
}

async fn insert_parts(conn: &mut AsyncPgConnection, customer: &Customer) -> QueryResult<()> {
    let id = customer.id;
    let name = &customer.name;
    diesel::insert_into(customer_names::table)
        .values((
            customer_names::customer_id.eq(id),
            customer_names::title.eq(&name.title),
            customer_names::first_name.eq(&name.first_name),
            customer_names::middle_name.eq(&name.middle_name),
            customer_names::last_name.eq(&name.last_name),
            customer_names::suffix.eq(&name.suffix),
        ))
        .execute(conn)
        .await?;
    let contact = &customer.contact;
    diesel::insert_into(customer_contacts::table)
        .values((
            customer_contacts::customer_id.eq(id),
            customer_contacts::primary_phone.eq(&contact.primary_phone),
            customer_contacts::secondary_phone.eq(&contact.secondary_phone),
            customer_contacts::email.eq(&contact.email),
        ))
        .execute(conn)
        .await?;
    let address_rows: Vec<_> = customer
        .addresses
        .iter()
        .zip(0_i16..)
        .map(|(a, position)| {
            (
                addresses::customer_id.eq(id),
                addresses::position.eq(position),
                addresses::address_type.eq(a.address_type.as_str()),
                addresses::description.eq(&a.description),
                addresses::address1.eq(&a.address1),
                addresses::address2.eq(&a.address2),
                addresses::city.eq(&a.city),
                addresses::state.eq(&a.state),
                addresses::postal_code.eq(&a.postal_code),
            )
        })
        .collect();
    if !address_rows.is_empty() {
        diesel::insert_into(addresses::table)
            .values(&address_rows)
            .execute(conn)
            .await?;
    }
    let card_rows: Vec<_> = customer
        .credit_cards
        .iter()
        .zip(0_i16..)
        .map(|(c, position)| {
            (
                credit_cards::customer_id.eq(id),
                credit_cards::position.eq(position),
                credit_cards::card_type.eq(&c.card_type),
                credit_cards::description.eq(&c.description),
                credit_cards::masked_number.eq(&c.number),
                credit_cards::expiration.eq(&c.expiration),
                credit_cards::name_on_card.eq(&c.name_on_card),
            )
        })
        .collect();
    if !card_rows.is_empty() {
        diesel::insert_into(credit_cards::table)
            .values(&card_rows)
            .execute(conn)
            .await?;
    }
    Ok(())
}
