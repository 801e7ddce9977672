//! Every Prometheus metric chronolog exports, declared once with its help
//! text. Names are `chronolog_<what>_<unit>[_total]`; labels take
//! few values (`actor`, `message`, `outcome`, `partition`), never ids.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, exponential_buckets,
};

/// The metric set of one application (one per process in production; the
/// tests run several applications in one process, each with its own).
pub struct Metrics {
    registry: Registry,
    /// The series of each known actor message, resolved once.
    messages: Vec<(&'static str, &'static str, MessageMetrics)>,
    /// Messages handled per actor, message type and outcome.
    pub actor_messages: IntCounterVec,
    /// Time an actor took to answer a message.
    pub actor_handling_seconds: HistogramVec,
    /// Messages an actor has accepted and not yet answered.
    pub actor_mailbox_depth: IntGaugeVec,
    /// Restarts of an actor by its supervisor.
    pub actor_restarts: IntCounterVec,
    /// HTTP requests by route, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by route.
    pub http_request_seconds: HistogramVec,
    /// Records produced, by topic kind (`command`, `dead_letter`) and outcome.
    pub records_produced: IntCounterVec,
    /// Time from handing a record to the producer to the broker's acknowledgement.
    pub produce_delivery_seconds: Histogram,
    /// Records in the log not yet projected, per partition.
    pub consumer_lag_records: IntGaugeVec,
    /// Age of the oldest record not yet projected, per partition (0 when caught up).
    pub consumer_lag_seconds: prometheus::GaugeVec,
    /// The next offset to project, as committed with the view, per partition.
    pub committed_offset: IntGaugeVec,
    /// Database transactions by outcome.
    pub db_transactions: IntCounterVec,
    /// Database transaction latency, including commit.
    pub db_transaction_seconds: Histogram,
    /// Rows inserted into the view (a redelivered record inserts none).
    pub db_rows_written: IntCounter,
    /// Records skipped because the view already held their offsets (redeliveries).
    pub db_records_skipped: IntCounter,
    /// Records per projected batch.
    pub db_batch_size: Histogram,
    /// 1 while a partition retries a failed transaction, else 0.
    pub partition_blocked: IntGaugeVec,
    /// Records sent to the dead-letter topic, by reason.
    pub dead_letters: IntCounterVec,
    /// 1 for a topic of chronolog's whose records expire (finite retention).
    pub topic_retention_finite: IntGaugeVec,
    /// Age of the oldest outbox event not yet published, per relay.
    pub outbox_relay_lag_seconds: prometheus::GaugeVec,
    /// Outbox events published (acknowledged by the broker), per aggregate type.
    pub outbox_events_published: IntCounterVec,
    /// 1 while this process's relay holds the outbox lock and publishes, else 0.
    pub outbox_relay_active: IntGaugeVec,
    /// Dead letters that could not be published for good (the record stays
    /// in the log at its source offset; the error log names it), by cause.
    pub dead_letter_failures: IntCounterVec,
    /// How far a partition's stored offset is above the log's high
    /// watermark (a recreated topic, a broker that lost data); 0 normally.
    pub stored_offset_ahead: IntGaugeVec,
    /// Records of each pipeline, by outcome: `in` (read), `out` (written
    /// to the sink), `dropped` (a filter aborted), `failed` (dead-lettered).
    pub pipeline_records: IntCounterVec,
    /// Time the filters of a pipeline take per record (the record's JSON
    /// already decoded).
    pub pipeline_filter_seconds: HistogramVec,
    /// The version each pipeline runs (absent once it is deleted).
    pub pipeline_version: IntGaugeVec,
    /// Records of each pipeline's topics its group has not committed yet.
    pub pipeline_lag_records: IntGaugeVec,
    /// Requests of the query API waiting for a record (`Prefer: wait`).
    pub query_waiting_requests: IntGauge,
}

fn latency_buckets() -> Vec<f64> {
    // 100 µs to ~13 s.
    exponential_buckets(0.0001, 2.0, 18).unwrap_or_default()
}

impl Metrics {
    /// A fresh registry with every metric declared and every known label set
    /// at zero.
    pub fn new() -> Arc<Self> {
        match Self::declare() {
            Ok(metrics) => Arc::new(metrics),
            // Only reachable through a programming error in the declarations,
            // which every test run exercises.
            Err(error) => panic!("metric declarations are invalid: {error}"),
        }
    }

    fn declare() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("chronolog".into()), None)?;
        let mut m = Self {
            messages: Vec::new(),
            actor_messages: IntCounterVec::new(
                Opts::new(
                    "actor_messages_total",
                    "Messages handled per actor, message type and outcome.",
                ),
                &["actor", "message", "outcome"],
            )?,
            actor_handling_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "actor_handling_seconds",
                    "Time an actor took to answer a message.",
                )
                .buckets(latency_buckets()),
                &["actor", "message"],
            )?,
            actor_mailbox_depth: IntGaugeVec::new(
                Opts::new(
                    "actor_mailbox_depth",
                    "Messages an actor has accepted and not yet answered.",
                ),
                &["actor"],
            )?,
            actor_restarts: IntCounterVec::new(
                Opts::new(
                    "actor_restarts_total",
                    "Restarts of an actor by its supervisor.",
                ),
                &["actor"],
            )?,
            http_requests: IntCounterVec::new(
                Opts::new(
                    "http_requests_total",
                    "HTTP requests by route, method and status.",
                ),
                &["route", "method", "status"],
            )?,
            http_request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "HTTP request latency by route.",
                )
                .buckets(latency_buckets()),
                &["route"],
            )?,
            records_produced: IntCounterVec::new(
                Opts::new(
                    "records_produced_total",
                    "Records produced, by topic kind and outcome.",
                ),
                &["kind", "outcome"],
            )?,
            produce_delivery_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "produce_delivery_seconds",
                    "Time from handing a record to the producer to the broker's acknowledgement.",
                )
                .buckets(latency_buckets()),
            )?,
            consumer_lag_records: IntGaugeVec::new(
                Opts::new(
                    "consumer_lag_records",
                    "Records in the log not yet projected (high watermark minus committed offset).",
                ),
                &["topic", "partition"],
            )?,
            consumer_lag_seconds: prometheus::GaugeVec::new(
                Opts::new(
                    "consumer_lag_seconds",
                    "Age of the oldest record not yet projected; 0 when caught up.",
                ),
                &["topic", "partition"],
            )?,
            committed_offset: IntGaugeVec::new(
                Opts::new(
                    "committed_offset",
                    "Next offset to project, committed with the view.",
                ),
                &["group", "topic", "partition"],
            )?,
            db_transactions: IntCounterVec::new(
                Opts::new("db_transactions_total", "Database transactions by outcome."),
                &["outcome"],
            )?,
            db_transaction_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "db_transaction_duration_seconds",
                    "Database transaction latency, commit included.",
                )
                .buckets(latency_buckets()),
            )?,
            db_rows_written: IntCounter::new(
                "db_rows_written_total",
                "Rows inserted into the view; a redelivered record inserts none.",
            )?,
            db_records_skipped: IntCounter::new(
                "db_records_skipped_total",
                "Records skipped because the view already held their offsets (redeliveries).",
            )?,
            db_batch_size: Histogram::with_opts(
                HistogramOpts::new("db_batch_size_records", "Records per projected batch.")
                    .buckets(exponential_buckets(1.0, 2.0, 16).unwrap_or_default()),
            )?,
            partition_blocked: IntGaugeVec::new(
                Opts::new(
                    "partition_blocked",
                    "1 while a partition retries a failed transaction, else 0.",
                ),
                &["group", "topic", "partition"],
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "dead_letter_records_total",
                    "Records sent to the dead-letter topic, by reason.",
                ),
                &["reason"],
            )?,
            dead_letter_failures: IntCounterVec::new(
                Opts::new(
                    "dead_letter_failures_total",
                    "Dead letters the broker refused for good; the source record stays in the log and the error log names it.",
                ),
                &["cause"],
            )?,
            stored_offset_ahead: IntGaugeVec::new(
                Opts::new(
                    "stored_offset_ahead_records",
                    "Records by which a partition's stored offset is above the log's high watermark (recreated topic or lost broker data): the partition is stopped until `chronolog offsets reset`.",
                ),
                &["group", "topic", "partition"],
            )?,
            topic_retention_finite: IntGaugeVec::new(
                Opts::new(
                    "topic_retention_finite",
                    "1 when the topic's records expire (finite retention.ms or retention.bytes): a rebuild from it would be partial.",
                ),
                &["topic"],
            )?,
            outbox_relay_lag_seconds: prometheus::GaugeVec::new(
                Opts::new(
                    "outbox_relay_lag_seconds",
                    "Age of the oldest outbox event not yet published; 0 when caught up.",
                ),
                &["relay"],
            )?,
            outbox_events_published: IntCounterVec::new(
                Opts::new(
                    "outbox_events_published_total",
                    "Outbox events published and acknowledged by the broker, per aggregate type.",
                ),
                &["aggregate"],
            )?,
            outbox_relay_active: IntGaugeVec::new(
                Opts::new(
                    "outbox_relay_active",
                    "1 while this process's outbox relay holds the lock and publishes, else 0.",
                ),
                &["relay"],
            )?,
            pipeline_records: IntCounterVec::new(
                Opts::new(
                    "pipeline_records_total",
                    "Records of a pipeline, by outcome: in (read), out (written to the sink), dropped (a filter aborted), failed (dead-lettered).",
                ),
                &["pipeline", "outcome"],
            )?,
            pipeline_filter_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "pipeline_filter_seconds",
                    "Time a pipeline's filters take per record (the record's JSON already decoded).",
                )
                .buckets(exponential_buckets(0.000_000_5, 2.0, 20).unwrap_or_default()),
                &["pipeline"],
            )?,
            pipeline_version: IntGaugeVec::new(
                Opts::new(
                    "pipeline_version",
                    "The version of its definition each running pipeline uses.",
                ),
                &["pipeline"],
            )?,
            pipeline_lag_records: IntGaugeVec::new(
                Opts::new(
                    "pipeline_lag_records",
                    "Records of a pipeline's topics its consumer group has not committed yet.",
                ),
                &["pipeline"],
            )?,
            query_waiting_requests: IntGauge::new(
                "query_waiting_requests",
                "Requests of the query API waiting for their record to reach the view (Prefer: wait).",
            )?,
            registry,
        };
        m.register()?;
        m.prime();
        m.messages = ACTOR_MESSAGES
            .iter()
            .flat_map(|(actor, messages)| messages.iter().map(move |message| (*actor, *message)))
            .map(|(actor, message)| (actor, message, MessageMetrics::new(&m, actor, message)))
            .collect();
        Ok(m)
    }

    fn register(&self) -> Result<(), prometheus::Error> {
        let r = &self.registry;
        r.register(Box::new(self.actor_messages.clone()))?;
        r.register(Box::new(self.actor_handling_seconds.clone()))?;
        r.register(Box::new(self.actor_mailbox_depth.clone()))?;
        r.register(Box::new(self.actor_restarts.clone()))?;
        r.register(Box::new(self.http_requests.clone()))?;
        r.register(Box::new(self.http_request_seconds.clone()))?;
        r.register(Box::new(self.records_produced.clone()))?;
        r.register(Box::new(self.produce_delivery_seconds.clone()))?;
        r.register(Box::new(self.consumer_lag_records.clone()))?;
        r.register(Box::new(self.consumer_lag_seconds.clone()))?;
        r.register(Box::new(self.committed_offset.clone()))?;
        r.register(Box::new(self.db_transactions.clone()))?;
        r.register(Box::new(self.db_transaction_seconds.clone()))?;
        r.register(Box::new(self.db_rows_written.clone()))?;
        r.register(Box::new(self.db_records_skipped.clone()))?;
        r.register(Box::new(self.db_batch_size.clone()))?;
        r.register(Box::new(self.partition_blocked.clone()))?;
        r.register(Box::new(self.dead_letters.clone()))?;
        r.register(Box::new(self.topic_retention_finite.clone()))?;
        r.register(Box::new(self.outbox_relay_lag_seconds.clone()))?;
        r.register(Box::new(self.outbox_events_published.clone()))?;
        r.register(Box::new(self.outbox_relay_active.clone()))?;
        r.register(Box::new(self.dead_letter_failures.clone()))?;
        r.register(Box::new(self.stored_offset_ahead.clone()))?;
        r.register(Box::new(self.pipeline_records.clone()))?;
        r.register(Box::new(self.pipeline_filter_seconds.clone()))?;
        r.register(Box::new(self.pipeline_version.clone()))?;
        r.register(Box::new(self.pipeline_lag_records.clone()))?;
        r.register(Box::new(self.query_waiting_requests.clone()))?;
        Ok(())
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Every actor and the messages it handles, as they appear in labels.
pub const ACTOR_MESSAGES: [(&str, &[&str]); 4] = [
    ("ingestion", &["SubmitCommand"]),
    ("kafka_producer", &["PublishCommand", "PublishDeadLetter"]),
    ("partition_consumer", &["RecordBatch", "Drain"]),
    ("db_writer", &["WriteBatch", "LoadOffsets"]),
];

impl Metrics {
    /// Runs one actor message handler, recording its outcome, latency and
    /// the actor's in-flight count. Every actor's handlers go through here.
    pub async fn observe<T, E>(
        &self,
        actor: &'static str,
        message: &'static str,
        handler: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let known = self
            .messages
            .iter()
            .find(|(a, m, _)| *a == actor && *m == message)
            .map(|(_, _, metrics)| metrics);
        let resolved;
        let metrics = match known {
            Some(metrics) => metrics,
            None => {
                resolved = MessageMetrics::new(self, actor, message);
                &resolved
            }
        };
        metrics.depth.inc();
        let started = Instant::now();
        let result = handler.await;
        metrics.depth.dec();
        metrics.seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => metrics.ok.inc(),
            Err(_) => metrics.error.inc(),
        }
        result
    }

    /// Counts a supervisor restart of `actor`.
    pub fn actor_restarted(&self, actor: &'static str) {
        self.actor_restarts.with_label_values(&[actor]).inc();
    }

    /// Creates every label set known in advance with a zero value, so that
    /// dashboards and alerts see a 0 rather than no series at all.
    fn prime(&self) {
        for (actor, messages) in ACTOR_MESSAGES {
            self.actor_restarts.with_label_values(&[actor]);
            self.actor_mailbox_depth.with_label_values(&[actor]);
            for message in messages {
                for outcome in ["ok", "error"] {
                    self.actor_messages
                        .with_label_values(&[actor, message, outcome]);
                }
            }
        }
        for kind in ["command", "dead_letter"] {
            for outcome in ["delivered", "timeout", "failed", "fatal", "refused"] {
                self.records_produced.with_label_values(&[kind, outcome]);
            }
        }
        for outcome in ["committed", "failed"] {
            self.db_transactions.with_label_values(&[outcome]);
        }
        for aggregate in crate::outbox::Aggregate::ALL {
            self.outbox_events_published
                .with_label_values(&[aggregate.as_str()]);
        }
        for reason in crate::kafka::record::DecodeError::CODES {
            self.dead_letters.with_label_values(&[reason]);
        }
        self.dead_letter_failures.with_label_values(&["refused"]);
    }
}

/// The series one actor message type updates, resolved once: looking labels
/// up on every message was a measurable share of the ingestion path.
struct MessageMetrics {
    depth: IntGauge,
    seconds: Histogram,
    ok: IntCounter,
    error: IntCounter,
}

impl MessageMetrics {
    fn new(m: &Metrics, actor: &str, message: &str) -> Self {
        Self {
            depth: m.actor_mailbox_depth.with_label_values(&[actor]),
            seconds: m
                .actor_handling_seconds
                .with_label_values(&[actor, message]),
            ok: m.actor_messages.with_label_values(&[actor, message, "ok"]),
            error: m
                .actor_messages
                .with_label_values(&[actor, message, "error"]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_the_prefix() {
        let m = Metrics::new();
        m.actor_restarts.with_label_values(&["db_writer"]).inc();
        let text = m.render();
        assert!(
            text.contains("chronolog_actor_restarts_total{actor=\"db_writer\"}"),
            "{text}"
        );
        assert!(
            text.contains("# HELP chronolog_actor_restarts_total"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod isolation {
    use super::*;

    #[test]
    fn two_applications_count_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.actor_restarted("db_writer");
        assert_eq!(a.actor_restarts.with_label_values(&["db_writer"]).get(), 1);
        assert_eq!(b.actor_restarts.with_label_values(&["db_writer"]).get(), 0);
    }
}
