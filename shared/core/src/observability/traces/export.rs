//! The OTLP/HTTP exporter and the W3C and X-Ray propagation (feature `traces`).

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_aws::trace::XrayPropagator;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::{IncomingContext, TraceSettings, TARGET};

/// The process's one tracer provider, kept to flush it (after each Lambda invocation)
/// and to shut it down (when the standalone server stops).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The layer that turns [`TARGET`] spans into OTLP spans, batched and sent from a
/// background thread; `None` when traces are off (or a provider exists already).
pub(crate) fn layer<S>(settings: &TraceSettings) -> Result<Option<impl Layer<S>>, String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(endpoint) = &settings.endpoint else {
        return Ok(None);
    };
    if PROVIDER.get().is_some() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| format!("the OTLP exporter for {endpoint}: {e}"))?;
    let mut resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new(
            "service.version",
            crate::observability::VERSION,
        ));
    if let Ok(function) = std::env::var("AWS_LAMBDA_FUNCTION_NAME") {
        resource = resource.with_attributes([
            KeyValue::new("cloud.provider", "aws"),
            KeyValue::new("faas.name", function),
        ]);
    }
    // The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("chatkb");
    if PROVIDER.set(provider).is_err() {
        return Ok(None);
    }
    super::set_enabled(true);
    super::set_capture_content(settings.capture_content);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE));
    Ok(Some(layer))
}

fn carrier(pairs: &[(&str, Option<&str>)]) -> HashMap<String, String> {
    pairs
        .iter()
        .filter_map(|(name, value)| value.map(|v| (name.to_string(), v.to_string())))
        .collect()
}

fn is_valid(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

/// Makes `span` (a server span, not entered yet) continue the caller's trace: its W3C
/// `traceparent`, else the Lambda invocation's X-Ray trace. A malformed header starts a
/// new trace, as the W3C specification asks.
pub fn accept_parent(span: &tracing::Span, incoming: IncomingContext<'_>) {
    if !super::enabled() || span.is_disabled() {
        return;
    }
    let w3c = TraceContextPropagator::new().extract(&carrier(&[
        ("traceparent", incoming.traceparent),
        ("tracestate", incoming.tracestate),
    ]));
    let parent = if is_valid(&w3c) {
        w3c
    } else {
        XrayPropagator::new().extract(&carrier(&[("x-amzn-trace-id", incoming.xray)]))
    };
    if is_valid(&parent) {
        let _ = span.set_parent(parent);
    }
}

/// `traceparent` (and `tracestate`) naming the current span, for an outgoing request.
pub fn outgoing_headers() -> Vec<(&'static str, String)> {
    if !super::enabled() {
        return Vec::new();
    }
    let cx = tracing::Span::current().context();
    if !is_valid(&cx) {
        return Vec::new();
    }
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut headers);
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| headers.remove(name).map(|value| (name, value)))
        .collect()
}

/// Renames a span that has started (the server span, once its route is known): a
/// recorded `otel.name` reaches only spans that have not started yet.
pub fn rename(span: &tracing::Span, name: String) {
    if super::enabled() && !span.is_disabled() {
        span.context().span().update_name(name);
    }
}

/// The trace id of `span` (32 hex digits), to put in its request's log line.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !super::enabled() || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let span_ref = cx.span();
    let context = span_ref.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// Sends the spans ended so far and waits for it (blocking: call it off the runtime's
/// worker threads). Lambda freezes the process between invocations, so each one flushes.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(err) = provider.force_flush() {
            tracing::warn!(error = %err, "traces could not be sent");
        }
    }
}

/// Sends what is left and stops the exporter (process shutdown).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}
