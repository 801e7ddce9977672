//! Reading JSON request bodies field by field, for the accounts and shop
//! commands. Every refusal names the field as a path (`items[0].quantity`)
//! and says what is expected; it never repeats the value, which may be a
//! card number.

use std::fmt;

use serde_json::{Map, Value};

/// A field of a request that is missing, of the wrong type or out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the field (`name.firstName`, `items[2].productId`; `body` for
    /// the body as a whole).
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses a request body as JSON; a syntax error names its place, not its text.
pub fn parse_body(body: &[u8]) -> Result<Value, FieldError> {
    if body.is_empty() {
        return Err(FieldError::new("body", "a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| {
        FieldError::new(
            "body",
            format!(
                "not valid JSON (line {}, column {}: {})",
                e.line(),
                e.column(),
                match e.classify() {
                    serde_json::error::Category::Eof => "unexpected end",
                    _ => "syntax error",
                }
            ),
        )
    })
}

/// The JSON type of a value, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object being read, with its path for messages.
#[derive(Debug, Clone)]
pub struct Object<'a> {
    map: &'a Map<String, Value>,
    /// Empty for the body itself.
    path: String,
}

/// Text limits, in characters.
#[derive(Debug, Clone, Copy)]
pub struct Text {
    /// Most characters allowed.
    pub max: usize,
}

impl<'a> Object<'a> {
    /// The body itself, which must be an object.
    pub fn root(value: &'a Value) -> Result<Self, FieldError> {
        match value {
            Value::Object(map) => Ok(Self {
                map,
                path: String::new(),
            }),
            other => Err(FieldError::new(
                "body",
                format!("must be a JSON object, not {}", kind(other)),
            )),
        }
    }

    /// An object found at `path` (an element of an array).
    pub fn at(value: &'a Value, path: &str) -> Result<Self, FieldError> {
        match value {
            Value::Object(map) => Ok(Self {
                map,
                path: path.to_owned(),
            }),
            other => Err(FieldError::new(
                path,
                format!("must be an object, not {}", kind(other)),
            )),
        }
    }

    /// The path of `key` in this object.
    pub fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn present(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Whether `key` is present and not null.
    pub fn has(&self, key: &str) -> bool {
        self.present(key).is_some()
    }

    /// A required, non-blank string of at most `limit.max` characters.
    pub fn string(&self, key: &str, limit: Text) -> Result<String, FieldError> {
        self.optional_string(key, limit)?
            .ok_or_else(|| FieldError::new(self.path(key), "is required"))
    }

    /// A string of at most `limit.max` characters, absent or null as `None`;
    /// present, it must not be blank.
    pub fn optional_string(&self, key: &str, limit: Text) -> Result<Option<String>, FieldError> {
        let Some(value) = self.present(key) else {
            return Ok(None);
        };
        let Value::String(text) = value else {
            return Err(FieldError::new(
                self.path(key),
                format!("must be a string, not {}", kind(value)),
            ));
        };
        if text.trim().is_empty() {
            return Err(FieldError::new(self.path(key), "must not be blank"));
        }
        let length = text.chars().count();
        if length > limit.max {
            return Err(FieldError::new(
                self.path(key),
                format!("must be at most {} characters, not {length}", limit.max),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(FieldError::new(
                self.path(key),
                "must not contain control characters",
            ));
        }
        Ok(Some(text.clone()))
    }

    /// A required object.
    pub fn object(&self, key: &str) -> Result<Object<'a>, FieldError> {
        match self.present(key) {
            None => Err(FieldError::new(self.path(key), "is required")),
            Some(value) => Object::at(value, &self.path(key)),
        }
    }

    /// An object, absent or null as `None`.
    pub fn optional_object(&self, key: &str) -> Result<Option<Object<'a>>, FieldError> {
        self.present(key)
            .map(|value| Object::at(value, &self.path(key)))
            .transpose()
    }

    /// An array (absent or null as empty) of at most `max` elements, each
    /// with its path.
    pub fn array(&self, key: &str, max: usize) -> Result<Vec<(String, &'a Value)>, FieldError> {
        let Some(value) = self.present(key) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(FieldError::new(
                self.path(key),
                format!("must be an array, not {}", kind(value)),
            ));
        };
        if items.len() > max {
            return Err(FieldError::new(
                self.path(key),
                format!("must have at most {max} elements, not {}", items.len()),
            ));
        }
        let path = self.path(key);
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{path}[{i}]"), v))
            .collect())
    }

    /// A required integer in `min..=max`.
    pub fn integer(&self, key: &str, min: i64, max: i64) -> Result<i64, FieldError> {
        let value = self
            .present(key)
            .ok_or_else(|| FieldError::new(self.path(key), "is required"))?;
        integer(value, &self.path(key), min, max)
    }

    /// A required amount of money (see [`Money::parse`]).
    pub fn money(&self, key: &str) -> Result<Money, FieldError> {
        let value = self
            .present(key)
            .ok_or_else(|| FieldError::new(self.path(key), "is required"))?;
        Money::parse(value).map_err(|message| FieldError::new(self.path(key), message))
    }

    /// Refuses any key not in `known`: a misspelt optional field would
    /// otherwise be ignored silently.
    pub fn only(&self, known: &[&str]) -> Result<(), FieldError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(unknown) => Err(FieldError::new(
                self.path(&crate::echo::shorten(unknown)),
                format!("is not a known field (known: {})", known.join(", ")),
            )),
        }
    }
}

/// An integer in `min..=max` at `path`.
pub fn integer(value: &Value, path: &str, min: i64, max: i64) -> Result<i64, FieldError> {
    let out_of_range = || FieldError::new(path, format!("must be an integer from {min} to {max}"));
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(i) if (min..=max).contains(&i) => Ok(i),
            Some(_) => Err(out_of_range()),
            // A fraction, or beyond i64.
            None if n.is_f64() && n.as_f64().is_some_and(|f| f.fract() != 0.0) => {
                Err(FieldError::new(path, "must be a whole number"))
            }
            None => Err(out_of_range()),
        },
        other => Err(FieldError::new(
            path,
            format!("must be an integer, not {}", kind(other)),
        )),
    }
}

/// An exact amount of money in cents, at most 9 999 999 999.99 (what
/// PostgreSQL's `numeric(12,2)` holds), never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

impl Money {
    /// Largest amount, in cents.
    pub const MAX_CENTS: i64 = 999_999_999_999;

    /// The amount of `cents`, when in range.
    pub fn from_cents(cents: i64) -> Option<Self> {
        (0..=Self::MAX_CENTS)
            .contains(&cents)
            .then_some(Self(cents))
    }

    /// The amount in cents.
    pub fn cents(self) -> i64 {
        self.0
    }

    /// Reads a JSON number or string with at most two decimals: `19.99`,
    /// `"19.99"`, `20`, `"20.5"`. The error says what is wrong.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let text = match value {
            // serde_json keeps a number's text as the client wrote it
            // (`arbitrary_precision`): `19.990` keeps its third decimal and
            // `1e3` its exponent, and both are refused below, where a float
            // would have made them 19.99 and 1000.
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.trim().to_owned(),
            other => {
                return Err(format!(
                    "must be an amount as a number or a string (\"19.99\"), not {}",
                    kind(other)
                ));
            }
        };
        Self::parse_text(&text)
    }

    fn parse_text(text: &str) -> Result<Self, String> {
        if text.starts_with('-') {
            return Err("must not be negative".into());
        }
        let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if units.is_empty() || !digits(units) || !digits(fraction) || text.ends_with('.') {
            return Err("must be an amount like 19.99".into());
        }
        if fraction.len() > 2 {
            return Err("must have at most two decimals".into());
        }
        let units = units.trim_start_matches('0');
        if units.len() > 10 {
            return Err("must be at most 9999999999.99".into());
        }
        let units: i64 = if units.is_empty() {
            0
        } else {
            units.parse().map_err(|_| "must be an amount like 19.99")?
        };
        let mut cents: i64 = fraction.parse().unwrap_or(0);
        if fraction.len() == 1 {
            cents *= 10;
        }
        Self::from_cents(units * 100 + cents).ok_or_else(|| "must be at most 9999999999.99".into())
    }

    /// The amount as PostgreSQL `numeric` takes it.
    pub fn to_decimal(self) -> bigdecimal::BigDecimal {
        bigdecimal::BigDecimal::new(self.0.into(), 2)
    }

    /// The amount of a `numeric(12,2)` column.
    pub fn from_decimal(value: &bigdecimal::BigDecimal) -> Option<Self> {
        use bigdecimal::ToPrimitive;
        let cents = (value * bigdecimal::BigDecimal::from(100)).with_scale(0);
        cents.to_i64().and_then(Self::from_cents)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Money::parse(&value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn money_takes_numbers_and_strings_with_two_decimals_at_most() {
        let cents = |v: Value| Money::parse(&v).map(Money::cents);
        assert_eq!(cents(json!(19.99)), Ok(1999));
        assert_eq!(cents(json!("19.99")), Ok(1999));
        assert_eq!(cents(json!(20)), Ok(2000));
        assert_eq!(cents(json!("0.5")), Ok(50));
        assert_eq!(cents(json!("007.05")), Ok(705));
        assert_eq!(cents(json!("9999999999.99")), Ok(Money::MAX_CENTS));
        assert_eq!(
            cents(json!(19.999)),
            Err("must have at most two decimals".into())
        );
        assert_eq!(
            cents(json!("19.999")),
            Err("must have at most two decimals".into())
        );
        assert_eq!(cents(json!(-1)), Err("must not be negative".into()));
        assert_eq!(
            cents(json!("10000000000")),
            Err("must be at most 9999999999.99".into())
        );
        assert_eq!(
            cents(json!(1e21)),
            Err("must be an amount like 19.99".into())
        );
        assert!(cents(json!("1.")).is_err());
        assert!(cents(json!(".5")).is_err());
        assert!(cents(json!("abc")).is_err());
        assert!(cents(json!(true)).is_err());
    }

    #[test]
    fn money_is_shown_with_two_decimals_and_round_trips_through_numeric() {
        let money = Money::from_cents(1905).unwrap();
        assert_eq!(money.to_string(), "19.05");
        assert_eq!(Money::from_decimal(&money.to_decimal()), Some(money));
        assert_eq!(Money::from_cents(7).unwrap().to_string(), "0.07");
        assert_eq!(serde_json::to_value(money).unwrap(), json!("19.05"));
    }

    #[test]
    fn fields_are_named_by_their_path_and_never_echoed() {
        let body = json!({"name": {"firstName": 4916673475725015_i64}, "items": [1]});
        let root = Object::root(&body).unwrap();
        let name = root.object("name").unwrap();
        let error = name.string("firstName", Text { max: 10 }).unwrap_err();
        assert_eq!(error.field, "name.firstName");
        assert_eq!(error.message, "must be a string, not a number");
        let items = root.array("items", 5).unwrap();
        assert_eq!(items[0].0, "items[0]");
        assert_eq!(
            integer(items[0].1, &items[0].0, 2, 3).unwrap_err().message,
            "must be an integer from 2 to 3"
        );
        assert_eq!(parse_body(b"{").unwrap_err().field, "body");
    }
}
