//! chronolog: a CQRS event pipeline.
//!
//! Commands come in over HTTP ([`http::command`]) and are appended to a Kafka
//! topic, the golden record ([`actors::producer`]). The projection engine
//! ([`engine`]) projects the log into PostgreSQL ([`db`]) through a consumer
//! group, partition consumers and a DB writer ([`actors::db_writer`]). Queries read that view
//! ([`http::query`]). [`startup::Application`] wires the roles together.
//!
//! Beside the timestamp service, the command role serves two bounded
//! contexts on PostgreSQL command sides: [`accounts`] (customers) and
//! [`shop`] (products, orders, shop's copy of the customers). Their commands
//! write their events into a transactional [`outbox`], which the outbox
//! relay ([`actors::outbox_relay`]) publishes to Kafka.
//!
//! [`pipelines`] holds user-defined pipelines' definitions: topics, VRL
//! filters and a sink, validated, versioned in PostgreSQL and managed with
//! `chronolog pipelines apply|list|history|delete`.

pub mod accounts;
pub mod actors;
pub mod config;
pub mod db;
pub mod domain;
pub mod echo;
pub mod engine;
pub mod http;
pub mod input;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod outbox;
pub mod pipelines;
pub mod rebuild;
pub mod replay;
pub mod shop;
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

thread_local! {
    /// Set while [`catch_expected_panic`] runs code whose panics are caught
    /// and handled where they happen.
    static EXPECTING_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic, which the process's panic hook
/// ([`install_panic_hook`]) does not log: the caller handles it (a record
/// that makes rdkafka panic is dead-lettered, and a hostile producer must not
/// be able to fill the error log with panic reports).
pub fn catch_expected_panic<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let outer = EXPECTING_PANIC.with(|e| e.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    EXPECTING_PANIC.with(|e| e.set(outer));
    result
}

/// Logs every panic as an error with where it happened, through the
/// process's logging; panics caught by [`catch_expected_panic`] are left to
/// their caller.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if EXPECTING_PANIC.with(std::cell::Cell::get) {
            return;
        }
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(location, panic = panic_message(info.payload()), "panic");
    }));
}
