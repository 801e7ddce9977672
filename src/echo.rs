//! Client-supplied text as an error message or a log field repeats it: at
//! most [`ECHO_LIMIT`] characters, then `…`, wherever the text came from (an
//! HTTP request, a record read from the log, a pipeline definition). A
//! message that repeated a value in full could be as large as the value,
//! and a log line too.

use std::fmt;

/// Most characters of a client's value that a message or a log field repeats.
pub const ECHO_LIMIT: usize = 64;

/// `text` shortened to at most [`ECHO_LIMIT`] characters, then `…`.
pub fn shorten(text: &str) -> String {
    Echo(text).to_string()
}

/// A parser's message about client-supplied text, which may quote the whole
/// value (serde quotes an unknown field, or a string it did not expect): at
/// most [`MESSAGE_LIMIT`] characters of it, then `…`.
pub fn cut(message: &str) -> String {
    match head(message, MESSAGE_LIMIT) {
        Some(head) => format!("{head}…"),
        None => message.to_owned(),
    }
}

/// The first `limit` characters of `text`, when it has more.
fn head(text: &str, limit: usize) -> Option<&str> {
    text.char_indices().nth(limit).map(|(at, _)| &text[..at])
}

/// Most characters of a parser's message that an error repeats.
pub const MESSAGE_LIMIT: usize = 256;

/// Client-supplied text as a message or a log field may show it: at most
/// [`ECHO_LIMIT`] characters, then `…`. Formatting it allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Echo<'a>(pub &'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match head(self.0, ECHO_LIMIT) {
            Some(head) => {
                f.write_str(head)?;
                f.write_str("…")
            }
            None => f.write_str(self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_keeps_at_most_the_limit_in_characters() {
        assert_eq!(shorten("short"), "short");
        let exact = "é".repeat(ECHO_LIMIT);
        assert_eq!(shorten(&exact), exact);
        let long = "é".repeat(ECHO_LIMIT + 1);
        assert_eq!(shorten(&long), format!("{exact}…"));
        let message = "x".repeat(MESSAGE_LIMIT + 1);
        assert_eq!(cut(&message), format!("{}…", "x".repeat(MESSAGE_LIMIT)));
        assert_eq!(cut("short"), "short");
    }
}
