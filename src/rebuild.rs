//! Disaster recovery: `chronolog rebuild` replays the whole log into a
//! database with a fresh consumer group, shows progress, and exits once the
//! views have caught up with the high watermarks taken when it started:
//! the command topic into the timestamp view, then the shop's event topics
//! into the shop's read views.
//!
//! It is the engine's replay ([`crate::engine::replay`]) with a new group
//! id: the same partition consumers and sinks, so a rebuilt view is written
//! exactly as the live one is. Records that cannot be decoded are skipped,
//! not dead-lettered again (the live consumer did that). A log that lost its
//! oldest records is refused unless `--allow-partial` is given; run again
//! with the same `--group-id`, a rebuild resumes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Supervisor;
use anyhow::Context as _;

use crate::actors::db_writer::DbWriter;
use crate::config::Settings;
use crate::engine::pg_sink::PgSink;
use crate::engine::replay::{Range, Replay, replay};
use crate::engine::shop_views::ShopViews;
use crate::engine::timestamp_view::TimestampView;
use crate::metrics::Metrics;
use crate::outbox::Aggregate;

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
            range: Range::default(),
            targets: None,
            allow_partial: options.allow_partial,
            required: true,
            label: "rebuild",
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
                range: Range::default(),
                targets: None,
                allow_partial: options.allow_partial,
                required: false,
                label: "rebuild",
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
