//! Pipeline filters: VRL programs (Vector's Remap Language) run in order on
//! each record.
//!
//! A filter sees the record's JSON value as the VRL event (`.field`) and the
//! record's position as read-only metadata: `%topic` (string), `%partition`
//! and `%offset` (integers), `%timestamp` (a timestamp, or null when the
//! record has none), `%key` (string or null) and `%headers` (an object of
//! header name to string or null; of two headers with one name the later
//! wins). `abort` drops the record; a run-time error fails it with VRL's
//! message; otherwise the event as the last filter left it is kept.
//!
//! Programs are compiled and type-checked once ([`Filters::compile`]), so a
//! misspelt field function, a fallible call left unhandled or a function
//! that is not allowed is refused before anything runs, with the filter's
//! index and the `line:column` of the error in its source.
//!
//! # Functions
//!
//! Only functions whose result depends on their arguments alone are
//! registered ([`ALLOWED_FUNCTIONS`]), so replaying a range of the log gives
//! the records the live run gave. The crate is built without VRL's
//! environment (`get_env_var`), system (`get_hostname`,
//! `get_timezone_name`, `parse_etld`, `encode_proto`, `parse_proto`,
//! `validate_json_schema`), network (`dns_lookup`, `reverse_dns`,
//! `http_request`) and cryptographic/hash function features; of what
//! remains these are left out ([`FORBIDDEN_FUNCTIONS`]): `now` (the
//! clock), `log` (I/O), `random_bool`, `random_bytes`, `random_float`,
//! `random_int`, `uuid_v4`, `uuid_v7` (randomness, and the clock for v7),
//! and `parse_syslog`, `parse_klog`, `parse_linux_authorization` and
//! `parse_groks`, which fill a missing year or offset from the clock.
//! Time zones are UTC: a timestamp parsed without an offset is UTC on every
//! machine.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::pipelines::Document;

use vrl::compiler::runtime::{Runtime, Terminate};
use vrl::compiler::state::ExternalEnv;
use vrl::compiler::{CompileConfig, ExpressionError, Function, Program, TargetValue, TimeZone};
use vrl::diagnostic::{DiagnosticList, Formatter};
use vrl::path::{OwnedTargetPath, PathPrefix};
use vrl::value::kind::Collection;
use vrl::value::{Kind, ObjectMap, Secrets, Value};

/// The VRL functions a filter may call: every function of the VRL standard
/// library this crate is built with, less [`FORBIDDEN_FUNCTIONS`]. An
/// explicit list, so that a function a later VRL release adds is not
/// admitted before someone has checked that it does no I/O.
pub const ALLOWED_FUNCTIONS: &[&str] = &[
    "abs",
    "append",
    "array",
    "assert",
    "assert_eq",
    "basename",
    "bool",
    "camelcase",
    "ceil",
    "chunks",
    "community_id",
    "compact",
    "contains",
    "contains_all",
    "decode_base16",
    "decode_base64",
    "decode_charset",
    "decode_gzip",
    "decode_lz4",
    "decode_mime_q",
    "decode_percent",
    "decode_punycode",
    "decode_snappy",
    "decode_zlib",
    "decode_zstd",
    "del",
    "dirname",
    "downcase",
    "encode_base16",
    "encode_base64",
    "encode_charset",
    "encode_csv",
    "encode_gzip",
    "encode_json",
    "encode_key_value",
    "encode_logfmt",
    "encode_lz4",
    "encode_percent",
    "encode_punycode",
    "encode_snappy",
    "encode_zlib",
    "encode_zstd",
    "ends_with",
    "exists",
    "filter",
    "find",
    "flatten",
    "float",
    "floor",
    "for_each",
    "format_int",
    "format_number",
    "format_timestamp",
    "from_entries",
    "from_unix_timestamp",
    "get",
    "haversine",
    "includes",
    "int",
    "ip_aton",
    "ip_cidr_contains",
    "ip_ntoa",
    "ip_ntop",
    "ip_pton",
    "ip_subnet",
    "ip_to_ipv6",
    "ipv6_to_ipv4",
    "is_array",
    "is_boolean",
    "is_empty",
    "is_float",
    "is_integer",
    "is_ipv4",
    "is_ipv6",
    "is_json",
    "is_null",
    "is_nullish",
    "is_object",
    "is_regex",
    "is_string",
    "is_timestamp",
    "join",
    "kebabcase",
    "keys",
    "length",
    "map_keys",
    "map_values",
    "match",
    "match_any",
    "match_array",
    "match_datadog_query",
    "merge",
    "mod",
    "object",
    "object_from_array",
    "parse_apache_log",
    "parse_aws_alb_log",
    "parse_aws_cloudwatch_log_subscription_message",
    "parse_aws_vpc_flow_log",
    "parse_bytes",
    "parse_cbor",
    "parse_cef",
    "parse_common_log",
    "parse_csv",
    "parse_duration",
    "parse_float",
    "parse_glog",
    "parse_grok",
    "parse_influxdb",
    "parse_int",
    "parse_json",
    "parse_key_value",
    "parse_logfmt",
    "parse_nginx_log",
    "parse_query_string",
    "parse_regex",
    "parse_regex_all",
    "parse_ruby_hash",
    "parse_timestamp",
    "parse_tokens",
    "parse_url",
    "parse_user_agent",
    "parse_xml",
    "parse_yaml",
    "pascalcase",
    "pop",
    "push",
    "range",
    "redact",
    "remove",
    "replace",
    "replace_with",
    "round",
    "screamingsnakecase",
    "set",
    "shannon_entropy",
    "sieve",
    "slice",
    "snakecase",
    "split",
    "split_path",
    "starts_with",
    "string",
    "strip_ansi_escape_codes",
    "strip_whitespace",
    "strlen",
    "tag_types_externally",
    "tally",
    "tally_value",
    "timestamp",
    "to_bool",
    "to_entries",
    "to_float",
    "to_int",
    "to_regex",
    "to_string",
    "to_syslog_facility",
    "to_syslog_facility_code",
    "to_syslog_level",
    "to_syslog_severity",
    "to_unix_timestamp",
    "truncate",
    "type_def",
    "unflatten",
    "unique",
    "unnest",
    "upcase",
    "uuid_from_friendly_id",
    "values",
    "zip",
];

/// Functions of the VRL standard library that filters may not call: they
/// read the clock, randomness, the environment, the host or the network,
/// or write logs. Calling one is a compile error naming the function.
pub const FORBIDDEN_FUNCTIONS: &[&str] = &[
    "now",
    "log",
    "random_bool",
    "random_bytes",
    "random_float",
    "random_int",
    "uuid_v4",
    "uuid_v7",
    "parse_syslog",
    "parse_klog",
    "parse_linux_authorization",
    "parse_groks",
    "get_env_var",
    "get_hostname",
    "get_timezone_name",
    "dns_lookup",
    "reverse_dns",
    "http_request",
];

/// VRL's code for a call to a function that is not registered.
const UNDEFINED_FUNCTION: usize = 105;

/// A filter that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filters[{index}]:{line}:{column}: {message}")]
pub struct CompileError {
    /// The filter's place in the pipeline's list, from 0.
    pub index: usize,
    /// Line of the first error in the filter's source, from 1.
    pub line: usize,
    /// Column (in characters) of the first error, from 1.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// VRL's full report of every error, with the source marked.
    pub report: String,
}

/// Where a record comes from: what a filter reads as metadata.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta<'a> {
    /// The record's topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp in milliseconds since the epoch, if it has one.
    pub timestamp_ms: Option<i64>,
    /// Its key, if it has one.
    pub key: Option<&'a [u8]>,
    /// Its headers, in order.
    pub headers: &'a [Header<'a>],
}

/// One record header.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// The header's name.
    pub name: &'a str,
    /// Its value (a header may have none).
    pub value: Option<&'a [u8]>,
}

/// What the filters made of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every filter passed: the record's value as the last one left it.
    Kept(Document),
    /// A filter called `abort`.
    Dropped,
    /// A filter failed at run time: `filters[i]: ` and VRL's message.
    Failed(String),
}

/// A pipeline's filters, compiled: cheap to clone (the programs are shared)
/// and `Send + Sync`, so every partition worker can hold a copy. Running
/// them keeps no state between records.
#[derive(Debug, Clone)]
pub struct Filters {
    programs: Arc<[Program]>,
    timezone: TimeZone,
    /// Whether any program reads the metadata (`%…`): when none does, a
    /// record's metadata is not built.
    reads_metadata: bool,
}

impl Filters {
    /// Compiles and type-checks `sources` in order. The first filter that
    /// does not compile is reported.
    pub fn compile<S: AsRef<str>>(sources: &[S]) -> Result<Filters, CompileError> {
        let functions = functions();
        let external = ExternalEnv::new_with_kind(Kind::json(), metadata_kind());
        let mut programs = Vec::with_capacity(sources.len());
        for (index, source) in sources.iter().enumerate() {
            let source = source.as_ref();
            let mut config = CompileConfig::default();
            config.set_read_only_path(OwnedTargetPath::metadata_root(), true);
            let compiled =
                vrl::compiler::compile_with_external(source, &functions, &external, config)
                    .map_err(|diagnostics| compile_error(index, source, diagnostics))?;
            programs.push(compiled.program);
        }
        let reads_metadata = programs.iter().any(|program| {
            program
                .info()
                .target_queries
                .iter()
                .any(|path| path.prefix == PathPrefix::Metadata)
        });
        Ok(Filters {
            programs: programs.into(),
            timezone: utc(),
            reads_metadata,
        })
    }

    /// How many filters there are.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    /// Whether there are none (every record is kept as it is).
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// Reads a record's value for these filters: into VRL's value when
    /// there are filters, as written when there are none.
    pub fn read(&self, payload: &[u8]) -> Result<Document, serde_json::Error> {
        if self.programs.is_empty() {
            Document::read_json(payload)
        } else {
            Document::read_vrl(payload)
        }
    }

    /// Runs the filters in order on a record's value: each sees what the
    /// one before left.
    pub fn run(&self, document: Document, meta: &RecordMeta<'_>) -> Outcome {
        if self.programs.is_empty() {
            return Outcome::Kept(document);
        }
        let mut target = TargetValue {
            value: document.into_vrl(),
            metadata: if self.reads_metadata {
                metadata(meta)
            } else {
                Value::Object(ObjectMap::new())
            },
            secrets: Secrets::default(),
        };
        let mut runtime = Runtime::default();
        for (index, program) in self.programs.iter().enumerate() {
            match runtime.resolve(&mut target, program, &self.timezone) {
                Ok(_) => {}
                // Only `abort` itself drops: VRL reports a few other
                // failures as aborts too.
                Err(Terminate::Abort(ExpressionError::Abort { .. })) => return Outcome::Dropped,
                Err(error) => return Outcome::Failed(format!("filters[{index}]: {error}")),
            }
            runtime.clear();
        }
        Outcome::Kept(Document::from_vrl(target.value))
    }
}

/// The registered functions: [`ALLOWED_FUNCTIONS`] of VRL's standard library.
fn functions() -> Vec<Box<dyn Function>> {
    vrl::stdlib::all()
        .into_iter()
        .filter(|f| ALLOWED_FUNCTIONS.contains(&f.identifier()))
        .collect()
}

/// UTC, whatever the machine's local time zone.
fn utc() -> TimeZone {
    // "UTC" is in every build of the time zone database VRL carries.
    TimeZone::parse("UTC").unwrap_or_default()
}

/// The type of the metadata, so that `%topic` is known to be a string at
/// compile time and `%nothing` is an error.
fn metadata_kind() -> Kind {
    let fields: BTreeMap<vrl::value::kind::Field, Kind> = BTreeMap::from([
        ("topic".into(), Kind::bytes()),
        ("partition".into(), Kind::integer()),
        ("offset".into(), Kind::integer()),
        ("timestamp".into(), Kind::timestamp().or_null()),
        ("key".into(), Kind::bytes().or_null()),
        (
            "headers".into(),
            Kind::object(Collection::empty().with_unknown(Kind::bytes().or_null())),
        ),
    ]);
    Kind::object(fields)
}

fn metadata(meta: &RecordMeta<'_>) -> Value {
    let bytes_or_null =
        |b: Option<&[u8]>| b.map_or(Value::Null, |b| Value::Bytes(b.to_vec().into()));
    let headers: ObjectMap = meta
        .headers
        .iter()
        .map(|h| (h.name.into(), bytes_or_null(h.value)))
        .collect();
    let timestamp = meta
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or(Value::Null, Value::Timestamp);
    let object: ObjectMap = [
        ("topic", Value::Bytes(meta.topic.as_bytes().to_vec().into())),
        ("partition", Value::Integer(i64::from(meta.partition))),
        ("offset", Value::Integer(meta.offset)),
        ("timestamp", timestamp),
        ("key", bytes_or_null(meta.key)),
        ("headers", Value::Object(headers)),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v))
    .collect();
    Value::Object(object)
}

fn compile_error(index: usize, source: &str, diagnostics: DiagnosticList) -> CompileError {
    let report = Formatter::new(source, diagnostics.clone()).to_string();
    let first = diagnostics
        .errors()
        .into_iter()
        .next()
        .cloned()
        .or_else(|| diagnostics.iter().next().cloned());
    let Some(first) = first else {
        return CompileError {
            index,
            line: 1,
            column: 1,
            message: "the program does not compile".to_owned(),
            report,
        };
    };
    let span = first
        .labels
        .iter()
        .find(|l| l.primary)
        .or_else(|| first.labels.first())
        .map(|l| l.span);
    let start = span.map_or(0, |s| s.start().min(source.len()));
    let (line, column) = line_column(source, start);
    let mut message = first.message.clone();
    if first.code == UNDEFINED_FUNCTION
        && let Some(span) = span
        && let Some(name) = source.get(span.start()..span.end())
    {
        let name = name.split('(').next().unwrap_or(name).trim_end_matches('!');
        if FORBIDDEN_FUNCTIONS.contains(&name) {
            message = format!(
                "function {name} is not allowed in filters: it reads the clock, randomness, \
                 the environment or the network, or writes logs, so a replay would differ"
            );
        }
    }
    CompileError {
        index,
        line,
        column,
        message,
        report,
    }
}

/// 1-based line and character column of byte offset `at` in `source`.
fn line_column(source: &str, at: usize) -> (usize, usize) {
    let mut at = at;
    while !source.is_char_boundary(at) {
        at -= 1;
    }
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    const HEADERS: &[Header<'static>] = &[
        Header {
            name: "trace",
            value: Some(b"abc"),
        },
        Header {
            name: "empty",
            value: None,
        },
    ];

    fn meta() -> RecordMeta<'static> {
        RecordMeta {
            topic: "timestamp.command.v1",
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_764_806_400_123),
            key: Some(b"k-1"),
            headers: HEADERS,
        }
    }

    fn run(sources: &[&str], value: serde_json::Value) -> Outcome {
        let filters = Filters::compile(sources).unwrap();
        let document = filters.read(value.to_string().as_bytes()).unwrap();
        filters.run(document, &meta())
    }

    fn compile_error(sources: &[&str]) -> CompileError {
        Filters::compile(sources).unwrap_err()
    }

    const DROP_1900S: &str = r#"if starts_with(string!(.event_timestamp), "19") { abort }"#;
    const ADD_YEAR: &str = ".year = slice!(string!(.event_timestamp), 0, 4)";

    #[test]
    fn a_dropping_filter_drops_and_keeps_the_rest_unchanged() {
        let old = json!({"command_id": "a", "event_timestamp": "1999-01-01T00:00:00Z"});
        let new = json!({"command_id": "b", "event_timestamp": "2026-12-04T08:00:00Z"});
        assert_eq!(run(&[DROP_1900S], old), Outcome::Dropped);
        assert_eq!(
            run(&[DROP_1900S], new.clone()),
            Outcome::Kept(new.clone().into())
        );
        assert_eq!(
            run(
                &[ADD_YEAR, r#"if .year == "2026" { abort "too new" }"#],
                new
            ),
            Outcome::Dropped
        );
    }

    #[test]
    fn filters_run_in_order_and_a_field_is_added() {
        let value = json!({"command_id": "b", "event_timestamp": "2026-12-04T08:00:00Z", "n": 12345678901234_i64, "f": 1.5});
        assert_eq!(
            run(
                &[DROP_1900S, ADD_YEAR, ".century = slice!(.year, 0, 2)"],
                value
            ),
            Outcome::Kept(
                json!({
                    "command_id": "b",
                    "event_timestamp": "2026-12-04T08:00:00Z",
                    "n": 12345678901234_i64,
                    "f": 1.5,
                    "year": "2026",
                    "century": "20",
                })
                .into()
            )
        );
        assert_eq!(
            run(&[], json!([1, "x"])),
            Outcome::Kept(json!([1, "x"]).into())
        );
    }

    #[test]
    fn the_record_position_is_readable_metadata() {
        let program = r#"
            .source = join!([%topic, to_string(%partition), to_string(%offset)], ":")
            .key = %key
            .at = format_timestamp!(%timestamp, "%Y-%m-%dT%H:%M:%S%.3fZ")
            .trace = %headers.trace
            .empty = %headers.empty
        "#;
        assert_eq!(
            run(&[program], json!({})),
            Outcome::Kept(
                json!({
                    "source": "timestamp.command.v1:2:41",
                    "key": "k-1",
                    "at": "2025-12-04T00:00:00.123Z",
                    "trace": "abc",
                    "empty": null,
                })
                .into()
            )
        );
    }

    #[test]
    fn metadata_is_built_only_for_filters_that_read_it() {
        let reads = |sources: &[&str]| Filters::compile(sources).unwrap().reads_metadata;
        assert!(!reads(&[DROP_1900S, ADD_YEAR]));
        assert!(reads(&[ADD_YEAR, ".p = %partition"]));
        assert!(reads(&[".h = %headers.trace"]));
        assert!(reads(&[".m = %"]));
        assert_eq!(
            run(&[".m = %"], json!({})),
            Outcome::Kept(
                json!({"m": {
                    "topic": "timestamp.command.v1",
                    "partition": 2,
                    "offset": 41,
                    "timestamp": "2025-12-04T00:00:00.123Z",
                    "key": "k-1",
                    "headers": {"trace": "abc", "empty": null},
                }})
                .into()
            )
        );
    }

    #[test]
    fn metadata_cannot_be_written() {
        let error = compile_error(&[r#"%topic = "other""#]);
        assert_eq!((error.index, error.line, error.column), (0, 1, 1));
        assert_eq!(
            error.to_string(),
            format!("filters[0]:1:1: {}", error.message)
        );
    }

    #[test]
    fn a_run_time_error_fails_the_record_with_the_filter_and_vrl_message() {
        let outcome = run(
            &[ADD_YEAR, "to_int!(.n)"],
            json!({"event_timestamp": "2026", "n": "x"}),
        );
        assert_eq!(
            outcome,
            Outcome::Failed(
                "filters[1]: function call error for \"to_int\" at (0:11): Invalid integer \"x\": invalid digit found in string"
                    .into()
            )
        );
        assert_eq!(
            run(&[ADD_YEAR], json!({"event_timestamp": 2026})),
            Outcome::Failed(
                "filters[0]: function call error for \"slice\" at (8:47): function call error for \"string\" at (15:40): expected string, got integer"
                    .into()
            )
        );
    }

    #[test]
    fn a_compile_error_carries_the_filter_index_and_line_column() {
        let error = compile_error(&[ADD_YEAR, ".a = 1\n.b = upcase(.c)"]);
        assert_eq!((error.index, error.line, error.column), (1, 2, 6));
        assert_eq!(
            error.to_string(),
            format!("filters[1]:2:6: {}", error.message)
        );
        assert_eq!(error.message, "unhandled fallible assignment");
        assert!(error.report.contains(":2:6"), "{}", error.report);

        let syntax = compile_error(&[".a = ("]);
        assert_eq!((syntax.index, syntax.line), (0, 1));
        assert!(syntax.to_string().starts_with("filters[0]:1:"), "{syntax}");
    }

    #[test]
    fn functions_with_io_clock_or_randomness_are_refused_at_compile_time() {
        for (source, name, column) in [
            (".at = now()", "now", 7),
            (r#".home = get_env_var!("HOME")"#, "get_env_var", 9),
            (".host = get_hostname!()", "get_hostname", 9),
            (r#"log("x")"#, "log", 1),
            (".id = uuid_v4()", "uuid_v4", 7),
            (".r = random_int(0, 10)", "random_int", 6),
            (r#".ip = dns_lookup!("example.com")"#, "dns_lookup", 7),
            (r#".s = parse_syslog!(.m)"#, "parse_syslog", 6),
        ] {
            let error = compile_error(&[source]);
            assert_eq!(
                error.to_string(),
                format!(
                    "filters[0]:1:{column}: function {name} is not allowed in filters: it reads the clock, randomness, the environment or the network, or writes logs, so a replay would differ"
                ),
                "{source}"
            );
        }
    }

    #[test]
    fn every_allowed_function_exists_and_none_is_forbidden() {
        let registered: Vec<&str> = functions().iter().map(|f| f.identifier()).collect();
        let missing: Vec<&&str> = ALLOWED_FUNCTIONS
            .iter()
            .filter(|name| !registered.contains(name))
            .collect();
        assert_eq!(missing, Vec::<&&str>::new());
        assert_eq!(registered.len(), ALLOWED_FUNCTIONS.len());
        let both: Vec<&&str> = ALLOWED_FUNCTIONS
            .iter()
            .filter(|name| FORBIDDEN_FUNCTIONS.contains(name))
            .collect();
        assert_eq!(both, Vec::<&&str>::new());
    }

    #[test]
    fn filters_are_send_sync_and_deterministic() {
        fn shared<T: Send + Sync + Clone>(_: &T) {}
        let filters = Filters::compile(&[DROP_1900S, ADD_YEAR]).unwrap();
        shared(&filters);
        let value = br#"{"event_timestamp": "2026-12-04T08:00:00Z"}"#;
        let first = filters.run(filters.read(value).unwrap(), &meta());
        let other = filters.clone();
        let second = std::thread::spawn(move || other.run(other.read(value).unwrap(), &meta()))
            .join()
            .unwrap();
        assert_eq!(first, second);
    }
}
