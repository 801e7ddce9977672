//! A running pipeline as sinks of the engine: every record's JSON value goes
//! through the pipeline's current filters, and what they keep is written to
//! its output, with the record's place in the log and the version of the
//! pipeline that processed it.
//!
//! The filters in use are swapped by the pipeline manager when a new
//! version is applied ([`PipelineState::update`]); a worker reads the
//! version in use once per record, so a change takes effect between two
//! records of a partition, every record is processed by exactly one version,
//! and that version is written with its output.
//!
//! Outputs:
//! * [`PipelineTable`]: a PostgreSQL table, through [`PgSink`] (the
//!   partition's offset in the batch's transaction: exactly-once effect); a
//!   later record with the same key replaces the row;
//! * [`TopicOutput`]: a Kafka topic, written and acknowledged by the broker
//!   before the offsets are (at least once);
//! * [`FileOutput`]: JSON lines, flushed and fsynced before the offsets are
//!   acknowledged (at least once).
//!
//! At least once means a crash can write a record twice: every output
//! carries the source position (`topic:partition:offset`), which tells such
//! duplicates apart.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{Array, BigInt, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus::{Histogram, IntCounter};
use rdkafka::Message as _;
use rdkafka::message::{BorrowedMessage, Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::db::queries::PartitionKey;
use crate::db::{DbError, InsertFirst};
use crate::engine::pg_sink::Projection;
use crate::engine::sink::{Decoded, Records, Rejected, Sink, SinkError, Written};
use crate::kafka::record::{DecodeError, RecordHeaders};
use crate::metrics::Metrics;
use crate::pipelines::{
    CompileError, Definition, Filters, Header, KeyPath, Outcome, RecordMeta, Sink as SinkDefinition,
};

/// Longest key a sink takes (a PostgreSQL index entry holds about 2.7 kB).
const MAX_KEY_BYTES: usize = 1024;

/// One version of a pipeline, compiled.
#[derive(Clone)]
pub struct Compiled {
    /// The version.
    pub version: i32,
    /// Its filters.
    pub filters: Filters,
    /// The path of the output's key in the filtered value, if the
    /// definition names one.
    pub key: Option<KeyPath>,
    /// Whether the outputs go to a PostgreSQL table, whose `jsonb` holds a
    /// number only within the range of PostgreSQL's `numeric`.
    pub to_postgres: bool,
    /// Whether the outputs go to a Kafka topic, which carries each source
    /// record's key and headers on: only then are they kept with the output.
    pub to_kafka: bool,
}

impl Compiled {
    /// Version `version` of `definition`, its filters compiled.
    pub fn new(version: i32, definition: &Definition) -> Result<Self, CompileError> {
        Ok(Self {
            version,
            filters: definition.compile_filters()?,
            key: definition.key_path(),
            to_postgres: matches!(definition.sink, SinkDefinition::Postgres { .. }),
            to_kafka: matches!(definition.sink, SinkDefinition::Kafka { .. }),
        })
    }
}

/// What every output of one pipeline shares: its name, the version in use,
/// its metrics.
pub struct PipelineState {
    name: String,
    current: RwLock<Arc<Compiled>>,
    counters: Counters,
    /// A replay's end per topic and partition: records at or past it are
    /// dropped (the replay's consumer reads on until every partition is
    /// done). Empty for a live pipeline.
    ends: RwLock<HashMap<String, HashMap<i32, i64>>>,
}

/// The pipeline's series, looked up once rather than per record.
struct Counters {
    read: IntCounter,
    out: IntCounter,
    dropped: IntCounter,
    failed: IntCounter,
    filter_seconds: Histogram,
}

impl PipelineState {
    /// A pipeline running `compiled`.
    pub fn new(name: &str, compiled: Compiled, metrics: Arc<Metrics>) -> Arc<Self> {
        // Every outcome's series exists from the start, at 0.
        let records = |outcome: &str| metrics.pipeline_records.with_label_values(&[name, outcome]);
        let counters = Counters {
            read: records("in"),
            out: records("out"),
            dropped: records("dropped"),
            failed: records("failed"),
            filter_seconds: metrics.pipeline_filter_seconds.with_label_values(&[name]),
        };
        Arc::new(Self {
            name: name.to_owned(),
            current: RwLock::new(Arc::new(compiled)),
            counters,
            ends: RwLock::default(),
        })
    }

    /// Makes this a replay that ends at `ends` (per topic and partition,
    /// the first offset not to process).
    pub fn end_at(&self, ends: HashMap<(String, i32), i64>) {
        let mut by_topic: HashMap<String, HashMap<i32, i64>> = HashMap::new();
        for ((topic, partition), end) in ends {
            by_topic.entry(topic).or_default().insert(partition, end);
        }
        *self.ends.write().unwrap_or_else(|p| p.into_inner()) = by_topic;
    }

    /// Whether the record at `offset` is past the replay's end.
    fn past_end(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let ends = self.ends.read().unwrap_or_else(|p| p.into_inner());
        !ends.is_empty()
            && ends
                .get(topic)
                .and_then(|partitions| partitions.get(&partition))
                .is_none_or(|&end| offset >= end)
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version in use.
    pub fn version(&self) -> i32 {
        self.compiled().version
    }

    /// Takes `compiled` into use from the next record on.
    pub fn update(&self, compiled: Compiled) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(compiled);
    }

    fn compiled(&self) -> Arc<Compiled> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs the version in use on one record. A value that is not JSON and
    /// a filter that fails are errors (the record is dead-lettered); a
    /// record a filter aborts on is kept as dropped, so that its offset is
    /// acknowledged with the batch.
    pub fn process(
        &self,
        message: &BorrowedMessage<'_>,
        headers: &RecordHeaders,
    ) -> Result<Processed, DecodeError> {
        if self.past_end(message.topic(), message.partition(), message.offset()) {
            return Ok(Processed {
                version: self.version(),
                source: Source {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                },
                output: None,
            });
        }
        self.counters.read.inc();
        let result = self.run(message, headers);
        match &result {
            Ok(Processed { output: None, .. }) => self.counters.dropped.inc(),
            Ok(_) => {}
            Err(_) => self.counters.failed.inc(),
        }
        result
    }

    fn run(
        &self,
        message: &BorrowedMessage<'_>,
        headers: &RecordHeaders,
    ) -> Result<Processed, DecodeError> {
        let compiled = self.compiled();
        let payload = message.payload().ok_or(DecodeError::EmptyValue)?;
        let document = compiled
            .filters
            .read(payload)
            .map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let source = Source {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let header_refs: Vec<Header<'_>> = headers
            .readable
            .iter()
            .map(|(name, value)| Header {
                name,
                value: Some(value),
            })
            .collect();
        let meta = RecordMeta {
            topic: &source.topic,
            partition: source.partition,
            offset: source.offset,
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key(),
            headers: &header_refs,
        };
        let started = Instant::now();
        let outcome = compiled.filters.run(document, &meta);
        self.counters
            .filter_seconds
            .observe(started.elapsed().as_secs_f64());
        let doc = match outcome {
            Outcome::Kept(doc) => doc,
            Outcome::Dropped => {
                return Ok(Processed {
                    version: compiled.version,
                    source,
                    output: None,
                });
            }
            Outcome::Failed(error) => return Err(DecodeError::FilterError(error)),
        };
        // What PostgreSQL would refuse for ever must not reach a sink: a NUL
        // in a text, a key longer than an index entry can be, and for a
        // table a number its `jsonb` cannot hold (a batch holding one would
        // be retried for ever).
        if doc.holds_nul() {
            return Err(DecodeError::FilterError(
                "the filtered value holds a NUL character".to_owned(),
            ));
        }
        if compiled.to_postgres
            && let Some(number) = doc.number_past_numeric()
        {
            return Err(DecodeError::SinkRefused(format!(
                "the value holds a number PostgreSQL's jsonb cannot hold \
                 (below 10^131072, at most 16383 decimals): {number}"
            )));
        }
        let key = match &compiled.key {
            None => None,
            Some(path) => Some(doc.key_at(path).ok_or_else(|| {
                DecodeError::FilterError(
                    "the filtered value has no string or number at the sink's key path".to_owned(),
                )
            })?),
        };
        if key.as_ref().is_some_and(|k| k.len() > MAX_KEY_BYTES) {
            return Err(DecodeError::FilterError(format!(
                "the key at the sink's key path is longer than {MAX_KEY_BYTES} bytes"
            )));
        }
        let (record_key, headers) = if compiled.to_kafka {
            (message.key().map(<[u8]>::to_vec), headers.readable.clone())
        } else {
            (None, Vec::new())
        };
        Ok(Processed {
            version: compiled.version,
            source,
            output: Some(Output {
                doc: doc.to_json(),
                key,
                record_key,
                headers,
            }),
        })
    }
}

/// Where a record was in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

impl Source {
    /// `topic:partition:offset`.
    pub fn position(&self) -> String {
        format!("{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

/// A record after the filters.
#[derive(Debug, Clone)]
pub struct Processed {
    /// The version of the pipeline that processed it.
    pub version: i32,
    /// Where it came from.
    pub source: Source,
    /// What the filters kept; `None` when one dropped it.
    pub output: Option<Output>,
}

/// What a kept record writes.
#[derive(Debug, Clone)]
pub struct Output {
    /// The filtered value, as JSON text.
    pub doc: String,
    /// The key at the definition's key path, if it names one.
    pub key: Option<String>,
    /// The source record's key, kept for a Kafka sink only (`None` for
    /// the others, which do not write it).
    pub record_key: Option<Vec<u8>>,
    /// The source record's headers, kept for a Kafka sink only.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// `text` as a JSON string (serialising a string cannot fail).
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// The dead letter of an output its sink refused for what it is.
fn refused(record: &Decoded<Processed>, why: &str) -> Rejected {
    let (item, output) = (&record.item, record.item.output.as_ref());
    let value = output.map(|o| o.doc.as_bytes());
    let dead_letter = crate::kafka::dead_letter::DeadLetter::new(
        &crate::kafka::dead_letter::SourcePosition {
            topic: item.source.topic.clone(),
            partition: item.source.partition,
            offset: item.source.offset,
        },
        output.and_then(|o| o.record_key.as_deref()),
        value,
        output.map(|o| o.headers.clone()).unwrap_or_default(),
        &DecodeError::SinkRefused(format!("the output topic refused the record: {why}")),
    );
    Rejected {
        offset: record.offset,
        record_applied: false,
        dead_letter,
        correlation_id: record.correlation_id.clone(),
    }
}

/// Counts the kept records of a durable batch: `refused` of them were
/// dead-lettered by the sink (failed), the others are out.
fn count_out(state: &PipelineState, records: &[Decoded<Processed>], refused: usize) {
    let kept = records.iter().filter(|r| r.item.output.is_some()).count();
    state
        .counters
        .out
        .inc_by(kept.saturating_sub(refused) as u64);
    state.counters.failed.inc_by(refused as u64);
}

/// A pipeline's PostgreSQL table: `(key, doc, source_topic,
/// source_partition, source_offset, pipeline_version, written_at)`.
///
/// A later record with the same key replaces the row: a batch is tried as a
/// plain `INSERT` in a savepoint first and upserted when a key was already
/// there (see [`InsertFirst`]).
pub struct PipelineTable {
    state: Arc<PipelineState>,
    insert: String,
    upsert: String,
    insert_first: InsertFirst,
}

impl PipelineTable {
    /// Writes `state`'s output into `table` (a name the definition
    /// validated as a plain lowercase identifier).
    pub fn new(state: Arc<PipelineState>, table: &str) -> Self {
        // A batch is one partition's: its topic and partition are bound
        // once, not per row. The arrays are unnested in the select list,
        // which streams their elements in step: `FROM unnest(…)` first
        // copies every row into a tuplestore, and inserting 45 batches of
        // 4,444 rows took 5-10% longer that way (PostgreSQL 15).
        let insert = format!(
            "INSERT INTO \"{table}\" (key, doc, source_topic, source_partition, source_offset, \
                pipeline_version, written_at) \
             SELECT unnest($1::text[]), unnest($2::text[])::jsonb, $3, $4, \
                unnest($5::bigint[]), unnest($6::int[]), now()"
        );
        let upsert = format!(
            "{insert} ON CONFLICT (key) DO UPDATE SET doc = excluded.doc, \
                source_topic = excluded.source_topic, \
                source_partition = excluded.source_partition, \
                source_offset = excluded.source_offset, \
                pipeline_version = excluded.pipeline_version, \
                written_at = excluded.written_at"
        );
        Self {
            state,
            insert,
            upsert,
            insert_first: InsertFirst::default(),
        }
    }

    /// Creates the table when it is absent, and checks that one already
    /// there can take the pipeline's rows: a column of each name (their
    /// types are PostgreSQL's to check at the first batch), and a unique
    /// index on `key` alone that `ON CONFLICT (key)` can use (valid,
    /// immediate, not partial, comparing keys as bytes or by a deterministic
    /// collation), for a later record to replace the row. A table made by
    /// hand without one would take duplicate keys without a word, as a batch
    /// is inserted first.
    ///
    /// The key compares as bytes (`COLLATE "C"`): its index orders the same
    /// on every machine and C library version, and an insert into it took
    /// 15-20% less time than with the database's default collation (4,500
    /// rows into 200,000).
    pub async fn prepare(conn: &mut AsyncPgConnection, table: &str) -> Result<(), TableError> {
        diesel::sql_query(format!(
            "CREATE TABLE IF NOT EXISTS \"{table}\" ( \
                key text COLLATE \"C\" PRIMARY KEY, \
                doc jsonb NOT NULL, \
                source_topic text NOT NULL, \
                source_partition integer NOT NULL, \
                source_offset bigint NOT NULL, \
                pipeline_version integer NOT NULL, \
                written_at timestamptz NOT NULL DEFAULT now())"
        ))
        .execute(conn)
        .await
        .map_err(|e| TableError::db(table, e))?;
        let shape: TableShape = diesel::sql_query(
            "WITH t AS (SELECT to_regclass(quote_ident($1)) AS oid) \
             SELECT ARRAY(SELECT c FROM unnest($2::text[]) WITH ORDINALITY AS u(c, n) \
                          WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a \
                                            WHERE a.attrelid = t.oid AND a.attname = c \
                                              AND a.attnum > 0 AND NOT a.attisdropped) \
                          ORDER BY n) AS missing, \
                    EXISTS (SELECT 1 FROM pg_index i \
                            JOIN pg_attribute a \
                              ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                            LEFT JOIN pg_collation c ON c.oid = i.indcollation[0] \
                            WHERE i.indrelid = t.oid AND a.attname = 'key' AND i.indisunique \
                              AND i.indimmediate AND i.indisvalid AND i.indisready \
                              AND i.indislive AND i.indnkeyatts = 1 AND i.indpred IS NULL \
                              AND coalesce(c.collisdeterministic, true)) AS keyed \
             FROM t",
        )
        .bind::<Text, _>(table)
        .bind::<diesel::sql_types::Array<Text>, _>(&COLUMNS[..])
        .get_result(conn)
        .await
        .map_err(|e| TableError::db(table, e))?;
        let shape_error = |why: String| TableError::Shape {
            table: table.to_owned(),
            why,
        };
        if !shape.missing.is_empty() {
            return Err(shape_error(format!(
                "it has no column {}",
                shape.missing.join(", ")
            )));
        }
        if !shape.keyed {
            return Err(shape_error(
                "it has no usable unique index on (key) alone, so a later record could not \
                 replace its key's row"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

impl TableError {
    fn db(table: &str, error: diesel::result::Error) -> Self {
        TableError::Db {
            table: table.to_owned(),
            source: error.into(),
        }
    }
}

/// The columns a pipeline's table needs.
const COLUMNS: [&str; 7] = [
    "key",
    "doc",
    "source_topic",
    "source_partition",
    "source_offset",
    "pipeline_version",
    "written_at",
];

/// What [`PipelineTable::prepare`] found of a table.
#[derive(diesel::QueryableByName)]
struct TableShape {
    #[diesel(sql_type = diesel::sql_types::Array<Text>)]
    missing: Vec<String>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    keyed: bool,
}

/// Why a pipeline cannot write into its table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The table could not be created or looked at.
    #[error("cannot prepare table \"{table}\": {source}")]
    Db {
        /// The table.
        table: String,
        /// What failed.
        source: DbError,
    },
    /// A table of that name is there, not made to take a pipeline's rows.
    #[error("table \"{table}\" cannot take the pipeline's rows: {why}")]
    Shape {
        /// The table.
        table: String,
        /// What is wrong with it.
        why: String,
    },
}

impl Projection for PipelineTable {
    type Item = Processed;

    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        headers: &RecordHeaders,
    ) -> Result<Processed, DecodeError> {
        self.state.process(message, headers)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        partition: &'a PartitionKey,
        records: &'a [Decoded<Processed>],
    ) -> BoxFuture<'a, Result<Vec<Rejected>, DbError>> {
        async move {
            // A record without a key path is keyed by its position.
            let positions: Vec<Option<String>> = records
                .iter()
                .map(|r| match &r.item.output {
                    Some(output) if output.key.is_none() => Some(r.item.source.position()),
                    _ => None,
                })
                .collect();
            let kept: Vec<Row<'_>> = records
                .iter()
                .zip(&positions)
                .filter_map(|(r, position)| {
                    let output = r.item.output.as_ref()?;
                    let key = output.key.as_deref().or(position.as_deref())?;
                    Some(Row {
                        key,
                        doc: &output.doc,
                        offset: r.item.source.offset,
                        version: r.item.version,
                    })
                })
                .collect();
            if kept.is_empty() {
                return Ok(Vec::new());
            }
            // Every kept record is inserted as it is: a key already in the
            // table, or twice in the batch, fails the insert, and the batch
            // is upserted instead. A nested transaction is a savepoint: the
            // failed insert rolls back, not the batch's transaction.
            let inserted = if self.insert_first.next_batch() {
                let insert = bound(&self.insert, partition, &kept);
                match conn
                    .transaction::<_, diesel::result::Error, _>(async |conn| {
                        insert.execute(conn).await
                    })
                    .await
                {
                    Ok(_) => true,
                    Err(error) if self.insert_first.conflicted(&error) => false,
                    Err(error) => return Err(error.into()),
                }
            } else {
                false
            };
            if !inserted {
                bound(&self.upsert, partition, &last_of_each_key(kept))
                    .execute(conn)
                    .await?;
            }
            Ok(Vec::new())
        }
        .boxed()
    }

    fn committed(&self, records: &[Decoded<Processed>]) {
        count_out(&self.state, records, 0);
    }
}

/// A kept record as a row of a pipeline's table.
#[derive(Clone, Copy)]
struct Row<'a> {
    key: &'a str,
    doc: &'a str,
    offset: i64,
    version: i32,
}

/// `sql` with a batch's rows bound as its arrays (a batch is one
/// partition's: its topic and partition are bound once).
fn bound<'r>(
    sql: &str,
    partition: &'r PartitionKey,
    rows: &[Row<'r>],
) -> BoxedSqlQuery<'r, Pg, SqlQuery> {
    let keys: Vec<&str> = rows.iter().map(|r| r.key).collect();
    let docs: Vec<&str> = rows.iter().map(|r| r.doc).collect();
    let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.version).collect();
    diesel::sql_query(sql)
        .into_boxed()
        .bind::<Array<Text>, _>(keys)
        .bind::<Array<Text>, _>(docs)
        .bind::<Text, _>(&partition.topic)
        .bind::<Integer, _>(partition.partition)
        .bind::<Array<BigInt>, _>(offsets)
        .bind::<Array<Integer>, _>(versions)
}

/// One row per key, for the upsert (which may change a row only once per
/// statement): the batch's last record of a key wins, as a later record
/// replaces an earlier one's row; rows keep the order of their key's first
/// record.
fn last_of_each_key(rows: Vec<Row<'_>>) -> Vec<Row<'_>> {
    let mut slots: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    let mut unique: Vec<Row<'_>> = Vec::with_capacity(rows.len());
    for row in rows {
        match slots.entry(row.key) {
            Entry::Occupied(slot) => unique[*slot.get()] = row,
            Entry::Vacant(slot) => {
                slot.insert(unique.len());
                unique.push(row);
            }
        }
    }
    unique
}

/// A pipeline's output topic.
pub struct TopicOutput {
    state: Arc<PipelineState>,
    topic: String,
    producer: FutureProducer,
    timeout: Duration,
}

impl TopicOutput {
    /// Writes `state`'s output to `topic` through `producer` (idempotent),
    /// waiting up to `timeout` for each batch's acknowledgements.
    pub fn new(
        state: Arc<PipelineState>,
        topic: &str,
        producer: FutureProducer,
        timeout: Duration,
    ) -> Self {
        Self {
            state,
            topic: topic.to_owned(),
            producer,
            timeout,
        }
    }
}

impl Sink for TopicOutput {
    type Item = Processed;

    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        headers: &RecordHeaders,
    ) -> Result<Processed, DecodeError> {
        self.state.process(message, headers)
    }

    fn write(
        &self,
        _partition: PartitionKey,
        records: Records<Processed>,
        _next_offset: i64,
    ) -> BoxFuture<'static, Result<Written, SinkError>> {
        let (producer, topic, timeout) = (self.producer.clone(), self.topic.clone(), self.timeout);
        let state = self.state.clone();
        async move {
            let mut prepared = Vec::with_capacity(records.len());
            for record in records.iter() {
                let Some(output) = &record.item.output else {
                    continue;
                };
                let source = record.item.source.position();
                let pipeline = format!("{}:{}", state.name, record.item.version);
                let headers = output
                    .headers
                    .iter()
                    .filter(|(k, _)| k != "chronolog-source" && k != "chronolog-pipeline")
                    .fold(OwnedHeaders::new(), |h, (k, v)| {
                        h.insert(KafkaHeader {
                            key: k,
                            value: Some(v),
                        })
                    })
                    .insert(KafkaHeader {
                        key: "chronolog-source",
                        value: Some(&source),
                    })
                    .insert(KafkaHeader {
                        key: "chronolog-pipeline",
                        value: Some(&pipeline),
                    });
                let key: Option<Vec<u8>> = output
                    .key
                    .as_ref()
                    .map(|k| k.clone().into_bytes())
                    .or_else(|| output.record_key.clone());
                prepared.push((output.doc.as_str(), key, headers));
            }
            let deliveries: Vec<_> = prepared
                .iter()
                .map(|(value, key, headers)| {
                    let mut message = FutureRecord::<[u8], str>::to(&topic)
                        .payload(value)
                        .headers(headers.clone());
                    if let Some(key) = key {
                        message = message.key(key);
                    }
                    producer.send(message, timeout)
                })
                .collect();
            let kept = records.iter().filter(|r| r.item.output.is_some());
            let mut rejected = Vec::new();
            for (record, delivery) in kept.zip(futures::future::join_all(deliveries).await) {
                match delivery {
                    Ok(_) => {}
                    // Refused for what it is: dead-lettered, not retried
                    // for ever.
                    Err((error, _))
                        if error
                            .rdkafka_error_code()
                            .is_some_and(crate::actors::producer::refuses_the_record) =>
                    {
                        rejected.push(refused(record, &error.to_string()));
                    }
                    Err((error, _)) => return Err(SinkError::Failed(error.to_string())),
                }
            }
            count_out(&state, &records, rejected.len());
            Ok(Written { rejected })
        }
        .boxed()
    }

    fn keeps_positions(&self) -> bool {
        false
    }

    fn positions(
        &self,
        _group_id: String,
        _topic: String,
    ) -> BoxFuture<'static, Result<HashMap<i32, i64>, SinkError>> {
        async { Ok(HashMap::new()) }.boxed()
    }
}

/// A pipeline's output file of JSON lines
/// `{"key","doc","source","pipeline_version"}`.
pub struct FileOutput {
    state: Arc<PipelineState>,
    file: Arc<Mutex<std::fs::File>>,
}

impl FileOutput {
    /// Appends `state`'s output to `path`, created when absent.
    pub fn open(state: Arc<PipelineState>, path: &str) -> std::io::Result<Self> {
        let path = PathBuf::from(path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(Self {
            state,
            file: Arc::new(Mutex::new(file)),
        })
    }
}

impl Sink for FileOutput {
    type Item = Processed;

    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        headers: &RecordHeaders,
    ) -> Result<Processed, DecodeError> {
        self.state.process(message, headers)
    }

    fn write(
        &self,
        _partition: PartitionKey,
        records: Records<Processed>,
        _next_offset: i64,
    ) -> BoxFuture<'static, Result<Written, SinkError>> {
        let (file, state) = (self.file.clone(), self.state.clone());
        async move {
            let mut lines = Vec::new();
            for record in records.iter() {
                let Some(output) = &record.item.output else {
                    continue;
                };
                let source = record.item.source.position();
                let key = output.key.as_deref().unwrap_or(&source);
                // The doc is JSON text already: the line is written around
                // it, its fields in the order `serde_json` would sort them.
                lines.extend_from_slice(b"{\"doc\":");
                lines.extend_from_slice(output.doc.as_bytes());
                lines.extend_from_slice(b",\"key\":");
                lines.extend_from_slice(json_string(key).as_bytes());
                lines.extend_from_slice(
                    format!(",\"pipeline_version\":{},\"source\":", record.item.version).as_bytes(),
                );
                lines.extend_from_slice(json_string(&source).as_bytes());
                lines.extend_from_slice(b"}\n");
            }
            if lines.is_empty() {
                return Ok(Written::default());
            }
            // Partitions write whole batches one at a time, each made
            // durable before its offsets are acknowledged.
            let written = tokio::task::spawn_blocking(move || {
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                // A failed write leaves no partial line behind: the batch is
                // written again whole.
                let before = file.metadata()?.len();
                let result = file.write_all(&lines).and_then(|()| file.sync_data());
                if result.is_err() {
                    let _ = file.set_len(before);
                }
                result
            })
            .await
            .map_err(|e| SinkError::Failed(e.to_string()))?;
            written.map_err(|e| SinkError::Failed(format!("cannot write the file: {e}")))?;
            count_out(&state, &records, 0);
            Ok(Written::default())
        }
        .boxed()
    }

    fn keeps_positions(&self) -> bool {
        false
    }

    fn positions(
        &self,
        _group_id: String,
        _topic: String,
    ) -> BoxFuture<'static, Result<HashMap<i32, i64>, SinkError>> {
        async { Ok(HashMap::new()) }.boxed()
    }
}
