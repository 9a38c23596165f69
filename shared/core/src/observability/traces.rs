//! Traces (X7, issue 17): the spans of a request, exported over OTLP/HTTP to the
//! collector a user already runs, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Off by default: no exporter is built and
//! every trace-only span is a disabled callsite (one relaxed load).
//!
//! Trace-only spans use [`TARGET`]: the JSON logs leave them out, and the exporter takes
//! nothing else. Log events never reach the exporter, since their text is redacted only
//! on its way to stdout.

use std::sync::atomic::{AtomicBool, Ordering};

/// The target of spans that exist for traces only (`tracing::info_span!(target: TARGET, ...)`).
pub const TARGET: &str = "chatkb::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);
static CAPTURE_CONTENT: AtomicBool = AtomicBool::new(false);

/// What the standard `OTEL_*` variables ask for (read and validated with the other
/// settings, `shared::config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces URL (`.../v1/traces`); `None`: traces are off.
    pub endpoint: Option<String>,
    /// `service.name` of every span (`OTEL_SERVICE_NAME`, else `chatkb-<function>`).
    pub service_name: String,
    /// Prompts and answers on model-call spans, redacted as in the logs
    /// (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`); off by default.
    pub capture_content: bool,
}

/// Whether spans are being exported (the exporter was installed at start).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether model-call spans carry the (redacted) prompts and answers.
pub fn capture_content() -> bool {
    CAPTURE_CONTENT.load(Ordering::Relaxed)
}

/// Set from [`TraceSettings::capture_content`] at start; tests switch it.
pub fn set_capture_content(on: bool) {
    CAPTURE_CONTENT.store(on, Ordering::Relaxed);
}

/// A span for one database operation, e.g. `db_span("sqlite", "SELECT", "chat_messages")`.
pub fn db_span(
    system: &'static str,
    operation: &'static str,
    collection: &'static str,
) -> tracing::Span {
    tracing::info_span!(
        target: TARGET,
        "db",
        otel.name = %format_args!("{operation} {collection}"),
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = operation,
        db.collection.name = collection,
    )
}

/// The incoming trace context a request names.
#[derive(Debug, Default, Clone, Copy)]
pub struct IncomingContext<'a> {
    /// W3C `traceparent`.
    pub traceparent: Option<&'a str>,
    /// W3C `tracestate`.
    pub tracestate: Option<&'a str>,
    /// The Lambda invocation's X-Ray header (`Root=1-...;Parent=...;Sampled=1`), used
    /// when there is no valid `traceparent`.
    pub xray: Option<&'a str>,
}

#[cfg(feature = "traces")]
mod export;
#[cfg(feature = "traces")]
pub(crate) use export::layer;
#[cfg(feature = "traces")]
pub use export::{accept_parent, flush, outgoing_headers, rename, shutdown, trace_id};

/// Without the `traces` feature: the same calls, doing nothing.
#[cfg(not(feature = "traces"))]
mod off {
    use super::IncomingContext;

    pub fn accept_parent(_span: &tracing::Span, _incoming: IncomingContext<'_>) {}
    pub fn outgoing_headers() -> Vec<(&'static str, String)> {
        Vec::new()
    }
    pub fn rename(_span: &tracing::Span, _name: String) {}
    pub fn trace_id(_span: &tracing::Span) -> Option<String> {
        None
    }
    pub fn flush() {}
    pub fn shutdown() {}
}
#[cfg(not(feature = "traces"))]
pub use off::{accept_parent, flush, outgoing_headers, rename, shutdown, trace_id};

#[cfg(feature = "traces")]
fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_nothing_is_propagated() {
        assert!(outgoing_headers().is_empty());
        assert_eq!(trace_id(&tracing::Span::none()), None);
    }
}
