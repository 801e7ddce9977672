//! Consumer lag, measured from outside the group: what the group has
//! committed against what the log holds. It runs in every process that talks
//! to the broker, so lag keeps being reported while no consumer runs — which
//! is when it matters most.
//!
//! Per partition: records = high watermark − committed offset; seconds = age
//! of the record at the committed offset (the oldest not yet projected), 0
//! when caught up.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::Settings;
use crate::kafka::{TracingContext, base_config, topic_partitions};
use std::sync::Arc;

use crate::metrics::Metrics;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Lag of one partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionLag {
    /// Records not yet projected.
    pub records: i64,
    /// Age in seconds of the oldest record not yet projected; 0 when caught up.
    pub seconds: f64,
}

/// Measures lag periodically on a thread of its own (the client calls block).
pub struct LagMonitor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Probe {
    topic: String,
    /// Has the group's id, to read its committed offsets; never joins or commits.
    offsets: BaseConsumer<TracingContext>,
    /// Assigned by hand to read the oldest unprojected records.
    reader: BaseConsumer<TracingContext>,
}

impl LagMonitor {
    /// Starts measuring every `settings.lag_interval`.
    pub fn start(settings: &Settings, metrics: Arc<Metrics>) -> Result<Self, KafkaError> {
        let probe = Probe {
            topic: settings.kafka_topic.clone(),
            offsets: offsets_client(settings, &settings.kafka_group_id)?,
            // librdkafka assigns through a group handle, so the reader needs a
            // group id of its own; it never subscribes or commits.
            reader: base_config(settings)
                .set("group.id", format!("{}-lag-probe", settings.kafka_group_id))
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "false")
                .create_with_context(TracingContext)?,
        };
        let interval = settings.lag_interval;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("lag-monitor".into())
            .spawn(move || {
                loop {
                    match probe.measure() {
                        Ok(lags) => probe.export(&metrics, &lags),
                        Err(error) => tracing::debug!(%error, "cannot measure consumer lag"),
                    }
                    match stopped.recv_timeout(interval) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                }
            })
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops measuring.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LagMonitor {
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// One group's lag, measured from outside the group by a client kept for
/// it (for the pipelines' lag): a client per measurement would open a
/// connection, start librdkafka's threads and fetch metadata every time.
pub struct GroupLag {
    /// Has the group's id, to read its committed offsets; never joins or
    /// commits. Always there but while being dropped.
    offsets: Option<BaseConsumer<TracingContext>>,
}

impl GroupLag {
    /// A client for `group_id`'s committed offsets.
    pub fn new(settings: &Settings, group_id: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            offsets: Some(offsets_client(settings, group_id)?),
        })
    }

    /// Records of `topics` that the group has not committed yet (a
    /// partition it never committed counts from the log's start); blocks.
    pub fn measure(&self, topics: &[String]) -> Result<i64, KafkaError> {
        let Some(offsets) = &self.offsets else {
            return Ok(0);
        };
        let mut total = 0;
        for topic in topics {
            total += positions(offsets, topic)?
                .values()
                .map(|(next, high)| high - next)
                .sum::<i64>();
        }
        Ok(total)
    }
}

impl Drop for GroupLag {
    /// Closing a client with a group id blocks (it empties its queue and
    /// joins its threads): off the async thread it is dropped on.
    fn drop(&mut self) {
        if let Some(offsets) = self.offsets.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(offsets))),
                Err(_) => drop(offsets),
            }
        }
    }
}

/// A client with `group_id`'s id, to read its committed offsets; it never
/// joins the group or commits.
fn offsets_client(
    settings: &Settings,
    group_id: &str,
) -> Result<BaseConsumer<TracingContext>, KafkaError> {
    base_config(settings)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .create_with_context(TracingContext)
}

/// At most this many queued events are handed over per measurement.
const MAX_EVENTS_PER_DRAIN: usize = 1024;

/// Hands a client's queued events (log lines, errors) to its context: with
/// a group id they go to the client's own queue, which only a poll empties,
/// and a client that only answers queries is never polled otherwise.
fn drain_events(client: &BaseConsumer<TracingContext>) {
    for _ in 0..MAX_EVENTS_PER_DRAIN {
        match client.poll(Duration::ZERO) {
            None => return,
            Some(Err(error)) => tracing::debug!(%error, "lag client event"),
            // It is assigned no partition: no record comes.
            Some(Ok(_)) => {}
        }
    }
}

/// Per partition of `topic`: the next offset the group of `offsets` has
/// committed (the log's start when none) and the high watermark.
fn positions(
    offsets: &BaseConsumer<TracingContext>,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    drain_events(offsets);
    let partitions = topic_partitions(offsets, topic, REQUEST_TIMEOUT)?;
    let mut query = TopicPartitionList::new();
    for &p in &partitions {
        query.add_partition(topic, p);
    }
    let committed = offsets.committed_offsets(query, REQUEST_TIMEOUT)?;
    let mut behind = BTreeMap::new();
    for &p in &partitions {
        let (low, high) = offsets.fetch_watermarks(topic, p, REQUEST_TIMEOUT)?;
        let next = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        behind.insert(p, (next.min(high), high));
    }
    Ok(behind)
}

impl Probe {
    fn measure(&self) -> Result<BTreeMap<i32, PartitionLag>, KafkaError> {
        let mut behind = BTreeMap::new();
        let mut lags = BTreeMap::new();
        for (p, (next, high)) in positions(&self.offsets, &self.topic)? {
            let records = high - next;
            if records > 0 {
                behind.insert(p, next);
            }
            lags.insert(
                p,
                PartitionLag {
                    records,
                    seconds: 0.0,
                },
            );
        }
        for (p, age) in self.oldest_ages(&behind)? {
            if let Some(lag) = lags.get_mut(&p) {
                lag.seconds = age;
            }
        }
        Ok(lags)
    }

    /// Age of the record at each given offset.
    fn oldest_ages(&self, at: &BTreeMap<i32, i64>) -> Result<BTreeMap<i32, f64>, KafkaError> {
        let mut ages = BTreeMap::new();
        if at.is_empty() {
            return Ok(ages);
        }
        let mut assignment = TopicPartitionList::new();
        for (&p, &offset) in at {
            assignment.add_partition_offset(&self.topic, p, Offset::Offset(offset))?;
        }
        self.reader.assign(&assignment)?;
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while ages.len() < at.len() && Instant::now() < deadline {
            let Some(Ok(message)) = self.reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            if let Some(millis) = message.timestamp().to_millis() {
                let age = (Utc::now().timestamp_millis() - millis).max(0) as f64 / 1000.0;
                ages.entry(message.partition()).or_insert(age);
            }
        }
        self.reader.unassign()?;
        Ok(ages)
    }

    fn export(&self, m: &Metrics, lags: &BTreeMap<i32, PartitionLag>) {
        for (p, lag) in lags {
            let labels = [self.topic.as_str(), &p.to_string()];
            m.consumer_lag_records
                .with_label_values(&labels)
                .set(lag.records);
            m.consumer_lag_seconds
                .with_label_values(&labels)
                .set(lag.seconds);
        }
    }
}
