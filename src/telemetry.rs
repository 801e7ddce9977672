//! Logging set-up: `tracing` with JSON lines for machines or text for people.
//!
//! Log lines carry values that clients chose (paths, timestamps, methods).
//! JSON escapes them by construction; the text format goes through
//! [`EscapedFields`], which writes every control character as an escape
//! (`\n`, `\u{1b}`), so that no request can start a line of its own or send
//! terminal codes. Colours are used only when stdout is a terminal.
//!
//! actix's HTTP/1 dispatcher logs at ERROR every request it cannot parse
//! (`stream error: ...`): a client error, and one any client can repeat at
//! will. Those events are hidden unless `LOG_LEVEL` asks for debug or
//! names `actix_http`; the 400 (or 408, 431) each such client gets is in
//! the metrics of nothing, as actix answers it itself.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use crate::config::{LogFormat, LogSettings};

/// The target of actix's per-connection error events.
const DISPATCHER_TARGET: &str = "actix_http::h1::dispatcher";

/// Installs the global subscriber. Fails with a message naming `LOG_LEVEL`
/// when the filter does not parse.
pub fn init(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = filter(&settings.log_level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::stdout().is_terminal());
    let installed = match settings.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.fmt_fields(EscapedFields).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// `LOG_LEVEL`'s filter, with actix's dispatcher errors hidden unless asked for.
fn filter(log_level: &str) -> anyhow::Result<EnvFilter> {
    let invalid = |e: &dyn fmt::Display| anyhow::anyhow!("invalid LOG_LEVEL '{log_level}': {e}");
    let filter = EnvFilter::try_new(log_level).map_err(|e| invalid(&e))?;
    let verbose = log_level
        .split(',')
        .any(|d| matches!(d.trim().to_ascii_lowercase().as_str(), "debug" | "trace"));
    if verbose || log_level.contains("actix_http") {
        return Ok(filter);
    }
    let hidden = format!("{DISPATCHER_TARGET}=off")
        .parse()
        .map_err(|e| invalid(&e))?;
    Ok(filter.add_directive(hidden))
}

/// Formats the fields of text log lines as tracing's default does
/// (`message key=value ...`), with control characters escaped.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            out: Escaped(writer),
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    out: Escaped<Writer<'writer>>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{}", ErrorChain(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.out, "{separator}{value:?}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.out, "{separator}{name}={value:?}")
            }
        };
    }
}

/// An error with its sources, `outer: inner: innermost`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// A writer that writes control characters (and the Unicode line and
/// paragraph separators and direction overrides) as escapes.
struct Escaped<W>(W);

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let mut chars = rest[at..].chars();
            let Some(c) = chars.next() else { break };
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = Escaped(String::new());
        let _ = out.write_str(s);
        out.0
    }

    #[test]
    fn control_characters_are_written_as_escapes() {
        assert_eq!(escaped("plain text é"), "plain text é");
        assert_eq!(
            escaped("a\nb\r\t\u{1b}[31mERROR\u{7}\u{0}\u{85}"),
            "a\\nb\\r\\t\\u{1b}[31mERROR\\u{7}\\u{0}\\u{85}"
        );
        assert_eq!(escaped("x\u{2028}y\u{202e}z"), "x\\u{2028}y\\u{202e}z");
    }

    #[test]
    fn dispatcher_errors_are_hidden_unless_asked_for() {
        let shown = |level: &str| {
            let filter = filter(level).map(|f| f.to_string()).unwrap_or_default();
            !filter.contains(&format!("{DISPATCHER_TARGET}=off"))
        };
        assert!(!shown("info"));
        assert!(!shown("warn,chronolog=debug"));
        assert!(shown("debug"));
        assert!(shown("info,actix_http=error"));
        assert!(filter("chronolog=[bad").is_err());
    }
}
