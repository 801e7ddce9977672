//! The actors of chronolog and the typed messages they exchange.
//!
//! | actor | file | owns | receives from | messages | mailbox |
//! |---|---|---|---|---|---|
//! | [`Ingestion`](ingestion::Ingestion) | `ingestion.rs` | a handle on the process's idempotency store | HTTP command handlers of its worker thread | `SubmitCommand` → `CommandAccepted` | 4096 |
//! | [`KafkaProducer`](producer::KafkaProducer) | `producer.rs` | a handle on the process's idempotent producer | `Ingestion` of its worker thread; partition consumers (one on the system arbiter) | `PublishCommand`, `PublishDeadLetter` → `Delivered` | 4096 |
//! | [`PartitionConsumer`](crate::engine::partition_consumer::PartitionConsumer) | `engine/partition_consumer.rs` | one partition's queue, its committed offset | the group's rebalance callback | `Drain` → `PartitionDrained` | 16 |
//! | [`DbWriter`](db_writer::DbWriter) | `db_writer.rs` | the write-side connection pool | partition consumers, the group | `WriteBatch` → `BatchCommitted`, `LoadOffsets` | 1024 |
//! | [`OutboxRelay`](outbox_relay::OutboxRelay) | `outbox_relay.rs` | one database connection holding the relay lock, its own idempotent producer | the application (one relay per accounts/shop database) | `StopRelay` | 4 |
//!
//! The command API runs one `Ingestion` and one `KafkaProducer` on each HTTP
//! worker thread, so that a command goes from handler to librdkafka without
//! crossing threads; all of them share one librdkafka client (one producer
//! id, shared produce batches).
//!
//! Every actor that owns a resource runs under an `actix::Supervisor`, which
//! restarts an actor that *stops*; none of them panics: failures are values,
//! and an actor whose resource is broken (a fatal producer error, a lost
//! database connection) stops itself so that `restarting` can rebuild that
//! resource. `Ingestion` owns nothing that breaks, never stops, and runs
//! unsupervised.
//!
//! The flow of one command: HTTP → `SubmitCommand` → `Ingestion` →
//! `PublishCommand` → `KafkaProducer` → broker ack → 202. Later, on the
//! consumer side: partition queue → `PartitionConsumer` → `WriteBatch` →
//! `DbWriter` → commit → `BatchCommitted` → offset stored → Kafka commit.

pub mod db_writer;
pub mod ingestion;
pub mod outbox_relay;
pub mod producer;
