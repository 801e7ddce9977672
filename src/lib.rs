//! chronolog: a CQRS event pipeline.
//!
//! Commands come in over HTTP ([`http::command`]) and are appended to a Kafka
//! topic, the golden record ([`actors::producer`]). A consumer group
//! ([`kafka::group`]) projects the log into PostgreSQL ([`db`]) through
//! partition consumers and a DB writer ([`actors`]). Queries read that view
//! ([`http::query`]). [`startup::Application`] wires the roles together.

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
