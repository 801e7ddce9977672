//! The consumer group: membership, rebalances and the partition consumers.
//!
//! The group's consumer is polled on a thread of its own, where librdkafka
//! runs the rebalance callback. That callback may block, and it does:
//!
//! * on assignment it reads the sink's stored offsets, splits each
//!   partition's queue *before* assigning it (a split queue survives the
//!   assignment's fetch start, so no record of the partition ever reaches the
//!   group queue), assigns at the stored offsets and starts one partition
//!   consumer actor per partition;
//! * on revocation it asks every partition consumer to drain — finish and
//!   acknowledge the batch in flight — and waits for them (bounded by
//!   `DRAIN_TIMEOUT`) before the partitions are given up.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::actors::producer::KafkaProducer;
use crate::config::Settings;
use crate::db::queries::PartitionKey;
use crate::engine::partition_consumer::{Drain, PartitionConsumer, PartitionDeps};
use crate::engine::sink::Sink;
use crate::engine::status::GroupStatus;
use crate::kafka::consumer::{GroupContext, RebalanceHandler};
use crate::kafka::consumer_config;
use crate::metrics::Metrics;

/// The group's consumer.
pub type GroupConsumer<S> = StreamConsumer<GroupContext<Projector<S>>>;
/// One partition's own queue, split from the group queue.
pub type PartitionQueue<S> = StreamPartitionQueue<GroupContext<Projector<S>>>;

/// How long an assignment waits for the sink's stored offsets before it
/// falls back to Kafka's committed offsets (safe: a sink that stores
/// offsets skips what it already holds).
const OFFSET_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Membership of the group: the rebalance callback's handler, which owns
/// the partition consumers.
pub struct Projector<S: Sink> {
    consumer: OnceLock<Weak<GroupConsumer<S>>>,
    group_id: String,
    topic: String,
    batch_max: usize,
    drain_timeout: Duration,
    panic_at: Option<(i32, i64)>,
    sink: Arc<S>,
    producer: Option<Addr<KafkaProducer>>,
    arbiter: ArbiterHandle,
    status: Arc<GroupStatus>,
    partitions: Mutex<HashMap<i32, Addr<PartitionConsumer<S>>>>,
    /// Partitions with no position yet start at the log's end, and that
    /// end is committed at once ([`Membership::SubscribeAtEnd`]).
    at_end: bool,
}

impl<S: Sink> RebalanceHandler for Projector<S> {
    fn assigned(
        &self,
        tpl: &mut TopicPartitionList,
        assign: &mut dyn FnMut(&TopicPartitionList) -> KafkaResult<()>,
    ) {
        self.assign(tpl, assign);
    }

    fn revoked(&self, unassign: &mut dyn FnMut() -> KafkaResult<()>) {
        self.revoke(unassign);
    }
}

impl<S: Sink> Projector<S> {
    /// Splits the partitions' queues, starts them at the sink's stored
    /// offsets through `assign`, and starts their partition consumers.
    fn assign(
        &self,
        tpl: &mut TopicPartitionList,
        assign: &mut dyn FnMut(&TopicPartitionList) -> KafkaResult<()>,
    ) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            tracing::error!("assignment before the consumer is set up");
            return;
        };
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let mut stored = self.stored_offsets();
        if self.at_end {
            self.anchor_at_end(&consumer, &partitions, &mut stored);
        }
        for &partition in &partitions {
            if let Some(&next) = stored.get(&partition)
                && let Err(error) =
                    tpl.set_partition_offset(&self.topic, partition, Offset::Offset(next))
            {
                tracing::warn!(partition, %error, "cannot start the partition at its stored offset");
            }
        }
        // Split before assigning: see the module documentation.
        let mut queues = Vec::with_capacity(partitions.len());
        for &partition in &partitions {
            match consumer.split_partition_queue(&self.topic, partition) {
                Some(queue) => queues.push((partition, queue)),
                None => tracing::error!(partition, "cannot split the partition queue"),
            }
        }
        if let Err(error) = assign(tpl) {
            tracing::error!(%error, "cannot assign partitions");
            return;
        }
        let deps = PartitionDeps {
            consumer: consumer.clone(),
            sink: self.sink.clone(),
            producer: self.producer.clone(),
            status: self.status.clone(),
            batch_max: self.batch_max,
            metrics: self.status.metrics.clone(),
            panic_at: self.panic_at,
        };
        let mut started = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for (partition, queue) in queues {
            let key = PartitionKey {
                group_id: self.group_id.clone(),
                topic: self.topic.clone(),
                partition,
            };
            let deps = deps.clone();
            let start = stored.get(&partition).copied();
            let addr = Supervisor::start_in_arbiter(&self.arbiter, move |_| {
                PartitionConsumer::new(key, queue, deps, start)
            });
            started.insert(partition, addr);
        }
        self.status.set_assigned(started.keys().copied());
        tracing::info!(?partitions, stored_offsets = ?stored, "partitions assigned");
    }

    /// For a group that starts at the log's end: each partition with no
    /// position (none stored by the sink, none committed in Kafka) starts
    /// at its high watermark, and that offset is committed now, so that a
    /// restart before the first batch resumes there instead of at a later
    /// end (which would skip what arrived in between).
    fn anchor_at_end(
        &self,
        consumer: &GroupConsumer<S>,
        partitions: &[i32],
        stored: &mut HashMap<i32, i64>,
    ) {
        let unknown: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !stored.contains_key(p))
            .collect();
        if unknown.is_empty() {
            return;
        }
        let mut query = TopicPartitionList::new();
        for &p in &unknown {
            query.add_partition(&self.topic, p);
        }
        let committed = match consumer.committed_offsets(query, OFFSET_LOOKUP_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "cannot read committed offsets to anchor the start at the log's end");
                return;
            }
        };
        let mut anchors = TopicPartitionList::new();
        for p in unknown {
            let known = committed
                .find_partition(&self.topic, p)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(_)));
            if known {
                continue;
            }
            match consumer.fetch_watermarks(&self.topic, p, OFFSET_LOOKUP_TIMEOUT) {
                Ok((_, high)) => {
                    stored.insert(p, high);
                    let _ = anchors.add_partition_offset(&self.topic, p, Offset::Offset(high));
                }
                Err(error) => {
                    tracing::warn!(partition = p, %error, "cannot read the log's end to anchor the start")
                }
            }
        }
        if anchors.count() > 0 {
            match consumer.commit(&anchors, rdkafka::consumer::CommitMode::Sync) {
                Ok(()) => {
                    tracing::info!(anchors = ?stored, "new partitions start at the log's end, committed")
                }
                Err(error) => tracing::warn!(%error, "cannot commit the log's end as the start"),
            }
        }
    }

    /// Drains every partition consumer, then gives the partitions up through `unassign`.
    fn revoke(&self, unassign: &mut dyn FnMut() -> KafkaResult<()>) {
        let drained: Vec<(i32, Addr<PartitionConsumer<S>>)> = {
            let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().collect()
        };
        let partitions: Vec<i32> = drained.iter().map(|(p, _)| *p).collect();
        // The requests are sent here and the addresses dropped, so that the
        // drained actors are not restarted by their supervisors.
        let requests: Vec<_> = drained
            .into_iter()
            .map(|(partition, addr)| {
                let request = addr.send(Drain);
                async move { (partition, request.await) }
            })
            .collect();
        let started = Instant::now();
        match wait_blocking(
            &self.arbiter,
            futures::future::join_all(requests),
            self.drain_timeout,
        ) {
            Some(results) => {
                for (partition, result) in results {
                    match result {
                        Ok(drained) => {
                            tracing::debug!(partition, next_offset = ?drained.next_offset, "partition drained")
                        }
                        Err(error) => {
                            tracing::warn!(partition, %error, "partition consumer was already gone")
                        }
                    }
                }
            }
            None => {
                tracing::warn!(?partitions, timeout = ?self.drain_timeout, "drain timed out; the next owner resumes from the view's offsets")
            }
        }
        self.status.set_assigned([]);
        if let Err(error) = unassign() {
            tracing::error!(%error, "cannot unassign partitions");
        }
        tracing::info!(?partitions, took = ?started.elapsed(), "partitions revoked");
    }

    /// The sink's stored offsets; none (Kafka's committed offsets) for a
    /// sink that keeps none.
    fn stored_offsets(&self) -> HashMap<i32, i64> {
        if !self.sink.keeps_positions() {
            return HashMap::new();
        }
        let request = self
            .sink
            .positions(self.group_id.clone(), self.topic.clone());
        match wait_blocking(&self.arbiter, request, OFFSET_LOOKUP_TIMEOUT) {
            Some(Ok(offsets)) => offsets,
            Some(Err(error)) => {
                tracing::warn!(%error, "cannot read stored offsets; starting from Kafka's committed offsets");
                HashMap::new()
            }
            None => {
                tracing::warn!(
                    "stored offsets lookup timed out; starting from Kafka's committed offsets"
                );
                HashMap::new()
            }
        }
    }
}

/// Runs `fut` on `arbiter` and blocks the calling (non-actix) thread until it
/// is done or `timeout` passes.
fn wait_blocking<F>(arbiter: &ArbiterHandle, fut: F, timeout: Duration) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = arbiter.spawn(async move {
        // The receiver is gone only when the wait timed out.
        let _ = tx.send(fut.await);
    });
    if !spawned {
        return None;
    }
    rx.recv_timeout(timeout).ok()
}

/// Errors starting the consumer group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The consumer could not be created or subscribed.
    #[error("cannot start the Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The polling thread could not be started.
    #[error("cannot start the consumer thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The polling thread ended before it was ready.
    #[error("the consumer thread ended during start-up")]
    Ended,
}

/// How the consumer gets its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Joins the group; Kafka shares the partitions among its members. A
    /// partition with no position yet (none stored, none committed) starts
    /// at the beginning of the log.
    Subscribe,
    /// Joins the group like [`Membership::Subscribe`], but a partition with
    /// no position yet starts at the end of the log (a pipeline that starts
    /// at `latest`).
    SubscribeAtEnd,
    /// Takes these partitions itself, without joining (a rebuild: one
    /// process, no rebalance to wait for). Each starts at the sink's stored
    /// offset or, where the view has none, at the offset given here (a
    /// rebuild gives the low watermarks it measured, so that librdkafka
    /// starts fetching at once instead of looking the group's offsets up
    /// and resetting them). Offsets are still committed under the group id.
    Assign(BTreeMap<i32, i64>),
}

/// A running member of the consumer group.
pub struct ConsumerGroup {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    arbiter: Arbiter,
    status: Arc<GroupStatus>,
}

impl ConsumerGroup {
    /// Joins `group_id` on `topic` and starts projecting it into `sink`.
    /// Records that cannot be decoded go to the dead-letter topic through
    /// `producer`; without one (a rebuild, replaying records the live
    /// consumer already dead-lettered) they are logged and skipped.
    pub fn start<S: Sink>(
        settings: &Settings,
        group_id: &str,
        topic: &str,
        membership: Membership,
        sink: Arc<S>,
        producer: Option<Addr<KafkaProducer>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, GroupError> {
        let arbiter = Arbiter::new();
        let status = Arc::new(GroupStatus::new(metrics));
        let context = GroupContext::new(Projector {
            consumer: OnceLock::new(),
            group_id: group_id.to_owned(),
            topic: topic.to_owned(),
            batch_max: settings.batch_max_records as usize,
            drain_timeout: settings.drain_timeout,
            panic_at: settings.fault_panic_at,
            sink,
            producer,
            arbiter: arbiter.handle(),
            status: status.clone(),
            partitions: Mutex::new(HashMap::new()),
            at_end: membership == Membership::SubscribeAtEnd,
        });
        let mut config = consumer_config(settings, group_id, topic);
        if membership == Membership::SubscribeAtEnd {
            config.set("auto.offset.reset", "latest");
        }
        let topic = topic.to_owned();
        let close_timeout = settings.drain_timeout + Duration::from_secs(5);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kafka-group".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(GroupError::Thread(error)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let consumer = match config.create_with_context::<_, GroupConsumer<S>>(context)
                    {
                        Ok(consumer) => Arc::new(consumer),
                        Err(error) => {
                            let _ = ready_tx.send(Err(error.into()));
                            return;
                        }
                    };
                    let _ = consumer
                        .context()
                        .handler()
                        .consumer
                        .set(Arc::downgrade(&consumer));
                    // Manual assignment asks the sink for stored offsets, and
                    // the sink (the DB writer) may live on the arbiter that is
                    // waiting for this start to finish: assign only after
                    // reporting ready.
                    let joined = match &membership {
                        Membership::Subscribe | Membership::SubscribeAtEnd => {
                            consumer.subscribe(&[&topic]).map(|()| None)
                        }
                        Membership::Assign(start) => starting_at(&topic, start).map(Some),
                    };
                    let manual = match joined {
                        Ok(manual) => manual,
                        Err(error) => {
                            let _ = ready_tx.send(Err(error.into()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    if let Some(mut tpl) = manual {
                        consumer
                            .context()
                            .handler()
                            .assign(&mut tpl, &mut |tpl| consumer.assign(tpl));
                    }
                    poll_until_shutdown(&consumer, shutdown_rx).await;
                    if matches!(membership, Membership::Assign(_)) {
                        consumer
                            .context()
                            .handler()
                            .revoke(&mut || consumer.unassign());
                    }
                    leave_group(consumer, close_timeout).await;
                });
            })?;
        ready_rx.recv().map_err(|_| GroupError::Ended)??;
        Ok(Self {
            shutdown: Some(shutdown),
            thread: Some(thread),
            arbiter,
            status,
        })
    }

    /// What the group's partitions are doing.
    pub fn status(&self) -> Arc<GroupStatus> {
        self.status.clone()
    }

    /// Leaves the group: drains every partition consumer (their batches in
    /// flight commit and are acknowledged), then closes the consumer.
    pub async fn stop(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the consumer thread ended abnormally");
            }
        }
        self.arbiter.stop();
    }
}

impl Drop for ConsumerGroup {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A manual assignment of `topic`'s partitions at the given offsets.
fn starting_at(topic: &str, start: &BTreeMap<i32, i64>) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (&partition, &offset) in start {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

async fn poll_until_shutdown<S: Sink>(
    consumer: &GroupConsumer<S>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            message = consumer.recv() => match message {
                // Cannot happen: every assigned partition is split before it
                // is assigned. Logged loudly should librdkafka ever change.
                Ok(message) => {
                    use rdkafka::Message;
                    tracing::error!(partition = message.partition(), offset = message.offset(), "record arrived on the group queue instead of its partition queue");
                }
                Err(error) => tracing::warn!(%error, "consumer error"),
            },
        }
    }
}

async fn leave_group<S: Sink>(consumer: Arc<GroupConsumer<S>>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    consumer.unsubscribe();
    // Serve the revocation that unsubscribing triggers; it drains every
    // partition consumer.
    while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    // The partition consumers hold the consumer too; wait for them to let go
    // so that the close below is the last reference.
    while Instant::now() < deadline && Arc::strong_count(&consumer) > 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Dropping the consumer closes it, and librdkafka's close polls until the
    // group coordinator answers: forever when the broker is gone. (rdkafka's
    // drop polls in steps of 100 ms and returns early only on an event, so a
    // close takes 5 or 100 ms with the broker there.) Close on a helper thread
    // and wait only until the deadline, so that a shutdown is bounded; a
    // process that is exiting leaves the helper behind.
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let closer = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = closed_tx.send(());
        });
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    match closer.map(|_| closed_rx.recv_timeout(remaining)) {
        Ok(Ok(())) => tracing::info!("left the consumer group"),
        _ => {
            tracing::warn!(waited = ?remaining, "the consumer did not close in time (is the broker reachable?); leaving it behind")
        }
    }
}
