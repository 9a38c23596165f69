//! The standard OpenTelemetry variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`...),
//! read like every other setting.

use super::Reader;
use crate::observability::traces::TraceSettings;

/// Off without an endpoint (or with `OTEL_SDK_DISABLED`); the per-signal endpoint is used
/// as given, the base one gets `/v1/traces`, as the specification says.
pub(super) fn read_traces(r: &mut Reader<'_>, function: &str) -> TraceSettings {
    let disabled = r.flag("OTEL_SDK_DISABLED", false);
    let capture_content = r.flag("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", false);
    let service_name = r
        .get("OTEL_SERVICE_NAME")
        .map_or_else(|| format!("chatkb-{function}"), str::to_string);
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = r.get(name).filter(|p| *p != "http/protobuf") {
            let problem = format!("only `http/protobuf` is built in, got `{protocol}`");
            r.fail(name, problem);
        }
    }
    let endpoint = match (
        r.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        r.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(url), _) => Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.to_string())),
        (None, Some(base)) => Some((
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("{}/v1/traces", base.trim_end_matches('/')),
        )),
        (None, None) => None,
    };
    let endpoint = endpoint.and_then(|(name, url)| {
        let host = url.split("://").nth(1).unwrap_or("");
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok || host.is_empty() || host.starts_with('/') || url.contains(' ') {
            r.fail(
                name,
                "expected an http:// or https:// URL of an OTLP/HTTP receiver",
            );
            return None;
        }
        Some(url)
    });
    TraceSettings {
        endpoint: endpoint.filter(|_| !disabled),
        service_name,
        capture_content,
    }
}
