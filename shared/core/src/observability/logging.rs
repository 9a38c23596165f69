//! Structured JSON logs through `tracing` (X2), redacted line by line.

use std::cell::Cell;
use std::io::{self, Write};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use super::json_line::{JsonLine, JsonSpanFields};
use super::redact::redact;
use super::request_scope;
use super::traces::{TraceSettings, TARGET};
use tracing_subscriber::filter::LevelFilter;

pub use super::stdout_lines::{
    hold_lines_on_this_thread, write_all_held_lines, write_held_lines, write_held_lines_when_due,
};

/// Wraps any log destination so each formatted line is redacted before it is written.
#[derive(Clone)]
pub(crate) struct RedactingMakeWriter<M> {
    inner: M,
}

impl<M> RedactingMakeWriter<M> {
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

/// Buffers one event's output and writes it, redacted, when the formatter is done with it.
pub(crate) struct RedactingWriter<W: Write> {
    buffer: Vec<u8>,
    inner: W,
    /// The event is the one [`emit_redacted`] is writing: its fields are already redacted.
    fields_redacted: bool,
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tracing-subscriber hands each line over whole, in one call: a line already
        // redacted field by field goes out as it came, without a copy or a UTF-8 check.
        if self.fields_redacted && self.buffer.is_empty() && buf.ends_with(b"\n") {
            self.inner.write_all(buf)?;
            self.inner.flush()?;
            return Ok(buf.len());
        }
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let clean = if self.fields_redacted {
            text
        } else {
            redact(&text)
        };
        self.inner.write_all(clean.as_bytes())?;
        self.buffer.clear();
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

thread_local! {
    /// The target of the event [`emit_redacted`] is writing on this thread, if any.
    static FIELDS_REDACTED: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Emits an event (`emit`) of `target` whose field values are each either the service's
/// own or already passed through [`redact`] by the caller, so its line is not scanned
/// again: the request log line, written once per request, then costs no redaction pass
/// when clean (docs/benchmarks.md, "The request log line redacted field by field").
///
/// Only an event of `target` is written so: another one logged meanwhile (by a field's
/// formatting, say) is scanned as usual. A line also carries the current span's fields
/// or the current request's id, which nobody checked here: inside a span (under Lambda,
/// the runtime's) or a request's scope, the line is scanned as any other.
pub fn emit_redacted(target: &'static str, emit: impl FnOnce()) {
    if !tracing::Span::current().is_none() || request_scope::with_current(|_| ()).is_some() {
        return emit();
    }
    /// Clears the mark even if a layer panics while the event is written.
    struct Unmark;
    impl Drop for Unmark {
        fn drop(&mut self) {
            FIELDS_REDACTED.set(None);
        }
    }
    FIELDS_REDACTED.set(Some(target));
    let _unmark = Unmark;
    emit();
}

impl<'a, M> MakeWriter<'a> for RedactingMakeWriter<M>
where
    M: MakeWriter<'a>,
{
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            buffer: Vec::new(),
            inner: self.inner.make_writer(),
            fields_redacted: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter {
            // Allocated by the first write that needs it (`emit_redacted`'s lines do not).
            buffer: Vec::new(),
            inner: self.inner.make_writer_for(meta),
            fields_redacted: meta.is_event() && FIELDS_REDACTED.get() == Some(meta.target()),
        }
    }
}

/// tracing-subscriber's JSON layer with this service's settings: the format the log
/// lines keep (`JsonLine` and `JsonSpanFields` write it faster; a test compares them).
pub(crate) fn stock_json_layer<S>() -> tracing_subscriber::fmt::Layer<S, JsonFields, Format<Json>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
}

/// The JSON formatting layer used in production, exposed so tests check the real output.
pub(crate) fn json_layer<S, M>(writer: M) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    stock_json_layer()
        .event_format(JsonLine)
        .fmt_fields(JsonSpanFields)
        .with_writer(RedactingMakeWriter::new(writer))
}

/// `LOG_LEVEL`: a level (`info`) or per-target directives (`shared=debug,info`); each
/// directive is a level, `target=level` or a bare target, targets being Rust paths.
pub fn parse_filter(log_level: &str) -> Result<Targets, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |s: &str| LEVELS.contains(&s.to_ascii_lowercase().as_str());
    let is_target = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
    };
    for directive in log_level.split(',').map(str::trim) {
        let valid = match directive.split_once('=') {
            Some((target, level)) => is_target(target) && is_level(level),
            None => is_level(directive) || is_target(directive),
        };
        if !valid {
            return Err(format!(
                "`{directive}` is not a level or target=level directive"
            ));
        }
    }
    log_level.parse::<Targets>().map_err(|e| e.to_string())
}

/// Installs the global subscriber: JSON to stdout (a line per `write(2)`, without the
/// stdout lock), filtered by `LOG_LEVEL`, and the OTLP exporter of the trace-only spans
/// when `traces` names an endpoint. Idempotent.
pub fn init(log_level: &str, traces: &TraceSettings) {
    let filter = parse_filter(log_level)
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO))
        .with_target(TARGET, LevelFilter::OFF);
    let logs = json_layer(super::stdout_lines::StdoutLines).with_filter(filter);
    #[cfg(feature = "traces")]
    {
        // Only a real exporter is added: a `None` layer would make every trace-only
        // callsite "sometimes" interesting instead of never (a filter check per call).
        match super::traces::layer(traces) {
            Ok(Some(exporter)) => {
                let _ = Registry::default().with(logs).with(exporter).try_init();
            }
            Ok(None) => {
                let _ = Registry::default().with(logs).try_init();
            }
            Err(problem) => {
                let _ = Registry::default().with(logs).try_init();
                tracing::error!("traces are off: {problem}");
            }
        }
    }
    #[cfg(not(feature = "traces"))]
    {
        let _ = Registry::default().with(logs).try_init();
        if traces.endpoint.is_some() {
            tracing::warn!("OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build has no `traces` feature: no spans are sent");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A log destination that keeps what is written, for tests of the real output.
    #[derive(Clone, Default)]
    pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn log_level_directives_are_validated() {
        for good in [
            "info",
            "WARN",
            "shared=debug,info",
            "sqlx=warn,chatkb_kb::kb=trace",
            "off",
        ] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        for bad in ["loud[[", "info,", "shared=loud", "=info", "a b"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    /// `emit_redacted` skips the whole-line pass only outside a span (whose fields nobody
    /// checked), and only for its own event: the caller's values are its to redact.
    #[test]
    fn only_events_emitted_redacted_outside_a_span_skip_the_line_pass() {
        let capture = Capture::default();
        let subscriber = Registry::default().with(json_layer(capture.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let target = module_path!();
            emit_redacted(target, || {
                tracing::info!(who = "one@example.com", "outside")
            });
            // Only the event of the target named: another one written meanwhile is scanned.
            emit_redacted("elsewhere", || {
                tracing::info!(who = "five@example.com", "other")
            });
            tracing::info!(who = "two@example.com", "after");
            let span = tracing::info_span!("request", caller = "three@example.com");
            let _entered = span.enter();
            emit_redacted(target, || {
                tracing::info!(who = "four@example.com", "inside")
            });
            drop(_entered);
            // Inside a request's scope (its id is printed unchecked), scanned too.
            let scope = std::sync::Arc::new(request_scope::RequestScope {
                id: "six@example.com".into(),
                function: None,
                outer: None,
            });
            request_scope::within(scope, || {
                emit_redacted(target, || {
                    tracing::info!(who = "seven@example.com", "scoped")
                });
            });
        });
        let output = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = output
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5, "{output}");
        assert_eq!(lines[0]["who"], "one@example.com");
        assert_eq!(lines[1]["who"], "[REDACTED_EMAIL]");
        assert_eq!(lines[2]["who"], "[REDACTED_EMAIL]");
        assert_eq!(lines[3]["who"], "[REDACTED_EMAIL]");
        assert_eq!(lines[3]["span"]["caller"], "[REDACTED_EMAIL]");
        assert_eq!(lines[4]["who"], "[REDACTED_EMAIL]");
        assert_eq!(lines[4]["span"]["request_id"], "[REDACTED_EMAIL]");
    }

    #[test]
    fn real_log_output_is_json_and_redacted() {
        let capture = Capture::default();
        let subscriber = Registry::default().with(json_layer(capture.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "req-1", function = "chat");
            let _guard = span.enter();
            tracing::info!(
                user_email = "jane.doe@example.com",
                authorization = "Bearer abcdef0123456789",
                card = "4111 1111 1111 1111",
                status = 200u16,
                "user jane.doe@example.com called +1 415-555-0100 with api_key=sk-live-0123456789abcdef"
            );
            tracing::warn!(
                database = "postgres://app:hunter2@db:5432/app",
                "db unreachable"
            );
        });
        let output = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        for secret in [
            "jane.doe",
            "abcdef0123456789",
            "4111",
            "555-0100",
            "sk-live",
            "0123456789abcdef",
            "hunter2",
        ] {
            assert!(!output.contains(secret), "{secret} leaked into: {output}");
        }
        let lines: Vec<serde_json::Value> = output
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["status"], 200);
        assert_eq!(lines[0]["user_email"], "[REDACTED_EMAIL]");
        assert_eq!(lines[0]["card"], "[REDACTED_CARD]");
        assert_eq!(lines[0]["span"]["request_id"], "req-1");
        assert!(lines[0]["message"]
            .as_str()
            .unwrap()
            .contains("[REDACTED_PHONE]"));
        assert_eq!(
            lines[1]["database"],
            "postgres://app:[REDACTED]@db:5432/app"
        );
    }

    /// Each write the destination gets, as it got it.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Writes {
        type Writer = Writes;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The destination (stdout's lock-free line writer in production) gets each event
    /// as one whole line in one write: the line emitted redacted, a scanned line, and a
    /// line longer than a pipe takes whole.
    #[test]
    fn each_event_reaches_the_destination_in_one_write() {
        let writes = Writes::default();
        let subscriber = Registry::default().with(json_layer(writes.clone()));
        tracing::subscriber::with_default(subscriber, || {
            emit_redacted(module_path!(), || tracing::info!(who = "us", "emitted"));
            tracing::info!(who = "one@example.com", "scanned");
            tracing::info!(long = "x".repeat(9000).as_str(), "long");
        });
        let writes = writes.0.lock().unwrap();
        assert_eq!(writes.len(), 3);
        for write in writes.iter() {
            let line = std::str::from_utf8(write).unwrap();
            assert_eq!(line.matches('\n').count(), 1, "{line}");
            assert!(line.ends_with('\n'));
            serde_json::from_str::<serde_json::Value>(line).expect("a whole JSON line");
        }
        assert!(writes[2].len() > 9000);
    }
}
