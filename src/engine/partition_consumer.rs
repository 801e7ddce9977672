//! The partition consumer actor: one per assigned partition. It reads its
//! partition's own queue, has its sink decode records into batches, has the
//! sink make each batch durable and acknowledges the offsets only once the
//! sink answers that it is (for a database sink: that the transaction which
//! also stored the offset committed).
//!
//! Batching adapts to load: a batch is the first record plus whatever is
//! already waiting (up to `BATCH_MAX_RECORDS`), so a quiet log is projected
//! record by record and a busy one in large transactions. One batch is in
//! flight at a time; while it is, nothing more is read, and librdkafka stops
//! fetching once its queue is full, so a slow writer pauses consumption.
//!
//! No record can stop a partition: one that cannot be projected, whatever
//! it holds, is dead-lettered and acknowledged. Only the database being
//! unavailable (the sink failing) blocks it: the batch is retried with capped backoff, the
//! `blocked` gauge shows it, and nothing after it is read.
//!
//! A worker never dies unseen: a panic is caught, logged with its partition,
//! counted as a restart, shown on `/ready`, and the supervisor restarts the
//! actor, which rewinds to the last offset durable in the view and starts a
//! new worker after a backoff that grows with consecutive failures.
//!
//! Before reading, and whenever the log goes back below what the view
//! holds, the worker checks the view's stored offset against the log's high
//! watermark: a stored offset above it (a recreated topic, a broker that
//! lost data) would silently skip every new record, so the partition stops
//! there, says so on `/ready` and in a metric, and waits for
//! `chronolog offsets reset` to move the stored offset.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::{FutureExt, StreamExt};
use rdkafka::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::Instrument;

use crate::actors::producer::{KafkaProducer, PublishDeadLetter};
use crate::db::queries::PartitionKey;
use crate::engine::group::{GroupConsumer, PartitionQueue};
use crate::engine::sink::{Decoded, Sink, SinkError};
use crate::engine::status::{self, GroupStatus};
use crate::kafka::dead_letter::{DeadLetter, SourcePosition};
use crate::kafka::record::{self, DecodeError};
use crate::metrics::Metrics;

const ACTOR: &str = "partition_consumer";
/// Control messages only (drain); records come from the partition queue.
pub const MAILBOX_CAPACITY: usize = 16;
/// First retry delay after a failed write; doubles up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between two retries of a failed write.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How often a partition stopped on a stored offset above the log looks again.
const LOG_RECHECK: Duration = Duration::from_secs(2);
/// Longest wait for the log's watermarks.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a partition consumer needs from the rest of the process.
pub struct PartitionDeps<S: Sink> {
    /// The group's consumer, to acknowledge and seek.
    pub consumer: Arc<GroupConsumer<S>>,
    /// Decodes records and makes batches durable.
    pub sink: Arc<S>,
    /// Publishes dead letters; `None` skips them (a rebuild).
    pub producer: Option<Addr<KafkaProducer>>,
    /// Shared readiness state of the group.
    pub status: Arc<GroupStatus>,
    /// Most records per batch.
    pub batch_max: usize,
    /// The application's metrics.
    pub metrics: Arc<Metrics>,
    /// Fault injection (tests): panic once at this partition and offset.
    pub panic_at: Option<(i32, i64)>,
}

// Not derived: a derive would ask for `S: Clone`, and only the `Arc` is cloned.
impl<S: Sink> Clone for PartitionDeps<S> {
    fn clone(&self) -> Self {
        Self {
            consumer: self.consumer.clone(),
            sink: self.sink.clone(),
            producer: self.producer.clone(),
            status: self.status.clone(),
            batch_max: self.batch_max,
            metrics: self.metrics.clone(),
            panic_at: self.panic_at,
        }
    }
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
pub struct PartitionConsumer<S: Sink> {
    key: PartitionKey,
    queue: Arc<PartitionQueue<S>>,
    deps: PartitionDeps<S>,
    /// Next offset durable in the view (the stored offset it started at,
    /// then each commit's); -1 while unknown.
    committed: Arc<AtomicI64>,
    /// Worker failures since the last commit: the restart backoff grows with it.
    failures: Arc<AtomicU32>,
    /// The injected fault fires once per partition consumer.
    fault_fired: Arc<AtomicBool>,
    worker: Option<Worker>,
}

impl<S: Sink> PartitionConsumer<S> {
    /// A consumer of `key`'s partition reading `queue`, which starts at the
    /// sink's stored offset `start` (if the sink has one).
    pub fn new(
        key: PartitionKey,
        queue: PartitionQueue<S>,
        deps: PartitionDeps<S>,
        start: Option<i64>,
    ) -> Self {
        Self {
            key,
            queue: Arc::new(queue),
            deps,
            committed: Arc::new(AtomicI64::new(start.unwrap_or(-1))),
            failures: Arc::new(AtomicU32::new(0)),
            fault_fired: Arc::new(AtomicBool::new(false)),
            worker: None,
        }
    }

    fn committed(&self) -> Option<i64> {
        Some(self.committed.load(Ordering::Acquire)).filter(|&o| o >= 0)
    }
}

impl<S: Sink> Actor for PartitionConsumer<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let (stop, stop_rx) = watch::channel(false);
        let run = PartitionRun {
            key: self.key.clone(),
            deps: self.deps.clone(),
            committed: self.committed.clone(),
            failures: self.failures.clone(),
            fault_fired: self.fault_fired.clone(),
        };
        let queue = self.queue.clone();
        // Weak: a strong address would keep a drained actor alive and make
        // its supervisor restart it.
        let addr = ctx.address().downgrade();
        let (key, status) = (self.key.clone(), self.deps.status.clone());
        let span = tracing::info_span!("partition", topic = %self.key.topic, partition = self.key.partition);
        let handle = actix_rt::spawn(
            async move {
                let consumed = AssertUnwindSafe(run.consume(&queue, stop_rx)).catch_unwind();
                let exit = consumed.await.unwrap_or_else(|panic| {
                    let reason = crate::panic_message(panic.as_ref());
                    status.set_blocked(&key, true);
                    status.set_problem(
                        &key,
                        Some(format!("worker panicked ({reason}); restarting")),
                    );
                    status.panicked(&key, &reason);
                    tracing::error!(panic = reason, "partition worker panicked; restarting it");
                    WorkerExit::Failed(reason)
                });
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
        if self.failures.load(Ordering::Acquire) == 0 {
            self.deps.status.set_blocked(&self.key, false);
            self.deps.status.set_problem(&self.key, None);
        }
        tracing::info!(partition = self.key.partition, "partition consumer started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        tracing::info!(partition = self.key.partition, "partition consumer stopped");
    }
}

impl<S: Sink> Supervised for PartitionConsumer<S> {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.deps.metrics.actor_restarted(ACTOR);
        // Records read but not committed were lost with the old worker: go
        // back to the last offset durable in the view (or, when the view
        // holds none for this partition, to the log's beginning; the view
        // applies each record once however often it is read).
        // A sink at Kafka's committed offsets goes back to those instead
        // (a pipeline that starts at the end of the log must not replay it).
        let unknown = if self.deps.sink.keeps_positions() {
            Offset::Beginning
        } else {
            Offset::Stored
        };
        let offset = self.committed().map_or(unknown, Offset::Offset);
        if let Err(error) =
            self.deps
                .consumer
                .seek(&self.key.topic, self.key.partition, offset, Duration::ZERO)
        {
            tracing::error!(%error, ?offset, "cannot rewind the partition after a restart");
        }
    }
}

/// The worker loop ended with a failure.
#[derive(Message)]
#[rtype(result = "()")]
struct WorkerFailed;

impl<S: Sink> Handler<WorkerFailed> for PartitionConsumer<S> {
    type Result = ();

    fn handle(&mut self, _msg: WorkerFailed, ctx: &mut Self::Context) {
        self.worker = None;
        self.failures.fetch_add(1, Ordering::AcqRel);
        ctx.stop();
    }
}

impl<S: Sink> Handler<Drain> for PartitionConsumer<S> {
    type Result = ResponseActFuture<Self, PartitionDrained>;

    fn handle(&mut self, _msg: Drain, _ctx: &mut Self::Context) -> Self::Result {
        let worker = self.worker.take();
        let committed = self.committed.clone();
        let partition = self.key.partition;
        let (key, status) = (self.key.clone(), self.deps.status.clone());
        let gauge = self
            .deps
            .metrics
            .stored_offset_ahead
            .with_label_values(&status::labels(&self.key));
        let offsets = self.deps.metrics.committed_offset.clone();
        let drain = async move {
            if let Some(worker) = worker {
                // Fails only when the worker already ended, which is fine.
                let _ = worker.stop.send(true);
                match worker.handle.await {
                    Ok(exit) => tracing::info!(partition, ?exit, "partition drained"),
                    Err(error) => tracing::error!(partition, %error, "partition worker died"),
                }
            }
            // Given up: whatever this process said about it no longer holds.
            status.set_blocked(&key, false);
            status.set_problem(&key, None);
            gauge.set(0);
            // Its owner shows its committed offset now; a series left here
            // would be a stale line, for good once its group is gone.
            let _ = offsets.remove_label_values(&status::labels(&key));
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

/// A record read from the partition, sorted into what the sink takes and
/// what goes to the dead-letter topic.
enum Incoming<T> {
    Record(Decoded<T>),
    Poison(Poison),
}

/// A record the sink cannot take, on its way to the dead-letter topic.
struct Poison {
    offset: i64,
    dead_letter: DeadLetter,
    correlation_id: Option<String>,
}

/// One batch read from the partition: what the sink takes, in offset
/// order, and what is dead-lettered. The records' buffer is reused from one
/// batch to the next: a busy partition's batches hold thousands of records,
/// and growing and copying them anew for each batch was a measurable part
/// of a consumer's work. It holds at most twice `batch_max` records (its
/// growth doubles), and shrinks again when the partition goes quiet.
struct Batch<T> {
    records: Vec<Decoded<T>>,
    poison: Vec<Poison>,
    /// Offset of the batch's first record.
    first: Option<i64>,
    /// Offset after the batch's last record.
    next: i64,
}

impl<T> Batch<T> {
    fn new() -> Self {
        Self {
            records: Vec::new(),
            poison: Vec::new(),
            first: None,
            next: 0,
        }
    }

    /// An empty batch that keeps `records`' buffer, or the part of it that
    /// the last batch used when that was under a quarter.
    fn reusing(mut records: Vec<Decoded<T>>) -> Self {
        if records.len() < records.capacity() / 4 {
            records.shrink_to(records.len());
        }
        records.clear();
        Self {
            records,
            ..Self::new()
        }
    }

    fn push(&mut self, incoming: Incoming<T>) {
        let offset = match incoming {
            Incoming::Record(record) => {
                let offset = record.offset;
                self.records.push(record);
                offset
            }
            Incoming::Poison(poison) => {
                let offset = poison.offset;
                self.poison.push(poison);
                offset
            }
        };
        self.first.get_or_insert(offset);
        self.next = offset + 1;
    }

    fn len(&self) -> usize {
        self.records.len() + self.poison.len()
    }
}

/// Sorts one record; never fails: what the sink cannot take becomes a dead
/// letter. Headers are read first (as bytes), then the sink decodes.
fn classify<S: Sink>(sink: &S, message: &BorrowedMessage<'_>) -> Incoming<S::Item> {
    let offset = message.offset();
    let headers = record::read_headers(message.headers());
    let correlation_id = headers.correlation_id().ok().flatten().map(str::to_owned);
    let decoded = match (&headers.error, headers.correlation_id()) {
        (Some(error), _) => Err(error.clone()),
        (None, Err(error)) => Err(error),
        (None, Ok(_)) => sink.decode(message, &headers),
    };
    match decoded {
        Ok(item) => Incoming::Record(Decoded {
            offset,
            correlation_id,
            item,
        }),
        Err(error) => Incoming::Poison(Poison {
            offset,
            dead_letter: DeadLetter::new(
                &SourcePosition {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset,
                },
                message.key(),
                message.payload(),
                headers.readable,
                &error,
            ),
            correlation_id,
        }),
    }
}

/// [`classify`], with a panic in it (a bug) turned into a dead letter
/// (`internal_error`): a record that makes the code panic every time it is
/// read must not stop its partition for ever.
fn classify_guarded<S: Sink>(sink: &S, message: &BorrowedMessage<'_>) -> Incoming<S::Item> {
    crate::catch_expected_panic(|| classify(sink, message)).unwrap_or_else(|panic| {
        let error = DecodeError::Internal(crate::panic_message(panic.as_ref()));
        tracing::error!(offset = message.offset(), %error, "reading a record panicked; dead-lettering it");
        Incoming::Poison(Poison {
            offset: message.offset(),
            dead_letter: DeadLetter::new(
                &SourcePosition {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                },
                message.key(),
                message.payload(),
                Vec::new(),
                &error,
            ),
            correlation_id: None,
        })
    })
}

/// The worker loop's state, separate from the actor so that it runs as a
/// plain task.
struct PartitionRun<S: Sink> {
    key: PartitionKey,
    deps: PartitionDeps<S>,
    committed: Arc<AtomicI64>,
    failures: Arc<AtomicU32>,
    fault_fired: Arc<AtomicBool>,
}

impl<S: Sink> PartitionRun<S> {
    async fn consume(
        self,
        queue: &PartitionQueue<S>,
        mut stop: watch::Receiver<bool>,
    ) -> WorkerExit {
        let failures = self.failures.load(Ordering::Acquire);
        if failures > 0 {
            let delay = backoff(failures);
            tracing::info!(failures, delay = ?delay, "restarting the partition worker after a backoff");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|stopping| *stopping) => return WorkerExit::Drained,
            }
        }
        if let Err(exit) = self.check_log(&stop, None).await {
            return exit;
        }
        if failures > 0 {
            // Running again: the partition is no longer failing (another
            // panic on the same record would show it again).
            self.deps.status.set_problem(&self.key, None);
            self.deps.status.set_blocked(&self.key, false);
        }
        let mut stream = queue.stream();
        let mut batch = Batch::new();
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.wait_for(|stopping| *stopping) => return WorkerExit::Drained,
                next = stream.next() => next,
            };
            for next in
                std::iter::once(first).chain(std::iter::from_fn(|| stream.next().now_or_never()))
            {
                match next {
                    Some(Ok(message)) => {
                        self.inject_fault(message.offset());
                        batch.push(classify_guarded(self.deps.sink.as_ref(), &message));
                    }
                    Some(Err(error)) => tracing::warn!(%error, "error reading the partition"),
                    None => return WorkerExit::Failed("partition queue ended".into()),
                }
                if batch.len() >= self.deps.batch_max {
                    break;
                }
            }
            let Some(read) = batch.first else {
                continue;
            };
            // The log went back below what this worker committed: librdkafka
            // reset a position that fell out of the log. Applying the batch
            // would skip it (it is below the stored offset), silently.
            let committed = self.committed.load(Ordering::Acquire);
            if read < committed && self.deps.sink.keeps_positions() {
                batch = Batch::reusing(batch.records);
                if let Err(exit) = self.check_log(&stop, Some((committed, read))).await {
                    return exit;
                }
                continue;
            }
            let projected =
                self.deps
                    .metrics
                    .observe(ACTOR, "RecordBatch", self.project(batch, &stop));
            match projected.await {
                Ok(records) => batch = Batch::reusing(records),
                Err(exit) => return exit,
            }
        }
    }

    /// Dead-letters the poison records, then has the sink make the rest
    /// durable (with the offset that follows the batch, for a sink that
    /// stores it), then acknowledges that offset. Gives the batch's record
    /// buffer back for the next batch when the sink kept no share of it.
    async fn project(
        &self,
        batch: Batch<S::Item>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Vec<Decoded<S::Item>>, WorkerExit> {
        let next = batch.next;
        for poison in batch.poison {
            self.dead_letter(
                poison.offset,
                poison.dead_letter,
                poison.correlation_id,
                stop,
            )
            .await?;
        }
        let records = Arc::new(batch.records);
        let shared = &records;
        let written = self
            .retry("write batch", stop, || async move {
                // A busy pool (every connection in use, more partitions than
                // connections) is a queue, not a failure: wait for a
                // connection again without showing the partition as
                // blocked, unless the partition is being given up.
                loop {
                    let write = self.deps.sink.write(self.key.clone(), shared.clone(), next);
                    match write.await {
                        Err(SinkError::Busy) if !*stop.borrow() => {
                            tracing::debug!("every connection of the sink is busy; waiting again");
                        }
                        result => return result.map_err(|e| e.to_string()),
                    }
                }
            })
            .await?;
        self.committed.store(next, Ordering::Release);
        if self.failures.swap(0, Ordering::AcqRel) > 0 {
            self.deps.status.set_problem(&self.key, None);
            self.deps.status.set_blocked(&self.key, false);
            tracing::info!(next_offset = next, "partition worker recovered");
        }
        // `store_offsets` stores the offset as given: the next one to read.
        // (`store_offset` would store `next + 1` and skip a record.)
        let mut acknowledged = TopicPartitionList::new();
        let stored = acknowledged
            .add_partition_offset(&self.key.topic, self.key.partition, Offset::Offset(next))
            .and_then(|()| self.deps.consumer.store_offsets(&acknowledged));
        if let Err(error) = stored {
            // The partition was revoked meanwhile; the sink holds the offset.
            tracing::debug!(%error, "offset not stored in Kafka");
        }
        self.deps.status.set_committed(&self.key, next);
        // What the write decided against is dead-lettered after the commit
        // that decided it (the sink is right whatever happens to them).
        for rejected in &written.rejected {
            self.dead_letter(
                rejected.offset,
                rejected.dead_letter.clone(),
                rejected.correlation_id.clone(),
                stop,
            )
            .await?;
        }
        for record in records.iter() {
            if written
                .rejected
                .iter()
                .any(|r| r.offset == record.offset && !r.record_applied)
            {
                continue;
            }
            self.deps.sink.projected(record);
        }
        tracing::debug!(
            records = records.len(),
            rejected = written.rejected.len(),
            next_offset = next,
            "batch committed"
        );
        // Every write has finished and dropped its share; a sink that kept
        // one would cost only a new buffer for the next batch.
        Ok(Arc::try_unwrap(records).unwrap_or_default())
    }

    /// Publishes a dead letter, retrying while the broker is unreachable.
    /// A dead letter the broker refuses for what it is cannot block the
    /// partition: it is counted and logged with the record's place in the
    /// log (where the record stays), and the record is acknowledged.
    async fn dead_letter(
        &self,
        offset: i64,
        dead_letter: DeadLetter,
        correlation_id: Option<String>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), WorkerExit> {
        let reason = dead_letter.reason;
        let error = dead_letter.header("dlq.error").unwrap_or_default();
        let correlation_id = correlation_id.as_deref().unwrap_or("");
        let Some(producer) = &self.deps.producer else {
            tracing::warn!(
                offset,
                reason,
                error,
                "record skipped; the live consumer dead-letters it"
            );
            return Ok(());
        };
        let refused = self
            .retry("publish dead letter", stop, || {
                let (producer, msg) = (producer.clone(), PublishDeadLetter(dead_letter.clone()));
                async move {
                    match producer.send(msg).await {
                        Ok(Ok(_)) => Ok(None),
                        Ok(Err(e)) if e.is_permanent() => Ok(Some(e.to_string())),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await?;
        if let Some(refusal) = refused {
            self.deps
                .metrics
                .dead_letter_failures
                .with_label_values(&["refused"])
                .inc();
            tracing::error!(
                offset,
                reason,
                error,
                refusal,
                correlation_id,
                "the broker refused the dead letter; the record stays in the log at its offset and is skipped"
            );
            return Ok(());
        }
        self.deps
            .metrics
            .dead_letters
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(
            offset,
            reason,
            error,
            correlation_id,
            "record sent to the dead-letter topic"
        );
        Ok(())
    }

    /// Fault injection for the recovery tests.
    fn inject_fault(&self, offset: i64) {
        if self.deps.panic_at == Some((self.key.partition, offset))
            && !self.fault_fired.swap(true, Ordering::AcqRel)
        {
            panic!("injected fault at offset {offset} (CHRONOLOG_FAULT_PANIC_AT)");
        }
    }

    /// Guards against a log that lost what the view holds. Stops the
    /// partition when the view's stored offset is above the log's high
    /// watermark, or when `rewound` says the log went back below what this
    /// worker committed (librdkafka resets a fetch position that fell out of
    /// the log: a topic deleted and created again, a broker that lost data).
    /// Reading on would skip every record below the stored offset, silently.
    ///
    /// A stopped partition shows on `/ready` with what to run and in
    /// `chronolog_stored_offset_ahead_records`, and resumes only when an
    /// operator moves its stored offset (`chronolog offsets reset`): not when
    /// the log grows past it, which would skip the records in between. It
    /// then reads from the new stored offset; the caller drops any records
    /// it holds.
    ///
    /// Both positions must be known first: nothing can be committed without
    /// the view, so waiting for them costs nothing.
    async fn check_log(
        &self,
        stop: &watch::Receiver<bool>,
        rewound: Option<(i64, i64)>,
    ) -> Result<(), WorkerExit> {
        // A sink at Kafka's committed offsets has nothing to guard: a
        // position beyond the log is reset by librdkafka, and a sink written
        // at least once takes records again.
        if !self.deps.sink.keeps_positions() {
            return Ok(());
        }
        let gauge = self
            .deps
            .metrics
            .stored_offset_ahead
            .with_label_values(&status::labels(&self.key));
        let (stored, high) = self.positions(stop).await?;
        let cause = match (rewound, stored) {
            (Some((committed, read)), _) => format!(
                "the log went back from offset {committed} to {read}: the topic was deleted and created again, or the broker lost records"
            ),
            (None, Some(stored)) if stored > high => format!(
                "stored offset {stored} is above the log's high watermark {high}: the topic was deleted and created again, or the broker lost records"
            ),
            (None, _) => {
                gauge.set(0);
                // Read from the view's offset even when the assignment could
                // not look it up (it fell back to Kafka's committed offsets).
                if let Some(stored) = stored
                    && self.committed.load(Ordering::Acquire) < 0
                {
                    self.move_to(Some(stored));
                }
                return Ok(());
            }
        };
        let advice = format!(
            "run `chronolog offsets reset --topic {} --group {} --partition {} --to earliest` to project the log from its start",
            self.key.topic, self.key.group_id, self.key.partition
        );
        tracing::error!(?stored, high, "partition stopped: {cause}; {advice}");
        self.deps.status.set_blocked(&self.key, true);
        loop {
            let (now, high) = self.positions(stop).await?;
            if now != stored {
                gauge.set(0);
                self.deps.status.set_problem(&self.key, None);
                self.deps.status.set_blocked(&self.key, false);
                self.move_to(now);
                tracing::info!(from = ?stored, to = ?now, "stored offset moved by an operator; the partition resumes");
                return Ok(());
            }
            gauge.set(now.map_or(0, |s| (s - high).max(0)));
            self.deps.status.set_problem(
                &self.key,
                Some(format!("{cause}; the log now ends at {high}; {advice}")),
            );
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(LOG_RECHECK) => {}
                _ = stop.wait_for(|s| *s) => return Err(WorkerExit::Drained),
            }
        }
    }

    /// Moves the fetch position to the view's stored offset (the log's
    /// beginning when the view has none) and takes it as committed.
    fn move_to(&self, stored: Option<i64>) {
        let offset = stored.map_or(Offset::Beginning, Offset::Offset);
        self.committed
            .store(stored.unwrap_or(-1), Ordering::Release);
        if let Err(error) =
            self.deps
                .consumer
                .seek(&self.key.topic, self.key.partition, offset, Duration::ZERO)
        {
            tracing::error!(%error, ?offset, "cannot move the partition to its stored offset");
        }
    }

    /// The view's stored offset (`None`: the view has none) and the log's
    /// high watermark, read again every [`LOG_RECHECK`] until both answer.
    async fn positions(
        &self,
        stop: &watch::Receiver<bool>,
    ) -> Result<(Option<i64>, i64), WorkerExit> {
        loop {
            if let (Some(stored), Some(high)) =
                (self.stored_offset().await, self.high_watermark().await)
            {
                return Ok((stored, high));
            }
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(LOG_RECHECK) => {}
                _ = stop.wait_for(|s| *s) => return Err(WorkerExit::Drained),
            }
        }
    }

    /// `Some(None)` when the sink has no offset for this partition, `None`
    /// when the sink cannot be read.
    async fn stored_offset(&self) -> Option<Option<i64>> {
        let request = self
            .deps
            .sink
            .positions(self.key.group_id.clone(), self.key.topic.clone());
        match request.await {
            Ok(stored) => Some(stored.get(&self.key.partition).copied()),
            Err(error) => {
                tracing::warn!(%error, "cannot read the stored offset to check it against the log");
                None
            }
        }
    }

    async fn high_watermark(&self) -> Option<i64> {
        let (consumer, topic, partition) = (
            self.deps.consumer.clone(),
            self.key.topic.clone(),
            self.key.partition,
        );
        let fetched = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, partition, WATERMARK_TIMEOUT)
        })
        .await;
        match fetched {
            Ok(Ok((_, high))) => Some(high),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the log's high watermark to check the stored offset");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the log's high watermark to check the stored offset");
                None
            }
        }
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
                    self.deps.status.set_write_error(&self.key, &error);
                    let delay = backoff(failures);
                    tracing::warn!(what, %error, failures, retry_in = ?delay, "partition blocked; retrying");
                    if *stop.borrow() {
                        return Err(WorkerExit::Abandoned);
                    }
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
            }
        }
    }
}

/// The wait before retry number `failures` (1, 2, ...): doubling from
/// [`BACKOFF_START`] up to [`BACKOFF_CAP`].
fn backoff(failures: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let waits: Vec<u128> = (1..=8).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    fn record(offset: i64) -> Incoming<i64> {
        Incoming::Record(Decoded {
            offset,
            correlation_id: None,
            item: offset * 10,
        })
    }

    fn poison(offset: i64) -> Incoming<i64> {
        let position = SourcePosition {
            topic: "t".into(),
            partition: 0,
            offset,
        };
        let error = DecodeError::EmptyValue;
        Incoming::Poison(Poison {
            offset,
            dead_letter: DeadLetter::new(&position, None, None, Vec::new(), &error),
            correlation_id: None,
        })
    }

    #[test]
    fn a_batch_sorts_records_from_poison_and_spans_every_offset_read() {
        let mut batch = Batch::new();
        assert_eq!((batch.first, batch.len()), (None, 0));
        for incoming in [
            poison(7),
            record(8),
            poison(9),
            record(10),
            record(11),
            poison(12),
        ] {
            batch.push(incoming);
        }
        let items: Vec<i64> = batch.records.iter().map(|r| r.item).collect();
        let poisoned: Vec<i64> = batch.poison.iter().map(|p| p.offset).collect();
        assert_eq!(items, [80, 100, 110]);
        assert_eq!(poisoned, [7, 9, 12]);
        // Acknowledged after the batch: the offset after the last record
        // read, poison or not.
        assert_eq!((batch.first, batch.next, batch.len()), (Some(7), 13, 6));
    }

    #[test]
    fn a_reused_buffer_starts_empty_and_gives_its_room_back_only_when_the_partition_goes_quiet() {
        let mut batch = Batch::new();
        for offset in 0..100 {
            batch.push(record(offset));
        }
        let capacity = batch.records.capacity();
        let mut next = Batch::reusing(batch.records);
        assert_eq!((next.first, next.len()), (None, 0));
        assert_eq!(next.records.capacity(), capacity);
        next.push(record(100));
        assert_eq!((next.first, next.next), (Some(100), 101));
        // A partition gone quiet: a batch of one gives back the room.
        let quiet = Batch::reusing(next.records);
        assert!(quiet.records.capacity() < 4, "{}", quiet.records.capacity());
    }
}
