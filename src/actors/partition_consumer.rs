//! The partition consumer actor: one per assigned partition. It reads its
//! partition's own queue, decodes records into batches, sends each batch to
//! the DB writer and acknowledges the offsets only once the writer answers
//! that the transaction committed.
//!
//! Batching adapts to load: a batch is the first record plus whatever is
//! already waiting (up to `BATCH_MAX_RECORDS`), so a quiet log is projected
//! record by record and a busy one in large transactions. One batch is in
//! flight at a time; while it is, nothing more is read, and librdkafka stops
//! fetching once its queue is full, so a slow writer pauses consumption.
//!
//! A failed write blocks the partition: the batch is retried with capped
//! backoff, the `blocked` gauge shows it, and nothing after it is read.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use rdkafka::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::Instrument;

use crate::actors::db_writer::{DbWriter, WriteBatch};
use crate::actors::producer::{KafkaProducer, PublishDeadLetter};
use crate::db::models::ProjectedRecord;
use crate::db::queries::PartitionKey;
use crate::kafka::group::{GroupConsumer, GroupStatus, PartitionQueue};
use crate::kafka::record::{self, CORRELATION_HEADER};
use crate::metrics::Metrics;

const ACTOR: &str = "partition_consumer";
/// Control messages only (drain); records come from the partition queue.
pub const MAILBOX_CAPACITY: usize = 16;
/// First retry delay after a failed write; doubles up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between two retries of a failed write.
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// What a partition consumer needs from the rest of the process.
#[derive(Clone)]
pub struct PartitionDeps {
    /// The group's consumer, to acknowledge and seek.
    pub consumer: Arc<GroupConsumer>,
    /// Applies batches.
    pub writer: Addr<DbWriter>,
    /// Publishes dead letters; `None` skips them (a rebuild).
    pub producer: Option<Addr<KafkaProducer>>,
    /// Shared readiness state of the group.
    pub status: Arc<GroupStatus>,
    /// Most records per batch.
    pub batch_max: usize,
    /// The application's metrics.
    pub metrics: Arc<Metrics>,
}

/// Finish the batch in flight, acknowledge it and stop: the partition is
/// being given up (rebalance or shutdown).
#[derive(Debug, Message)]
#[rtype(result = "PartitionDrained")]
pub struct Drain;

/// The partition consumer stopped after its last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionDrained {
    /// The next offset durable in the view, if any batch committed.
    pub next_offset: Option<i64>,
}

/// How a worker loop ended.
#[derive(Debug)]
enum WorkerExit {
    /// Stopped between batches, as asked.
    Drained,
    /// Asked to stop while a batch could not be committed; the next owner of
    /// the partition redoes it from the view's stored offset.
    Abandoned,
    /// A collaborator is gone for good; the supervisor restarts this actor.
    Failed(String),
}

struct Worker {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<WorkerExit>,
}

/// Consumes one partition.
pub struct PartitionConsumer {
    key: PartitionKey,
    queue: Arc<PartitionQueue>,
    deps: PartitionDeps,
    /// Next offset committed with the view; -1 before the first commit.
    committed: Arc<AtomicI64>,
    worker: Option<Worker>,
}

impl PartitionConsumer {
    /// A consumer of `key`'s partition reading `queue`.
    pub fn new(key: PartitionKey, queue: PartitionQueue, deps: PartitionDeps) -> Self {
        Self {
            key,
            queue: Arc::new(queue),
            deps,
            committed: Arc::new(AtomicI64::new(-1)),
            worker: None,
        }
    }

    fn committed(&self) -> Option<i64> {
        Some(self.committed.load(Ordering::Acquire)).filter(|&o| o >= 0)
    }
}

impl Actor for PartitionConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let (stop, stop_rx) = watch::channel(false);
        let run = PartitionRun {
            key: self.key.clone(),
            deps: self.deps.clone(),
            committed: self.committed.clone(),
        };
        let queue = self.queue.clone();
        // Weak: a strong address would keep a drained actor alive and make
        // its supervisor restart it.
        let addr = ctx.address().downgrade();
        let span = tracing::info_span!("partition", topic = %self.key.topic, partition = self.key.partition);
        let handle = actix_rt::spawn(
            async move {
                let exit = run.consume(&queue, stop_rx).await;
                if let WorkerExit::Failed(reason) = &exit {
                    tracing::error!(reason, "partition consumer failed; restarting it");
                    if let Some(addr) = addr.upgrade() {
                        addr.do_send(WorkerFailed);
                    }
                }
                exit
            }
            .instrument(span),
        );
        self.worker = Some(Worker { stop, handle });
        self.deps.status.set_blocked(&self.key, false);
        tracing::info!(partition = self.key.partition, "partition consumer started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.deps.status.set_blocked(&self.key, false);
        tracing::info!(partition = self.key.partition, "partition consumer stopped");
    }
}

impl Supervised for PartitionConsumer {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.deps.metrics.actor_restarted(ACTOR);
        // Records read but not committed were lost with the old worker: go
        // back to the last offset durable in the view.
        if let Some(offset) = self.committed()
            && let Err(error) = self.deps.consumer.seek(
                &self.key.topic,
                self.key.partition,
                Offset::Offset(offset),
                Duration::ZERO,
            )
        {
            tracing::error!(%error, offset, "cannot rewind the partition after a restart");
        }
    }
}

/// The worker loop ended with a failure.
#[derive(Message)]
#[rtype(result = "()")]
struct WorkerFailed;

impl Handler<WorkerFailed> for PartitionConsumer {
    type Result = ();

    fn handle(&mut self, _msg: WorkerFailed, ctx: &mut Self::Context) {
        self.worker = None;
        ctx.stop();
    }
}

impl Handler<Drain> for PartitionConsumer {
    type Result = ResponseActFuture<Self, PartitionDrained>;

    fn handle(&mut self, _msg: Drain, _ctx: &mut Self::Context) -> Self::Result {
        let worker = self.worker.take();
        let committed = self.committed.clone();
        let partition = self.key.partition;
        let drain = async move {
            if let Some(worker) = worker {
                // Fails only when the worker already ended, which is fine.
                let _ = worker.stop.send(true);
                match worker.handle.await {
                    Ok(exit) => tracing::info!(partition, ?exit, "partition drained"),
                    Err(error) => tracing::error!(partition, %error, "partition worker died"),
                }
            }
            let next = committed.load(Ordering::Acquire);
            Ok::<_, std::convert::Infallible>(PartitionDrained {
                next_offset: Some(next).filter(|&o| o >= 0),
            })
        };
        let metrics = self.deps.metrics.clone();
        let fut = async move { metrics.observe(ACTOR, "Drain", drain).await };
        Box::pin(fut.into_actor(self).map(|result, _act, ctx| {
            ctx.stop();
            match result {
                Ok(drained) => drained,
                Err(never) => match never {},
            }
        }))
    }
}

/// A record read from the partition, sorted into what can be projected and
/// what goes to the dead-letter topic.
enum Incoming {
    Record {
        record: ProjectedRecord,
        correlation_id: Option<String>,
    },
    Poison {
        offset: i64,
        dead_letter: PublishDeadLetter,
        correlation_id: Option<String>,
    },
}

impl Incoming {
    fn offset(&self) -> i64 {
        match self {
            Incoming::Record { record, .. } => record.offset,
            Incoming::Poison { offset, .. } => *offset,
        }
    }
}

fn header_str<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Sorts one record; never fails: what cannot be decoded becomes a dead letter.
fn classify(message: &BorrowedMessage<'_>) -> Incoming {
    let offset = message.offset();
    let correlation_id = header_str(message, CORRELATION_HEADER).map(str::to_owned);
    match record::decode(message.key(), message.payload()) {
        Ok(command) => {
            let accepted_at = message
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .unwrap_or_else(Utc::now);
            Incoming::Record {
                record: ProjectedRecord {
                    offset,
                    command,
                    accepted_at,
                },
                correlation_id,
            }
        }
        Err(error) => {
            let mut headers: Vec<(String, Vec<u8>)> = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            headers.extend([
                ("dlq.reason".to_owned(), error.code().as_bytes().to_vec()),
                ("dlq.error".to_owned(), error.to_string().into_bytes()),
                (
                    "dlq.source.topic".to_owned(),
                    message.topic().as_bytes().to_vec(),
                ),
                (
                    "dlq.source.partition".to_owned(),
                    message.partition().to_string().into_bytes(),
                ),
                (
                    "dlq.source.offset".to_owned(),
                    offset.to_string().into_bytes(),
                ),
            ]);
            Incoming::Poison {
                offset,
                dead_letter: PublishDeadLetter {
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers,
                    reason: error.code(),
                },
                correlation_id,
            }
        }
    }
}

/// The worker loop's state, separate from the actor so that it runs as a
/// plain task.
struct PartitionRun {
    key: PartitionKey,
    deps: PartitionDeps,
    committed: Arc<AtomicI64>,
}

impl PartitionRun {
    async fn consume(self, queue: &PartitionQueue, mut stop: watch::Receiver<bool>) -> WorkerExit {
        let mut stream = queue.stream();
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.wait_for(|stopping| *stopping) => return WorkerExit::Drained,
                next = stream.next() => next,
            };
            let mut batch = Vec::new();
            for next in
                std::iter::once(first).chain(std::iter::from_fn(|| stream.next().now_or_never()))
            {
                match next {
                    Some(Ok(message)) => batch.push(classify(&message)),
                    Some(Err(error)) => tracing::warn!(%error, "error reading the partition"),
                    None => return WorkerExit::Failed("partition queue ended".into()),
                }
                if batch.len() >= self.deps.batch_max {
                    break;
                }
            }
            if batch.is_empty() {
                continue;
            }
            let projected =
                self.deps
                    .metrics
                    .observe(ACTOR, "RecordBatch", self.project(batch, &stop));
            if let Err(exit) = projected.await {
                return exit;
            }
        }
    }

    /// Dead-letters the poison records, then commits the rest with the
    /// offset that follows the batch, then acknowledges that offset.
    async fn project(
        &self,
        batch: Vec<Incoming>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), WorkerExit> {
        let next_offset = batch.last().map_or(0, |i| i.offset() + 1);
        let mut records = Vec::with_capacity(batch.len());
        let mut correlation = Vec::with_capacity(batch.len());
        for incoming in batch {
            match incoming {
                Incoming::Record {
                    record,
                    correlation_id,
                } => {
                    correlation.push((record.command.command_id, record.offset, correlation_id));
                    records.push(record);
                }
                Incoming::Poison {
                    offset,
                    dead_letter,
                    correlation_id,
                } => {
                    self.dead_letter(offset, dead_letter, correlation_id, stop)
                        .await?;
                }
            }
        }
        let write = || WriteBatch {
            partition: self.key.clone(),
            records: records.clone(),
            next_offset,
        };
        let committed = self
            .retry("write batch", stop, || {
                let writer = self.deps.writer.clone();
                let msg = write();
                async move {
                    writer
                        .send(msg)
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())
                }
            })
            .await?;
        let next = committed.applied.next_offset;
        self.committed.store(next, Ordering::Release);
        // `store_offsets` stores the offset as given: the next one to read.
        // (`store_offset` would store `next + 1` and skip a record.)
        let mut acknowledged = TopicPartitionList::new();
        let stored = acknowledged
            .add_partition_offset(&self.key.topic, self.key.partition, Offset::Offset(next))
            .and_then(|()| self.deps.consumer.store_offsets(&acknowledged));
        if let Err(error) = stored {
            // The partition was revoked meanwhile; the view holds the offset.
            tracing::debug!(%error, "offset not stored in Kafka");
        }
        self.deps.status.set_committed(&self.key, next);
        for (command_id, offset, correlation_id) in correlation {
            tracing::info!(%command_id, offset, correlation_id = correlation_id.as_deref().unwrap_or(""), "record projected");
        }
        tracing::debug!(
            records = records.len(),
            inserted = committed.applied.inserted,
            skipped = committed.applied.skipped,
            next_offset = next,
            "batch committed"
        );
        Ok(())
    }

    async fn dead_letter(
        &self,
        offset: i64,
        dead_letter: PublishDeadLetter,
        correlation_id: Option<String>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), WorkerExit> {
        let reason = dead_letter.reason;
        let error = dead_letter
            .headers
            .iter()
            .find(|(k, _)| k == "dlq.error")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let Some(producer) = &self.deps.producer else {
            tracing::warn!(
                offset,
                reason,
                error,
                "undecodable record skipped; the live consumer dead-letters it"
            );
            return Ok(());
        };
        self.retry("publish dead letter", stop, || {
            let producer = producer.clone();
            let msg = PublishDeadLetter {
                key: dead_letter.key.clone(),
                value: dead_letter.value.clone(),
                headers: dead_letter.headers.clone(),
                reason,
            };
            async move {
                producer
                    .send(msg)
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
        })
        .await?;
        self.deps
            .metrics
            .dead_letters
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(
            offset,
            reason,
            error,
            correlation_id = correlation_id.as_deref().unwrap_or(""),
            "record sent to the dead-letter topic"
        );
        Ok(())
    }

    /// Retries `attempt` with capped exponential backoff until it succeeds.
    /// The partition shows as blocked while it fails. When asked to stop
    /// while failing, gives the partition up uncommitted.
    async fn retry<T, F, Fut>(
        &self,
        what: &'static str,
        stop: &watch::Receiver<bool>,
        mut attempt: F,
    ) -> Result<T, WorkerExit>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut delay = BACKOFF_START;
        let mut failures = 0u32;
        let blocked_since = Instant::now();
        loop {
            match attempt().await {
                Ok(value) => {
                    if failures > 0 {
                        self.deps.status.set_blocked(&self.key, false);
                        tracing::info!(what, failures, blocked_for = ?blocked_since.elapsed(), "partition unblocked");
                    }
                    return Ok(value);
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        self.deps.status.set_blocked(&self.key, true);
                    }
                    tracing::warn!(what, %error, failures, retry_in = ?delay, "partition blocked; retrying");
                    if *stop.borrow() {
                        return Err(WorkerExit::Abandoned);
                    }
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    delay = (delay * 2).min(BACKOFF_CAP);
                }
            }
        }
    }
}
