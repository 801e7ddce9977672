//! The dead-letter record: a copy of a record that cannot be projected, with
//! `dlq.*` headers saying why and where it came from, cut to fit.
//!
//! A dead letter must always be publishable, or the record it stands for
//! would block its partition for ever. A source record can be as large as
//! the broker allows, and the copy adds headers, so a copy that would not
//! fit under [`BUDGET`] keeps only the first [`VALUE_CUT`] bytes of the
//! value, with the original's size and SHA-256 in `dlq.original.size` and
//! `dlq.original.sha256` (the whole record stays in the log at its source
//! offset); oversized keys and header sets are cut the same way.

use sha2::{Digest, Sha256};

use crate::kafka::record::DecodeError;

/// Largest dead letter written whole: well below librdkafka's default
/// `message.max.bytes` (1,000,000) and the broker's default record batch
/// limit (1,048,588), headers and batch overhead included.
pub const BUDGET: usize = 900_000;
/// What is kept of a value that does not fit.
pub const VALUE_CUT: usize = 64 * 1024;
/// What is kept of a key that does not fit.
pub const KEY_CUT: usize = 1024;
/// The original headers are kept only while they total at most this.
pub const HEADERS_CUT: usize = 64 * 1024;
/// What is kept of the error message (`dlq.error`).
pub const ERROR_CUT: usize = 1024;

/// Where a record sits in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// The dead-letter topic of `topic`: records of `topic` that cannot be
/// used go there.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// A dead letter, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where it goes: the source topic's dead-letter topic, `<topic>.dlq`.
    pub topic: String,
    /// The source key, or its first [`KEY_CUT`] bytes.
    pub key: Option<Vec<u8>>,
    /// The source value, or its first [`VALUE_CUT`] bytes.
    pub value: Option<Vec<u8>>,
    /// The source headers (unless cut), then the `dlq.*` headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The reason code: `dlq.reason`, and the metric label.
    pub reason: &'static str,
}

impl DeadLetter {
    /// The dead letter of the record at `source`, refused for `error`.
    pub fn new(
        source: &SourcePosition,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Vec<(String, Vec<u8>)>,
        error: &DecodeError,
    ) -> Self {
        let header_bytes = |hs: &[(String, Vec<u8>)]| -> usize {
            hs.iter().map(|(k, v)| k.len() + v.len() + 8).sum()
        };
        let mut message = error.to_string();
        if message.len() > ERROR_CUT {
            let mut at = ERROR_CUT;
            while !message.is_char_boundary(at) {
                at -= 1;
            }
            message.truncate(at);
        }
        let mut trailer = vec![
            ("dlq.reason".to_owned(), error.code().as_bytes().to_vec()),
            ("dlq.error".to_owned(), message.into_bytes()),
            (
                "dlq.source.topic".to_owned(),
                source.topic.clone().into_bytes(),
            ),
            (
                "dlq.source.partition".to_owned(),
                source.partition.to_string().into_bytes(),
            ),
            (
                "dlq.source.offset".to_owned(),
                source.offset.to_string().into_bytes(),
            ),
        ];
        // Room for the size and hash headers a cut adds.
        let size = key.map_or(0, <[u8]>::len)
            + value.map_or(0, <[u8]>::len)
            + header_bytes(&headers)
            + header_bytes(&trailer)
            + 256;
        if size <= BUDGET {
            let mut all = headers;
            all.append(&mut trailer);
            return Self {
                topic: dead_letter_topic(&source.topic),
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec),
                headers: all,
                reason: error.code(),
            };
        }
        let mut kept = if header_bytes(&headers) <= HEADERS_CUT {
            headers
        } else {
            trailer.push((
                "dlq.original.headers.size".to_owned(),
                header_bytes(&headers).to_string().into_bytes(),
            ));
            Vec::new()
        };
        let key = key.map(|k| {
            if k.len() > KEY_CUT {
                trailer.push((
                    "dlq.original.key.size".to_owned(),
                    k.len().to_string().into_bytes(),
                ));
                k[..KEY_CUT].to_vec()
            } else {
                k.to_vec()
            }
        });
        let value = value.map(|v| {
            if v.len() > VALUE_CUT {
                trailer.push((
                    "dlq.original.size".to_owned(),
                    v.len().to_string().into_bytes(),
                ));
                trailer.push(("dlq.original.sha256".to_owned(), sha256_hex(v).into_bytes()));
                v[..VALUE_CUT].to_vec()
            } else {
                v.to_vec()
            }
        });
        kept.append(&mut trailer);
        Self {
            topic: dead_letter_topic(&source.topic),
            key,
            value,
            headers: kept,
            reason: error.code(),
        }
    }

    /// The value of the first header called `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Bytes this dead letter puts on the wire, before batch overhead.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SourcePosition {
        SourcePosition {
            topic: "t".into(),
            partition: 2,
            offset: 41,
        }
    }

    #[test]
    fn a_small_record_is_copied_whole_with_its_reason_and_source() {
        let error = DecodeError::NotJson("x".into());
        let headers = vec![("correlationId".to_owned(), b"abc".to_vec())];
        let dl = DeadLetter::new(&source(), Some(b"k"), Some(b"not json"), headers, &error);
        assert_eq!(dl.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(dl.value.as_deref(), Some(&b"not json"[..]));
        assert_eq!(dl.header("correlationId").as_deref(), Some("abc"));
        assert_eq!(dl.header("dlq.reason").as_deref(), Some("not_json"));
        assert_eq!(dl.header("dlq.source.topic").as_deref(), Some("t"));
        assert_eq!(dl.header("dlq.source.partition").as_deref(), Some("2"));
        assert_eq!(dl.header("dlq.source.offset").as_deref(), Some("41"));
        assert_eq!(dl.header("dlq.original.size"), None);
        assert_eq!(dl.reason, "not_json");
    }

    #[test]
    fn a_record_that_would_not_fit_is_cut_with_its_size_and_hash() {
        let value = vec![b'a'; 999_964];
        let big_header = ("h".to_owned(), vec![b'b'; 100_000]);
        let error = DecodeError::NotJson("x".into());
        let key = vec![b'k'; 5000];
        let dl = DeadLetter::new(
            &source(),
            Some(&key),
            Some(&value),
            vec![big_header],
            &error,
        );
        assert_eq!(dl.value.as_ref().map(Vec::len), Some(VALUE_CUT));
        assert_eq!(dl.key.as_ref().map(Vec::len), Some(KEY_CUT));
        assert_eq!(dl.header("h"), None, "oversized headers are dropped");
        assert_eq!(dl.header("dlq.original.size").as_deref(), Some("999964"));
        assert_eq!(dl.header("dlq.original.key.size").as_deref(), Some("5000"));
        assert_eq!(
            dl.header("dlq.original.headers.size").as_deref(),
            Some("100009")
        );
        assert_eq!(
            dl.header("dlq.original.sha256"),
            Some(sha256_hex(&value)),
            "the hash identifies the whole original"
        );
        assert!(dl.size() < BUDGET, "{}", dl.size());
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
