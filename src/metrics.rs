//! Every Prometheus metric chronolog exports, declared once with its help
//! text (DESIGN §8). Names are `chronolog_<what>_<unit>[_total]`; labels take
//! few values (`actor`, `message`, `outcome`, `partition`), never ids.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, exponential_buckets,
};

/// The process-wide metric set.
pub struct Metrics {
    registry: Registry,
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
}

fn latency_buckets() -> Vec<f64> {
    // 100 µs to ~13 s.
    exponential_buckets(0.0001, 2.0, 18).unwrap_or_default()
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("chronolog".into()), None)?;
        let m = Self {
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
                &["topic", "partition"],
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
                &["topic", "partition"],
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "dead_letter_records_total",
                    "Records sent to the dead-letter topic, by reason.",
                ),
                &["reason"],
            )?,
            registry,
        };
        m.register()?;
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

static METRICS: LazyLock<Metrics> = LazyLock::new(|| match Metrics::new() {
    Ok(metrics) => metrics,
    // Only reachable through a programming error in the declarations above,
    // which every test run exercises.
    Err(error) => panic!("metric declarations are invalid: {error}"),
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Runs one actor message handler, recording its outcome, latency and the
/// actor's in-flight count. Every actor's handlers go through here.
pub async fn observe<T, E>(
    actor: &'static str,
    message: &'static str,
    handler: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let known = MESSAGE_METRICS
        .iter()
        .find(|(a, m, _)| *a == actor && *m == message)
        .map(|(_, _, metrics)| metrics);
    let resolved;
    let metrics = match known {
        Some(metrics) => metrics,
        None => {
            resolved = MessageMetrics::new(actor, message);
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

/// The series one actor message type updates, resolved once: looking labels
/// up on every message was a measurable share of the ingestion path.
struct MessageMetrics {
    depth: IntGauge,
    seconds: Histogram,
    ok: IntCounter,
    error: IntCounter,
}

impl MessageMetrics {
    fn new(actor: &str, message: &str) -> Self {
        let m = metrics();
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

static MESSAGE_METRICS: LazyLock<Vec<(&str, &str, MessageMetrics)>> = LazyLock::new(|| {
    ACTOR_MESSAGES
        .iter()
        .flat_map(|(actor, messages)| {
            messages
                .iter()
                .map(|message| (*actor, *message, MessageMetrics::new(actor, message)))
        })
        .collect()
});

/// The actors and the messages each handles, as they appear in labels.
pub const ACTOR_MESSAGES: [(&str, &[&str]); 4] = [
    ("ingestion", &["SubmitCommand"]),
    ("kafka_producer", &["PublishCommand", "PublishDeadLetter"]),
    ("partition_consumer", &["RecordBatch", "Drain"]),
    ("db_writer", &["WriteBatch", "LoadOffsets"]),
];

/// Creates every label set known in advance with a zero value, so that
/// dashboards and alerts see a 0 rather than no series at all.
pub fn prime() {
    let m = metrics();
    for (actor, messages) in ACTOR_MESSAGES {
        m.actor_restarts.with_label_values(&[actor]);
        m.actor_mailbox_depth.with_label_values(&[actor]);
        for message in messages {
            for outcome in ["ok", "error"] {
                m.actor_messages
                    .with_label_values(&[actor, message, outcome]);
            }
        }
    }
    for kind in ["command", "dead_letter"] {
        for outcome in ["delivered", "timeout", "failed", "fatal"] {
            m.records_produced.with_label_values(&[kind, outcome]);
        }
    }
    for outcome in ["committed", "failed"] {
        m.db_transactions.with_label_values(&[outcome]);
    }
    for reason in crate::kafka::record::DecodeError::CODES {
        m.dead_letters.with_label_values(&[reason]);
    }
}

/// Counts a supervisor restart of `actor`.
pub fn actor_restarted(actor: &'static str) {
    metrics().actor_restarts.with_label_values(&[actor]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_the_prefix() {
        let m = metrics();
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
