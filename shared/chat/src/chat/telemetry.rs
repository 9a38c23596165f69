//! The span of one model call, with the OpenTelemetry GenAI semantic-convention
//! attributes (system, request and response model, token counts, finish reasons). It
//! exists only when traces are exported; prompts and answers are added, redacted as in
//! the logs, only when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` asks.

use futures_util::StreamExt;
use serde_json::Value;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::provider::{ChunkStream, ProviderError};
use crate::observability::redact::redact;
use crate::observability::request_scope;
use crate::observability::traces::{self, TARGET};

/// A client span for calling `model` with `body` through `provider`; disabled (one
/// relaxed load) unless traces are exported. One span per attempt: a retry is a new call.
pub(super) fn model_call_span(provider: &str, model: &str, body: &Value) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "chat",
        // The model is the caller's text (any name may be asked for): redacted, as the
        // EMF dimension is (computed only when the span is enabled).
        otel.name = %format_args!("chat {}", redact(model)),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.system = provider,
        gen_ai.provider.name = provider,
        gen_ai.request.model = %redact(model),
        gen_ai.request.temperature = Empty,
        gen_ai.request.max_tokens = Empty,
        gen_ai.response.model = Empty,
        gen_ai.response.id = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        error.type = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(temperature) = body["temperature"].as_f64() {
        span.record("gen_ai.request.temperature", temperature);
    }
    let max_tokens = body["max_completion_tokens"]
        .as_u64()
        .or_else(|| body["max_tokens"].as_u64());
    if let Some(max_tokens) = max_tokens {
        span.record("gen_ai.request.max_tokens", max_tokens);
    }
    if traces::capture_content() {
        span.record(
            "gen_ai.input.messages",
            redact(&body["messages"].to_string()).as_ref(),
        );
    }
    span
}

/// What a whole answer (or a stream's chunks so far) says about the call.
#[derive(Default)]
struct Seen {
    finish_reasons: Vec<String>,
    output: String,
}

fn record_answer_part(span: &Span, part: &Value, seen: &mut Seen) {
    if let Some(model) = part["model"].as_str() {
        span.record("gen_ai.response.model", model);
    }
    if let Some(id) = part["id"].as_str() {
        span.record("gen_ai.response.id", id);
    }
    let usage = &part["usage"];
    if let Some(input) = usage["prompt_tokens"].as_u64() {
        span.record("gen_ai.usage.input_tokens", input);
    }
    if let Some(output) = usage["completion_tokens"].as_u64() {
        span.record("gen_ai.usage.output_tokens", output);
    }
    let capture = traces::capture_content();
    for choice in part["choices"].as_array().into_iter().flatten() {
        if let Some(reason) = choice["finish_reason"].as_str() {
            seen.finish_reasons.push(reason.to_string());
            span.record(
                "gen_ai.response.finish_reasons",
                seen.finish_reasons.join(",").as_str(),
            );
        }
        if capture {
            let text = choice["message"]["content"]
                .as_str()
                .or_else(|| choice["delta"]["content"].as_str());
            seen.output.push_str(text.unwrap_or_default());
        }
    }
}

fn record_output(span: &Span, seen: &Seen) {
    if traces::capture_content() && !seen.output.is_empty() {
        span.record("gen_ai.output.messages", redact(&seen.output).as_ref());
    }
}

/// Records a whole (non-streamed) answer on its span.
pub(super) fn record_completion(span: &Span, completion: &super::Completion) {
    if span.is_disabled() {
        return;
    }
    // Built as a whole value only here, for a span that records it.
    let completion: &Value = completion;
    let mut seen = Seen::default();
    record_answer_part(span, completion, &mut seen);
    record_output(span, &seen);
}

/// Marks the span as failed, with the error's kind (`timeout`, `429`...).
pub(super) fn record_error(span: &Span, error: &ProviderError) {
    if span.is_disabled() {
        return;
    }
    let kind = match error {
        ProviderError::Timeout(_) => "timeout".to_string(),
        ProviderError::Network(_) => "network".to_string(),
        ProviderError::Status { status, .. } => status.to_string(),
        ProviderError::Shape(_) => "malformed_answer".to_string(),
        ProviderError::StreamCut(_) => "stream_cut".to_string(),
        ProviderError::FirstToken(_) => "first_token_timeout".to_string(),
    };
    span.record("error.type", kind.as_str());
    span.record("otel.status_code", "error");
}

/// Polls a response body inside the span current when it was built (the request's),
/// when traces are exported: what runs while the body streams (a continuation's model
/// call, the session write, the idempotency record) stays in the request's trace, and
/// its log lines name the request (`request_scope`), as they did when the request had a
/// span of its own.
pub(crate) fn in_current_span<T: Send + 'static>(
    stream: futures_util::stream::BoxStream<'static, T>,
) -> futures_util::stream::BoxStream<'static, T> {
    if !traces::enabled() {
        return stream;
    }
    let span = Span::current();
    let request = request_scope::current();
    Box::pin(futures_util::stream::unfold(
        (stream, span, request),
        |(mut stream, span, request)| async move {
            let next = stream.next().instrument(span.clone());
            let item = match &request {
                Some(scope) => request_scope::scope(scope.clone(), next).await?,
                None => next.await?,
            };
            Some((item, (stream, span, request)))
        },
    ))
}

/// Keeps the span open while the stream is read: each chunk's model, usage and finish
/// reason are recorded, and the span ends when the stream is dropped (done or cut); it is
/// entered while the stream is polled, so its end is the last chunk's arrival.
pub(super) fn traced_stream(first: &Value, rest: ChunkStream, span: Span) -> ChunkStream {
    if span.is_disabled() {
        return rest;
    }
    let mut seen = Seen::default();
    record_answer_part(&span, first, &mut seen);
    Box::pin(futures_util::stream::unfold(
        (rest, span, seen),
        |(mut rest, span, mut seen)| async move {
            match rest.next().instrument(span.clone()).await {
                Some(Ok(chunk)) => {
                    record_answer_part(&span, &chunk, &mut seen);
                    Some((Ok(chunk), (rest, span, seen)))
                }
                Some(Err(error)) => {
                    record_error(&span, &error);
                    record_output(&span, &seen);
                    Some((Err(error), (rest, span, seen)))
                }
                None => {
                    record_output(&span, &seen);
                    None
                }
            }
        },
    ))
}
