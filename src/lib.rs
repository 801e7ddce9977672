//! chronolog: a CQRS event pipeline.
//!
//! Commands come in over HTTP ([`http::command`]) and are appended to a Kafka
//! topic, the golden record ([`actors::producer`]). A consumer group
//! ([`kafka::group`]) projects the log into PostgreSQL ([`db`]) through
//! partition consumers and a DB writer ([`actors`]). Queries read that view
//! ([`http::query`]). [`startup::Application`] wires the roles together.

pub mod actors;
pub mod config;
pub mod db;
pub mod domain;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod rebuild;
pub mod startup;
pub mod telemetry;

/// The message a caught panic carried, for logs and errors.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
