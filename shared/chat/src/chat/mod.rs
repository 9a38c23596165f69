//! The chat gateway (C1-C7): one OpenAI-compatible request in, one answer out, through
//! retrieval, the response cache, per-model circuit breakers and retries, and the
//! fallback chain (secondary models -> last cached answer -> retrieval-only answer).
//! A degraded answer always says so; it is never passed off as a model's.

mod assemble;
mod chunk;
mod completion;
pub mod continuation;
mod error;
pub mod idempotency;
mod plain;
pub mod provider;
pub mod request;
pub mod retrieval;
mod routing;
pub mod session;
mod settings;
mod settle;
mod sse;
mod streaming;
mod telemetry;
pub mod usage;

pub use completion::Completion;
pub use error::ChatError;
pub use settings::{parse_context_windows, ChatSettings, OFFLINE_MODEL};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cache::{Namespace, TieredCache};
use crate::kb::KnowledgeBase;
use crate::observability::metrics::names;
use crate::observability::traces::db_span;
use crate::resilience::breaker::{BreakerOpen, Breakers, CircuitBreaker};
use crate::resilience::retry::{retry, RetryClass, RetryPolicy};
use provider::{skip_malformed, ChatProvider, Chunk, ChunkStream, ProviderError};
use request::ChatRequest;
use retrieval::Context;
use session::SessionStore;
use settle::with_session;
use tracing::Instrument;
use usage::{UsageRecord, UsageRecorder};
// The gateway's steps, one file each, share their private helpers through here.
use plain::*;
use routing::*;

/// Why an answer is not a fresh answer of the requested model (`x-degraded`).
pub mod degraded {
    /// No model answered (or none is configured): the passages themselves.
    pub(crate) const RETRIEVAL_ONLY: &str = "retrieval-only";
    /// No model answered: the last good answer to the same question.
    pub(crate) const CACHED_ANSWER: &str = "cached-answer";
    /// A secondary model answered instead of the requested one.
    pub(crate) const FALLBACK_MODEL: &str = "fallback-model";
    /// The knowledge base could not be searched: answered without passages.
    pub(crate) const RETRIEVAL_UNAVAILABLE: &str = "retrieval-unavailable";
    /// The session history could not be read or written: answered without it.
    pub(crate) const SESSION_UNAVAILABLE: &str = "session-unavailable";
    /// A model's stream broke mid-answer and this model continued it
    /// (`continued:<model>`, once per model that took over).
    pub(crate) const CONTINUED: &str = "continued";
}

/// A finished answer, as cached and as returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// The `chat.completion` object, with `sources` (and `degraded` when degraded).
    pub completion: Completion,
    pub degraded: Vec<String>,
    /// The model that answered (or `retrieval-only`).
    pub model: String,
}

/// What the HTTP layer needs besides the body.
#[derive(Debug, Clone, Default)]
pub struct ReplyMeta {
    pub degraded: Vec<String>,
    pub cached: bool,
    /// Time spent waiting on providers (calls, streams up to the first byte, retries).
    pub provider_wait: Duration,
}

/// A plain (non-streamed) reply.
#[derive(Debug)]
pub struct Reply {
    pub answer: Answer,
    pub meta: ReplyMeta,
}

/// A streamed reply: SSE bytes, started only once the first byte is certain.
pub struct StreamReply {
    pub body: BoxStream<'static, Bytes>,
    pub meta: ReplyMeta,
}

/// What a gateway is made of: the composition root chooses each adapter.
pub struct GatewayParts {
    pub settings: ChatSettings,
    /// `None`: no model is configured; answers are retrieval-only.
    pub provider: Option<Arc<dyn ChatProvider>>,
    pub breakers: Breakers,
    pub retry: RetryPolicy,
    pub cache: TieredCache,
    /// `None`: answers carry no passages.
    pub knowledge_base: Option<Arc<KnowledgeBase>>,
    pub sessions: Arc<dyn SessionStore>,
    pub usage: Arc<UsageRecorder>,
}

/// The gateway, built once per cold start and shared by all requests.
pub struct ChatGateway {
    parts: GatewayParts,
}

/// A conversation's place: who owns it (the API key's name) and its id.
#[derive(Debug, Clone)]
pub struct SessionRef {
    pub owner: String,
    pub id: String,
    /// The caller's new messages (no system messages), appended with the answer.
    pub new_messages: Vec<Value>,
}

impl std::fmt::Debug for ChatGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatGateway")
            .field("models", &self.models())
            .finish()
    }
}

/// An answer object the gateway writes itself (cached or retrieval-only).
pub(super) fn synthetic_completion(model: &str, content: &str) -> Value {
    json!({
        "id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
            "logprobs": null
        }],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    })
}

/// The usage row of an answer: the provider's token counts, and its cost unless it came
/// from the cache.
pub(super) fn usage_of(
    usage: &UsageRecorder,
    key: &str,
    answer: &Answer,
    cached: bool,
) -> UsageRecord {
    let prompt = answer.completion.prompt_tokens().unwrap_or(0);
    let completion = answer.completion.completion_tokens().unwrap_or(0);
    UsageRecord {
        key: key.to_string(),
        model: answer.model.clone(),
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached,
        cost_usd: if cached {
            0.0
        } else {
            usage.cost(&answer.model, prompt, completion)
        },
        at: chrono::Utc::now(),
    }
}

/// Appends an exchange to a session, unless the answer is not a model's. False when the
/// store failed: the caller is told (`session-unavailable`), the loss is never silent.
pub(super) async fn remember(
    store: &dyn SessionStore,
    session: &SessionRef,
    answer: &Answer,
) -> bool {
    if answer
        .degraded
        .iter()
        .any(|d| d == degraded::RETRIEVAL_ONLY)
    {
        return true;
    }
    let mut messages = session.new_messages.clone();
    // The whole assistant message (its tool calls too), so the next turn's history is
    // what the model said.
    let mut message = answer.completion["choices"][0]["message"].clone();
    if !message.is_object() {
        message = json!({"role": "assistant", "content": ""});
    }
    messages.push(message);
    let span = db_span(store.db_system(), "INSERT", "chat_messages");
    match store
        .append(&session.owner, &session.id, &messages)
        .instrument(span)
        .await
    {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, "session history not saved");
            false
        }
    }
}

/// The request as the provider gets it: the caller's body with the passages added.
pub(super) fn upstream_body(request: &ChatRequest, context: &Context) -> Value {
    let mut body = Value::Object(request.body.clone());
    if !context.is_empty() {
        body["messages"] = Value::Array(context.augment(request.messages()));
    }
    body
}

impl ChatGateway {
    /// The gateway from parts the composition root chose.
    pub fn new(parts: GatewayParts) -> Self {
        Self { parts }
    }

    /// Usage, cost and budgets.
    pub fn usage(&self) -> &Arc<UsageRecorder> {
        &self.parts.usage
    }

    /// Puts the session's history (within the window) before the caller's new messages;
    /// returns where to append the exchange, and a degradation if the store failed.
    pub async fn with_history(
        &self,
        request: &mut ChatRequest,
        owner: &str,
    ) -> (Option<SessionRef>, Option<String>) {
        let Some(id) = request.session_id.clone() else {
            return (None, None);
        };
        let messages = request.messages().to_vec();
        let system_count = messages
            .iter()
            .take_while(|m| m["role"] == "system" || m["role"] == "developer")
            .count();
        let session = SessionRef {
            owner: owner.to_string(),
            id: id.clone(),
            new_messages: messages[system_count..].to_vec(),
        };
        if self.parts.settings.history_messages == 0 {
            return (Some(session), None);
        }
        match self
            .parts
            .sessions
            .history(owner, &id, self.parts.settings.history_messages)
            .instrument(db_span(
                self.parts.sessions.db_system(),
                "SELECT",
                "chat_messages",
            ))
            .await
        {
            Ok(history) => {
                let history = session::window(history, self.parts.settings.history_tokens);
                let mut merged = messages[..system_count].to_vec();
                merged.extend(history);
                merged.extend_from_slice(&messages[system_count..]);
                request.set_messages(merged);
                (Some(session), None)
            }
            Err(err) => {
                tracing::warn!(error = %err, "session history unavailable; answering without it");
                (
                    Some(session),
                    Some(degraded::SESSION_UNAVAILABLE.to_string()),
                )
            }
        }
    }

    /// Records the caller's messages and the model's answer in the session.
    pub async fn remember(&self, session: &SessionRef, answer: &Answer) -> bool {
        remember(self.parts.sessions.as_ref(), session, answer).await
    }

    /// The models callers may ask for: the primary, then the fallbacks.
    pub fn models(&self) -> Vec<String> {
        std::iter::once(self.parts.settings.llm_model.clone())
            .chain(self.parts.settings.llm_fallback_models.iter().cloned())
            .collect()
    }

    pub fn settings(&self) -> &ChatSettings {
        &self.parts.settings
    }

    /// Parses a body with this gateway's defaults and limits.
    pub fn parse(&self, body: &[u8], no_cache_header: bool) -> Result<ChatRequest, ChatError> {
        let request = ChatRequest::parse(
            body,
            &self.parts.settings.llm_model,
            self.parts.settings.max_messages,
            no_cache_header,
        )?;
        if !self.models().contains(&request.model) {
            return Err(ChatError::UnknownModel(format!(
                "the model `{}` does not exist here; GET /v1/models lists the models",
                request.model
            )));
        }
        Ok(request)
    }

    pub(super) fn cacheable(&self, request: &ChatRequest) -> bool {
        request.cache
            && request.temperature.unwrap_or(1.0) <= self.parts.settings.cache_max_temperature
    }

    /// Answers with passages depend on which passages the floor lets through and how
    /// they are ranked, so a changed floor or weight never serves an answer built under
    /// the old one.
    pub(super) fn cache_key(&self, request: &ChatRequest) -> String {
        let retrieval = match (&self.parts.knowledge_base, request.retrieval) {
            (Some(kb), true) => {
                let floor = kb.relevance_floor();
                let weight = kb.fusion().vector_weight;
                format!(
                    "kb:{}/{}/{weight}",
                    floor.min_similarity, floor.with_shared_word
                )
            }
            _ => "no-kb".to_string(),
        };
        request.cache_key(&retrieval)
    }

    /// The chain of models to try for a request: the requested one first.
    pub(super) fn chain(&self, requested: &str) -> Vec<String> {
        let mut chain = vec![requested.to_string()];
        for m in self.models() {
            if !chain.contains(&m) && m != OFFLINE_MODEL {
                chain.push(m);
            }
        }
        chain
    }

    pub(super) fn breaker(&self, provider: &dyn ChatProvider, model: &str) -> CircuitBreaker {
        self.parts
            .breakers
            .get(&format!("llm:{}:{model}", provider.name()))
    }

    /// Passages for the request, or the reason there are none.
    pub(super) async fn context(
        &self,
        request: &ChatRequest,
        degraded: &mut Vec<String>,
    ) -> Context {
        if !(self.parts.settings.retrieval_enabled && request.retrieval) {
            return Context::default();
        }
        let (Some(kb), Some(question)) = (&self.parts.knowledge_base, request.last_user_text())
        else {
            return Context::default();
        };
        // The knowledge store is behind its breaker (`knowledge-base`): while its
        // database is down, this fails at once instead of waiting for a connection.
        let top_k = self.parts.settings.retrieval_top_k;
        let outcome = kb.retrieve(&question, top_k).await;
        match outcome {
            Ok(results) => {
                Context::within_budget(results, self.parts.settings.retrieval_token_budget)
            }
            Err(err) => {
                tracing::warn!(error = %err, "retrieval failed; answering without passages");
                degraded.push(degraded::RETRIEVAL_UNAVAILABLE.to_string());
                Context::unreachable()
            }
        }
    }

    pub(super) fn finish(
        &self,
        mut completion: Completion,
        model: &str,
        context: &Context,
        degraded: Vec<String>,
    ) -> Answer {
        completion.insert("sources", json!(context.sources()));
        if !degraded.is_empty() {
            completion.insert("degraded", json!(degraded.join(",")));
        }
        Answer {
            completion,
            degraded,
            model: model.to_string(),
        }
    }
}
