//! The outbox relay: publishes the events that the accounts and shop
//! commands committed into their database's outbox (see [`crate::outbox`]).
//!
//! * **One active relay per database**, however many command processes run:
//!   a relay works only while it holds a PostgreSQL advisory lock, taken on
//!   the one connection it does all its work on. The others stand by, trying
//!   the lock every [`STANDBY_RETRY`]; when the active process dies its
//!   connection closes, the lock is released and a standby takes over.
//! * **At least once**: an event is marked published only after the broker
//!   acknowledged it. A relay killed in between leaves it unpublished and
//!   the next active relay publishes it again; consumers drop the copy by
//!   its `aggregateVersion`.
//! * **In order per aggregate**: records go to librdkafka in version order,
//!   keyed by aggregate id (one partition), through an idempotent producer
//!   that keeps that order. When a delivery fails, the aggregate's later
//!   events of the round are not marked either, and are sent again after it.
//! * Published events are deleted once older than `OUTBOX_RETENTION`.
//! * **Woken by commits**: the active relay listens on [`CHANNEL`], which a
//!   trigger on the outbox notifies when a transaction that wrote events
//!   commits; it looks anyway every `OUTBOX_POLL_INTERVAL`, so that a lost
//!   notification only delays an event.
//!
//! The actor only owns the loop; [`run`] is a plain async function.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::Settings;
use crate::db::DatabaseUrl;
use crate::kafka::record::CORRELATION_HEADER;
use crate::kafka::{TracingContext, producer_config};
use crate::metrics::Metrics;
use crate::outbox::{self, Aggregate, Pending};

/// Advisory lock key of the relay ("outbox" in ASCII).
pub const RELAY_LOCK: i64 = 0x6f75_7462_6f78;
/// How often a standing-by relay tries to become the active one.
pub const STANDBY_RETRY: Duration = Duration::from_millis(500);
/// Longest wait after a failure before the relay connects again: a
/// database that refuses the relay's queries is not asked in a tight loop.
const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(10);
/// What a round may spend on its database queries beyond waiting for the
/// broker's acknowledgements.
const ROUND_QUERY_ALLOWANCE: Duration = Duration::from_secs(30);
/// The server drops the session of a relay it cannot reach after about
/// idle + interval × count seconds, releasing the relay lock for a standby
/// (PostgreSQL's default is hours).
const KEEPALIVES: &str =
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3";
/// The channel the outbox's trigger notifies when events commit.
pub const CHANNEL: &str = "outbox_events";
/// The header that carries the event type.
pub const EVENT_TYPE_HEADER: &str = "eventType";

/// What one relay needs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The `relay` label of its metrics: the context(s) whose database it serves.
    pub name: &'static str,
    /// The database whose outbox it publishes.
    pub database_url: DatabaseUrl,
    /// Broker settings, topic prefix, poll interval, batch size, retention.
    pub settings: Settings,
}

/// Publishes one database's outbox.
pub struct OutboxRelay {
    config: RelayConfig,
    metrics: Arc<Metrics>,
}

impl OutboxRelay {
    /// A relay for `config`; it starts working when the actor starts.
    pub fn new(config: RelayConfig, metrics: Arc<Metrics>) -> Self {
        Self { config, metrics }
    }
}

/// Stops the relay: its connection closes, which releases the lock for a
/// standby. Events in flight stay unpublished and are published again.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopRelay;

impl Actor for OutboxRelay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4);
        let work = run(self.config.clone(), self.metrics.clone());
        ctx.spawn(work.into_actor(self));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.metrics
            .outbox_relay_active
            .with_label_values(&[self.config.name])
            .set(0);
    }
}

impl Handler<StopRelay> for OutboxRelay {
    type Result = ();

    fn handle(&mut self, _msg: StopRelay, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    /// The database failed: the connection (and with it the lock) is
    /// dropped and the relay starts over.
    #[error("outbox query failed: {0}")]
    Database(#[from] diesel::result::Error),
}

/// Runs the relay for ever: stands by until it holds the lock, then
/// publishes; starts over with a new connection when the database fails.
pub async fn run(config: RelayConfig, metrics: Arc<Metrics>) {
    let name = config.name;
    let active = metrics.outbox_relay_active.with_label_values(&[name]);
    let lag = metrics.outbox_relay_lag_seconds.with_label_values(&[name]);
    let mut producer = create_producer(&config).await;
    let mut failures: u32 = 0;
    loop {
        active.set(0);
        if failures > 0 {
            // After a failure, wait before connecting again (doubling up to
            // the cap): the database may be up and refusing the relay.
            let wait = STANDBY_RETRY
                .saturating_mul(1 << failures.min(5))
                .min(RESTART_BACKOFF_CAP);
            tokio::time::sleep(wait).await;
        }
        // A producer that hit a fatal error refuses every record for ever:
        // start again with a new one (the lock is released with the old
        // connection, so a standby may take over meanwhile).
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::error!(
                relay = name,
                ?code,
                reason,
                "outbox producer failed fatally; creating a new one"
            );
            producer = create_producer(&config).await;
        }
        let mut conn = match config.database_url.connect().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(relay = name, %error, "outbox relay cannot reach its database");
                tokio::time::sleep(STANDBY_RETRY).await;
                continue;
            }
        };
        if let Err(error) = conn.batch_execute(KEEPALIVES).await {
            tracing::warn!(relay = name, %error, "outbox relay cannot set keepalives; starting over");
            failures += 1;
            continue;
        }
        if !wait_for_lock(&mut conn, name).await {
            continue;
        }
        if let Err(error) = diesel::sql_query(format!("LISTEN {CHANNEL}"))
            .execute(&mut conn)
            .await
        {
            tracing::warn!(relay = name, %error, "outbox relay cannot listen for commits; starting over");
            failures += 1;
            continue;
        }
        active.set(1);
        tracing::info!(relay = name, "outbox relay active");
        let mut purged = Instant::now();
        let purge_every = (config.settings.outbox_retention / 4).min(Duration::from_secs(60));
        loop {
            // A round whose database answers hang (a connection cut without
            // a reset) is given up, which drops the connection and with it
            // the lock: a relay never holds it while doing nothing.
            let limit = config.settings.delivery_timeout + ROUND_QUERY_ALLOWANCE;
            let done = tokio::time::timeout(limit, round(&mut conn, &producer, &config, &metrics));
            let Ok(result) = done.await else {
                tracing::warn!(relay = name, timeout = ?limit, "outbox round did not finish; starting over");
                failures += 1;
                break;
            };
            match result {
                Ok(Round {
                    read,
                    progress,
                    age,
                }) => {
                    failures = 0;
                    lag.set(age);
                    let batch = config.settings.outbox_batch_size as usize;
                    if read < batch || progress == 0 {
                        wait_for_commits(&mut conn, config.settings.outbox_poll_interval).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(relay = name, %error, "outbox relay lost its database; starting over");
                    failures += 1;
                    break;
                }
            }
            if purged.elapsed() >= purge_every {
                purged = Instant::now();
                match outbox::purge(&mut conn, config.settings.outbox_retention).await {
                    Ok(0) => {}
                    Ok(deleted) => {
                        tracing::debug!(relay = name, deleted, "published events purged")
                    }
                    Err(error) => {
                        tracing::warn!(relay = name, %error, "outbox purge failed; starting over");
                        failures += 1;
                        break;
                    }
                }
            }
        }
    }
}

/// The relay's idempotent producer, retried until the configuration takes.
async fn create_producer(config: &RelayConfig) -> FutureProducer<TracingContext> {
    loop {
        match producer_config(&config.settings).create_with_context(TracingContext) {
            Ok(producer) => return producer,
            Err(error) => {
                tracing::error!(relay = config.name, %error, "cannot create the outbox producer");
                tokio::time::sleep(STANDBY_RETRY).await;
            }
        }
    }
}

/// Waits until a transaction that wrote events commits, or `poll` has passed.
async fn wait_for_commits(conn: &mut AsyncPgConnection, poll: Duration) {
    use futures::{FutureExt, StreamExt};
    let mut notifications = std::pin::pin!(conn.notifications_stream());
    if let Ok(Some(_)) = tokio::time::timeout(poll, notifications.next()).await {
        // Commits that arrived together wake one round.
        while let Some(Some(_)) = notifications.next().now_or_never() {}
    }
}

/// Tries the lock until it is held (`true`) or the connection fails (`false`).
async fn wait_for_lock(conn: &mut AsyncPgConnection, name: &str) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let mut announced = false;
    loop {
        let locked = diesel::sql_query(format!(
            "SELECT pg_try_advisory_lock({RELAY_LOCK}) AS locked"
        ))
        .get_result::<Locked>(conn)
        .await;
        match locked {
            Ok(Locked { locked: true }) => return true,
            Ok(Locked { locked: false }) => {
                if !announced {
                    tracing::info!(
                        relay = name,
                        "another process's outbox relay is active; standing by"
                    );
                    announced = true;
                }
                tokio::time::sleep(STANDBY_RETRY).await;
            }
            Err(error) => {
                tracing::warn!(relay = name, %error, "outbox relay lost its database while standing by");
                tokio::time::sleep(STANDBY_RETRY).await;
                return false;
            }
        }
    }
}

/// What one round did.
struct Round {
    /// Unpublished events read.
    read: usize,
    /// Events published or marked.
    progress: usize,
    /// Age of the oldest unpublished event read, in seconds (0 for none).
    age: f64,
}

/// Reads a batch, publishes what may be published, marks what the broker
/// acknowledged.
async fn round(
    conn: &mut AsyncPgConnection,
    producer: &FutureProducer<TracingContext>,
    config: &RelayConfig,
    metrics: &Metrics,
) -> Result<Round, RoundError> {
    let pending = outbox::pending(conn, i64::from(config.settings.outbox_batch_size)).await?;
    let read = pending.len();
    let age = pending.iter().map(|e| e.age_seconds).fold(0.0, f64::max);
    let plan = outbox::publishable(pending);
    // Every record is handed to librdkafka before any is awaited: in order,
    // and in shared produce batches.
    // Once librdkafka refuses one (its queue is full), the rest of the
    // round waits for the next: a later event must not overtake it.
    let mut deliveries = Vec::with_capacity(plan.publish.len());
    for event in &plan.publish {
        let delivery = send(producer, &config.settings.outbox_topic_prefix, event);
        let refused = delivery.is_none();
        deliveries.push(delivery);
        if refused {
            break;
        }
    }
    let timeout = config.settings.delivery_timeout;
    let results = futures::future::join_all(deliveries.into_iter().map(|delivery| async move {
        match delivery {
            Some(delivery) => {
                matches!(tokio::time::timeout(timeout, delivery).await, Ok(Ok(Ok(_))))
            }
            None => false,
        }
    }))
    .await;
    let mut failed: HashSet<(&str, &str)> = HashSet::new();
    let mut done: Vec<&Pending> = plan.already_published.iter().collect();
    // Records never handed over (after a refusal) count as failed too.
    let mut results = results.into_iter();
    for event in &plan.publish {
        let delivered = results.next().unwrap_or(false);
        let key = (event.aggregate_type.as_str(), event.aggregate_id.as_str());
        if delivered && !failed.contains(&key) {
            done.push(event);
            metrics
                .outbox_events_published
                .with_label_values(&[event.aggregate_type.as_str()])
                .inc();
        } else {
            failed.insert(key);
        }
    }
    if !failed.is_empty() {
        tracing::warn!(
            relay = config.name,
            aggregates = failed.len(),
            "outbox events not acknowledged; they will be published again"
        );
    }
    outbox::mark_published(conn, &done).await?;
    Ok(Round {
        read,
        progress: done.len(),
        age,
    })
}

/// Hands one event to librdkafka; `None` when it refused it (queue full).
fn send(
    producer: &FutureProducer<TracingContext>,
    prefix: &str,
    event: &Pending,
) -> Option<rdkafka::producer::DeliveryFuture> {
    let Some(aggregate) = Aggregate::parse(&event.aggregate_type) else {
        tracing::error!(
            aggregate = event.aggregate_type,
            "outbox event of an unknown aggregate type"
        );
        return None;
    };
    let topic = format!("{prefix}{}", aggregate.topic());
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: EVENT_TYPE_HEADER,
            value: Some(event.event_type.as_str()),
        })
        .insert(Header {
            key: CORRELATION_HEADER,
            value: Some(event.correlation_id.as_str()),
        });
    let record = FutureRecord::to(&topic)
        .key(event.aggregate_id.as_str())
        .payload(event.payload.as_str())
        .headers(headers);
    match producer.send_result(record) {
        Ok(delivery) => Some(delivery),
        Err((error, _)) => {
            tracing::warn!(%error, "outbox event refused by the producer");
            None
        }
    }
}
