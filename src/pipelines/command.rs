//! `chronolog pipelines apply|list|history|delete`: the operator's commands
//! on the stored definitions. Each applies the embedded migrations first (as
//! `serve` does), so they work on a database chronolog has not run on yet.

use std::path::Path;

use anyhow::Context as _;
use diesel_async::AsyncPgConnection;

use crate::db::DatabaseUrl;
use crate::pipelines::definition::{self, DefinitionError};
use crate::pipelines::store::{self, Applied, StoreError, Stored, Version};

/// Why a command failed, and so its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The file or the change is refused; nothing was stored (exit 2).
    #[error(transparent)]
    Invalid(#[from] DefinitionError),
    /// The change is refused by what is stored; nothing was stored (exit 2).
    #[error(transparent)]
    Refused(StoreError),
    /// No pipeline of that name (exit 1).
    #[error("no pipeline named {0}")]
    Unknown(String),
    /// Anything else: an unreadable file, the database (exit 1).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl CommandError {
    /// The process's exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CommandError::Invalid(_) | CommandError::Refused(_) => 2,
            CommandError::Unknown(_) | CommandError::Failed(_) => 1,
        }
    }
}

impl CommandError {
    /// More to show after the message: VRL's report of a filter that does
    /// not compile, with its source marked.
    pub fn details(&self) -> Option<&str> {
        match self {
            CommandError::Invalid(DefinitionError::Filter { error, .. }) => Some(&error.report),
            _ => None,
        }
    }
}

impl From<StoreError> for CommandError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unknown(name) => CommandError::Unknown(name),
            StoreError::Db(error) => {
                CommandError::Failed(anyhow::Error::new(error).context("DATABASE_URL"))
            }
            refused => CommandError::Refused(refused),
        }
    }
}

/// Validates every pipeline in `file` (filters compiled) and stores them in
/// one transaction.
pub async fn apply(database_url: &DatabaseUrl, file: &Path) -> Result<Vec<Applied>, CommandError> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Validated before connecting: a bad file is refused the same with or
    // without a database.
    let definitions = definition::parse_file(&text)?;
    let mut conn = connect(database_url).await?;
    Ok(store::apply(&mut conn, &definitions).await?)
}

/// Every current pipeline.
pub async fn list(database_url: &DatabaseUrl) -> Result<Vec<Stored>, CommandError> {
    let mut conn = connect(database_url).await?;
    Ok(store::list(&mut conn)
        .await
        .context("DATABASE_URL: cannot read the pipelines")?)
}

/// A pipeline's versions, oldest first.
pub async fn history(database_url: &DatabaseUrl, name: &str) -> Result<Vec<Version>, CommandError> {
    let mut conn = connect(database_url).await?;
    let versions = store::history(&mut conn, name)
        .await
        .context("DATABASE_URL: cannot read the history")?;
    if versions.is_empty() {
        return Err(CommandError::Unknown(name.to_owned()));
    }
    Ok(versions)
}

/// Deletes a pipeline; returns the version recording it.
pub async fn delete(database_url: &DatabaseUrl, name: &str) -> Result<i32, CommandError> {
    let mut conn = connect(database_url).await?;
    Ok(store::delete(&mut conn, name).await?)
}

/// `recent v2 topics=a,b sink=postgres:recent filters=2 start=earliest`.
pub fn list_line(stored: &Stored) -> String {
    let d = &stored.definition;
    format!(
        "{} v{} topics={} sink={} filters={} start={}",
        d.name,
        stored.version,
        d.topics.join(","),
        format_args!("{}:{}", d.sink.kind(), d.sink.target()),
        d.filters.len(),
        match d.start {
            definition::Start::Earliest => "earliest",
            definition::Start::Latest => "latest",
        }
    )
}

/// `v2 2026-12-04T08:00:00.123456Z updated {"name":...}`.
pub fn history_line(version: &Version) -> String {
    format!(
        "v{} {} {} {}",
        version.version,
        version
            .applied_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        version.action,
        version.definition.to_json()
    )
}

async fn connect(database_url: &DatabaseUrl) -> anyhow::Result<AsyncPgConnection> {
    crate::db::run_migrations(database_url)
        .await
        .context("DATABASE_URL: cannot migrate the database")?;
    database_url
        .connect()
        .await
        .context("DATABASE_URL: cannot connect to the database")
}
