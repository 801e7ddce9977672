//! Records written straight over the Kafka protocol, byte for byte as a test
//! chooses them: header keys that are not UTF-8, null keys, values and
//! header values, any timestamp. rdkafka cannot send these (its
//! `OwnedHeaders` takes `&str` keys), yet any other client can, so they are
//! what chronolog's consumers must survive.
//!
//! One Produce request, version 3: the first version whose records are a
//! record batch v2 (every broker from Kafka 0.11 on takes it, tansu too),
//! and a non-flexible one, so the encoding stays the plain one of the Kafka
//! protocol guide. The batch follows "Record Batch" of the Kafka
//! documentation: magic 2, CreateTime, no compression, no producer id, a
//! CRC-32C (Castagnoli) over everything from the attributes to the end.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One record as it goes on the wire; every field is raw bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// The key; `None` is Kafka's null key (length -1).
    pub key: Option<&'a [u8]>,
    /// The value; `None` is a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in order: a key (any bytes) and a value (`None` is null).
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
    /// CreateTime, in milliseconds since the epoch.
    pub timestamp_ms: i64,
}

/// Why [`produce`] did not get a base offset.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Kafka has no empty record batch.
    #[error("no records to produce: a record batch holds at least one")]
    NoRecords,
    /// A length or a timestamp difference that the wire format cannot carry.
    #[error("cannot encode the request: {0}")]
    Encode(&'static str),
    /// Connecting, writing or reading failed (a closed connection included).
    #[error("cannot talk to the broker at {bootstrap}: {source}")]
    Io {
        /// The broker's address as given.
        bootstrap: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The broker refused the records.
    #[error(
        "the broker refused the records for {topic}/{partition}: error code {code} ({})",
        error_name(*.code)
    )]
    Broker {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Kafka's error code, as in the protocol guide's table.
        code: i16,
    },
    /// The answer is not a Produce v3 response to this request.
    #[error("unexpected Produce response: {0}")]
    Response(String),
}

/// Produce API key and the version spoken here (see the module doc).
const PRODUCE: i16 = 0;
const PRODUCE_VERSION: i16 = 3;
const CLIENT_ID: &str = "chronolog-kafka-wire";
/// acks=-1: the broker answers once every in-sync replica has the records.
const ACKS_ALL: i16 = -1;
/// How long the socket waits for anything, so a test never hangs.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker may wait for its replicas: less than [`TIMEOUT`], so
/// that its REQUEST_TIMED_OUT arrives before the socket gives up.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(5);
/// A Produce response for one partition is a few dozen bytes; anything
/// much larger is not one.
const MAX_RESPONSE: usize = 1 << 20;
const CORRELATION_ID: i32 = 1;

/// Produces `records` as one record batch (magic v2, CreateTime, no
/// compression, CRC-32C over the batch as Kafka specifies) to
/// `topic`/`partition` of the broker at `bootstrap` (`host:port`, the
/// partition's leader), with acks=-1, on a blocking [`TcpStream`] (call it
/// from a blocking thread in async tests). Returns the base offset the
/// broker assigned: the records are at that offset and the following ones.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    records: &[RawRecord<'_>],
) -> Result<i64, WireError> {
    let request = produce_request(topic, partition, &record_batch(records)?)?;
    let io = |source| WireError::Io {
        bootstrap: bootstrap.to_owned(),
        source,
    };
    let mut stream = connect(bootstrap).map_err(io)?;
    stream.write_all(&request).map_err(io)?;
    let mut size = [0; 4];
    stream.read_exact(&mut size).map_err(io)?;
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .ok()
        .filter(|&n| n <= MAX_RESPONSE)
        .ok_or_else(|| WireError::Response(format!("a frame of {size} bytes")))?;
    let mut response = vec![0; size];
    stream.read_exact(&mut response).map_err(io)?;
    parse_response(&response, topic, partition)
}

fn connect(bootstrap: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for address in bootstrap.to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, TIMEOUT) {
            Ok(stream) => {
                stream.set_read_timeout(Some(TIMEOUT))?;
                stream.set_write_timeout(Some(TIMEOUT))?;
                return Ok(stream);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolves to nothing",
        )
    }))
}

/// The framed request: size, request header v1, Produce v3 body.
fn produce_request(topic: &str, partition: i32, batch: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::with_capacity(batch.len() + 64);
    put_i16(&mut body, PRODUCE);
    put_i16(&mut body, PRODUCE_VERSION);
    put_i32(&mut body, CORRELATION_ID);
    put_string(&mut body, CLIENT_ID)?;
    put_i16(&mut body, -1); // transactional_id: null
    put_i16(&mut body, ACKS_ALL);
    put_i32(&mut body, millis(REPLICATION_TIMEOUT));
    put_i32(&mut body, 1); // topics
    put_string(&mut body, topic)?;
    put_i32(&mut body, 1); // partitions
    put_i32(&mut body, partition);
    put_i32(&mut body, length(batch.len(), "the record batch")?);
    body.extend_from_slice(batch);
    let mut frame = Vec::with_capacity(body.len() + 4);
    put_i32(&mut frame, length(body.len(), "the request")?);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// One record batch v2 holding `records` at offset deltas 0, 1, ...; the
/// first record's timestamp is the base the others are relative to.
fn record_batch(records: &[RawRecord<'_>]) -> Result<Vec<u8>, WireError> {
    let first = records.first().ok_or(WireError::NoRecords)?;
    let base_timestamp = first.timestamp_ms;
    let max_timestamp = records
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .unwrap_or(base_timestamp);
    let last_offset_delta = length(records.len() - 1, "the record count")?;

    // Everything the CRC covers: from the attributes to the end.
    let mut checked = Vec::new();
    put_i16(&mut checked, 0); // attributes: no compression, CreateTime
    put_i32(&mut checked, last_offset_delta);
    put_i64(&mut checked, base_timestamp);
    put_i64(&mut checked, max_timestamp);
    put_i64(&mut checked, -1); // producer id: none (not idempotent)
    put_i16(&mut checked, -1); // producer epoch
    put_i32(&mut checked, -1); // base sequence
    put_i32(&mut checked, length(records.len(), "the record count")?);
    for (offset_delta, record) in (0_i64..).zip(records) {
        let timestamp_delta = record
            .timestamp_ms
            .checked_sub(base_timestamp)
            .ok_or(WireError::Encode("timestamps too far apart for one batch"))?;
        put_record(&mut checked, record, offset_delta, timestamp_delta)?;
    }

    let mut batch = Vec::with_capacity(checked.len() + 21);
    put_i64(&mut batch, 0); // base offset: the broker assigns it
    // Batch length counts what follows it: leader epoch, magic, CRC, the rest.
    put_i32(
        &mut batch,
        length(4 + 1 + 4 + checked.len(), "the record batch")?,
    );
    put_i32(&mut batch, -1); // partition leader epoch: the broker's to set
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&checked).to_be_bytes());
    batch.extend_from_slice(&checked);
    Ok(batch)
}

/// One record: its length as a varint, then attributes, deltas, key, value
/// and headers, every length a zigzag varint with -1 for null.
fn put_record(
    out: &mut Vec<u8>,
    record: &RawRecord<'_>,
    offset_delta: i64,
    timestamp_delta: i64,
) -> Result<(), WireError> {
    let mut body = Vec::new();
    body.push(0); // attributes: unused by record batches v2
    put_varlong(&mut body, timestamp_delta);
    put_varlong(&mut body, offset_delta);
    put_varbytes(&mut body, record.key)?;
    put_varbytes(&mut body, record.value)?;
    put_varlong(
        &mut body,
        length(record.headers.len(), "the header count")?.into(),
    );
    for &(key, value) in record.headers {
        // A header key is never null on the wire, only empty at worst.
        put_varbytes(&mut body, Some(key))?;
        put_varbytes(&mut body, value)?;
    }
    put_varlong(out, length(body.len(), "a record")?.into());
    out.extend_from_slice(&body);
    Ok(())
}

/// The base offset from a Produce v3 response (header v0), or the error the
/// broker gave for `topic`/`partition`.
fn parse_response(response: &[u8], topic: &str, partition: i32) -> Result<i64, WireError> {
    let mut r = Reader(response);
    let correlation_id = r.i32()?;
    if correlation_id != CORRELATION_ID {
        return Err(WireError::Response(format!(
            "correlation id {correlation_id}, not {CORRELATION_ID}"
        )));
    }
    let mut found = None;
    for _ in 0..r.count()? {
        let name = r.string()?;
        for _ in 0..r.count()? {
            let index = r.i32()?;
            let code = r.i16()?;
            let base_offset = r.i64()?;
            let _log_append_time_ms = r.i64()?;
            if name == topic.as_bytes() && index == partition {
                found = Some((code, base_offset));
            }
        }
    }
    let _throttle_time_ms = r.i32()?;
    if !r.0.is_empty() {
        return Err(WireError::Response(format!(
            "{} bytes after the throttle time",
            r.0.len()
        )));
    }
    match found {
        Some((0, base_offset)) => Ok(base_offset),
        Some((code, _)) => Err(WireError::Broker {
            topic: topic.to_owned(),
            partition,
            code,
        }),
        None => Err(WireError::Response(format!(
            "no answer for {topic}/{partition}"
        ))),
    }
}

/// Reads big-endian fields off the front of a response.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Response(format!(
                "cut short: {n} bytes wanted, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut bytes = [0; N];
        bytes.copy_from_slice(self.take(N)?);
        Ok(bytes)
    }

    fn i16(&mut self) -> Result<i16, WireError> {
        self.array().map(i16::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, WireError> {
        self.array().map(i32::from_be_bytes)
    }

    fn i64(&mut self) -> Result<i64, WireError> {
        self.array().map(i64::from_be_bytes)
    }

    /// An array's element count (a null array counts as empty).
    fn count(&mut self) -> Result<usize, WireError> {
        Ok(usize::try_from(self.i32()?).unwrap_or(0))
    }

    fn string(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.i16()?;
        let len = usize::try_from(len)
            .map_err(|_| WireError::Response(format!("a string of length {len}")))?;
        self.take(len)
    }
}

/// The name of a Kafka error code a Produce may answer, from the protocol
/// guide's table.
fn error_name(code: i16) -> &'static str {
    match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        0 => "NONE",
        1 => "OFFSET_OUT_OF_RANGE",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        8 => "BROKER_NOT_AVAILABLE",
        10 => "MESSAGE_TOO_LARGE",
        17 => "INVALID_TOPIC_EXCEPTION",
        18 => "RECORD_LIST_TOO_LARGE",
        19 => "NOT_ENOUGH_REPLICAS",
        20 => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        21 => "INVALID_REQUIRED_ACKS",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        32 => "INVALID_TIMESTAMP",
        35 => "UNSUPPORTED_VERSION",
        42 => "INVALID_REQUEST",
        43 => "UNSUPPORTED_FOR_MESSAGE_FORMAT",
        87 => "INVALID_RECORD",
        _ => "see the Kafka protocol guide",
    }
}

fn length(n: usize, what: &'static str) -> Result<i32, WireError> {
    i32::try_from(n).map_err(|_| WireError::Encode(what))
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// A non-nullable STRING: int16 length, then the bytes.
fn put_string(out: &mut Vec<u8>, s: &str) -> Result<(), WireError> {
    let len = i16::try_from(s.len()).map_err(|_| WireError::Encode("a string over 32767 bytes"))?;
    put_i16(out, len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Bytes with a zigzag varint length, -1 for null, as in a record.
fn put_varbytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) -> Result<(), WireError> {
    match bytes {
        None => put_varlong(out, -1),
        Some(bytes) => {
            put_varlong(out, length(bytes.len(), "a key, value or header")?.into());
            out.extend_from_slice(bytes);
        }
    }
    Ok(())
}

/// A zigzag-encoded LEB128 integer (Kafka's varint and varlong: zigzag
/// gives an i32 the same bytes whether it is encoded as one or as an i64).
fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as record batches
/// v2 use; no crate for it is in the dependency tree.
fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0_u32, |crc, &b| {
        TABLE[usize::from(crc as u8 ^ b)] ^ (crc >> 8)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message, Timestamp};

    use super::*;
    use crate::helpers::{brokers, read_topic, unique};

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    /// A one-record transactional batch as a Kafka client wrote it (kept in
    /// tansu-sans-io 0.6.0's tests, `record/deflated.rs`): the record's
    /// bytes and the batch's CRC must come out the same here. tansu only
    /// logs a wrong CRC and takes the batch, so the broker test alone would
    /// not catch one.
    #[test]
    fn a_record_and_its_crc_match_what_a_kafka_client_wrote() {
        let record = RawRecord {
            key: Some(b"\0\0\0\0"),
            value: Some(b"test0-ok"),
            headers: &[],
            timestamp_ms: 1_729_509_915_759,
        };
        let mut record_data = Vec::new();
        put_record(&mut record_data, &record, 0, 0).unwrap();
        assert_eq!(record_data, b"$\0\0\0\x08\0\0\0\0\x10test0-ok\0");

        let mut checked = Vec::new();
        put_i16(&mut checked, 16); // attributes: transactional
        put_i32(&mut checked, 0); // last offset delta
        put_i64(&mut checked, record.timestamp_ms);
        put_i64(&mut checked, record.timestamp_ms);
        put_i64(&mut checked, 5); // producer id
        put_i16(&mut checked, 0); // producer epoch
        put_i32(&mut checked, 0); // base sequence
        put_i32(&mut checked, 1); // record count
        checked.extend_from_slice(&record_data);
        assert_eq!(crc32c(&checked), 3_650_210_183);
    }

    /// The whole batch, field by field, for a record with a null key, a
    /// null header value and a second record 1 ms earlier.
    #[test]
    fn a_batch_is_laid_out_as_kafka_specifies() {
        let batch = record_batch(&[
            RawRecord {
                key: None,
                value: Some(b"v"),
                headers: &[(b"\xff", None)],
                timestamp_ms: 10,
            },
            RawRecord {
                key: Some(b"k"),
                value: None,
                headers: &[],
                timestamp_ms: 9,
            },
        ])
        .unwrap();
        let records: &[u8] = &[
            20, 0, 0, 0, 1, 2, b'v', 2, 2, 0xff,
            1, // ts +0, offset 0, null key, header (k, null)
            14, 0, 1, 2, 2, b'k', 1, 0, // ts -1, offset 1, key "k", null value, no headers
        ];
        let mut checked = Vec::new();
        put_i16(&mut checked, 0);
        put_i32(&mut checked, 1);
        put_i64(&mut checked, 10);
        put_i64(&mut checked, 10);
        put_i64(&mut checked, -1);
        put_i16(&mut checked, -1);
        put_i32(&mut checked, -1);
        put_i32(&mut checked, 2);
        checked.extend_from_slice(records);
        let mut expected = Vec::new();
        put_i64(&mut expected, 0);
        put_i32(&mut expected, (9 + checked.len()) as i32);
        put_i32(&mut expected, -1);
        expected.push(2);
        expected.extend_from_slice(&crc32c(&checked).to_be_bytes());
        expected.extend_from_slice(&checked);
        assert_eq!(batch, expected);
        assert!(matches!(record_batch(&[]), Err(WireError::NoRecords)));
    }

    #[test]
    fn varints_are_zigzag_leb128() {
        let encode = |v| {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            out
        };
        assert_eq!(encode(0), [0x00]);
        assert_eq!(encode(-1), [0x01]);
        assert_eq!(encode(1), [0x02]);
        assert_eq!(encode(-64), [0x7f]);
        assert_eq!(encode(64), [0x80, 0x01]);
        assert_eq!(encode(300), [0xd8, 0x04]);
        assert_eq!(
            encode(i64::MIN),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn a_refusal_names_the_error_code() {
        let mut response = Vec::new();
        put_i32(&mut response, CORRELATION_ID);
        put_i32(&mut response, 1);
        put_string(&mut response, "t").unwrap();
        put_i32(&mut response, 1);
        put_i32(&mut response, 0);
        put_i16(&mut response, 3);
        put_i64(&mut response, -1);
        put_i64(&mut response, -1);
        put_i32(&mut response, 0);
        let error = parse_response(&response, "t", 0).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the broker refused the records for t/0: error code 3 (UNKNOWN_TOPIC_OR_PARTITION)"
        );
        assert!(matches!(
            parse_response(&response[..20], "t", 0),
            Err(WireError::Response(_))
        ));
    }

    /// 2009-09-28T19:03:12Z. tansu resets the connection of a fetch that
    /// would return a record with a negative timestamp: keep them positive.
    const CREATED_MS: i64 = 1_254_164_592_000;

    async fn create_topic(topic: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .expect("admin client");
        // tansu 0.6.0 deletes every record of a topic whose retention.ms is -1.
        let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
            .set("retention.ms", "9223372036854775807");
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let created = admin
            .create_topics([&new_topic], &options)
            .await
            .expect("CreateTopics answered");
        assert!(created.iter().all(Result::is_ok), "{created:?}");
    }

    #[actix_rt::test]
    async fn records_rdkafka_cannot_write_reach_the_broker_byte_for_byte() {
        let topic = unique("kafka-wire");
        create_topic(&topic).await;

        let offsets = {
            let topic = topic.clone();
            tokio::task::spawn_blocking(move || {
                let bootstrap = brokers();
                let hostile = produce(
                    &bootstrap,
                    &topic,
                    0,
                    &[RawRecord {
                        key: Some(b"hostile"),
                        value: Some(b"{}"),
                        headers: &[(b"\xff\xfe", Some(b"x"))],
                        timestamp_ms: CREATED_MS,
                    }],
                );
                // Two records in one batch: the second has a null key and
                // value, no headers and an earlier timestamp (a negative delta).
                let plain = produce(
                    &bootstrap,
                    &topic,
                    0,
                    &[
                        RawRecord {
                            key: Some(b"plain"),
                            value: Some(b"value \x00\xff"),
                            headers: &[(b"correlationId", Some("r\u{e9}sum\u{e9}".as_bytes()))],
                            timestamp_ms: CREATED_MS + 1_500,
                        },
                        RawRecord {
                            key: None,
                            value: None,
                            headers: &[],
                            timestamp_ms: CREATED_MS - 1_000,
                        },
                    ],
                );
                (
                    hostile.expect("hostile record"),
                    plain.expect("plain batch"),
                )
            })
            .await
            .expect("producer thread")
        };
        assert_eq!(offsets, (0, 1), "base offsets of the two batches");

        // Headers of the hostile record are only counted: rdkafka's getters
        // panic on a key that is not UTF-8.
        let records = read_topic(&topic).await;
        assert_eq!(records.len(), 3);
        let [hostile, plain, tombstone] = &records[..] else {
            unreachable!("three records")
        };

        assert_eq!(hostile.offset(), 0);
        assert_eq!(hostile.key(), Some(&b"hostile"[..]));
        assert_eq!(hostile.payload(), Some(&b"{}"[..]));
        assert_eq!(hostile.timestamp(), Timestamp::CreateTime(CREATED_MS));
        assert_eq!(hostile.headers().map(|h| h.count()), Some(1));

        assert_eq!(plain.offset(), 1);
        assert_eq!(plain.key(), Some(&b"plain"[..]));
        assert_eq!(plain.payload(), Some(&b"value \x00\xff"[..]));
        assert_eq!(plain.timestamp(), Timestamp::CreateTime(CREATED_MS + 1_500));
        let headers = plain.headers().expect("headers");
        assert_eq!(headers.count(), 1);
        let header = headers.get(0);
        assert_eq!(header.key, "correlationId");
        assert_eq!(header.value, Some("r\u{e9}sum\u{e9}".as_bytes()));

        assert_eq!(tombstone.offset(), 2);
        assert_eq!(tombstone.key(), None);
        assert_eq!(tombstone.payload(), None);
        assert_eq!(
            tombstone.timestamp(),
            Timestamp::CreateTime(CREATED_MS - 1_000)
        );
        assert_eq!(tombstone.headers().map(|h| h.count()).unwrap_or(0), 0);
    }

    #[actix_rt::test]
    async fn a_refusal_comes_back_with_the_broker_s_error_code() {
        let topic = unique("kafka-wire");
        create_topic(&topic).await;
        let outcomes = tokio::task::spawn_blocking({
            let topic = topic.clone();
            move || {
                let record = RawRecord {
                    key: None,
                    value: Some(b"v"),
                    headers: &[],
                    timestamp_ms: CREATED_MS,
                };
                let missing = produce(&brokers(), "kafka-wire-never-created", 0, &[record]);
                let beyond = produce(&brokers(), &topic, 7, &[record]);
                (
                    missing.map_err(|e| e.to_string()),
                    beyond.map_err(|e| e.to_string()),
                )
            }
        })
        .await
        .expect("producer thread");
        let unknown = |t: &str, p| {
            Err(format!(
                "the broker refused the records for {t}/{p}: \
                 error code 3 (UNKNOWN_TOPIC_OR_PARTITION)"
            ))
        };
        assert_eq!(outcomes.0, unknown("kafka-wire-never-created", 0));
        assert_eq!(outcomes.1, unknown(&topic, 7));
    }
}
