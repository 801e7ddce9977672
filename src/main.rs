//! The `chronolog` binary: parses the command line, starts logging and runs
//! the chosen subcommand.

use clap::{Parser, Subcommand};

use chronolog::config::{LogSettings, Role, Settings};
use chronolog::startup::Application;

/// mimalloc: request buffers, actor messages and Kafka records are allocated
/// on one thread and freed on another; glibc's arenas spent a sixth of the
/// ingestion path's CPU on that (loadtest/RESULTS.md). Built without its
/// transparent huge pages (`no_thp`): with them, a batch's buffers faulted
/// in fresh 2 MiB pages that the kernel zeroed whole, a sixth of a
/// pipeline's CPU in a profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// chronolog: HTTP commands into Kafka, projected into PostgreSQL, queried over HTTP.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    log: LogSettings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the service: every role, or those given with --role.
    Serve {
        #[command(flatten)]
        settings: Settings,
        /// A role to run (repeatable, or comma separated in CHRONOLOG_ROLES); all when absent.
        #[arg(
            long = "role",
            env = "CHRONOLOG_ROLES",
            value_name = "CHRONOLOG_ROLES",
            value_enum,
            value_delimiter = ','
        )]
        roles: Vec<Role>,
    },
    /// Applies the embedded database migrations and exits.
    Migrate {
        #[command(flatten)]
        settings: Settings,
    },
    /// Replays the whole log into --database-url with a fresh consumer group
    /// and exits once caught up with the high watermarks taken at its start.
    Rebuild {
        #[command(flatten)]
        settings: Settings,
        /// Consumer group of the replay; default `<KAFKA_GROUP_ID>-rebuild-<random>`.
        /// Give an earlier run's group to resume it.
        #[arg(long, value_name = "GROUP_ID")]
        group_id: Option<String>,
        /// Rebuild even if the log has lost its oldest records (a partition's
        /// low watermark above 0); without it such a rebuild is refused.
        #[arg(long)]
        allow_partial: bool,
    },
    /// Operator commands on the view's stored offsets.
    Offsets {
        #[command(subcommand)]
        action: OffsetsCommand,
    },
    /// Pipeline definitions: apply a file of them, list, history, delete.
    Pipelines {
        #[command(subcommand)]
        action: PipelinesCommand,
    },
}

#[derive(Subcommand)]
enum PipelinesCommand {
    /// Validates every [[pipeline]] in FILE (filters compiled) and stores
    /// them: prints `NAME: created v1`, `updated vN` or `unchanged vN` each.
    /// An invalid file, or a change of a pipeline's topics or sink, stores
    /// nothing and exits with status 2.
    Apply {
        #[command(flatten)]
        settings: Settings,
        /// A TOML file of one or more [[pipeline]] tables.
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
    },
    /// Prints every pipeline: name, version, topics, sink, filters, start.
    List {
        #[command(flatten)]
        settings: Settings,
    },
    /// Prints every version of a pipeline, oldest first: version, when it
    /// was applied, created/updated/deleted and its definition as JSON.
    History {
        #[command(flatten)]
        settings: Settings,
        /// The pipeline.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Deletes a pipeline: it stops; its sink and its history are kept.
    Delete {
        #[command(flatten)]
        settings: Settings,
        /// The pipeline.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Runs a pipeline's current definition (or the one in --definition)
    /// over a time range of its topics into another sink, with a consumer
    /// group of its own, while the live pipeline goes on; shows progress and
    /// exits 0 at --to, or at the high watermarks taken when it started.
    #[command(group(clap::ArgGroup::new("sink").required(true).args(["sink_table", "sink_topic", "sink_file"])))]
    Replay {
        #[command(flatten)]
        settings: Settings,
        /// The pipeline.
        #[arg(value_name = "NAME")]
        name: String,
        /// The first record: `earliest`, or the first at or after an RFC 3339 instant (log time).
        #[arg(long, value_name = "earliest|RFC3339", default_value = "earliest", value_parser = chronolog::replay::parse_from)]
        from: chronolog::replay::From,
        /// The records before this RFC 3339 instant (log time); default: up to the end of the log now.
        #[arg(long, value_name = "RFC3339", value_parser = chronolog::replay::parse_instant)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// A TOML file with the pipeline's definition to run instead of the stored one (its version is written as 0).
        #[arg(long, value_name = "FILE")]
        definition: Option<std::path::PathBuf>,
        /// Write into this PostgreSQL table (created when absent).
        #[arg(long, value_name = "TABLE")]
        sink_table: Option<String>,
        /// Write to this Kafka topic.
        #[arg(long, value_name = "TOPIC")]
        sink_topic: Option<String>,
        /// Append JSON lines to this file.
        #[arg(long, value_name = "PATH")]
        sink_file: Option<String>,
        /// The replay's consumer group; default `chronolog-pipeline-<name>-replay-<random>`.
        /// Give an earlier run's group to resume it.
        #[arg(long, value_name = "GROUP_ID")]
        group_id: Option<String>,
    },
}

#[derive(Subcommand)]
enum OffsetsCommand {
    /// Moves the view's stored offset of --topic's partitions (all, or those
    /// given with --partition) to the log's start: what a partition stopped
    /// because the log lost what the view holds (a recreated topic, a broker
    /// that lost records) needs to resume.
    Reset {
        #[command(flatten)]
        settings: Settings,
        /// The topic whose partitions to reset.
        #[arg(long, value_name = "TOPIC")]
        topic: String,
        /// The consumer group whose view it is; default KAFKA_GROUP_ID.
        #[arg(long = "group", value_name = "GROUP_ID")]
        group: Option<String>,
        /// A partition to reset (repeatable); all of the topic's when absent.
        #[arg(long = "partition", value_name = "PARTITION")]
        partitions: Vec<i32>,
        /// Where to move the offsets: the log's start.
        #[arg(long = "to", value_enum)]
        to: ResetTo,
    },
}

/// Where `offsets reset` moves a stored offset.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ResetTo {
    /// The partition's low watermark: its oldest record still in the log.
    Earliest,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chronolog::telemetry::init(&cli.log)?;
    // A panic anywhere is logged like any error, with where it happened;
    // the actors that catch panics restart their work.
    chronolog::install_panic_hook();
    actix_rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve { settings, roles } => {
                let app = Application::build(&settings, &roles).await?;
                app.run_until_signal().await
            }
            Command::Migrate { settings } => {
                chronolog::db::run_migrations(&settings.database_url).await?;
                Ok(())
            }
            Command::Rebuild {
                settings,
                group_id,
                allow_partial,
            } => {
                let group_id = group_id.unwrap_or_else(|| {
                    // Unique: a group that already committed would resume, not replay.
                    let suffix = uuid::Uuid::new_v4().simple().to_string();
                    format!("{}-rebuild-{}", settings.kafka_group_id, &suffix[..12])
                });
                let options = chronolog::rebuild::RebuildOptions {
                    group_id,
                    allow_partial,
                };
                chronolog::rebuild::rebuild(&settings, &options).await?;
                Ok(())
            }
            Command::Offsets {
                action:
                    OffsetsCommand::Reset {
                        settings,
                        topic,
                        group,
                        partitions,
                        to: ResetTo::Earliest,
                    },
            } => {
                let group = group.unwrap_or_else(|| settings.kafka_group_id.clone());
                let report =
                    chronolog::offsets::reset_to_earliest(&settings, &topic, &group, &partitions)
                        .await?;
                for partition in report {
                    println!("{partition}");
                }
                Ok(())
            }
            Command::Pipelines {
                action:
                    PipelinesCommand::Replay {
                        settings,
                        name,
                        from,
                        to,
                        definition,
                        sink_table,
                        sink_topic,
                        sink_file,
                        group_id,
                    },
            } => {
                use chronolog::pipelines::Sink;
                let sink = match (sink_table, sink_topic, sink_file) {
                    (Some(table), _, _) => Sink::Postgres { table, key: None },
                    (_, Some(topic), _) => Sink::Kafka { topic, key: None },
                    (_, _, Some(path)) => Sink::File { path },
                    (None, None, None) => unreachable!("clap requires one sink"),
                };
                let suffix = uuid::Uuid::new_v4().simple().to_string();
                let options = chronolog::replay::ReplayOptions {
                    group_id: group_id.unwrap_or_else(|| {
                        chronolog::engine::pipeline_manager::replay_group_id(&name, &suffix[..12])
                    }),
                    name,
                    range: chronolog::engine::replay::Range { from: from.0, to },
                    definition,
                    sink,
                };
                tracing::info!(group_id = options.group_id, "replay group");
                let records = chronolog::replay::pipelines_replay(&settings, &options).await?;
                eprintln!(
                    "replay finished: {records} records (group {})",
                    options.group_id
                );
                Ok(())
            }
            Command::Pipelines { action } => {
                if let Err(error) = pipelines(action).await {
                    eprintln!("Error: {error:#}");
                    if let Some(details) = error.details() {
                        eprintln!("{}", details.trim_start_matches('\n'));
                    }
                    std::process::exit(error.exit_code());
                }
                Ok(())
            }
        }
    })
}

/// Runs a `pipelines` subcommand, printing what it did.
async fn pipelines(
    action: PipelinesCommand,
) -> Result<(), chronolog::pipelines::command::CommandError> {
    use chronolog::pipelines::command;
    match action {
        PipelinesCommand::Apply { settings, file } => {
            for applied in command::apply(&settings.database_url, &file).await? {
                println!("{applied}");
            }
        }
        PipelinesCommand::List { settings } => {
            for stored in command::list(&settings.database_url).await? {
                println!("{}", command::list_line(&stored));
            }
        }
        PipelinesCommand::History { settings, name } => {
            for version in command::history(&settings.database_url, &name).await? {
                println!("{}", command::history_line(&version));
            }
        }
        PipelinesCommand::Delete { settings, name } => {
            let version = command::delete(&settings.database_url, &name).await?;
            println!("{name}: deleted v{version}");
        }
        PipelinesCommand::Replay { .. } => unreachable!("replay is run by main"),
    }
    Ok(())
}
