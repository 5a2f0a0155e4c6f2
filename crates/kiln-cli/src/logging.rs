//! What `kiln serve` logs, and how: on stderr, the compact format for people, with every control
//! character of a logged value escaped, or one JSON object per line for machines (JSON escapes
//! the control characters below U+0020, so an event stays one line; other characters stay as
//! they are inside its quoted strings). Values often come from clients (an instance id, an event
//! name, a failure message that quotes an input); a raw newline in one could forge a log line,
//! and terminal escapes could rewrite what an operator sees.

use crate::config::LogFormat;
use kiln::is_layout_control;
use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FormatFields, SubscriberBuilder};

/// Logs to stderr at `filter` (an `EnvFilter` directive; `info` if it does not parse) in
/// `format`, unless the application installed a subscriber of its own; panics are logged the
/// same way.
pub fn init(filter: &str, format: LogFormat) {
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let installed = match format {
        LogFormat::Compact => builder(filter, colors).with_writer(std::io::stderr).try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(env_filter(filter))
            .with_writer(std::io::stderr)
            .try_init(),
    };
    if installed.is_ok() {
        // The default hook prints a panic's message (which may quote a client's input) raw.
        std::panic::set_hook(Box::new(log_panic));
    }
}

/// The subscriber `kiln serve` logs with, before its writer is chosen.
fn builder(filter: &str, colors: bool) -> SubscriberBuilder<EscapedFields, Format, EnvFilter> {
    tracing_subscriber::fmt().fmt_fields(EscapedFields).with_env_filter(env_filter(filter)).with_ansi(colors)
}

fn env_filter(filter: &str) -> EnvFilter {
    EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Logs a panic as an error event, so that its message is escaped like every logged value.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    let location = info.location().map(ToString::to_string).unwrap_or_default();
    let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
    tracing::error!(panic = message, location, thread, "a thread panicked");
}

/// The default field format (the message, then `name=value` pairs), made safe for values that
/// come from clients: control characters (newlines, tabs, escapes, C1 codes), Unicode line
/// separators and bidirectional formatting characters are written as escapes and backslashes
/// doubled (so one event is always one line, and an escape in the log always stands for the
/// character); a value with a space, `=` or `"` is quoted (with `\"` inside), so that it cannot
/// pass for more fields.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor { out: String::new(), result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_str(&visitor.out)
    }
}

/// Writes each field of an event or span as [`EscapedFields`] describes.
struct EscapingVisitor {
    out: String,
    result: fmt::Result,
}

impl EscapingVisitor {
    fn field(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        self.result = if field.name() == "message" {
            write_escaped(&mut self.out, value)
        } else {
            // Field names are identifiers in the source, not client input.
            self.out.push_str(field.name());
            self.out.push('=');
            if value.is_empty() || value.contains([' ', '=', '"']) {
                write_quoted(&mut self.out, value)
            } else {
                write_escaped(&mut self.out, value)
            }
        };
    }
}

impl Visit for EscapingVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, &format!("{value:?}"));
    }
}

/// Writes `text` with its control characters escaped (`\n`, `\r`, `\t`, else `\u{…}`).
fn write_escaped(out: &mut impl Write, text: &str) -> fmt::Result {
    for ch in text.chars() {
        match ch {
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            ch if ch.is_control() || is_layout_control(ch) => write!(out, "\\u{{{:x}}}", ch as u32)?,
            ch => out.write_char(ch)?,
        }
    }
    Ok(())
}

/// Writes `text` in double quotes, escaped as by [`write_escaped`] and with `\"` for a quote.
fn write_quoted(out: &mut impl Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    for part in text.split_inclusive('"') {
        match part.strip_suffix('"') {
            Some(before) => {
                write_escaped(out, before)?;
                out.write_str("\\\"")?;
            }
            None => write_escaped(out, part)?,
        }
    }
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_client_string_cannot_forge_a_log_line() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = builder("info", false).with_writer(move || writer.clone()).finish();
        let forged = "x\n2026-11-26T00:00:00.000000Z  INFO kiln: all good\r\x1b[2K\u{85}\u{2028}\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", event = forged);
            let _entered = span.enter();
            tracing::warn!(operation = %forged, name = forged, "unknown operation {forged}");
        });
        let bytes = captured.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let logged = String::from_utf8(bytes).unwrap_or_default();
        assert_eq!(logged.matches('\n').count(), 1, "one event, one line: {logged:?}");
        assert!(!logged.contains('\r') && !logged.contains('\x1b') && !logged.contains('\u{85}'), "{logged:?}");
        assert!(!logged.contains('\u{2028}') && !logged.contains('\u{202e}'), "{logged:?}");
        // The message, the span's field and both event fields, each escaped once.
        assert_eq!(logged.matches("x\\n2026").count(), 4, "{logged}");
    }

    #[test]
    fn a_client_string_cannot_pass_for_more_fields() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = builder("info", false).with_writer(move || writer.clone()).finish();
        let forged = "x\" status=200 admin=\"yes";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(operation = %forged, name = forged, plain = "ok", "unknown operation");
        });
        let bytes = captured.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let logged = String::from_utf8(bytes).unwrap_or_default();
        let quoted = r#""x\" status=200 admin=\"yes""#;
        assert!(logged.contains(&format!("operation={quoted} name={quoted} plain=ok")), "{logged}");
        // Outside quotes, nothing of the value is left to read as a field.
        let outside: String = logged.replace(quoted, "").replace("unknown operation", "");
        assert!(!outside.contains("status") && !outside.contains("admin"), "{logged}");
    }
}
