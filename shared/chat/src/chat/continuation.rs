//! Mid-stream failover by continuation (issue 15, item 1): when a model's stream breaks
//! after part of the answer has reached the caller (a cut, a stall, a stream that stays
//! unreadable), the next model of the chain is asked to continue that very answer: the
//! conversation plus the partial answer as an assistant message (a prefill) and an
//! instruction to go on from there, and only its continuation is relayed, so the caller
//! gets one complete answer in one stream.
//!
//! A next model that refuses the request (any 400-class answer, such as a provider that
//! does not take an assistant message last) ends the stream with the original error
//! event: restarting the answer would need every client to understand a "replace what
//! you have" event, and an OpenAI SDK would join the two texts into nonsense.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::Instrument;

use super::provider::{skip_malformed, ChatProvider, Chunk, ChunkStream, ProviderError};
use super::routing::first_content;
use crate::resilience::breaker::{Breakers, CircuitBreaker, Permit};

/// What follows the partial answer in a continuation request.
pub const CONTINUE_INSTRUCTION: &str = "Your previous message was cut off. Continue it exactly where it stops, without repeating any of it and without any preamble.";

/// What a relay needs to continue a broken stream on the next models of the chain.
pub(crate) struct Continuation {
    pub provider: Arc<dyn ChatProvider>,
    pub breakers: Breakers,
    /// The models after the one streaming now, in chain order.
    pub next_models: Vec<String>,
    /// The upstream request as sent (passages and history included).
    pub body: Value,
    /// `LLM_TIMEOUT_MS`, `LLM_FIRST_TOKEN_MS`, `LLM_STREAM_MAX_BAD_CHUNKS`.
    pub timeout: Duration,
    pub first_token: Duration,
    pub max_bad_chunks: u32,
}

/// A continuation that has started: its first chunk has arrived.
pub(crate) struct Resumed {
    pub model: String,
    pub first: Chunk,
    pub rest: ChunkStream,
    pub permit: Permit,
    pub breaker: CircuitBreaker,
}

impl Continuation {
    /// The request that asks `model` to continue `partial`: one choice, what is left of
    /// the caller's token limit, and the partial answer as the assistant's message
    /// followed by [`CONTINUE_INSTRUCTION`] (a model that takes an assistant message last
    /// as a prefill would continue it anyway; OpenAI's models start a new answer unless
    /// asked to go on).
    fn request(&self, model: &str, partial: &str) -> Value {
        let mut body = self.body.clone();
        body["model"] = json!(model);
        if let Some(map) = body.as_object_mut() {
            map.remove("n");
        }
        let produced = super::retrieval::estimate_tokens(partial) as u64;
        for limit in ["max_tokens", "max_completion_tokens"] {
            if let Some(tokens) = body[limit].as_u64() {
                body[limit] = json!(tokens.saturating_sub(produced).max(1));
            }
        }
        if let Some(messages) = body["messages"].as_array_mut() {
            messages.push(json!({"role": "assistant", "content": partial}));
            messages.push(json!({"role": "user", "content": CONTINUE_INSTRUCTION}));
        }
        body
    }

    /// Opens the continuation of `partial` on the next model that takes it; `None` when
    /// no model is left, every one failed, or one refused the request (then the stream
    /// ends with its original error, see the module's note).
    pub async fn resume(&mut self, partial: &str) -> Option<Resumed> {
        while !self.next_models.is_empty() {
            let model = self.next_models.remove(0);
            let breaker = self
                .breakers
                .get(&format!("llm:{}:{model}", self.provider.name()));
            let Ok(permit) = breaker.acquire().await else {
                continue; // open: the next one
            };
            let body = self.request(&model, partial);
            let span = super::telemetry::model_call_span(self.provider.name(), &model, &body);
            let opened = async {
                let stream = self.provider.stream(&body).await?;
                let stream = skip_malformed(stream, &model, self.max_bad_chunks);
                first_content(stream, self.timeout).await
            }
            .instrument(span.clone());
            let opened = match tokio::time::timeout(self.first_token, opened).await {
                Ok(opened) => opened,
                Err(_) => Err(ProviderError::FirstToken(self.first_token)),
            };
            match opened {
                Ok((first, rest)) => {
                    let rest = super::telemetry::traced_stream(&first, rest, span);
                    return Some(Resumed {
                        model,
                        first,
                        rest,
                        permit,
                        breaker,
                    });
                }
                Err(err) if err.is_caller_error() => {
                    super::telemetry::record_error(&span, &err);
                    breaker.record(permit, false).await;
                    tracing::warn!(model = %model, error = %err, "the next model refused to continue the answer; the stream ends with its error");
                    return None;
                }
                Err(err) => {
                    super::telemetry::record_error(&span, &err);
                    breaker.record(permit, true).await;
                    tracing::warn!(model = %model, error = %err, "the next model could not continue the answer");
                }
            }
        }
        None
    }
}

/// A continuation's chunk as part of the stream the caller already has: the role is
/// not said twice, and the id stays the one the stream started with.
pub(crate) fn as_continued(mut chunk: Chunk, id: &Value) -> Chunk {
    let mut value = chunk.value_mut();
    if !id.is_null() {
        value["id"] = id.clone();
    }
    for choice in value["choices"].as_array_mut().into_iter().flatten() {
        if let Some(delta) = choice["delta"].as_object_mut() {
            delta.remove("role");
        }
    }
    drop(value);
    chunk
}
