//! The command record on the wire: key = command id, value = JSON, header
//! `correlationId`. Encoding and decoding live together so that the two
//! sides cannot drift apart.
//!
//! Everything here reads a record as bytes and never panics, whatever the
//! record holds: a record that cannot be projected becomes a dead letter
//! with a reason, never a stopped partition.

use chrono::{DateTime, Datelike, Utc};
use rdkafka::message::Headers;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{TimestampCommand, TimestampError, format_timestamp, parse_event_timestamp};

/// Kafka header that carries the correlation id.
pub const CORRELATION_HEADER: &str = "correlationId";

#[derive(Serialize)]
struct WireOut<'a> {
    command_id: &'a Uuid,
    event_timestamp: &'a str,
}

#[derive(Deserialize)]
struct WireIn {
    command_id: Option<String>,
    event_timestamp: Option<String>,
}

/// The JSON value of a command record.
pub fn encode_value(command: &TimestampCommand) -> Vec<u8> {
    let event_timestamp = format_timestamp(&command.event_timestamp);
    let wire = WireOut {
        command_id: &command.command_id,
        event_timestamp: &event_timestamp,
    };
    // Serialising two strings into a Vec cannot fail.
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Why a record cannot be projected, whatever the retries: it goes to the
/// dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record has no value (a tombstone or an empty produce).
    #[error("record has no value")]
    EmptyValue,
    /// The value is not a JSON object of the expected shape.
    #[error("value is not a JSON command object: {0}")]
    NotJson(String),
    /// A required field is absent or null.
    #[error("value lacks the field '{0}'")]
    MissingField(&'static str),
    /// `command_id` is not a UUID.
    #[error("command_id '{0}' is not a UUID")]
    InvalidId(String),
    /// `event_timestamp` is not a storable RFC 3339 instant.
    #[error("event_timestamp is invalid: {0}")]
    InvalidTimestamp(#[from] TimestampError),
    /// The key names another command than the value.
    #[error("key does not match command_id")]
    KeyMismatch,
    /// The key is not a UUID in UTF-8 text.
    #[error("key is not a UUID in UTF-8 text")]
    InvalidKey,
    /// A header cannot be read: its key is not UTF-8, or the
    /// `correlationId` header's value is not.
    #[error("{0}")]
    InvalidHeader(String),
    /// The record's log timestamp is missing or outside years 0001 to 9999
    /// (PostgreSQL cannot store every instant Kafka can carry).
    #[error("record timestamp {0} is outside 0001-01-01 to 9999-12-31")]
    InvalidRecordTimestamp(String),
    /// Its `command_id` is already in the view with another
    /// `event_timestamp`; the view keeps the other one.
    #[error("{0}")]
    ConflictingDuplicate(String),
    /// Reading the record panicked (a bug, caught).
    #[error("reading the record panicked: {0}")]
    Internal(String),
    /// An event of the outbox's topics that is not a valid envelope, or
    /// whose data is not what its type says.
    #[error("{0}")]
    InvalidEvent(String),
    /// A pipeline's filter failed on the record (VRL's message), or left no
    /// key where the sink's key path points.
    #[error("{0}")]
    FilterError(String),
    /// A pipeline's output that its sink refuses for what it is (too large
    /// for the output topic, ...): no retry can write it.
    #[error("{0}")]
    SinkRefused(String),
}

impl DecodeError {
    /// Every [`code`](Self::code).
    pub const CODES: [&'static str; 14] = [
        "empty_value",
        "not_json",
        "missing_field",
        "invalid_id",
        "invalid_timestamp",
        "key_mismatch",
        "invalid_key",
        "invalid_header",
        "invalid_record_timestamp",
        "conflicting_duplicate",
        "internal_error",
        "invalid_event",
        "filter_error",
        "sink_refused",
    ];

    /// A short, fixed label for metrics and the dead-letter `reason` header.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::EmptyValue => "empty_value",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidId(_) => "invalid_id",
            DecodeError::InvalidTimestamp(_) => "invalid_timestamp",
            DecodeError::KeyMismatch => "key_mismatch",
            DecodeError::InvalidKey => "invalid_key",
            DecodeError::InvalidHeader(_) => "invalid_header",
            DecodeError::InvalidRecordTimestamp(_) => "invalid_record_timestamp",
            DecodeError::ConflictingDuplicate(_) => "conflicting_duplicate",
            DecodeError::Internal(_) => "internal_error",
            DecodeError::InvalidEvent(_) => "invalid_event",
            DecodeError::FilterError(_) => "filter_error",
            DecodeError::SinkRefused(_) => "sink_refused",
        }
    }
}

/// Decodes a record's key and value into a command, validating it exactly as
/// ingestion does. A record without a key is accepted (the value is
/// authoritative); a key that names another id is not.
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<TimestampCommand, DecodeError> {
    let value = value
        .filter(|v| !v.is_empty())
        .ok_or(DecodeError::EmptyValue)?;
    let wire: WireIn = serde_json::from_slice(value)
        .map_err(|e| DecodeError::NotJson(crate::echo::cut(&e.to_string())))?;
    let raw_id = wire
        .command_id
        .ok_or(DecodeError::MissingField("command_id"))?;
    let raw_ts = wire
        .event_timestamp
        .ok_or(DecodeError::MissingField("event_timestamp"))?;
    let command_id = Uuid::parse_str(&raw_id)
        .map_err(|_| DecodeError::InvalidId(crate::echo::shorten(&raw_id)))?;
    let event_timestamp: DateTime<Utc> = parse_event_timestamp(&raw_ts)?;
    if let Some(key) = key {
        let named = std::str::from_utf8(key)
            .ok()
            .and_then(|k| Uuid::parse_str(k).ok())
            .ok_or(DecodeError::InvalidKey)?;
        if named != command_id {
            return Err(DecodeError::KeyMismatch);
        }
    }
    Ok(TimestampCommand {
        command_id,
        event_timestamp,
    })
}

/// A record's headers, read as bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordHeaders {
    /// Every header that could be read, in order.
    pub readable: Vec<(String, Vec<u8>)>,
    /// Why a header could not be read, if one could not.
    pub error: Option<DecodeError>,
}

impl RecordHeaders {
    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.readable
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The `correlationId` header as text: `Ok(None)` when absent.
    pub fn correlation_id(&self) -> Result<Option<&str>, DecodeError> {
        self.get(CORRELATION_HEADER)
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| {
                    DecodeError::InvalidHeader(format!(
                        "the {CORRELATION_HEADER} header's value is not UTF-8"
                    ))
                })
            })
            .transpose()
    }
}

/// Reads every header of a record without trusting it.
///
/// rdkafka's header getters unwrap the key as UTF-8 and panic on anything
/// else (`message.rs`, `CStr::to_str().unwrap()`), and the crate offers no
/// way to read a key as bytes without `unsafe`. Each header is read under
/// `catch_unwind`: a key that is not UTF-8 makes the record's headers
/// invalid (the record is dead-lettered as `invalid_header`) instead of
/// killing the partition's worker.
pub fn read_headers<H: Headers>(headers: Option<&H>) -> RecordHeaders {
    let Some(headers) = headers else {
        return RecordHeaders::default();
    };
    let mut read = RecordHeaders::default();
    for index in 0..headers.count() {
        match crate::catch_expected_panic(|| headers.try_get(index)) {
            Ok(Some(header)) => read.readable.push((
                header.key.to_owned(),
                header.value.map(<[u8]>::to_vec).unwrap_or_default(),
            )),
            Ok(None) => {}
            Err(_) => {
                read.error = Some(DecodeError::InvalidHeader(format!(
                    "header {index}'s key is not UTF-8"
                )));
            }
        }
    }
    read
}

/// The record's log timestamp as an instant the view can store: years 0001
/// to 9999, like event timestamps (PostgreSQL's own range is wider, Kafka's
/// wider still, and a missing timestamp has no instant at all).
pub fn record_timestamp(millis: Option<i64>) -> Result<DateTime<Utc>, DecodeError> {
    let at = millis.and_then(DateTime::<Utc>::from_timestamp_millis);
    match at {
        Some(at) if (1..=9999).contains(&at.year()) => Ok(at),
        _ => Err(DecodeError::InvalidRecordTimestamp(
            millis.map_or_else(|| "(none)".to_owned(), |m| format!("{m} ms")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> TimestampCommand {
        TimestampCommand {
            command_id: Uuid::parse_str("add1f52d-7c56-4c9f-b319-1a266c355f6b").unwrap_or_default(),
            event_timestamp: parse_event_timestamp("2006-01-02T15:04:05Z").unwrap_or_default(),
        }
    }

    #[test]
    fn value_is_the_contract_json() {
        let value = encode_value(&seed());
        assert_eq!(
            std::str::from_utf8(&value).ok(),
            Some(
                r#"{"command_id":"add1f52d-7c56-4c9f-b319-1a266c355f6b","event_timestamp":"2006-01-02T15:04:05Z"}"#
            )
        );
    }

    #[test]
    fn decode_inverts_encode() {
        let command = seed();
        let key = command.command_id.to_string();
        assert_eq!(
            decode(Some(key.as_bytes()), Some(&encode_value(&command))),
            Ok(command)
        );
        assert_eq!(decode(None, Some(&encode_value(&command))), Ok(command));
    }

    #[test]
    fn poison_records_are_classified() {
        let id = "add1f52d-7c56-4c9f-b319-1a266c355f6b";
        type Case<'a> = (Option<&'a [u8]>, &'a [u8], &'a str);
        let cases: [Case<'_>; 9] = [
            (None, b"", "empty_value"),
            (None, b"not json", "not_json"),
            (None, b"[1,2]", "not_json"),
            (None, br#"{"event_timestamp":"2006-01-02T15:04:05Z"}"#, "missing_field"),
            (None, br#"{"command_id":"add1f52d-7c56-4c9f-b319-1a266c355f6b"}"#, "missing_field"),
            (None, br#"{"command_id":"nope","event_timestamp":"2006-01-02T15:04:05Z"}"#, "invalid_id"),
            (None, br#"{"command_id":"add1f52d-7c56-4c9f-b319-1a266c355f6b","event_timestamp":"yesterday"}"#, "invalid_timestamp"),
            (None, br#"{"command_id":42,"event_timestamp":"2006-01-02T15:04:05Z"}"#, "not_json"),
            (Some(b"b0000000-0000-4000-8000-000000000000"), br#"{"command_id":"add1f52d-7c56-4c9f-b319-1a266c355f6b","event_timestamp":"2006-01-02T15:04:05Z"}"#, "key_mismatch"),
        ];
        for (key, value, code) in cases {
            let got = decode(key, Some(value));
            assert_eq!(
                got.as_ref().map_err(DecodeError::code),
                Err(code),
                "{value:?} with id {id}"
            );
        }
        assert_eq!(decode(None, None), Err(DecodeError::EmptyValue));
    }

    #[test]
    fn record_timestamps_outside_years_1_to_9999_are_refused() {
        assert_eq!(
            record_timestamp(Some(1_254_164_592_000)).map(|t| format_timestamp(&t)),
            Ok("2009-09-28T19:03:12Z".to_owned())
        );
        assert_eq!(
            record_timestamp(Some(253_402_300_799_999)).map(|t| format_timestamp(&t)),
            Ok("9999-12-31T23:59:59.999Z".to_owned())
        );
        for millis in [
            Some(253_402_300_800_000),
            Some(-62_135_596_800_001),
            Some(i64::MIN),
            Some(i64::MAX),
            None,
        ] {
            assert_eq!(
                record_timestamp(millis).map_err(|e| e.code()),
                Err("invalid_record_timestamp"),
                "{millis:?}"
            );
        }
        assert_eq!(
            record_timestamp(Some(-62_135_596_800_000)).map(|t| format_timestamp(&t)),
            Ok("0001-01-01T00:00:00Z".to_owned())
        );
    }

    #[test]
    fn a_key_that_is_not_a_uuid_is_invalid_not_a_mismatch() {
        let value = br#"{"command_id":"add1f52d-7c56-4c9f-b319-1a266c355f6b","event_timestamp":"2006-01-02T15:04:05Z"}"#;
        assert_eq!(
            decode(Some(b"\xff\xfe"), Some(value)),
            Err(DecodeError::InvalidKey)
        );
        assert_eq!(
            decode(Some(b"order-17"), Some(value)),
            Err(DecodeError::InvalidKey)
        );
    }
}
