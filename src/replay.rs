//! `chronolog pipelines replay`: a pipeline's current definition (or one
//! from a file, to try a change before applying it) run over a time range
//! of its topics into another sink, with a consumer group of its own, while
//! the live pipeline goes on. It is the engine's replay, the operation
//! behind `chronolog rebuild`, with a pipeline's sink.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::engine::pg_sink::PgSink;
use crate::engine::pipeline::{Compiled, FileOutput, PipelineState, PipelineTable, TopicOutput};
use crate::engine::replay::{self, Range, Replay};
use crate::metrics::Metrics;
use crate::pipelines::{Definition, Sink, definition, store};

/// The version a replay of a definition from a file writes: it is not a
/// stored version.
pub const FILE_VERSION: i32 = 0;

/// What to replay, and where to.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The pipeline.
    pub name: String,
    /// The records replayed.
    pub range: Range,
    /// A TOML file holding the definition to run instead of the stored one.
    pub definition: Option<PathBuf>,
    /// Where the output goes (its key path is the pipeline's).
    pub sink: Sink,
    /// The replay's consumer group.
    pub group_id: String,
}

/// Runs the replay; answers the records it went over.
pub async fn pipelines_replay(settings: &Settings, options: &ReplayOptions) -> anyhow::Result<i64> {
    crate::kafka::preflight(settings).await?;
    crate::db::run_migrations(&settings.database_url)
        .await
        .context("DATABASE_URL: cannot prepare the database")?;
    let (definition, version) = load(settings, options).await?;
    // The replay's sink replaces the pipeline's, checked as a definition's.
    let key = match &definition.sink {
        Sink::Postgres { key, .. } | Sink::Kafka { key, .. } => key.clone(),
        Sink::File { .. } => None,
    };
    let sink = match options.sink.clone() {
        Sink::Postgres { table, .. } => Sink::Postgres { table, key },
        Sink::Kafka { topic, .. } => Sink::Kafka { topic, key },
        file @ Sink::File { .. } => file,
    };
    let definition = Definition { sink, ..definition }
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let compiled = Compiled::new(version, &definition).map_err(|e| anyhow::anyhow!("{e}"))?;

    // Each topic's range, fixed now: the sink drops what lies past it.
    let mut targets = HashMap::new();
    for topic in &definition.topics {
        let (owned, name, range) = (settings.clone(), topic.clone(), options.range);
        let found = tokio::task::spawn_blocking(move || replay::targets(&owned, &name, range))
            .await?
            .with_context(|| format!("KAFKA_BROKERS: cannot read the offsets of {topic}"))?;
        targets.insert(topic.clone(), found);
    }
    let metrics = Metrics::new();
    let state = PipelineState::new(&definition.name, compiled, metrics);
    state.end_at(
        targets
            .iter()
            .flat_map(|(topic, t)| t.iter().map(|(&p, &(_, end))| ((topic.clone(), p), end)))
            .collect(),
    );
    tracing::info!(
        pipeline = definition.name,
        version,
        sink = store::describe_sink(&definition.sink),
        ?targets,
        "replay started"
    );
    let mut records = 0;
    for topic in &definition.topics {
        let replay = Replay {
            group_id: options.group_id.clone(),
            topic: topic.clone(),
            range: options.range,
            targets: targets.get(topic).cloned(),
            allow_partial: true,
            required: true,
            label: "replay",
        };
        records += match &definition.sink {
            Sink::Postgres { table, .. } => {
                let pool = crate::db::pool(&settings.database_url, settings.database_pool_size);
                let mut conn = pool.get().await.context("DATABASE_URL: cannot connect")?;
                PipelineTable::prepare(&mut conn, table).await?;
                drop(conn);
                let sink = PgSink::new(pool, PipelineTable::new(state.clone(), table));
                replay::replay(settings, &replay, Arc::new(sink)).await?
            }
            Sink::Kafka { topic: out, .. } => {
                let producer = crate::kafka::producer_config(settings)
                    .create()
                    .context("KAFKA_BROKERS: cannot create the producer")?;
                let sink =
                    TopicOutput::new(state.clone(), out, producer, settings.delivery_timeout);
                replay::replay(settings, &replay, Arc::new(sink)).await?
            }
            Sink::File { path } => {
                let sink = FileOutput::open(state.clone(), path)
                    .with_context(|| format!("cannot open {path}"))?;
                replay::replay(settings, &replay, Arc::new(sink)).await?
            }
        };
    }
    Ok(records)
}

/// The stored definition of the pipeline and its version, or the one named
/// in the file (version [`FILE_VERSION`]).
async fn load(settings: &Settings, options: &ReplayOptions) -> anyhow::Result<(Definition, i32)> {
    if let Some(path) = &options.definition {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let definitions = definition::parse_file(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let found = definitions
            .into_iter()
            .find(|d| d.name == options.name)
            .with_context(|| format!("{} has no pipeline {}", path.display(), options.name))?;
        return Ok((found, FILE_VERSION));
    }
    let pool = crate::db::pool(&settings.database_url, 1);
    let mut conn = pool.get().await.context("DATABASE_URL: cannot connect")?;
    let stored = store::get(&mut conn, &options.name)
        .await?
        .with_context(|| format!("no pipeline {}", options.name))?;
    Ok((stored.definition, stored.version))
}

/// `--from`: the log's start (`earliest`) or an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct From(pub Option<DateTime<Utc>>);

/// Reads `--from`: `earliest` or an RFC 3339 instant.
pub fn parse_from(value: &str) -> Result<From, String> {
    if value == "earliest" {
        return Ok(From(None));
    }
    parse_instant(value).map(|at| From(Some(at)))
}

/// An RFC 3339 instant.
pub fn parse_instant(value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 instant ({e})"))
}
