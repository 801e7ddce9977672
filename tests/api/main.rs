//! Integration tests against a real PostgreSQL and a real Kafka-protocol
//! broker (tansu), each test with its own database and topic.

// A failed expectation in a test is a panic by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod admin;
mod bad_input;
mod binary;
mod command;
mod compat;
mod golden_log;
mod helpers;
mod hostile;
mod http_edges;
mod idempotency;
mod kafka_wire;
mod openapi;
mod ops;
mod outbox;
mod pipeline;
mod pipeline_run;
mod pipelines;
mod query;
mod recovery;
mod secrets;
mod secure_rig;
mod shop;
mod shop_flow;
mod shop_views;
mod tls;
mod writer;
