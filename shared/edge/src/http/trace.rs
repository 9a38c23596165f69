//! The server span of a request, for traces (off unless an OTLP endpoint is set): it
//! continues the caller's trace (`traceparent`, or the Lambda invocation's X-Ray header)
//! and carries the HTTP semantic-convention attributes.

use axum::extract::Request;
use http::header::HeaderName;
use tracing::field::Empty;

use super::observe::{loggable_id, loggable_method};
use crate::observability::traces::{self, IncomingContext, TARGET};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const XRAY: HeaderName = HeaderName::from_static("x-amzn-trace-id");

/// A disabled span (one relaxed load) unless traces are exported.
/// The caller's request id and method are redacted as in the request's log line (only
/// when the span is enabled: a disabled span's fields are never computed).
pub(super) fn server_span(
    request: &Request,
    request_id: &str,
    id_from_caller: bool,
    cold_start: bool,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = %loggable_method(request.method()),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %loggable_method(request.method()),
        http.route = Empty,
        http.response.status_code = Empty,
        url.scheme = "http",
        faas.invocation_id = Empty,
        faas.coldstart = cold_start,
        chatkb.request_id = %loggable_id(request_id, id_from_caller),
    );
    if span.is_disabled() {
        return span;
    }
    let header = |name: &HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
    let lambda = request.extensions().get::<lambda_runtime::Context>();
    if let Some(context) = lambda {
        span.record("faas.invocation_id", context.request_id.as_str());
    }
    let xray = lambda
        .and_then(|c| c.xray_trace_id.as_deref())
        .or_else(|| header(&XRAY));
    traces::accept_parent(
        &span,
        IncomingContext {
            traceparent: header(&TRACEPARENT),
            tracestate: header(&TRACESTATE),
            xray,
        },
    );
    span
}

/// Names the span after its route (`POST /v1/chat/completions`) and records the status;
/// a 5xx marks the span as failed.
pub(super) fn finish_server_span(
    span: &tracing::Span,
    method: &http::Method,
    route: &str,
    status: u16,
) {
    if span.is_disabled() {
        return;
    }
    traces::rename(span, format!("{} {route}", loggable_method(method)));
    span.record("http.route", route);
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}
