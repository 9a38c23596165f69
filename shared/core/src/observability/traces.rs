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

/// What the standard `OTEL_*` variables ask for, validated with the other settings.
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

impl TraceSettings {
    /// Reads the `OTEL_*` variables through `get`; an error names the variable.
    pub fn read(
        function: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, (&'static str, String)> {
        let flag = |name: &'static str| -> Result<bool, (&'static str, String)> {
            match get(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
                None | Some("") | Some("false") | Some("0") | Some("no") | Some("off") => Ok(false),
                Some("true") | Some("1") | Some("yes") | Some("on") => Ok(true),
                Some(other) => Err((name, format!("expected true or false, got `{other}`"))),
            }
        };
        let disabled = flag("OTEL_SDK_DISABLED")?;
        let capture_content = flag("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")?;
        let service_name = get("OTEL_SERVICE_NAME")
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| format!("chatkb-{function}"));
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = get(name).filter(|p| p.trim() != "http/protobuf") {
                return Err((
                    name,
                    format!("only `http/protobuf` is built in, got `{protocol}`"),
                ));
            }
        }
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|s| !s.is_empty()),
            get("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|s| !s.is_empty()),
        ) {
            // Used as given, as the specification says of the per-signal variable.
            (Some(url), _) => Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)),
            (None, Some(base)) => Some((
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim_end_matches('/')),
            )),
            (None, None) => None,
        };
        if let Some((name, url)) = &endpoint {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            let host = url.split("://").nth(1).unwrap_or("");
            if !scheme_ok || host.is_empty() || host.starts_with('/') || url.contains(' ') {
                return Err((
                    name,
                    "expected an http:// or https:// URL of an OTLP/HTTP receiver".to_string(),
                ));
            }
        }
        Ok(Self {
            endpoint: endpoint.filter(|_| !disabled).map(|(_, url)| url),
            service_name,
            capture_content,
        })
    }
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
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)]) -> Result<TraceSettings, (&'static str, String)> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TraceSettings::read("chat", |name| vars.get(name).cloned())
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        let settings = read(&[]).unwrap();
        assert_eq!(settings.endpoint, None);
        assert_eq!(settings.service_name, "chatkb-chat");
        assert!(!settings.capture_content);
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_signal_endpoint_is_kept() {
        let base = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
        assert_eq!(
            base.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        let signal = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://x.example/otlp/traces",
            ),
            ("OTEL_SERVICE_NAME", "gateway-eu"),
            ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true"),
        ])
        .unwrap();
        assert_eq!(
            signal.endpoint.as_deref(),
            Some("https://x.example/otlp/traces")
        );
        assert_eq!(signal.service_name, "gateway-eu");
        assert!(signal.capture_content);
        let disabled = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert_eq!(disabled.endpoint, None);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (pairs, variable) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (vec![("OTEL_SDK_DISABLED", "maybe")], "OTEL_SDK_DISABLED"),
        ] {
            assert_eq!(read(&pairs).unwrap_err().0, variable, "{pairs:?}");
        }
    }

    #[test]
    fn without_an_exporter_nothing_is_propagated() {
        assert!(outgoing_headers().is_empty());
        assert_eq!(trace_id(&tracing::Span::none()), None);
    }
}
