//! Chat providers (C4): a trait at the boundary to the paid API, and its adapter for any
//! OpenAI-compatible endpoint (`openai::ChatEndpoint`). Requests and chunks stay JSON,
//! so fields the gateway does not know about (tools, response_format, ...) pass
//! through untouched.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::openai::{ChatEndpoint, EndpointError};
use crate::resilience::retry::RetryClass;
use crate::secret::Secret;

/// Streamed chunks (`chat.completion.chunk` objects) of one answer.
pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, ProviderError>> + Send>>;

pub use super::chunk::Chunk;
use super::Completion;

/// Why a provider call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("network error: {0}")]
    Network(String),
    #[error("upstream answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        /// The error's `code`, when the provider gave one.
        code: Option<String>,
        retry_after: Option<Duration>,
    },
    #[error("unexpected answer: {0}")]
    Shape(String),
    #[error("the stream ended early: {0}")]
    StreamCut(String),
    /// No content within `LLM_FIRST_TOKEN_MS` of sending: a provider slow to start is
    /// not waited for again; the next model is tried.
    #[error("no first token within {} ms (LLM_FIRST_TOKEN_MS)", .0.as_millis())]
    FirstToken(Duration),
}

impl ProviderError {
    /// The caller's own request was refused (bad parameters, context too long): not a
    /// sign of provider trouble, so no fallback and no breaker failure.
    pub(crate) fn is_caller_error(&self) -> bool {
        matches!(self, ProviderError::Status { status, .. } if matches!(status, 400 | 404 | 413 | 422))
    }

    /// The request does not fit the model's context window: a larger model may take it.
    /// OpenAI says so with `code: context_length_exceeded`; others only in the message.
    pub(crate) fn is_context_overflow(&self) -> bool {
        let ProviderError::Status {
            status,
            message,
            code,
            ..
        } = self
        else {
            return false;
        };
        if !matches!(status, 400 | 413 | 422) {
            return false;
        }
        let message = message.to_ascii_lowercase();
        code.as_deref() == Some("context_length_exceeded")
            || message.contains("maximum context length")
            || message.contains("context length exceeded")
            || message.contains("context_length_exceeded")
            || message.contains("prompt is too long")
    }
}

impl RetryClass for ProviderError {
    fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Timeout(_) | ProviderError::Network(_) => true,
            ProviderError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            ProviderError::Shape(_)
            | ProviderError::StreamCut(_)
            | ProviderError::FirstToken(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Skips stream events that do not parse (a provider's glitch mid-stream: one broken
/// event used to end the whole answer), counting and logging each; only `limit` in a row
/// end the stream, as unreadable.
pub(crate) fn skip_malformed(stream: ChunkStream, model: &str, limit: u32) -> ChunkStream {
    // Shared, not copied, into each chunk's step.
    let model: Arc<str> = model.into();
    Box::pin(futures_util::stream::unfold(
        (stream, 0u32, false),
        move |(mut stream, mut in_a_row, ended)| {
            let model = model.clone();
            async move {
                if ended {
                    return None;
                }
                loop {
                    match stream.next().await? {
                        Err(ProviderError::Shape(problem)) => {
                            in_a_row += 1;
                            metrics::counter!(crate::observability::metrics::names::LLM_STREAM_MALFORMED_CHUNKS_TOTAL, "model" => model.to_string())
                                .increment(1);
                            let problem =
                                crate::observability::redact::redact(&problem).into_owned();
                            tracing::warn!(model = %model, in_a_row, error = %problem, "malformed stream event skipped");
                            if in_a_row >= limit {
                                let err = ProviderError::Shape(format!(
                                    "{in_a_row} malformed stream events in a row (LLM_STREAM_MAX_BAD_CHUNKS); the last: {problem}"
                                ));
                                return Some((Err(err), (stream, in_a_row, true)));
                            }
                        }
                        item => return Some((item, (stream, 0, false))),
                    }
                }
            }
        },
    ))
}

/// One answering backend. `body` is a complete OpenAI chat request, model included.
#[async_trait::async_trait]
pub trait ChatProvider: Send + Sync {
    /// A short name for metrics and breaker keys (`openai`).
    fn name(&self) -> &str;
    async fn complete(&self, body: &Value) -> Result<Completion, ProviderError>;
    /// Opens a stream; the first chunk has not necessarily arrived yet.
    async fn stream(&self, body: &Value) -> Result<ChunkStream, ProviderError>;
}

/// Any OpenAI-compatible `/chat/completions` endpoint.
pub struct OpenAiProvider {
    endpoint: Result<ChatEndpoint, String>,
    timeout: Duration,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn map_error(err: EndpointError) -> ProviderError {
    match err {
        EndpointError::Status(s) => ProviderError::Status {
            status: s.status,
            message: s.message,
            code: s.code,
            retry_after: s.retry_after,
        },
        EndpointError::Network(e) => ProviderError::Network(e),
        EndpointError::Shape(e) => ProviderError::Shape(e),
        EndpointError::StreamCut(e) => ProviderError::StreamCut(e),
    }
}

/// `body` with `stream` as the call needs it (and no `stream_options` on a plain call):
/// borrowed when it already is so (the gateway prepares its bodies that way), else a copy.
pub(crate) fn for_call(body: &Value, stream: bool) -> Cow<'_, Value> {
    let ready = body.get("stream") == Some(&Value::Bool(stream))
        && (stream || body.get("stream_options").is_none());
    if ready {
        return Cow::Borrowed(body);
    }
    let mut body = body.clone();
    body["stream"] = Value::Bool(stream);
    if let (false, Some(map)) = (stream, body.as_object_mut()) {
        map.remove("stream_options");
    }
    Cow::Owned(body)
}

impl OpenAiProvider {
    /// A provider at `base_url`; a URL that does not parse fails every call (the
    /// configuration already refuses one that is not http(s)).
    pub fn new(base_url: &str, api_key: Option<&Secret>, timeout: Duration) -> Self {
        Self {
            endpoint: ChatEndpoint::new(base_url, api_key, timeout),
            timeout,
        }
    }

    fn endpoint(&self) -> Result<&ChatEndpoint, ProviderError> {
        self.endpoint
            .as_ref()
            .map_err(|e| ProviderError::Network(e.clone()))
    }
}

#[async_trait::async_trait]
impl ChatProvider for OpenAiProvider {
    fn name(&self) -> &str {
        "openai"
    }

    async fn complete(&self, body: &Value) -> Result<Completion, ProviderError> {
        let body = for_call(body, false);
        let call = self.endpoint()?.complete_body(&body);
        let bytes = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ProviderError::Timeout(self.timeout))?
            .map_err(map_error)?;
        let response = Completion::parse(&bytes)
            .map_err(|e| ProviderError::Shape(format!("the answer is not JSON: {e}")))?;
        if !response.has_choices() {
            return Err(ProviderError::Shape(
                "the answer has no `choices` array".into(),
            ));
        }
        Ok(response)
    }

    async fn stream(&self, body: &Value) -> Result<ChunkStream, ProviderError> {
        let body = for_call(body, true);
        let call = self.endpoint()?.stream(&body, Chunk::parse);
        let stream = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ProviderError::Timeout(self.timeout))?
            .map_err(map_error)?;
        Ok(Box::pin(stream.map(|item| item.map_err(map_error))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_already_as_the_call_needs_is_not_copied() {
        let plain = json!({"model": "m", "stream": false, "messages": []});
        assert!(matches!(for_call(&plain, false), Cow::Borrowed(_)));
        let streamed =
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}});
        assert!(matches!(for_call(&streamed, true), Cow::Borrowed(_)));
        // A caller's body as it came: set for the call, on a copy.
        let asked = json!({"model": "m", "stream_options": {"include_usage": true}});
        let for_plain = for_call(&asked, false);
        assert!(matches!(for_plain, Cow::Owned(_)));
        assert_eq!(*for_plain, json!({"model": "m", "stream": false}));
        assert_eq!(
            *for_call(&asked, true),
            json!({"model": "m", "stream_options": {"include_usage": true}, "stream": true})
        );
    }
}
