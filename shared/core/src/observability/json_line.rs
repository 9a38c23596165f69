//! The log line's JSON, written straight into one buffer.
//!
//! The output is tracing-subscriber's own JSON format (flattened event, current span,
//! target), line for line: a test below compares the two. Its formatter costs about a
//! tenth of a proxied request: it builds each line through a `fmt::Write` adaptor that
//! re-validates UTF-8 on every fragment, parses the span's stored JSON fields back into
//! a map to print them again, and stores a span's fields through a map of
//! `serde_json::Value`s. Here the span's fields are written once as JSON text and
//! copied into each line as they are, and the line is validated once.

use std::cell::RefCell;
use std::fmt;

use super::request_scope::{self, RequestScope};
use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one JSON object: timestamp, level, the event's fields, target,
/// and the current span's fields with its name.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonLine;

thread_local! {
    /// One line's bytes; kept per thread so a line costs no allocation once warm.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        LINE.with(|line| {
            // A log call inside a log call (a field's Debug that logs) gets its own buffer.
            let mut own = Vec::new();
            let mut borrowed = line.try_borrow_mut();
            let buf = match borrowed.as_mut() {
                Ok(buf) => &mut **buf,
                Err(_) => &mut own,
            };
            buf.clear();
            write_line(buf, ctx, event).map_err(|_| fmt::Error)?;
            let text = std::str::from_utf8(buf).map_err(|_| fmt::Error)?;
            writer.write_str(text)
        })
    }
}

fn write_line<S, N>(
    buf: &mut Vec<u8>,
    ctx: &FmtContext<'_, S, N>,
    event: &Event<'_>,
) -> Result<(), serde_json::Error>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    let meta = event.metadata();
    let mut timestamp = String::with_capacity(32);
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    buf.extend_from_slice(b"{\"timestamp\":");
    serde_json::to_writer(&mut *buf, &timestamp)?;
    buf.extend_from_slice(b",\"level\":\"");
    buf.extend_from_slice(meta.level().as_str().as_bytes());
    buf.push(b'"');
    let mut fields = FieldWriter { buf, error: None };
    event.record(&mut fields);
    if let Some(error) = fields.error {
        return Err(error);
    }
    buf.extend_from_slice(b",\"target\":");
    serde_json::to_writer(&mut *buf, meta.target())?;
    let span = event
        .parent()
        .and_then(|id| ctx.span(id))
        .or_else(|| ctx.lookup_current());
    // In a request and in no span of its own: the request, as its span printed it before.
    let request = request_scope::with_current(|scope| {
        let in_no_span_of_its_own = match &span {
            None => true,
            Some(span) => scope.outer.as_ref() == Some(&span.id()),
        };
        in_no_span_of_its_own.then(|| write_request(buf, scope))
    });
    if let Some(Some(written)) = request {
        written?;
    } else if let Some(span) = span {
        buf.extend_from_slice(b",\"span\":{");
        let extensions = span.extensions();
        // The span's fields as the JSON field formatter stored them: `{"k":v,...}`.
        let stored = extensions
            .get::<FormattedFields<N>>()
            .map(|f| f.fields.as_str())
            .unwrap_or_default();
        let inner = stored
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or_default();
        if !inner.is_empty() {
            buf.extend_from_slice(inner.as_bytes());
            buf.push(b',');
        }
        buf.extend_from_slice(b"\"name\":");
        serde_json::to_writer(&mut *buf, span.metadata().name())?;
        buf.push(b'}');
    }
    buf.extend_from_slice(b"}\n");
    Ok(())
}

/// The request the event happened in, as the span per request printed it before
/// (`request_scope`): `,"span":{"request_id":...,"function":...,"name":"request"}`.
fn write_request(buf: &mut Vec<u8>, scope: &RequestScope) -> Result<(), serde_json::Error> {
    buf.extend_from_slice(b",\"span\":{\"request_id\":");
    serde_json::to_writer(&mut *buf, &scope.id)?;
    if let Some(function) = &scope.function {
        buf.extend_from_slice(b",\"function\":");
        serde_json::to_writer(&mut *buf, &**function)?;
    }
    buf.extend_from_slice(b",\"name\":\"request\"}");
    Ok(())
}

/// Appends each field as `,"name":value`.
struct FieldWriter<'a> {
    buf: &'a mut Vec<u8>,
    error: Option<serde_json::Error>,
}

impl FieldWriter<'_> {
    fn entry(&mut self, field: &Field, value: impl Serialize) {
        if self.error.is_some() {
            return;
        }
        self.buf.push(b',');
        let written = serde_json::to_writer(&mut *self.buf, field.name()).and_then(|()| {
            self.buf.push(b':');
            serde_json::to_writer(&mut *self.buf, &value)
        });
        if let Err(error) = written {
            self.error = Some(error);
        }
    }
}

/// A `Debug` or `Display` value written as a JSON string without an intermediate `String`.
struct AsJsonString<T>(T);

impl<T: fmt::Display> Serialize for AsJsonString<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

struct DebugAsDisplay<'a>(&'a dyn fmt::Debug);

impl fmt::Display for DebugAsDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// As tracing-subscriber's JSON: 128-bit integers fall back to `record_debug` (strings).
impl Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, AsJsonString(DebugAsDisplay(value)));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.entry(field, AsJsonString(value));
    }
}

/// A span's fields as a JSON object, as tracing-subscriber's `JsonFields` writes them
/// (keys sorted, the last value of a repeated key), without building a
/// `serde_json::Value` per field and a map of them: a span is opened per request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut collected = CollectedFields::default();
        fields.record(&mut collected);
        collected.write_object(&mut writer)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        // Rare (a field recorded after the span opened): merge as `JsonFields` does.
        let mut merged = FormattedFields::<JsonFields>::new(std::mem::take(&mut current.fields));
        let result = JsonFields::new().add_fields(&mut merged, fields);
        current.fields = merged.fields;
        result
    }
}

/// Each field's name and its value already written as JSON.
#[derive(Default)]
struct CollectedFields {
    fields: Vec<(&'static str, String)>,
}

impl CollectedFields {
    fn push(&mut self, name: &'static str, value: impl Serialize) {
        if let Ok(json) = serde_json::to_string(&value) {
            self.fields.push((name, json));
        }
    }

    fn write_object(mut self, writer: &mut Writer<'_>) -> fmt::Result {
        // Sorted and de-duplicated as a BTreeMap would (a later value wins).
        self.fields.reverse();
        self.fields.sort_by_key(|(name, _)| *name);
        self.fields.dedup_by_key(|(name, _)| *name);
        writer.write_char('{')?;
        for (i, (name, json)) in self.fields.iter().enumerate() {
            if i > 0 {
                writer.write_char(',')?;
            }
            let name = serde_json::to_string(name).map_err(|_| fmt::Error)?;
            writer.write_str(&name)?;
            writer.write_char(':')?;
            writer.write_str(json)?;
        }
        writer.write_char('}')
    }
}

/// As `JsonFields`' visitor: a raw identifier's `r#` is dropped, bytes are an array.
impl Visit for CollectedFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.push(name, AsJsonString(DebugAsDisplay(value)));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), value);
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.push(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::logging::{json_layer, stock_json_layer, tests::Capture};
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Registry;

    #[derive(Debug)]
    struct Oops;
    impl fmt::Display for Oops {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it \"broke\"\n badly")
        }
    }
    impl std::error::Error for Oops {}

    /// Events of every field kind, inside and outside spans, some with odd characters;
    /// nothing a redaction rule would touch.
    fn emit_samples() {
        tracing::info!("no span, no fields");
        let outer = tracing::info_span!("request", request_id = "req-1", function = "chat");
        let _outer = outer.enter();
        tracing::warn!(
            text = "quote \" backslash \\ tab \t newline \n unicode é ✓ nul \u{0}",
            display = %"shown with Display",
            debug = ?vec!["a", "b"],
            signed = -7i64,
            unsigned = 7u64,
            big = u128::MAX,
            float = 1.5f64,
            not_a_number = f64::NAN,
            flag = true,
            absent = Option::<&str>::None,
            "a message with {} and {:?}",
            "formatting",
            "debug"
        );
        let error: &(dyn std::error::Error + 'static) = &Oops;
        tracing::error!(error, "failed");
        let empty = tracing::info_span!("empty");
        let _empty = empty.enter();
        tracing::debug!(after = 1u8, "inside a span without fields");
        let explicit_parent = tracing::info_span!(
            parent: &outer,
            "child",
            step = 2,
            r#type = ?"raw name",
            zeta = "z",
            alpha = 1.25,
            bytes = &b"ab"[..],
            late = tracing::field::Empty
        );
        tracing::info!(parent: &explicit_parent, "explicit parent");
        explicit_parent.record("late", "recorded after opening");
        tracing::info!(parent: &explicit_parent, "after a late field");
        let filled_later = tracing::info_span!("filled_later", only = tracing::field::Empty);
        filled_later.record("only", true);
        tracing::info!(parent: &filled_later, "a span whose one field came late");
    }

    fn emit_through(layer: impl tracing_subscriber::Layer<Registry> + Send + Sync) {
        tracing::subscriber::with_default(Registry::default().with(layer), emit_samples);
    }

    #[test]
    fn lines_match_tracing_subscribers_json_format() {
        let ours = Capture::default();
        let theirs = Capture::default();
        // tracing-subscriber's own JSON format, as configured before this formatter.
        emit_through(stock_json_layer().with_writer(theirs.clone()));
        // The production layer (redaction included: nothing here is redacted).
        emit_through(json_layer(ours.clone()));
        let ours = String::from_utf8(ours.0.lock().unwrap().clone()).unwrap();
        let theirs = String::from_utf8(theirs.0.lock().unwrap().clone()).unwrap();
        let strip_time = |text: &str| -> Vec<String> {
            text.lines()
                .map(|line| {
                    let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(value["timestamp"]
                        .as_str()
                        .is_some_and(|t| t.ends_with('Z')));
                    value["timestamp"] = serde_json::Value::Null;
                    // Key order is part of the format (preserve_order keeps it).
                    value.to_string()
                })
                .collect()
        };
        assert_eq!(theirs.lines().count(), 7, "{theirs}");
        assert_eq!(strip_time(&ours), strip_time(&theirs));
        assert!(ours.lines().all(|l| !l.is_empty()) && ours.ends_with('\n'));
    }

    fn lines_without_time(capture: &Capture) -> Vec<serde_json::Value> {
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
                value["timestamp"] = serde_json::Value::Null;
                value
            })
            .collect()
    }

    /// An event in a request's scope is printed as it was inside the span per request the
    /// scope replaced, within an outer span (the Lambda runtime's) and across awaits; an
    /// inner span of its own still wins, as before, and nothing outside the scope names
    /// the request.
    #[test]
    fn events_in_a_request_scope_name_the_request_as_its_span_did() {
        let emit = || {
            tracing::warn!(attempt = 2u8, "provider failed");
            let inner = tracing::info_span!("inner", step = 1);
            let _inner = inner.enter();
            tracing::info!("inside an inner span");
        };
        let id = "req-\"1\"";
        let invoke = || tracing::info_span!("Lambda runtime invoke", requestId = "aws-1");
        let with_span = Capture::default();
        let subscriber = Registry::default().with(json_layer(with_span.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let outer = invoke();
            let _outer = outer.enter();
            let span = tracing::info_span!("request", request_id = id, function = "chat");
            let _entered = span.enter();
            emit();
        });
        let with_scope = Capture::default();
        let subscriber = Registry::default().with(json_layer(with_scope.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let outer = invoke();
            let entered = outer.enter();
            let scope = |outer| {
                Arc::new(RequestScope {
                    id: id.into(),
                    function: Some("chat".into()),
                    outer,
                })
            };
            request_scope::within(scope(tracing::Span::current().id()), emit);
            tracing::info!("in the invocation, outside the request");
            drop(entered);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(request_scope::scope(scope(None), async {
                tokio::task::yield_now().await;
                tracing::info!("after an await");
            }));
            tracing::info!("outside the request");
        });
        let (before, after) = (
            lines_without_time(&with_span),
            lines_without_time(&with_scope),
        );
        assert_eq!(after[..2], before[..], "{after:?}");
        assert_eq!(after[0]["span"]["request_id"], id);
        assert_eq!(after[0]["span"]["function"], "chat");
        assert_eq!(after[1]["span"]["name"], "inner");
        assert_eq!(after[2]["span"]["requestId"], "aws-1", "{:?}", after[2]);
        assert_eq!(after[3]["span"]["request_id"], id, "{:?}", after[3]);
        assert_eq!(after[4]["span"], serde_json::Value::Null, "{:?}", after[4]);
        assert_eq!(after.len(), 5);
    }
}
