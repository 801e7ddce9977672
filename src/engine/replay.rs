//! Running a consumer over a range of the log into a sink, to a finish
//! line: the operation behind `chronolog rebuild` (the whole log into the
//! views) and `chronolog pipelines replay` (a time range into another sink).
//! It is the engine's own consumer with a group of its own, assigned the
//! partitions at the range's start offsets, stopped once every partition's
//! committed offset reached the range's end.
//!
//! A log whose oldest records are gone (a partition's low watermark above
//! 0) would make a replay from its start partial: it is refused, naming the
//! partitions and how many records each lost, unless allowed. Run again
//! with the same group, a replay resumes from the offsets its sink stored;
//! partitions already at their finish line count as done.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::engine::group::{ConsumerGroup, Membership};
use crate::engine::sink::Sink;
use crate::kafka::admin;
use crate::metrics::Metrics;

/// How often progress is shown.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the finish line is checked when no commit wakes the check
/// (progress is still shown while a partition is blocked).
const CHECK_EVERY: Duration = Duration::from_millis(200);

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

    fn line(&self, label: &str, elapsed: Duration) -> String {
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
            "{label}: {}/{} records ({percent:.1}%), {rate:.0} records/s, ETA {eta}",
            self.done, self.total
        )
    }
}

/// Which records of a topic a replay covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    /// The first record at or after this instant (log time); the log's
    /// start when `None`.
    pub from: Option<DateTime<Utc>>,
    /// The records before this instant (log time); up to the high
    /// watermarks taken at the start when `None`.
    pub to: Option<DateTime<Utc>>,
}

/// One topic to replay into a sink.
#[derive(Debug, Clone)]
pub struct Replay {
    /// Consumer group of the replay; a sink that stores offsets stores them
    /// under it.
    pub group_id: String,
    /// The topic replayed.
    pub topic: String,
    /// The records replayed.
    pub range: Range,
    /// The range's offsets per partition when already looked up
    /// ([`targets`]); looked up at the start when `None`.
    pub targets: Option<BTreeMap<i32, (i64, i64)>>,
    /// Replay from the log's start even when it has lost its oldest records.
    pub allow_partial: bool,
    /// Whether a topic that does not exist is an error (else nothing to do).
    pub required: bool,
    /// What the progress line is called (`rebuild`, `replay`).
    pub label: &'static str,
}

/// Each partition's first and end offset of `range` in `topic`: the log's
/// start (low watermark) or the first offset at or after `from`, and the
/// high watermark taken now or the first offset at or after `to`.
pub fn targets(
    settings: &Settings,
    topic: &str,
    range: Range,
) -> Result<BTreeMap<i32, (i64, i64)>, rdkafka::error::KafkaError> {
    let mut targets = admin::watermarks(settings, topic)?;
    for (bound, at) in [(0, range.from), (1, range.to)] {
        let Some(at) = at else { continue };
        let found = admin::offsets_for_time(settings, topic, at.timestamp_millis())?;
        for (partition, (start, end)) in targets.iter_mut() {
            // No record at or after the instant: the end of the log.
            let offset = found.get(partition).copied().flatten().unwrap_or(*end);
            if bound == 0 {
                *start = offset.max(*start);
            } else {
                *end = offset.min(*end);
            }
        }
    }
    for (start, end) in targets.values_mut() {
        *start = (*start).min(*end);
    }
    Ok(targets)
}

/// Runs a consumer over `replay.range` of `replay.topic` (from where an
/// earlier run of the group stopped, if one did) into `sink`, printing
/// progress to stderr. Answers the records replayed. The consumer reads on
/// past a partition's end until every partition reached its finish line: a
/// sink that must not take records past the range drops them itself.
pub async fn replay<S: Sink>(
    settings: &Settings,
    replay: &Replay,
    sink: Arc<S>,
) -> anyhow::Result<i64> {
    let (group_id, topic) = (replay.group_id.as_str(), replay.topic.as_str());
    let started = Instant::now();
    let targets = if let Some(fixed) = &replay.targets {
        fixed.clone()
    } else {
        let (owned, name, range) = (settings.clone(), topic.to_owned(), replay.range);
        tokio::task::spawn_blocking(move || targets(&owned, &name, range))
            .await?
            .with_context(|| format!("KAFKA_BROKERS: cannot read the watermarks of {topic}"))?
    };
    if targets.is_empty() {
        anyhow::ensure!(!replay.required, "topic {topic} has no partitions");
        tracing::info!(topic, "topic absent; nothing to rebuild from it");
        return Ok(0);
    }
    let missing = if replay.range.from.is_none() {
        missing_records(&targets)
    } else {
        Vec::new()
    };
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
    tracing::info!(
        group_id,
        topic,
        ?targets,
        ?resumed,
        label = replay.label,
        "replay started"
    );

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
                "a partition worker panicked during the {} (partition {partition} of {topic}: {panic}); \
                 the error log has its place in the log. Nothing is lost: run the {} again \
                 with --group-id {group_id} to resume it once the cause is fixed",
                replay.label,
                replay.label
            );
        }
        if !progress.finished() && shown.is_some_and(|at| at.elapsed() < PROGRESS_EVERY) {
            continue;
        }
        shown = Some(Instant::now());
        let line = format!(
            "{topic}: {}",
            progress.line(replay.label, started.elapsed())
        );
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
            tracing::warn!(topic, blocked = ?status.blocked(), problems = ?status.problems(), "replay is blocked; retrying");
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
        .line("rebuild", Duration::from_secs(5));
        assert_eq!(
            line,
            "rebuild: 50/100 records (50.0%), 10 records/s, ETA 5s"
        );
    }
}
