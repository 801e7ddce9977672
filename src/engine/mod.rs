//! The projection engine: a consumer group whose partitions are projected
//! into a sink, with the guarantees every projection needs.
//!
//! * [`group`]: membership. Joins the group (or takes partitions itself, for
//!   a rebuild), splits each partition's queue before assigning it, starts a
//!   partition consumer per partition at the view's stored offset, drains
//!   them on revocation.
//! * [`partition_consumer`]: one actor per partition. Batches what is
//!   waiting, has the sink sort records into what it takes and dead letters,
//!   has the sink make a batch durable (a database sink: with the offset
//!   that follows it, in one transaction), acknowledges only after that,
//!   retries while the sink is down, catches panics, and stops a partition
//!   whose log lost what the sink holds.
//! * [`sink`]: what a destination supplies: decoding, a durable write of a
//!   batch, its stored positions.
//! * [`pg_sink`]: a sink into PostgreSQL tables with the offsets in the
//!   batch's transaction, for any [`pg_sink::Projection`].
//! * [`timestamp_view`]: the timestamp view as a sink (through the DB
//!   writer).
//! * [`customer_copy`]: shop's copy of the customers from accounts' events.
//! * [`shop_views`]: the shop's read side from the outbox's topics.
//! * [`events`]: what those two share.
//! * [`pipeline`]: a pipeline's filters in front of its output (a table, a
//!   topic, a file).
//! * [`pipeline_manager`]: the actor that runs the stored pipelines and
//!   follows their changes.
//! * [`replay`]: a consumer over a range of the log into a sink, to a
//!   finish line (`rebuild`, `pipelines replay`).
//! * [`status`]: what the partitions are doing, for `/ready`, `Prefer: wait`
//!   and the rebuild's finish line.
//!
//! It uses the plumbing below it (`kafka`: clients, topics, the rebalance
//! callback; `db`: pool, statements) and the actors that own a resource
//! (`actors::db_writer`, `actors::producer`); nothing below imports it.

pub mod customer_copy;
pub mod events;
pub mod group;
pub mod partition_consumer;
pub mod pg_sink;
pub mod pipeline;
pub mod pipeline_manager;
pub mod replay;
pub mod shop_views;
pub mod sink;
pub mod status;
pub mod timestamp_view;
