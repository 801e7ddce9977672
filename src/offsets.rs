//! `chronolog offsets reset`: the operator's way out when a partition's
//! stored offset is above its log's high watermark (the topic was recreated,
//! or the broker lost records). The consumer stops such a partition rather
//! than skip every new record silently; this command moves the stored
//! offset of each such partition to the log's low watermark, and the
//! stopped partition resumes there within a few seconds (running consumers
//! look again every 2 s). Partitions whose stored offset lies within the
//! log are left alone: they are being projected correctly.
//!
//! Projecting records again is safe: the view applies each command once,
//! and of two versions of one command keeps the same one in any order.

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
    /// Its stored next offset before (none: the view has no offset for it).
    pub stored: Option<i64>,
    /// The log's (low, high) watermarks.
    pub log: (i64, i64),
    /// The stored next offset now, if it was moved.
    pub moved_to: Option<i64>,
}

impl fmt::Display for PartitionReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (low, high) = self.log;
        let stored = self
            .stored
            .map_or_else(|| "none".to_owned(), |s| s.to_string());
        match self.moved_to {
            Some(to) => write!(
                f,
                "partition {}: stored offset {stored} was above the log ({low}..{high}); moved to {to}",
                self.partition
            ),
            None => write!(
                f,
                "partition {}: stored offset {stored} is within the log ({low}..{high}); unchanged",
                self.partition
            ),
        }
    }
}

/// Moves the stored offset of every partition of `topic` in `group_id`'s
/// view that is above its log's high watermark to the log's low watermark.
pub async fn reset_to_earliest(
    settings: &Settings,
    topic: &str,
    group_id: &str,
) -> anyhow::Result<Vec<PartitionReset>> {
    let log = {
        let (owned, name) = (settings.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || admin::watermarks(&owned, &name))
            .await?
            .with_context(|| format!("KAFKA_BROKERS: cannot read the watermarks of {topic}"))?
    };
    anyhow::ensure!(!log.is_empty(), "topic {topic} has no partitions");
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
        let current = stored.get(&partition).copied();
        let moved_to = match current {
            Some(next) if next > high => {
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
                Some(low)
            }
            _ => None,
        };
        report.push(PartitionReset {
            partition,
            stored: current,
            log: (low, high),
            moved_to,
        });
    }
    Ok(report)
}
