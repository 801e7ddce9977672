//! Disaster recovery: `chronolog rebuild` replays the whole log into a
//! database with a fresh consumer group, shows progress, and exits once the
//! views have caught up with the high watermarks taken when it started:
//! the command topic into the timestamp view, then the shop's event topics
//! into the shop's read views.
//!
//! It is the consumer role with a new group id and a finish line: the same
//! partition consumers and DB writer, so a rebuilt view is written exactly
//! as the live one is. Records that cannot be decoded are skipped, not
//! dead-lettered again (the live consumer did that).
//!
//! A log whose oldest records are gone (a partition's low watermark above 0)
//! would rebuild a partial view: the rebuild refuses, naming the partitions
//! and how many records each lost, unless `--allow-partial` is given. Run
//! again with the same `--group-id`, it resumes from the offsets the target
//! database stored; partitions already at their finish line count as done.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Supervisor;
use anyhow::Context as _;

use crate::actors::db_writer::DbWriter;
use crate::config::Settings;
use crate::engine::group::{ConsumerGroup, Membership};
use crate::engine::pg_sink::PgSink;
use crate::engine::shop_views::ShopViews;
use crate::engine::sink::Sink;
use crate::engine::timestamp_view::TimestampView;
use crate::kafka::admin;
use crate::metrics::Metrics;
use crate::outbox::Aggregate;

/// How often progress is shown.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the finish line is checked when no commit wakes the check
/// (progress is still shown while a partition is blocked).
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// Records replayed (offsets covered, poison records included).
    pub records: i64,
    /// How long it took.
    pub elapsed: Duration,
}

/// How to run a rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildOptions {
    /// Consumer group of the replay (a new one replays everything; an earlier
    /// run's resumes it).
    pub group_id: String,
    /// Rebuild even when the log has lost its oldest records.
    pub allow_partial: bool,
}

/// Partitions whose oldest records are gone, as "partition P: N records
/// (offsets 0 to N-1)"; empty when the log is whole.
pub fn missing_records(targets: &BTreeMap<i32, (i64, i64)>) -> Vec<String> {
    targets
        .iter()
        .filter(|(_, (low, _))| *low > 0)
        .map(|(partition, (low, _))| {
            format!(
                "partition {partition}: {low} records (offsets 0 to {})",
                low - 1
            )
        })
        .collect()
}

/// Where the replay stands against its finish line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Records covered by committed offsets.
    pub done: i64,
    /// Records between the low and high watermarks at the start.
    pub total: i64,
}

impl Progress {
    /// Progress given the finish line (low, high per partition) and the
    /// committed next offsets.
    pub fn measure(targets: &BTreeMap<i32, (i64, i64)>, committed: &BTreeMap<i32, i64>) -> Self {
        let mut progress = Progress { done: 0, total: 0 };
        for (partition, &(low, high)) in targets {
            progress.total += high - low;
            let next = committed.get(partition).copied().unwrap_or(low);
            progress.done += next.clamp(low, high) - low;
        }
        progress
    }

    /// Whether every partition reached its high watermark.
    pub fn finished(&self) -> bool {
        self.done >= self.total
    }

    fn line(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let percent = if self.total == 0 {
            100.0
        } else {
            100.0 * self.done as f64 / self.total as f64
        };
        let eta = if rate > 0.0 {
            format!("{:.0}s", (self.total - self.done) as f64 / rate)
        } else {
            "unknown".into()
        };
        format!(
            "rebuild: {}/{} records ({percent:.1}%), {rate:.0} records/s, ETA {eta}",
            self.done, self.total
        )
    }
}

/// Replays the command topic into `settings.database_url` with the options'
/// consumer group, then each of the shop's event topics into the shop's
/// read views (groups `<group>-shop-view-<aggregate>`), printing progress
/// to stderr.
pub async fn rebuild(
    settings: &Settings,
    options: &RebuildOptions,
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    crate::kafka::preflight(settings).await?;
    crate::db::run_migrations(&settings.database_url)
        .await
        .context("DATABASE_URL: cannot prepare the target database")?;
    let (url, size) = (settings.database_url.clone(), settings.database_pool_size);
    let writer_metrics = Metrics::new();
    let writer = Supervisor::start(move |_| DbWriter::new(url, size, writer_metrics));
    let mut records = replay(
        settings,
        &Replay {
            group_id: options.group_id.clone(),
            topic: settings.kafka_topic.clone(),
            allow_partial: options.allow_partial,
            required: true,
        },
        Arc::new(TimestampView::new(writer)),
    )
    .await?;
    let views = Arc::new(PgSink::new(
        crate::db::pool(&settings.database_url, settings.database_pool_size),
        ShopViews,
    ));
    for aggregate in Aggregate::ALL {
        let replayed = replay(
            settings,
            &Replay {
                group_id: format!("{}-shop-view-{}", options.group_id, aggregate.as_str()),
                topic: format!("{}{}", settings.outbox_topic_prefix, aggregate.topic()),
                allow_partial: options.allow_partial,
                required: false,
            },
            views.clone(),
        )
        .await?;
        records += replayed;
    }
    let report = RebuildReport {
        records,
        elapsed: started.elapsed(),
    };
    tracing::info!(records = report.records, elapsed = ?report.elapsed, "rebuild finished");
    Ok(report)
}

/// One topic to replay into a sink.
#[derive(Debug, Clone)]
struct Replay {
    /// Consumer group of the replay; its offsets are stored in the target.
    group_id: String,
    /// The topic replayed.
    topic: String,
    /// Replay even when the log has lost its oldest records.
    allow_partial: bool,
    /// Whether a topic that does not exist is an error (else nothing to do).
    required: bool,
}

/// Runs a consumer over `replay.topic`, from its start (or where an earlier
/// run of the group stopped) to the high watermarks taken now, into `sink`:
/// the operation behind `chronolog rebuild`. Answers the records replayed.
async fn replay<S: Sink>(
    settings: &Settings,
    replay: &Replay,
    sink: Arc<S>,
) -> anyhow::Result<i64> {
    let (group_id, topic) = (replay.group_id.as_str(), replay.topic.as_str());
    let started = Instant::now();
    let targets = {
        let (owned, name) = (settings.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || admin::watermarks(&owned, &name))
            .await?
            .with_context(|| format!("KAFKA_BROKERS: cannot read the watermarks of {topic}"))?
    };
    if targets.is_empty() {
        anyhow::ensure!(!replay.required, "topic {topic} has no partitions");
        tracing::info!(topic, "topic absent; nothing to rebuild from it");
        return Ok(0);
    }
    let missing = missing_records(&targets);
    if !missing.is_empty() {
        anyhow::ensure!(
            replay.allow_partial,
            "the log of {topic} has lost its oldest records, so the rebuilt view would be partial: {}. \
             Restore the log, or run again with --allow-partial to rebuild what is left",
            missing.join("; ")
        );
        tracing::warn!(
            topic,
            missing = missing.join("; "),
            "rebuilding a partial view (--allow-partial)"
        );
    }
    // An earlier run with this group stored its progress with the view: a
    // partition already at its finish line has nothing left to commit, and
    // counts as done from the start.
    let resumed = stored_offsets(settings, group_id, topic).await?;
    let ahead: Vec<String> = resumed
        .iter()
        .filter_map(|(partition, &next)| {
            let &(_, high) = targets.get(partition)?;
            (next > high)
                .then(|| format!("partition {partition}: stored {next}, log ends at {high}"))
        })
        .collect();
    anyhow::ensure!(
        ahead.is_empty(),
        "the target database holds offsets of group {group_id} above the end of the log of {topic} ({}): \
         the topic was recreated or the broker lost records. Rebuild into an empty database, or run \
         `chronolog offsets reset --topic {topic} --group {group_id} --to earliest` first",
        ahead.join("; "),
    );
    tracing::info!(group_id, topic, ?targets, ?resumed, "rebuild started");

    let start = targets.iter().map(|(&p, &(low, _))| (p, low)).collect();
    let group = ConsumerGroup::start(
        settings,
        group_id,
        topic,
        Membership::Assign(start),
        sink,
        None,
        Metrics::new(),
    )?;
    let status = group.status();

    let terminal = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    let mut shown: Option<Instant> = None;
    let progress = loop {
        tokio::select! {
            () = status.next_commit() => {}
            _ = ticker.tick() => {}
        }
        let mut committed = resumed.clone();
        committed.extend(status.committed());
        let progress = Progress::measure(&targets, &committed);
        if let Some((partition, panic)) = status.last_panic() {
            group.stop().await;
            anyhow::bail!(
                "a partition worker panicked during the rebuild (partition {partition} of {topic}: {panic}); \
                 the error log has its place in the log. Nothing is lost: run the rebuild again \
                 with --group-id {group_id} to resume it once the cause is fixed"
            );
        }
        if !progress.finished() && shown.is_some_and(|at| at.elapsed() < PROGRESS_EVERY) {
            continue;
        }
        shown = Some(Instant::now());
        let line = format!("{topic}: {}", progress.line(started.elapsed()));
        let mut err = std::io::stderr().lock();
        // Progress goes to the terminal; a failed write to it is not an error.
        let _ = if terminal {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        if progress.finished() {
            if terminal {
                let _ = writeln!(err);
            }
            break progress;
        }
        if !status.blocked().is_empty() {
            tracing::warn!(topic, blocked = ?status.blocked(), problems = ?status.problems(), "rebuild is blocked; retrying");
        }
    };
    group.stop().await;
    Ok(progress.total)
}

/// The next offsets the target database stored for `group_id` (empty for a
/// new group).
async fn stored_offsets(
    settings: &Settings,
    group_id: &str,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let pool = crate::db::pool(&settings.database_url, 1);
    let mut conn = pool
        .get()
        .await
        .context("DATABASE_URL: cannot connect to the target database")?;
    let stored = crate::db::queries::load_offsets(&mut conn, group_id, topic)
        .await
        .context("DATABASE_URL: cannot read the stored offsets")?;
    Ok(stored.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_records_name_each_partition_whose_log_starts_above_zero() {
        let whole = BTreeMap::from([(0, (0, 10)), (1, (0, 0))]);
        assert!(missing_records(&whole).is_empty());
        let cut = BTreeMap::from([(0, (0, 10)), (1, (1200, 3000)), (2, (1, 1))]);
        assert_eq!(
            missing_records(&cut),
            [
                "partition 1: 1200 records (offsets 0 to 1199)",
                "partition 2: 1 records (offsets 0 to 0)"
            ]
        );
    }

    #[test]
    fn progress_counts_committed_offsets_within_the_watermarks() {
        let targets = BTreeMap::from([(0, (0, 10)), (1, (5, 5)), (2, (3, 13))]);
        let none = Progress::measure(&targets, &BTreeMap::new());
        assert_eq!(none, Progress { done: 0, total: 20 });
        assert!(!none.finished());
        let some = Progress::measure(&targets, &BTreeMap::from([(0, 4), (2, 20)]));
        assert_eq!(
            some,
            Progress {
                done: 14,
                total: 20
            }
        );
        let all = Progress::measure(&targets, &BTreeMap::from([(0, 10), (2, 13)]));
        assert!(all.finished());
        assert!(Progress::measure(&BTreeMap::from([(0, (0, 0))]), &BTreeMap::new()).finished());
    }

    #[test]
    fn progress_line_shows_rate_and_eta() {
        let line = Progress {
            done: 50,
            total: 100,
        }
        .line(Duration::from_secs(5));
        assert_eq!(
            line,
            "rebuild: 50/100 records (50.0%), 10 records/s, ETA 5s"
        );
    }
}
