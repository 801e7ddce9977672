//! The projection engine: a consumer group whose partitions are projected
//! into a sink, with the guarantees every projection needs.
//!
//! * [`group`]: membership. Joins the group (or takes partitions itself, for
//!   a rebuild), splits each partition's queue before assigning it, starts a
//!   partition consumer per partition at the view's stored offset, drains
//!   them on revocation.
//! * [`partition_consumer`]: one actor per partition. Batches what is
//!   waiting, sorts records into what can be projected and dead letters,
//!   writes a batch with the offset that follows it in one transaction,
//!   acknowledges only after the commit, retries while the database is down,
//!   catches panics, and stops a partition whose log lost what the view
//!   holds.
//! * [`status`]: what the partitions are doing, for `/ready`, `Prefer: wait`
//!   and the rebuild's finish line.
//!
//! It uses the plumbing below it (`kafka`: clients, topics, the rebalance
//! callback; `db`: pool, statements) and the actors that own a resource
//! (`actors::db_writer`, `actors::producer`); nothing below imports it.

pub mod group;
pub mod partition_consumer;
pub mod status;
