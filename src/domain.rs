//! Domain types: the timestamp command, its validation, and the correlation id.

use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use uuid::Uuid;

use crate::echo::shorten;

/// The one command chronolog knows: record that an event happened at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampCommand {
    /// Fresh UUID v4 given at ingestion; the Kafka key and the view's primary key.
    pub command_id: Uuid,
    /// The event's instant, in UTC, at microsecond precision (PostgreSQL's).
    pub event_timestamp: DateTime<Utc>,
}

impl TimestampCommand {
    /// A new command with a fresh id.
    pub fn new(event_timestamp: DateTime<Utc>) -> Self {
        Self {
            command_id: Uuid::new_v4(),
            event_timestamp,
        }
    }
}

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// Not RFC 3339 at all.
    #[error("'{input}' is not an RFC 3339 timestamp (example: 2009-09-28T19:03:12Z): {reason}")]
    NotRfc3339 {
        /// What was given, shortened for the message.
        input: String,
        /// The parser's reason.
        reason: String,
    },
    /// A leap second (`:60`), which PostgreSQL and most consumers cannot represent.
    #[error("'{input}' is a leap second, which is not supported")]
    LeapSecond {
        /// What was given.
        input: String,
    },
    /// Outside years 0001 to 9999 once converted to UTC.
    #[error(
        "'{input}' is outside the supported range 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z"
    )]
    OutOfRange {
        /// What was given.
        input: String,
    },
}

/// Parses an RFC 3339 timestamp (`Z` or a numeric offset, optional fraction)
/// into the UTC instant it names, truncated to microseconds.
///
/// Fractions finer than a microsecond are truncated so that the log and the
/// view hold the same instant. Leap seconds and years outside 1..=9999 (after
/// conversion to UTC) are refused.
pub fn parse_event_timestamp(input: &str) -> Result<DateTime<Utc>, TimestampError> {
    let parsed = DateTime::parse_from_rfc3339(input).map_err(|e| TimestampError::NotRfc3339 {
        input: shorten(input),
        reason: e.to_string(),
    })?;
    // chrono represents a leap second as a nanosecond field of 1e9 or more.
    if parsed.nanosecond() >= 1_000_000_000 {
        return Err(TimestampError::LeapSecond {
            input: shorten(input),
        });
    }
    let utc = parsed.with_timezone(&Utc);
    if !(1..=9999).contains(&utc.year()) {
        return Err(TimestampError::OutOfRange {
            input: shorten(input),
        });
    }
    Ok(truncate_to_micros(utc))
}

/// Drops sub-microsecond digits.
pub fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = at.nanosecond();
    at.with_nanosecond(nanos - nanos % 1_000).unwrap_or(at)
}

/// Formats an instant as RFC 3339 in UTC with `Z`, with only as many
/// fractional digits as it needs (`2009-09-28T19:03:12Z`, `...12.5Z`).
pub fn format_timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Identifies one request across every log line, on the command and consumer side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(String);

/// Why a given correlation id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the correlationId header must be 1 to {max} visible ASCII characters ([A-Za-z0-9._:-])",
    max = CorrelationId::MAX_LEN
)]
pub struct CorrelationIdError;

impl CorrelationId {
    /// Longest correlation id accepted; longer ones are refused, not truncated.
    pub const MAX_LEN: usize = 128;

    /// A fresh id for a request that came without one.
    pub fn generate() -> Self {
        Self(Uuid::new_v4().to_string())
    }

    /// Accepts a caller's id when it is short and made of safe characters, so
    /// that it can go into headers and log lines unchanged.
    pub fn parse(value: &str) -> Result<Self, CorrelationIdError> {
        if !is_safe_token(value, Self::MAX_LEN) {
            return Err(CorrelationIdError);
        }
        Ok(Self(value.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `value` is 1 to `max` characters of `[A-Za-z0-9._:-]`: text a
/// client gives that goes into headers, log lines and the database unchanged.
fn is_safe_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A client's name for one command (header `Idempotency-Key`): every request
/// that carries it is answered with the same command id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

/// Why a given idempotency key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Idempotency-Key header must be 1 to {max} characters of [A-Za-z0-9._:-]",
    max = IdempotencyKey::MAX_LEN
)]
pub struct IdempotencyKeyError;

impl IdempotencyKey {
    /// Longest key accepted; longer ones are refused, not truncated.
    pub const MAX_LEN: usize = 128;

    /// Accepts a key that is short and made of safe characters, so that it
    /// can be stored and logged unchanged.
    pub fn parse(value: &str) -> Result<Self, IdempotencyKeyError> {
        if !is_safe_token(value, Self::MAX_LEN) {
            return Err(IdempotencyKeyError);
        }
        Ok(Self(value.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("bad fixture {s}: {e}"))
    }

    #[test]
    fn accepts_the_seed_examples() {
        assert_eq!(
            parse_event_timestamp("2009-09-28T19:03:12Z"),
            Ok(utc("2009-09-28T19:03:12Z"))
        );
        assert_eq!(
            parse_event_timestamp("2006-01-02T15:04:05Z"),
            Ok(utc("2006-01-02T15:04:05Z"))
        );
    }

    #[test]
    fn offsets_are_converted_to_the_utc_instant() {
        let parsed = parse_event_timestamp("2009-09-28T21:03:12+02:00");
        assert_eq!(
            parsed.map(|d| format_timestamp(&d)),
            Ok("2009-09-28T19:03:12Z".to_owned())
        );
    }

    #[test]
    fn fractions_are_kept_to_the_microsecond() {
        let parsed = parse_event_timestamp("2009-09-28T19:03:12.123456789Z");
        assert_eq!(
            parsed.map(|d| format_timestamp(&d)),
            Ok("2009-09-28T19:03:12.123456Z".to_owned())
        );
        let parsed = parse_event_timestamp("2009-09-28T19:03:12.5Z");
        assert_eq!(
            parsed.map(|d| format_timestamp(&d)),
            Ok("2009-09-28T19:03:12.500Z".to_owned())
        );
    }

    #[test]
    fn refuses_what_is_not_a_storable_instant() {
        for bad in [
            "",
            "now",
            "2009-09-28",
            "2009-09-28T19:03:12",
            "2009-13-28T19:03:12Z",
            "2009-02-30T19:03:12Z",
            "10000-01-01T00:00:00Z",
        ] {
            assert!(
                matches!(
                    parse_event_timestamp(bad),
                    Err(TimestampError::NotRfc3339 { .. })
                ),
                "{bad:?} should not parse"
            );
        }
        assert!(matches!(
            parse_event_timestamp("2016-12-31T23:59:60Z"),
            Err(TimestampError::LeapSecond { .. })
        ));
        assert!(matches!(
            parse_event_timestamp("0000-01-01T00:00:00Z"),
            Err(TimestampError::OutOfRange { .. })
        ));
        // Valid locally, but year 0 once converted to UTC.
        assert!(matches!(
            parse_event_timestamp("0001-01-01T00:30:00+01:00"),
            Err(TimestampError::OutOfRange { .. })
        ));
    }

    #[test]
    fn long_inputs_are_shortened_in_messages() {
        let long = "x".repeat(10_000);
        let message = parse_event_timestamp(&long)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(message.len() < 300, "{message}");
    }

    #[test]
    fn correlation_ids_are_checked() {
        assert!(CorrelationId::parse("52f2665d-c087-42e5-a571-89061021a37c").is_ok());
        assert!(CorrelationId::parse("").is_err());
        assert!(CorrelationId::parse("has space").is_err());
        assert!(CorrelationId::parse("line\nbreak").is_err());
        assert!(CorrelationId::parse(&"a".repeat(129)).is_err());
        assert_eq!(CorrelationId::generate().as_str().len(), 36);
    }

    #[test]
    fn idempotency_keys_are_checked() {
        for good in ["a", "order-42:retry_1.v2", &"k".repeat(128)] {
            assert_eq!(
                IdempotencyKey::parse(good).map(|k| k.to_string()),
                Ok(good.to_owned())
            );
        }
        for bad in [
            "",
            "has space",
            "a/b",
            "a,b",
            "caf\u{e9}",
            "tab\t",
            &"k".repeat(129),
        ] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(IdempotencyKeyError),
                "{bad:?}"
            );
        }
    }
}
