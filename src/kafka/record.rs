//! The command record on the wire: key = command id, value = JSON, header
//! `correlationId` (DESIGN §5). Encoding and decoding live together so that
//! the two sides cannot drift apart.

use chrono::{DateTime, Utc};
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
}

impl DecodeError {
    /// Every [`code`](Self::code).
    pub const CODES: [&'static str; 6] = [
        "empty_value",
        "not_json",
        "missing_field",
        "invalid_id",
        "invalid_timestamp",
        "key_mismatch",
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
    let wire: WireIn =
        serde_json::from_slice(value).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let raw_id = wire
        .command_id
        .ok_or(DecodeError::MissingField("command_id"))?;
    let raw_ts = wire
        .event_timestamp
        .ok_or(DecodeError::MissingField("event_timestamp"))?;
    let command_id =
        Uuid::parse_str(&raw_id).map_err(|_| DecodeError::InvalidId(shorten(&raw_id)))?;
    let event_timestamp: DateTime<Utc> = parse_event_timestamp(&raw_ts)?;
    if let Some(key) = key {
        let matches = std::str::from_utf8(key)
            .ok()
            .and_then(|k| Uuid::parse_str(k).ok())
            .is_some_and(|k| k == command_id);
        if !matches {
            return Err(DecodeError::KeyMismatch);
        }
    }
    Ok(TimestampCommand {
        command_id,
        event_timestamp,
    })
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
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
}
