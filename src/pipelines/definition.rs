//! A pipeline's definition: what `chronolog pipelines apply FILE` reads
//! (TOML, one `[[pipeline]]` table per pipeline) and what the store keeps
//! (JSON, the same fields).
//!
//! ```toml
//! [[pipeline]]
//! name = "recent"                      # 1 to 63 of a-z, 0-9 and -
//! topics = ["timestamp.command.v1"]    # at least one
//! start = "earliest"                   # or "latest"; default "earliest"
//! filters = [                          # VRL programs, run in order
//!   'if starts_with(string!(.event_timestamp), "19") { abort }',
//!   '.year = slice!(string!(.event_timestamp), 0, 4)',
//! ]
//! [pipeline.sink]
//! type = "postgres"                    # "postgres" | "kafka" | "file"
//! table = "recent_timestamps"          # postgres: a lowercase SQL identifier
//! key = ".command_id"                  # postgres and kafka, optional
//! ```
//!
//! A kafka sink takes `topic` (and an optional `key`), a file sink an
//! absolute `path`. A definition is validated whole before anything is
//! stored: names, topics, the sink and every filter (compiled, see
//! [`crate::pipelines::filter`]). Validation also normalises it (topics
//! sorted), so that two definitions that mean the same compare equal.

use serde::{Deserialize, Serialize};

use crate::echo::{Echo, cut, shorten};
use crate::pipelines::filter::{CompileError, Filters};

/// Longest pipeline name (a PostgreSQL identifier's limit, so the name can
/// appear in one).
const MAX_NAME: usize = 63;
/// Longest Kafka topic name.
const MAX_TOPIC: usize = 249;
/// Longest PostgreSQL identifier, in bytes.
const MAX_IDENTIFIER: usize = 63;

/// Tables of chronolog itself, in the schema sink tables are created in
/// (`public`): a sink must not write over them.
pub const RESERVED_TABLES: &[&str] = &[
    "timestamp_records",
    "projection_offsets",
    "idempotency_keys",
    "pipelines",
    "pipeline_versions",
    "__diesel_schema_migrations",
];

/// One pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The pipeline's name: 1 to 63 of `a-z`, `0-9` and `-`. It names the
    /// pipeline's consumer group (see `engine::pipeline_manager::group_id`).
    pub name: String,
    /// The topics it reads (at least one).
    pub topics: Vec<String>,
    /// Where a new pipeline starts reading.
    #[serde(default)]
    pub start: Start,
    /// VRL programs, run in order on each record's JSON value.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Where what the filters keep is written.
    pub sink: Sink,
}

/// Where a new pipeline starts reading its topics (a pipeline that has run
/// goes on from its consumer group's committed offsets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// The oldest record still in the log.
    #[default]
    Earliest,
    /// Only records produced after the pipeline started.
    Latest,
}

/// Where a pipeline writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Sink {
    /// A PostgreSQL table in the `public` schema, created when absent; a
    /// later record with the same key replaces the row.
    Postgres {
        /// The table: a lowercase SQL identifier.
        table: String,
        /// The row key: a path into the filtered value ([`KeyPath`]);
        /// default `<topic>:<partition>:<offset>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A Kafka topic.
    Kafka {
        /// The topic written to (not one of the pipeline's own topics).
        topic: String,
        /// The record key: a path into the filtered value ([`KeyPath`]);
        /// default the source record's key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A file of JSON lines.
    File {
        /// The file, an absolute path.
        path: String,
    },
}

impl Sink {
    /// The sink's kind, as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Postgres { .. } => "postgres",
            Sink::Kafka { .. } => "kafka",
            Sink::File { .. } => "file",
        }
    }

    /// Where it writes: the table, the topic or the path.
    pub fn target(&self) -> &str {
        match self {
            Sink::Postgres { table, .. } => table,
            Sink::Kafka { topic, .. } => topic,
            Sink::File { path } => path,
        }
    }
}

/// Why a definition (or a file of them) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// The file is not TOML, or not of the expected shape (a missing or
    /// unknown field, an unknown sink type, ...).
    #[error("invalid pipeline file: {0}")]
    Toml(String),
    /// The JSON is not of the expected shape.
    #[error("invalid pipeline definition: {0}")]
    Json(String),
    /// The file has no `[[pipeline]]`.
    #[error("the file defines no pipeline: add a [[pipeline]] table")]
    Empty,
    /// A name that is not 1 to 63 of `a-z`, `0-9` and `-`.
    #[error("pipeline name {:?}: use 1 to 63 characters of a-z, 0-9 and -", shorten(.0))]
    Name(String),
    /// One name twice in one file.
    #[error("pipeline {0} is defined twice")]
    Duplicate(String),
    /// No topics.
    #[error("pipeline {0}: topics is empty: give at least one topic")]
    NoTopics(String),
    /// A topic name Kafka refuses.
    #[error(
        "pipeline {pipeline}: topic {:?}: use 1 to 249 characters of a-z, A-Z, 0-9, ., _ and -",
        shorten(.topic)
    )]
    Topic {
        /// The pipeline.
        pipeline: String,
        /// The topic.
        topic: String,
    },
    /// One topic twice.
    #[error("pipeline {pipeline}: topic {} is listed twice", Echo(.topic))]
    DuplicateTopic {
        /// The pipeline.
        pipeline: String,
        /// The topic.
        topic: String,
    },
    /// A postgres sink table that is not a plain lowercase identifier.
    #[error(
        "pipeline {pipeline}: sink table {:?}: use a lowercase SQL identifier (a-z or _, then a-z, 0-9 or _, at most 63)",
        shorten(.table)
    )]
    Table {
        /// The pipeline.
        pipeline: String,
        /// The table.
        table: String,
    },
    /// A postgres sink table that is one of chronolog's own.
    #[error("pipeline {pipeline}: sink table {table} is one of chronolog's own tables")]
    ReservedTable {
        /// The pipeline.
        pipeline: String,
        /// The table.
        table: String,
    },
    /// A kafka sink topic Kafka refuses.
    #[error(
        "pipeline {pipeline}: sink topic {:?}: use 1 to 249 characters of a-z, A-Z, 0-9, ., _ and -",
        shorten(.topic)
    )]
    SinkTopic {
        /// The pipeline.
        pipeline: String,
        /// The topic.
        topic: String,
    },
    /// A kafka sink writing into a topic the pipeline reads.
    #[error(
        "pipeline {pipeline}: sink topic {} is one of the pipeline's own topics (a loop)",
        Echo(.topic)
    )]
    SinkLoop {
        /// The pipeline.
        pipeline: String,
        /// The topic.
        topic: String,
    },
    /// A key that is not a path.
    #[error(
        "pipeline {pipeline}: sink key {:?}: use a path into the value such as .id or .order.id (segments of a-z, A-Z, 0-9 and _)",
        shorten(.key)
    )]
    Key {
        /// The pipeline.
        pipeline: String,
        /// The key.
        key: String,
    },
    /// A file sink path that is not absolute.
    #[error("pipeline {pipeline}: sink path {:?}: use an absolute path", shorten(.path))]
    Path {
        /// The pipeline.
        pipeline: String,
        /// The path.
        path: String,
    },
    /// A filter that does not compile.
    #[error("pipeline {pipeline}: {error}")]
    Filter {
        /// The pipeline.
        pipeline: String,
        /// Where and why.
        error: CompileError,
    },
}

/// The shape of a pipeline file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    pipeline: Vec<Definition>,
}

/// Reads a pipeline file: every definition in it, validated and normalised,
/// in the file's order. The first problem found refuses the whole file.
pub fn parse_file(text: &str) -> Result<Vec<Definition>, DefinitionError> {
    let file: File = toml::from_str(text).map_err(|e| DefinitionError::Toml(cut(&one_line(&e))))?;
    if file.pipeline.is_empty() {
        return Err(DefinitionError::Empty);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut definitions = Vec::with_capacity(file.pipeline.len());
    for definition in file.pipeline {
        let definition = definition.validate()?;
        if !seen.insert(definition.name.clone()) {
            return Err(DefinitionError::Duplicate(definition.name));
        }
        definitions.push(definition);
    }
    Ok(definitions)
}

/// `toml`'s message on one line: it spreads the location and a caret over
/// several.
fn one_line(error: &toml::de::Error) -> String {
    let message = error.message().trim_end_matches('\n');
    match error.span() {
        Some(span) => match toml_location(error) {
            Some((line, column)) => format!("line {line}, column {column}: {message}"),
            None => format!("at byte {}: {message}", span.start),
        },
        None => message.to_owned(),
    }
}

/// The `line N, column M` `toml` puts in its rendered message.
fn toml_location(error: &toml::de::Error) -> Option<(usize, usize)> {
    let rendered = error.to_string();
    let rest = rendered.split("at line ").nth(1)?;
    let (line, rest) = rest.split_once(", column ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

impl Definition {
    /// Reads one definition from its JSON form (the admin API's), validated
    /// and normalised.
    pub fn from_json(value: serde_json::Value) -> Result<Definition, DefinitionError> {
        let definition: Definition = serde_json::from_value(value)
            .map_err(|e| DefinitionError::Json(cut(&e.to_string())))?;
        definition.validate()
    }

    /// The JSON form: the same fields as the TOML.
    pub fn to_json(&self) -> serde_json::Value {
        // Only strings, lists of strings and enums of unit variants: always
        // representable.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Checks every field, compiles the filters, and returns the definition
    /// normalised (topics sorted).
    pub fn validate(mut self) -> Result<Definition, DefinitionError> {
        if !valid_name(&self.name) {
            return Err(DefinitionError::Name(self.name));
        }
        let pipeline = || self.name.clone();
        if self.topics.is_empty() {
            return Err(DefinitionError::NoTopics(pipeline()));
        }
        for topic in &self.topics {
            if !valid_topic(topic) {
                return Err(DefinitionError::Topic {
                    pipeline: pipeline(),
                    topic: topic.clone(),
                });
            }
        }
        self.topics.sort();
        if let Some(pair) = self.topics.windows(2).find(|w| w[0] == w[1]) {
            return Err(DefinitionError::DuplicateTopic {
                pipeline: pipeline(),
                topic: pair[0].clone(),
            });
        }
        match &self.sink {
            Sink::Postgres { table, key } => {
                if !valid_identifier(table) {
                    return Err(DefinitionError::Table {
                        pipeline: pipeline(),
                        table: table.clone(),
                    });
                }
                if RESERVED_TABLES.contains(&table.as_str()) {
                    return Err(DefinitionError::ReservedTable {
                        pipeline: pipeline(),
                        table: table.clone(),
                    });
                }
                check_key(&self.name, key.as_deref())?;
            }
            Sink::Kafka { topic, key } => {
                if !valid_topic(topic) {
                    return Err(DefinitionError::SinkTopic {
                        pipeline: pipeline(),
                        topic: topic.clone(),
                    });
                }
                if self.topics.contains(topic) {
                    return Err(DefinitionError::SinkLoop {
                        pipeline: pipeline(),
                        topic: topic.clone(),
                    });
                }
                check_key(&self.name, key.as_deref())?;
            }
            Sink::File { path } => {
                if !std::path::Path::new(path).is_absolute() {
                    return Err(DefinitionError::Path {
                        pipeline: pipeline(),
                        path: path.clone(),
                    });
                }
            }
        }
        self.compile_filters()
            .map_err(|error| DefinitionError::Filter {
                pipeline: pipeline(),
                error,
            })?;
        Ok(self)
    }

    /// The filters, compiled.
    pub fn compile_filters(&self) -> Result<Filters, CompileError> {
        Filters::compile(&self.filters)
    }

    /// The sink's key path, if it has one.
    pub fn key_path(&self) -> Option<KeyPath> {
        match &self.sink {
            Sink::Postgres { key, .. } | Sink::Kafka { key, .. } => {
                key.as_deref().and_then(KeyPath::parse)
            }
            Sink::File { .. } => None,
        }
    }
}

fn check_key(pipeline: &str, key: Option<&str>) -> Result<(), DefinitionError> {
    match key {
        Some(key) if KeyPath::parse(key).is_none() => Err(DefinitionError::Key {
            pipeline: pipeline.to_owned(),
            key: key.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// `[a-z0-9-]{1,63}`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A name Kafka accepts for a topic: `[a-zA-Z0-9._-]{1,249}`, not `.` or `..`.
fn valid_topic(topic: &str) -> bool {
    (1..=MAX_TOPIC).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A PostgreSQL identifier that needs no quoting to mean itself:
/// `[a-z_][a-z0-9_]{0,62}`.
fn valid_identifier(identifier: &str) -> bool {
    let mut bytes = identifier.bytes();
    identifier.len() <= MAX_IDENTIFIER
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A path into a filtered value that names a sink key: `.id`, `.order.id`
/// (object fields only; segments of `a-z`, `A-Z`, `0-9` and `_`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath {
    segments: Vec<String>,
}

impl KeyPath {
    /// Reads a path; `None` when it is not one.
    pub fn parse(path: &str) -> Option<KeyPath> {
        let rest = path.strip_prefix('.')?;
        let segments: Vec<String> = rest.split('.').map(str::to_owned).collect();
        let valid = segments
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        valid.then_some(KeyPath { segments })
    }

    /// The path's field names, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(String::as_str)
    }

    /// The value at the path, if there is one.
    pub fn get<'v>(&self, value: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        self.segments
            .iter()
            .try_fold(value, |v, segment| v.as_object()?.get(segment))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    const TWO: &str = r#"
[[pipeline]]
name = "recent"
topics = ["timestamp.command.v1"]
start = "latest"
filters = [
  'if starts_with(string!(.event_timestamp), "19") { abort }',
  '.year = slice!(string!(.event_timestamp), 0, 4)',
]
[pipeline.sink]
type = "postgres"
table = "recent_timestamps"
key = ".command_id"

[[pipeline]]
name = "copy-2"
topics = ["b", "a"]
[pipeline.sink]
type = "file"
path = "/var/lib/chronolog/copy.jsonl"
"#;

    fn error(text: &str) -> String {
        parse_file(text).unwrap_err().to_string()
    }

    fn with_sink(sink: &str) -> String {
        format!("[[pipeline]]\nname = \"p\"\ntopics = [\"t\"]\n[pipeline.sink]\n{sink}\n")
    }

    #[test]
    fn a_message_repeats_at_most_64_characters_of_a_value() {
        let long = "x".repeat(3000);
        let shown = format!("{}…", "x".repeat(64));
        for (sink, expected) in [
            (
                format!("type = \"postgres\"\ntable = \"{long}\""),
                format!(
                    "pipeline p: sink table \"{shown}\": use a lowercase SQL identifier \
                     (a-z or _, then a-z, 0-9 or _, at most 63)"
                ),
            ),
            (
                format!("type = \"file\"\npath = \"{long}\""),
                format!("pipeline p: sink path \"{shown}\": use an absolute path"),
            ),
            (
                format!("type = \"kafka\"\ntopic = \"{long}\""),
                format!(
                    "pipeline p: sink topic \"{shown}\": use 1 to 249 characters of \
                     a-z, A-Z, 0-9, ., _ and -"
                ),
            ),
        ] {
            assert_eq!(error(&with_sink(&sink)), expected);
        }
        assert_eq!(
            error(&format!(
                "[[pipeline]]\nname = \"{long}\"\ntopics = [\"t\"]\n[pipeline.sink]\ntype = \"file\"\npath = \"/x\"\n"
            )),
            format!("pipeline name \"{shown}\": use 1 to 63 characters of a-z, 0-9 and -")
        );
        // An unknown field: the parser's message quotes it, and is cut.
        let message = error(&format!(
            "{}{long} = 1\n",
            with_sink("type = \"file\"\npath = \"/x\"")
        ));
        assert!(message.starts_with("invalid pipeline file: "), "{message}");
        assert_eq!(
            message.chars().count(),
            "invalid pipeline file: ".len() + crate::echo::MESSAGE_LIMIT + 1,
            "{message}"
        );
        let message = Definition::from_json(serde_json::json!({
            "name": "p", "topics": ["t"], "sink": {"type": "file", "path": "/x"}, long.clone(): 1,
        }))
        .unwrap_err()
        .to_string();
        assert!(
            message.starts_with("invalid pipeline definition: unknown field"),
            "{message}"
        );
        assert!(message.ends_with('…'), "{message}");
    }

    #[test]
    fn a_file_of_two_pipelines_is_read_in_order_normalised() {
        let definitions = parse_file(TWO).unwrap();
        assert_eq!(
            definitions,
            vec![
                Definition {
                    name: "recent".into(),
                    topics: vec!["timestamp.command.v1".into()],
                    start: Start::Latest,
                    filters: vec![
                        r#"if starts_with(string!(.event_timestamp), "19") { abort }"#.into(),
                        ".year = slice!(string!(.event_timestamp), 0, 4)".into(),
                    ],
                    sink: Sink::Postgres {
                        table: "recent_timestamps".into(),
                        key: Some(".command_id".into()),
                    },
                },
                Definition {
                    name: "copy-2".into(),
                    topics: vec!["a".into(), "b".into()],
                    start: Start::Earliest,
                    filters: vec![],
                    sink: Sink::File {
                        path: "/var/lib/chronolog/copy.jsonl".into()
                    },
                },
            ]
        );
    }

    #[test]
    fn the_json_form_has_the_toml_fields_and_reads_back() {
        let definitions = parse_file(TWO).unwrap();
        let json = definitions[0].to_json();
        assert_eq!(
            json,
            json!({
                "name": "recent",
                "topics": ["timestamp.command.v1"],
                "start": "latest",
                "filters": [
                    "if starts_with(string!(.event_timestamp), \"19\") { abort }",
                    ".year = slice!(string!(.event_timestamp), 0, 4)",
                ],
                "sink": {"type": "postgres", "table": "recent_timestamps", "key": ".command_id"},
            })
        );
        assert_eq!(Definition::from_json(json).unwrap(), definitions[0]);
        assert_eq!(
            definitions[1].to_json()["sink"],
            json!({"type": "file", "path": "/var/lib/chronolog/copy.jsonl"})
        );
        assert_eq!(
            Definition::from_json(json!({"name": "x", "topics": ["t"], "sink": {"type": "s3"}}))
                .unwrap_err()
                .to_string(),
            "invalid pipeline definition: unknown variant `s3`, expected one of `postgres`, `kafka`, `file`"
        );
    }

    #[test]
    fn bad_files_are_refused_with_exact_messages() {
        assert_eq!(
            error("[[pipeline]\nname = 1"),
            "invalid pipeline file: line 1, column 12: unclosed array table, expected `]`"
        );
        assert_eq!(
            error("title = \"x\"\n"),
            "invalid pipeline file: line 1, column 1: unknown field `title`, expected `pipeline`"
        );
        assert_eq!(
            error(""),
            "the file defines no pipeline: add a [[pipeline]] table"
        );
        assert_eq!(
            error(&with_sink("type = \"s3\"\nbucket = \"b\"")),
            "invalid pipeline file: line 5, column 8: unknown variant `s3`, expected one of `postgres`, `kafka`, `file`"
        );
        assert_eq!(
            error(&with_sink(
                "type = \"file\"\npath = \"/x\"\ncompress = true"
            )),
            "invalid pipeline file: line 4, column 1: unknown field `compress`, expected `path`"
        );
        assert_eq!(
            error(
                "[[pipeline]]\nname = \"Recent\"\ntopics = [\"t\"]\n[pipeline.sink]\ntype = \"file\"\npath = \"/x\"\n"
            ),
            "pipeline name \"Recent\": use 1 to 63 characters of a-z, 0-9 and -"
        );
        let long = "a".repeat(64);
        assert_eq!(
            error(&format!(
                "[[pipeline]]\nname = \"{long}\"\ntopics = [\"t\"]\n[pipeline.sink]\ntype = \"file\"\npath = \"/x\"\n"
            )),
            format!("pipeline name \"{long}\": use 1 to 63 characters of a-z, 0-9 and -")
        );
        assert_eq!(
            error(
                "[[pipeline]]\nname = \"p\"\ntopics = []\n[pipeline.sink]\ntype = \"file\"\npath = \"/x\"\n"
            ),
            "pipeline p: topics is empty: give at least one topic"
        );
        assert_eq!(
            error(
                "[[pipeline]]\nname = \"p\"\ntopics = [\"a b\"]\n[pipeline.sink]\ntype = \"file\"\npath = \"/x\"\n"
            ),
            "pipeline p: topic \"a b\": use 1 to 249 characters of a-z, A-Z, 0-9, ., _ and -"
        );
        assert_eq!(
            error(
                "[[pipeline]]\nname = \"p\"\ntopics = [\"a\", \"a\"]\n[pipeline.sink]\ntype = \"file\"\npath = \"/x\"\n"
            ),
            "pipeline p: topic a is listed twice"
        );
        let file = with_sink("type = \"file\"\npath = \"/x\"");
        assert_eq!(
            error(&format!("{file}{file}")),
            "pipeline p is defined twice"
        );
    }

    #[test]
    fn sinks_are_checked() {
        assert_eq!(
            error(&with_sink("type = \"postgres\"\ntable = \"Recent\"")),
            "pipeline p: sink table \"Recent\": use a lowercase SQL identifier (a-z or _, then a-z, 0-9 or _, at most 63)"
        );
        assert_eq!(
            error(&with_sink(
                "type = \"postgres\"\ntable = \"x; drop table y\""
            )),
            "pipeline p: sink table \"x; drop table y\": use a lowercase SQL identifier (a-z or _, then a-z, 0-9 or _, at most 63)"
        );
        assert_eq!(
            error(&with_sink(
                "type = \"postgres\"\ntable = \"timestamp_records\""
            )),
            "pipeline p: sink table timestamp_records is one of chronolog's own tables"
        );
        assert_eq!(
            error(&with_sink(
                "type = \"postgres\"\ntable = \"r\"\nkey = \"command_id\""
            )),
            "pipeline p: sink key \"command_id\": use a path into the value such as .id or .order.id (segments of a-z, A-Z, 0-9 and _)"
        );
        assert_eq!(
            error(&with_sink("type = \"kafka\"\ntopic = \"t\"")),
            "pipeline p: sink topic t is one of the pipeline's own topics (a loop)"
        );
        assert_eq!(
            error(&with_sink("type = \"kafka\"\ntopic = \"\"")),
            "pipeline p: sink topic \"\": use 1 to 249 characters of a-z, A-Z, 0-9, ., _ and -"
        );
        assert_eq!(
            error(&with_sink("type = \"file\"\npath = \"out.jsonl\"")),
            "pipeline p: sink path \"out.jsonl\": use an absolute path"
        );
        assert_eq!(
            error(&with_sink("type = \"postgres\"")),
            "invalid pipeline file: line 4, column 1: missing field `table`"
        );
        let kafka = parse_file(&with_sink(
            "type = \"kafka\"\ntopic = \"out\"\nkey = \".a.b\"",
        ))
        .unwrap();
        assert_eq!(
            kafka[0].sink,
            Sink::Kafka {
                topic: "out".into(),
                key: Some(".a.b".into())
            }
        );
        assert_eq!(
            (kafka[0].sink.kind(), kafka[0].sink.target()),
            ("kafka", "out")
        );
    }

    #[test]
    fn a_filter_that_does_not_compile_refuses_the_file_with_its_place() {
        let text = "[[pipeline]]\nname = \"p\"\ntopics = [\"t\"]\nfilters = ['.a = 1', \"\"\"\n.b = 2\n.c = upcase(.d)\"\"\"]\n[pipeline.sink]\ntype = \"file\"\npath = \"/x\"\n";
        let message = error(text);
        assert!(
            message.starts_with("pipeline p: filters[1]:2:6: "),
            "{message}"
        );
    }

    #[test]
    fn a_key_path_reads_object_fields() {
        let value = json!({"order": {"id": 7}, "id": "a"});
        let path = KeyPath::parse(".order.id").unwrap();
        assert_eq!(path.get(&value), Some(&json!(7)));
        assert_eq!(
            KeyPath::parse(".id").unwrap().get(&value),
            Some(&json!("a"))
        );
        assert_eq!(KeyPath::parse(".missing").unwrap().get(&value), None);
        assert_eq!(KeyPath::parse(".id.x").unwrap().get(&value), None);
        for bad in ["", ".", "id", ".a..b", ".a-b", ".a.", "..a"] {
            assert_eq!(KeyPath::parse(bad), None, "{bad}");
        }
    }
}
