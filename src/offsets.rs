//! `chronolog offsets reset`: the operator's way out when the log lost what
//! the view holds (the topic was deleted and created again, or the broker
//! lost records). A consumer stops such a partition rather than skip every
//! new record below the view's stored offset; this command moves the stored
//! offset of the partitions named (all of the topic's by default) to the
//! log's low watermark, and a stopped partition resumes there within a few
//! seconds (stopped partitions look again every 2 s).
//!
//! Projecting records again is safe: the view applies each command once,
//! and of two versions of one command keeps the same one in any order. A
//! partition being consumed normally is not disturbed: its next commit
//! stores its own position again (stored offsets only move forward).

use std::fmt;

use anyhow::Context as _;

use crate::config::Settings;
use crate::db::queries::{self, PartitionKey};
use crate::kafka::admin;

/// What a reset did to one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReset {
    /// The partition.
    pub partition: i32,
    /// Its stored next offset before (none: the view has no offset for it,
    /// and nothing is moved).
    pub stored: Option<i64>,
    /// The log's (low, high) watermarks.
    pub log: (i64, i64),
}

impl fmt::Display for PartitionReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (low, high) = self.log;
        match self.stored {
            Some(stored) => write!(
                f,
                "partition {}: stored offset {stored} moved to {low} (the log holds offsets {low} to {high})",
                self.partition
            ),
            None => write!(
                f,
                "partition {}: no stored offset, nothing to move (the log holds offsets {low} to {high})",
                self.partition
            ),
        }
    }
}

/// Moves the stored offset of `partitions` of `topic` (every partition when
/// empty) in `group_id`'s view to the log's low watermark.
pub async fn reset_to_earliest(
    settings: &Settings,
    topic: &str,
    group_id: &str,
    partitions: &[i32],
) -> anyhow::Result<Vec<PartitionReset>> {
    let log = {
        let (owned, name) = (settings.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || admin::watermarks(&owned, &name))
            .await?
            .with_context(|| format!("KAFKA_BROKERS: cannot read the watermarks of {topic}"))?
    };
    anyhow::ensure!(!log.is_empty(), "topic {topic} has no partitions");
    let unknown: Vec<i32> = partitions
        .iter()
        .copied()
        .filter(|p| !log.contains_key(p))
        .collect();
    anyhow::ensure!(
        unknown.is_empty(),
        "topic {topic} has no partition {unknown:?} (it has {})",
        log.len()
    );
    let pool = crate::db::pool(&settings.database_url, 1);
    let mut conn = pool
        .get()
        .await
        .context("DATABASE_URL: cannot connect to the database")?;
    let stored = queries::load_offsets(&mut conn, group_id, topic)
        .await
        .context("DATABASE_URL: cannot read the stored offsets")?;
    let mut report = Vec::with_capacity(log.len());
    for (&partition, &(low, high)) in &log {
        if !partitions.is_empty() && !partitions.contains(&partition) {
            continue;
        }
        let current = stored.get(&partition).copied();
        if let Some(next) = current {
            let key = PartitionKey {
                group_id: group_id.to_owned(),
                topic: topic.to_owned(),
                partition,
            };
            queries::reset_offset(&mut conn, &key, low)
                .await
                .with_context(|| format!("cannot move partition {partition}'s offset"))?;
            tracing::warn!(
                partition,
                from = next,
                to = low,
                group_id,
                topic,
                "stored offset reset to the log's start"
            );
        }
        report.push(PartitionReset {
            partition,
            stored: current,
            log: (low, high),
        });
    }
    Ok(report)
}
