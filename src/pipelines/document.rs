//! A record's value on its way through a pipeline: read from the record's
//! JSON, changed by the filters, written to the sink as JSON text.
//!
//! With filters, the JSON is read straight into VRL's value and written
//! straight from it, with no `serde_json::Value` in between (that round trip
//! was most of a pipeline's cost per record besides the filters themselves).
//! Numbers read as VRL reads them: an integer that fits `i64` is an integer,
//! a number with a fraction or exponent a float, and any other number (an
//! integer past `i64`) the text it was written as.
//!
//! Without filters nothing converts the value: it is kept as read, every
//! number as written (`19.990` keeps its third decimal).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use vrl::value::{KeyString, ObjectMap, Value};

use crate::pipelines::KeyPath;

/// serde_json's name for a number it hands over as its text: with the
/// `arbitrary_precision` feature (which this crate needs for money), every
/// number that is not an integer within `u64` or `i64` reaches a visitor as
/// a one-entry map under this key.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// A record's value, as read or as the filters left it.
#[derive(Debug, Clone)]
pub struct Document(Repr);

#[derive(Debug, Clone)]
enum Repr {
    /// Read as written: no filter ran.
    Json(serde_json::Value),
    /// VRL's value, read for the filters or left by them.
    Vrl(Value),
}

impl Document {
    /// Reads `payload` as JSON, as written.
    pub fn read_json(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload).map(|value| Self(Repr::Json(value)))
    }

    /// Reads `payload` as JSON into VRL's value, for filters to run on.
    pub fn read_vrl(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice::<VrlJson>(payload).map(|value| Self(Repr::Vrl(value.0)))
    }

    /// VRL's value, for the filters (a value read as written is converted).
    pub(crate) fn into_vrl(self) -> Value {
        match self.0 {
            Repr::Json(value) => Value::from(value),
            Repr::Vrl(value) => value,
        }
    }

    /// A document of what the filters left.
    pub(crate) fn from_vrl(value: Value) -> Self {
        Self(Repr::Vrl(value))
    }

    /// The document as JSON text.
    pub fn to_json(&self) -> String {
        // Neither value can fail to serialise: keys are strings, and a
        // non-finite float (VRL's floats are not NaN) is written as null.
        match &self.0 {
            Repr::Json(value) => value.to_string(),
            Repr::Vrl(value) => serde_json::to_string(value).unwrap_or_default(),
        }
    }

    /// The document as a `serde_json::Value`.
    pub fn to_value(&self) -> serde_json::Value {
        match &self.0 {
            Repr::Json(value) => value.clone(),
            Repr::Vrl(value) => serde_json::to_value(value).unwrap_or_default(),
        }
    }

    /// Whether a NUL character is in any string or key: PostgreSQL stores
    /// none in `text` or `jsonb`.
    pub fn holds_nul(&self) -> bool {
        match &self.0 {
            Repr::Json(value) => crate::db::holds_nul(value),
            Repr::Vrl(value) => vrl_holds_nul(value),
        }
    }

    /// The first number PostgreSQL's `numeric`, and so its `jsonb`, cannot
    /// hold (see [`fits_numeric`]), as it would be written to the sink
    /// (serde_json writes an exponent with its sign: `1e+200000`; its first
    /// 40 characters and its length when longer); `None` when every number fits. Only a value
    /// read as written can hold one: VRL's numbers are integers within
    /// `i64`, finite floats, or text.
    pub fn number_past_numeric(&self) -> Option<String> {
        const SHOWN: usize = 40;
        let Repr::Json(value) = &self.0 else {
            return None;
        };
        let text = first_number(value, &|n| !fits_numeric(n.as_str()))?.as_str();
        Some(match text.get(..SHOWN) {
            Some(start) if text.len() > SHOWN => format!("{start}… ({} characters)", text.len()),
            _ => text.to_owned(),
        })
    }

    /// The text of the scalar at `path`, as a key: a string as it is, a
    /// number or a boolean as JSON writes it; `None` when there is no such
    /// scalar (nothing there, null, an object or an array).
    pub fn key_at(&self, path: &KeyPath) -> Option<String> {
        match &self.0 {
            Repr::Json(value) => json_key(path.get(value)?),
            Repr::Vrl(value) => {
                let found = path.segments().try_fold(value, |v, segment| match v {
                    Value::Object(fields) => fields.get(segment),
                    _ => None,
                })?;
                match found {
                    Value::Bytes(_) | Value::String(_) => {
                        found.to_str_lossy().map(|text| text.into_owned())
                    }
                    Value::Object(_) | Value::Array(_) | Value::Null => None,
                    scalar => json_key(&serde_json::to_value(scalar).ok()?),
                }
            }
        }
    }
}

/// Two documents are equal when their JSON is.
impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        self.to_value() == other.to_value()
    }
}

impl From<serde_json::Value> for Document {
    fn from(value: serde_json::Value) -> Self {
        Self(Repr::Json(value))
    }
}

fn json_key(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Some(value.to_string()),
        _ => None,
    }
}

/// The first number in `value` (depth first) that `wanted` picks.
fn first_number<'a>(
    value: &'a serde_json::Value,
    wanted: &impl Fn(&serde_json::Number) -> bool,
) -> Option<&'a serde_json::Number> {
    match value {
        serde_json::Value::Number(number) => wanted(number).then_some(number),
        serde_json::Value::Array(items) => items.iter().find_map(|v| first_number(v, wanted)),
        serde_json::Value::Object(fields) => fields.values().find_map(|v| first_number(v, wanted)),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::String(_) => None,
    }
}

/// Decimal places of the highest digit PostgreSQL's `numeric` holds: a
/// value is below 10^131072.
const NUMERIC_MAX_MAGNITUDE: i64 = 131_072;
/// Most digits after the decimal point a `numeric` keeps (its display
/// scale is 14 bits).
const NUMERIC_MAX_SCALE: i64 = 16_383;
/// An exponent PostgreSQL refuses before looking at the digits.
const NUMERIC_MAX_EXPONENT: u64 = (i32::MAX / 2) as u64;

/// Whether PostgreSQL's `numeric` input takes the JSON number `text`, as
/// PostgreSQL 15 reads one (a test checks the edges against a real server): its exponent within ±`i32::MAX / 2`, its
/// display scale (the decimals as written, less the exponent) at most
/// 16383, even for a zero, and its value below 10^131072.
fn fits_numeric(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        // An exponent past `i64` is past PostgreSQL's limit too.
        Some((mantissa, exponent)) => match exponent.parse::<i64>() {
            Ok(exponent) => (mantissa, exponent),
            Err(_) => return false,
        },
        None => (unsigned, 0),
    };
    // `unsigned_abs`: `i64::MIN` is a valid exponent here, and has no `abs`.
    if exponent.unsigned_abs() >= NUMERIC_MAX_EXPONENT {
        return false;
    }
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let (integer_digits, fraction_digits) = (integer.len() as i64, fraction.len() as i64);
    if fraction_digits - exponent > NUMERIC_MAX_SCALE {
        return false;
    }
    // The place of the first digit that is not 0 (a zero fits).
    let first = integer
        .bytes()
        .chain(fraction.bytes())
        .position(|digit| digit != b'0');
    first.is_none_or(|at| integer_digits - 1 - at as i64 + exponent < NUMERIC_MAX_MAGNITUDE)
}

fn vrl_holds_nul(value: &Value) -> bool {
    match value {
        // A lossy view of bytes adds no NUL.
        Value::Bytes(_) | Value::String(_) => {
            value.to_str_lossy().is_some_and(|s| s.contains('\0'))
        }
        Value::Regex(regex) => regex.as_str().contains('\0'),
        Value::Object(fields) => fields
            .iter()
            .any(|(k, v)| k.as_str().contains('\0') || vrl_holds_nul(v)),
        Value::Array(items) => items.iter().any(vrl_holds_nul),
        _ => false,
    }
}

/// JSON read into VRL's value, numbers as `From<serde_json::Value>` converts
/// them (VRL's own `Deserialize` would take serde_json's number maps for
/// objects, and integers past `i64` for floats).
struct VrlJson(Value);

impl<'de> Deserialize<'de> for VrlJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(VrlVisitor).map(VrlJson)
    }
}

struct VrlVisitor;

/// A number as VRL's own conversion from serde_json reads it: an integer
/// within `i64`, a finite float, otherwise the number's text.
fn number(number: serde_json::Number) -> Value {
    Value::from(serde_json::Value::Number(number))
}

impl<'de> Visitor<'de> for VrlVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Boolean(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Integer(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // serde_json's `from_slice` never calls this (it hands non-integers
        // over as text); another format would, and a non-finite float is null.
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(VrlJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = ObjectMap::new();
        let Some(first) = map.next_key::<String>()? else {
            return Ok(Value::Object(fields));
        };
        if first == NUMBER_TOKEN {
            // As serde_json's own reader: the text must be a JSON number
            // (an object written with that key and a string is refused).
            let text: String = map.next_value()?;
            let parsed = text
                .parse::<serde_json::Number>()
                .map_err(|_| de::Error::custom("invalid number"))?;
            return Ok(number(parsed));
        }
        let VrlJson(value) = map.next_value()?;
        fields.insert(KeyString::from(first), value);
        while let Some(key) = map.next_key::<String>()? {
            let VrlJson(value) = map.next_value()?;
            fields.insert(KeyString::from(key), value);
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    /// Every kind of JSON value, the awkward numbers among them.
    const SAMPLES: &[&str] = &[
        r#"{"a": 1, "b": -2, "c": 1.5, "d": "x", "e": null, "f": true, "g": [1, [2, {"h": []}]], "i": {}}"#,
        r#"{"max": 9223372036854775807, "min": -9223372036854775808}"#,
        r#"{"past_i64": 9223372036854775808, "past_u64": 123456789012345678901234567890}"#,
        r#"{"money": 19.990, "exp": 1e3, "neg_exp": -2.5E-3, "zero": -0, "huge": 1e400}"#,
        r#"{"dup": 1, "dup": 2}"#,
        r#"{"unicode": "é\u00e9\ud83d\ude00", "escaped": "a\"b\\c\nd"}"#,
        r#"[1, "two", 3.0]"#,
        r#""just a string""#,
        "42",
        "null",
    ];

    #[test]
    fn reading_into_vrl_gives_what_converting_serde_json_values_gives() {
        for sample in SAMPLES {
            let direct = Document::read_vrl(sample.as_bytes()).unwrap().into_vrl();
            let through_serde_json =
                Value::from(serde_json::from_str::<serde_json::Value>(sample).unwrap());
            assert_eq!(direct, through_serde_json, "{sample}");
        }
    }

    #[test]
    fn numbers_read_into_vrl_are_integers_floats_or_their_text() {
        let doc = Document::read_vrl(
            br#"{"i": 12, "f": 19.990, "big": 9223372036854775808, "huge": 1e400}"#,
        )
        .unwrap();
        assert_eq!(
            doc.to_value(),
            json!({"i": 12, "f": 19.99, "big": "9223372036854775808", "huge": "1e+400"})
        );
    }

    #[test]
    fn a_document_read_as_written_keeps_every_number() {
        let doc =
            Document::read_json(br#"{"price": 19.990, "big": 123456789012345678901234567890}"#)
                .unwrap();
        assert_eq!(
            doc.to_json(),
            r#"{"big":123456789012345678901234567890,"price":19.990}"#
        );
    }

    #[test]
    fn json_text_from_vrl_is_what_serde_json_writes() {
        for sample in SAMPLES {
            let doc = Document::read_vrl(sample.as_bytes()).unwrap();
            let expected = serde_json::to_value(doc.clone().into_vrl())
                .unwrap()
                .to_string();
            assert_eq!(doc.to_json(), expected, "{sample}");
        }
    }

    #[test]
    fn what_is_not_json_is_refused_by_both_readers() {
        for bad in [
            &b"{"[..],
            b"{\"a\": }",
            b"\xff",
            b"[1, 2",
            b"{\"a\": 1} x",
            b"",
            // serde_json's private name for a number, with what is not one.
            br#"{"$serde_json::private::Number": "abc"}"#,
            br#"{"a": {"$serde_json::private::Number": "1", "b": 2}}"#,
        ] {
            assert!(Document::read_vrl(bad).is_err(), "{bad:?}");
            assert!(Document::read_json(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_nul_anywhere_is_found_in_both_forms() {
        for (text, nul) in [
            (r#"{"a": "x\u0000y"}"#, true),
            (r#"{"a\u0000": 1}"#, true),
            (r#"{"a": [{"b": ["\u0000"]}]}"#, true),
            (r#"{"a": "x\\u0000y"}"#, false),
            (r#"{"a": [1, 2.5, null, true]}"#, false),
        ] {
            assert_eq!(
                Document::read_vrl(text.as_bytes()).unwrap().holds_nul(),
                nul,
                "{text}"
            );
            assert_eq!(
                Document::read_json(text.as_bytes()).unwrap().holds_nul(),
                nul,
                "{text}"
            );
        }
    }

    #[test]
    fn numbers_past_numeric_are_found_as_written_and_only_there() {
        let zeros = "0".repeat(50);
        for (text, found) in [
            (
                r#"{"a": [1, 19.990, -0, 1e131071, 9e-16383]}"#.to_owned(),
                None,
            ),
            (
                r#"{"a": {"b": [2, 1e200000]}, "c": 1e999999}"#.to_owned(),
                Some("1e+200000".to_owned()),
            ),
            // The one exponent `i64` holds that has no `abs`.
            (
                r#"{"n": 1e-9223372036854775808}"#.to_owned(),
                Some("1e-9223372036854775808".to_owned()),
            ),
            (
                format!(r#"{{"long": 1{zeros}e131030}}"#),
                // Written as `1…0e+131030`, 59 characters.
                Some(format!("1{}… (59 characters)", &zeros[..39])),
            ),
        ] {
            let doc = Document::read_json(text.as_bytes()).unwrap();
            assert_eq!(doc.number_past_numeric(), found, "{text}");
        }
        // VRL reads such a number as its text: nothing to find.
        let doc = Document::read_vrl(br#"{"a": 1e200000}"#).unwrap();
        assert_eq!(doc.number_past_numeric(), None);
    }

    #[test]
    fn keys_are_strings_numbers_or_booleans_in_both_forms() {
        let text = br#"{"s": "k", "i": 7, "f": 1.5, "whole": 2.0, "b": false, "n": null, "o": {"s": "inner"}, "a": [1]}"#;
        for doc in [
            Document::read_vrl(text).unwrap(),
            Document::read_json(text).unwrap(),
        ] {
            let key = |path: &str| doc.key_at(&KeyPath::parse(path).unwrap());
            assert_eq!(key(".s").as_deref(), Some("k"));
            assert_eq!(key(".i").as_deref(), Some("7"));
            assert_eq!(key(".f").as_deref(), Some("1.5"));
            assert_eq!(key(".whole").as_deref(), Some("2.0"));
            assert_eq!(key(".b").as_deref(), Some("false"));
            assert_eq!(key(".o.s").as_deref(), Some("inner"));
            for none in [".n", ".o", ".a", ".missing", ".s.deeper"] {
                assert_eq!(key(none), None, "{none}");
            }
        }
    }
}
