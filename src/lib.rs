//! chronolog: a CQRS event pipeline.
//!
//! Commands come in over HTTP ([`http::command`]) and are appended to a Kafka
//! topic, the golden record ([`actors::producer`]). A consumer group
//! ([`kafka::group`]) projects the log into PostgreSQL ([`db`]) through
//! partition consumers and a DB writer ([`actors`]). Queries read that view
//! ([`http::query`]). [`startup::Application`] wires the roles together.
//!
//! Beside the timestamp service, the command role serves two bounded
//! contexts on PostgreSQL command sides: [`accounts`] (customers) and
//! [`shop`] (products, orders, shop's copy of the customers). Their commands
//! write their events into a transactional [`outbox`], which the outbox
//! relay ([`actors::outbox_relay`]) publishes to Kafka.

pub mod accounts;
pub mod actors;
pub mod config;
pub mod db;
pub mod domain;
pub mod http;
pub mod input;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod rebuild;
pub mod shop;
pub mod startup;
pub mod telemetry;
