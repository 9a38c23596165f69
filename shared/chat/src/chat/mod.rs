//! The chat gateway (C1-C7): one OpenAI-compatible request in, one answer out, through
//! retrieval, the response cache, per-model circuit breakers and retries, and the
//! fallback chain (secondary models -> last cached answer -> retrieval-only answer).
//! A degraded answer always says so; it is never passed off as a model's.

mod error;
pub mod idempotency;
pub mod provider;
pub mod request;
pub mod retrieval;
pub mod session;
mod settings;
mod sse;
pub mod usage;

pub use error::ChatError;
pub use settings::{ChatSettings, OFFLINE_MODEL};

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
use crate::resilience::breaker::{BreakerOpen, Breakers, CircuitBreaker};
use crate::resilience::retry::{retry, RetryClass, RetryPolicy};
use provider::{ChatProvider, ChunkStream, ProviderError};
use request::ChatRequest;
use retrieval::Context;
use session::SessionStore;
use usage::{UsageRecord, UsageRecorder};

/// Why an answer is not a fresh answer of the requested model (`x-degraded`).
pub mod degraded {
    /// No model answered (or none is configured): the passages themselves.
    pub const RETRIEVAL_ONLY: &str = "retrieval-only";
    /// No model answered: the last good answer to the same question.
    pub const CACHED_ANSWER: &str = "cached-answer";
    /// A secondary model answered instead of the requested one.
    pub const FALLBACK_MODEL: &str = "fallback-model";
    /// The knowledge base could not be searched: answered without passages.
    pub const RETRIEVAL_UNAVAILABLE: &str = "retrieval-unavailable";
    /// The session history could not be read or written: answered without it.
    pub const SESSION_UNAVAILABLE: &str = "session-unavailable";
}

/// A finished answer, as cached and as returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// The `chat.completion` object, with `sources` (and `degraded` when degraded).
    pub completion: Value,
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

/// An error of one provider attempt inside the retry loop.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Open(#[from] BreakerOpen),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl RetryClass for AttemptError {
    fn is_retryable(&self) -> bool {
        match self {
            AttemptError::Open(_) => false,
            AttemptError::Provider(e) => e.is_retryable(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Open(_) => None,
            AttemptError::Provider(e) => e.retry_after(),
        }
    }
}

/// Not cached by the single-flight loader: a degraded answer (so recovery is
/// immediate) or a refusal.
enum Uncached {
    Degraded(Answer, Duration),
    Refused { status: u16, message: String },
}

fn refusal(status: u16, message: &str) -> ChatError {
    ChatError::Refused {
        status,
        message: message.to_string(),
    }
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
    settings: ChatSettings,
    provider: Option<Arc<dyn ChatProvider>>,
    breakers: Breakers,
    retry: RetryPolicy,
    cache: TieredCache,
    knowledge_base: Option<Arc<KnowledgeBase>>,
    sessions: Arc<dyn SessionStore>,
    usage: Arc<UsageRecorder>,
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
fn synthetic_completion(model: &str, content: &str) -> Value {
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
fn usage_of(usage: &UsageRecorder, key: &str, answer: &Answer, cached: bool) -> UsageRecord {
    let prompt = answer.completion["usage"]["prompt_tokens"]
        .as_u64()
        .unwrap_or(0);
    let completion = answer.completion["usage"]["completion_tokens"]
        .as_u64()
        .unwrap_or(0);
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

/// Appends an exchange to a session, unless the answer is not a model's.
async fn remember(store: &dyn SessionStore, session: &SessionRef, answer: &Answer) {
    if answer
        .degraded
        .iter()
        .any(|d| d == degraded::RETRIEVAL_ONLY)
    {
        return;
    }
    let mut messages = session.new_messages.clone();
    messages.push(json!({
        "role": "assistant",
        "content": answer.completion["choices"][0]["message"]["content"],
    }));
    if let Err(err) = store.append(&session.owner, &session.id, &messages).await {
        tracing::warn!(error = %err, "session history not saved");
    }
}

/// The request as the provider gets it: the caller's body with the passages added.
fn upstream_body(request: &ChatRequest, context: &Context) -> Value {
    let mut body = Value::Object(request.body.clone());
    if !context.is_empty() {
        body["messages"] = Value::Array(context.augment(request.messages()));
    }
    body
}

/// A caller's error the provider reported: its status and our message.
fn provider_refusal(e: &ProviderError) -> (u16, String) {
    let (status, message) = match e {
        ProviderError::Status {
            status, message, ..
        } => (*status, message.clone()),
        other => (400, other.to_string()),
    };
    (
        status,
        format!("the provider refused the request: {message}"),
    )
}

/// Counts and logs a failed model and the step to the next one; returns the error text.
fn step_down(chain: &[String], i: usize, e: &AttemptError) -> String {
    let model = &chain[i];
    count_request(
        model,
        if matches!(e, AttemptError::Open(_)) {
            "breaker_open"
        } else {
            "error"
        },
    );
    tracing::warn!(model = %model, error = %e, "model failed; falling back");
    if let Some(next) = chain.get(i + 1) {
        count_fallback(model, next);
    }
    e.to_string()
}

fn record_usage_metrics(model: &str, completion: &Value) {
    for (kind, field) in [
        ("prompt", "prompt_tokens"),
        ("completion", "completion_tokens"),
    ] {
        if let Some(n) = completion["usage"][field].as_u64() {
            metrics::counter!(names::LLM_TOKENS_TOTAL, "model" => model.to_string(), "kind" => kind)
                .increment(n);
        }
    }
}

fn count_request(model: &str, outcome: &'static str) {
    metrics::counter!(names::LLM_REQUESTS_TOTAL, "model" => model.to_string(), "outcome" => outcome)
        .increment(1);
}

fn count_fallback(from: &str, to: &str) {
    metrics::counter!(names::LLM_FALLBACKS_TOTAL, "from" => from.to_string(), "to" => to.to_string())
        .increment(1);
}

impl ChatGateway {
    /// The gateway from parts the composition root chose.
    pub fn new(parts: GatewayParts) -> Self {
        let GatewayParts {
            settings,
            provider,
            breakers,
            retry,
            cache,
            knowledge_base,
            sessions,
            usage,
        } = parts;
        Self {
            settings,
            provider,
            breakers,
            retry,
            cache,
            knowledge_base,
            sessions,
            usage,
        }
    }

    /// Usage, cost and budgets.
    pub fn usage(&self) -> &Arc<UsageRecorder> {
        &self.usage
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
        if self.settings.history_messages == 0 {
            return (Some(session), None);
        }
        match self
            .sessions
            .history(owner, &id, self.settings.history_messages)
            .await
        {
            Ok(history) => {
                let history = session::window(history, self.settings.history_tokens);
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
    pub async fn remember(&self, session: &SessionRef, answer: &Answer) {
        remember(self.sessions.as_ref(), session, answer).await;
    }

    /// The models callers may ask for: the primary, then the fallbacks.
    pub fn models(&self) -> Vec<String> {
        std::iter::once(self.settings.llm_model.clone())
            .chain(self.settings.llm_fallback_models.iter().cloned())
            .collect()
    }

    pub fn settings(&self) -> &ChatSettings {
        &self.settings
    }

    /// Parses a body with this gateway's defaults and limits.
    pub fn parse(&self, body: &[u8], no_cache_header: bool) -> Result<ChatRequest, ChatError> {
        let request = ChatRequest::parse(
            body,
            &self.settings.llm_model,
            self.settings.max_messages,
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

    fn cacheable(&self, request: &ChatRequest) -> bool {
        request.cache && request.temperature.unwrap_or(1.0) <= self.settings.cache_max_temperature
    }

    fn cache_key(&self, request: &ChatRequest) -> String {
        request.cache_key(if request.retrieval { "kb" } else { "no-kb" })
    }

    /// The chain of models to try for a request: the requested one first.
    fn chain(&self, requested: &str) -> Vec<String> {
        let mut chain = vec![requested.to_string()];
        for m in self.models() {
            if !chain.contains(&m) && m != OFFLINE_MODEL {
                chain.push(m);
            }
        }
        chain
    }

    fn breaker(&self, provider: &dyn ChatProvider, model: &str) -> CircuitBreaker {
        self.breakers
            .get(&format!("llm:{}:{model}", provider.name()))
    }

    /// Passages for the request, or the reason there are none.
    async fn context(&self, request: &ChatRequest, degraded: &mut Vec<String>) -> Context {
        if !(self.settings.retrieval_enabled && request.retrieval) {
            return Context::default();
        }
        let (Some(kb), Some(question)) = (&self.knowledge_base, request.last_user_text()) else {
            return Context::default();
        };
        match kb.retrieve(&question, self.settings.retrieval_top_k).await {
            Ok(results) => Context::within_budget(results, self.settings.retrieval_token_budget),
            Err(err) => {
                tracing::warn!(error = %err, "retrieval failed; answering without passages");
                degraded.push(degraded::RETRIEVAL_UNAVAILABLE.to_string());
                Context::default()
            }
        }
    }

    fn finish(
        &self,
        mut completion: Value,
        model: &str,
        context: &Context,
        degraded: Vec<String>,
    ) -> Answer {
        completion["sources"] = json!(context.sources());
        if !degraded.is_empty() {
            completion["degraded"] = json!(degraded.join(","));
        }
        Answer {
            completion,
            degraded,
            model: model.to_string(),
        }
    }

    /// The end of the chain when no model answered: the last good answer to the same
    /// question, else the passages themselves.
    async fn without_model(
        &self,
        request: &ChatRequest,
        context: &Context,
        mut degraded: Vec<String>,
        reason: &str,
    ) -> Answer {
        if self.provider.is_some() {
            if let Some(key) = request.question_key() {
                if let Some(mut last) = self.cache.get::<Answer>(Namespace::Chat, &key).await {
                    count_fallback(&request.model, degraded::CACHED_ANSWER);
                    degraded.push(degraded::CACHED_ANSWER.to_string());
                    last.completion["degraded"] = json!(degraded.join(","));
                    last.degraded = degraded;
                    return last;
                }
            }
            count_fallback(&request.model, degraded::RETRIEVAL_ONLY);
        }
        degraded.push(degraded::RETRIEVAL_ONLY.to_string());
        let content = context.retrieval_only_answer(reason);
        count_request(OFFLINE_MODEL, "degraded");
        self.finish(
            synthetic_completion(OFFLINE_MODEL, &content),
            OFFLINE_MODEL,
            context,
            degraded,
        )
    }

    /// One model through its breaker, with retries while the breaker admits calls.
    async fn call_model(
        &self,
        provider: &dyn ChatProvider,
        model: &str,
        body: &Value,
    ) -> Result<Value, AttemptError> {
        let breaker = self.breaker(provider, model);
        retry(&self.retry, "llm", || async {
            let permit = breaker.acquire().await?;
            let result = provider.complete(body).await;
            let failed = result.as_ref().is_err_and(|e| !e.is_caller_error());
            breaker.record(permit, failed).await;
            Ok(result?)
        })
        .await
    }

    /// The answer without the response cache: retrieval, then the fallback chain.
    async fn answer(
        &self,
        request: &ChatRequest,
        initial: &[String],
    ) -> Result<(Answer, Duration), Uncached> {
        let mut degraded = initial.to_vec();
        let context = self.context(request, &mut degraded).await;
        let Some(provider) = self.provider.clone() else {
            let answer = self
                .without_model(request, &context, degraded, "no provider is configured")
                .await;
            return Err(Uncached::Degraded(answer, Duration::ZERO));
        };
        let mut body = upstream_body(request, &context);
        let mut waited = Duration::ZERO;
        let chain = self.chain(&request.model);
        let mut last_error = String::new();
        for (i, model) in chain.iter().enumerate() {
            body["model"] = json!(model);
            let started = Instant::now();
            let result = self.call_model(provider.as_ref(), model, &body).await;
            waited += started.elapsed();
            match result {
                Ok(completion) => {
                    count_request(model, "ok");
                    record_usage_metrics(model, &completion);
                    let mut degraded = degraded.clone();
                    if i > 0 {
                        degraded.push(degraded::FALLBACK_MODEL.to_string());
                    }
                    let answer = self.finish(completion, model, &context, degraded.clone());
                    if let Some(key) = request.question_key() {
                        self.cache.set(Namespace::Chat, &key, &answer).await;
                    }
                    return if degraded.is_empty() {
                        Ok((answer, waited))
                    } else {
                        Err(Uncached::Degraded(answer, waited))
                    };
                }
                Err(AttemptError::Provider(e)) if e.is_caller_error() => {
                    count_request(model, "refused");
                    let (status, message) = provider_refusal(&e);
                    return Err(Uncached::Refused { status, message });
                }
                Err(e) => last_error = step_down(&chain, i, &e),
            }
        }
        let reason = format!("the model provider failed: {last_error}");
        let answer = self
            .without_model(request, &context, degraded, &reason)
            .await;
        Err(Uncached::Degraded(answer, waited))
    }

    /// Answers a plain request (C1-C7). `session` is where the exchange is recorded,
    /// `initial` what is already degraded (a session store that failed).
    pub async fn complete(
        &self,
        owner: &str,
        request: &ChatRequest,
        session: Option<&SessionRef>,
        initial: Vec<String>,
    ) -> Result<Reply, ChatError> {
        let reply = self.complete_inner(request, &initial).await?;
        self.usage
            .record(usage_of(
                &self.usage,
                owner,
                &reply.answer,
                reply.meta.cached,
            ))
            .await;
        if let Some(session) = session {
            if initial.is_empty() {
                self.remember(session, &reply.answer).await;
            }
        }
        Ok(reply)
    }

    async fn complete_inner(
        &self,
        request: &ChatRequest,
        initial: &[String],
    ) -> Result<Reply, ChatError> {
        if !self.cacheable(request) || !initial.is_empty() {
            return match self.answer(request, initial).await {
                Ok((answer, waited)) | Err(Uncached::Degraded(answer, waited)) => Ok(Reply {
                    meta: ReplyMeta {
                        degraded: answer.degraded.clone(),
                        cached: false,
                        provider_wait: waited,
                    },
                    answer,
                }),
                Err(Uncached::Refused { status, message }) => Err(refusal(status, &message)),
            };
        }
        let key = self.cache_key(request);
        let waited = std::sync::Mutex::new(None);
        let loaded = self
            .cache
            .get_or_load(Namespace::Chat, &key, || async {
                let result = self.answer(request, initial).await;
                if let Ok((_, w)) = &result {
                    *waited.lock().expect("wait slot") = Some(*w);
                }
                result.map(|(answer, _)| answer)
            })
            .await;
        let loaded_here = waited.lock().expect("wait slot").take();
        match loaded {
            Ok(mut answer) => {
                let cached = loaded_here.is_none();
                if cached {
                    answer.completion["cached"] = json!(true);
                    count_request(&answer.model, "cache_hit");
                }
                Ok(Reply {
                    meta: ReplyMeta {
                        degraded: answer.degraded.clone(),
                        cached,
                        provider_wait: loaded_here.unwrap_or_default(),
                    },
                    answer,
                })
            }
            Err(uncached) => match uncached.as_ref() {
                Uncached::Degraded(answer, waited) => Ok(Reply {
                    meta: ReplyMeta {
                        degraded: answer.degraded.clone(),
                        cached: false,
                        provider_wait: *waited,
                    },
                    answer: answer.clone(),
                }),
                Uncached::Refused { status, message } => Err(refusal(*status, message)),
            },
        }
    }

    /// Answers a streamed request. Everything before the first byte (cache, retrieval,
    /// breakers, retries, fallbacks) is decided first; after it, an upstream failure
    /// ends the stream with an error event and no `[DONE]`, never a silent cut (C6, C7).
    pub async fn stream(
        &self,
        owner: &str,
        request: &ChatRequest,
        session: Option<&SessionRef>,
        initial: Vec<String>,
    ) -> Result<StreamReply, ChatError> {
        let include_usage = request.include_usage;
        let cacheable = self.cacheable(request) && initial.is_empty();
        let key = self.cache_key(request);
        if cacheable {
            if let Some(mut answer) = self.cache.get::<Answer>(Namespace::Chat, &key).await {
                answer.completion["cached"] = json!(true);
                count_request(&answer.model, "cache_hit");
                if let Some(session) = session {
                    self.remember(session, &answer).await;
                }
                self.usage
                    .record(usage_of(&self.usage, owner, &answer, true))
                    .await;
                return Ok(StreamReply {
                    meta: ReplyMeta {
                        degraded: answer.degraded.clone(),
                        cached: true,
                        provider_wait: Duration::ZERO,
                    },
                    body: sse::replay(answer.completion, include_usage),
                });
            }
        }
        let mut degraded = initial.clone();
        let context = self.context(request, &mut degraded).await;
        let Some(provider) = self.provider.clone() else {
            let answer = self
                .without_model(request, &context, degraded, "no provider is configured")
                .await;
            self.usage
                .record(usage_of(&self.usage, owner, &answer, false))
                .await;
            return Ok(StreamReply {
                meta: ReplyMeta {
                    degraded: answer.degraded.clone(),
                    ..ReplyMeta::default()
                },
                body: sse::replay(answer.completion, include_usage),
            });
        };
        let mut body = upstream_body(request, &context);
        // Usage is always asked for upstream (it is recorded and cached); the caller
        // sees it only when it asked.
        body["stream_options"] = json!({"include_usage": true});
        let mut waited = Duration::ZERO;
        let chain = self.chain(&request.model);
        let mut last_error = String::new();
        for (i, model) in chain.iter().enumerate() {
            body["model"] = json!(model);
            let started = Instant::now();
            let opened = self.open_stream(provider.as_ref(), model, &body).await;
            waited += started.elapsed();
            match opened {
                Ok((first, rest, permit, breaker)) => {
                    metrics::histogram!(names::LLM_TIME_TO_FIRST_TOKEN_SECONDS, "model" => model.clone())
                        .record(started.elapsed().as_secs_f64());
                    if i > 0 {
                        degraded.push(degraded::FALLBACK_MODEL.to_string());
                    }
                    let relay = sse::Relay {
                        model: model.clone(),
                        sources: context.sources(),
                        degraded: degraded.clone(),
                        include_usage,
                        cache: self.cache.clone(),
                        cache_key: (cacheable && degraded.is_empty()).then(|| key.clone()),
                        question_key: request.question_key(),
                        breaker,
                        permit: Some(permit),
                        session: session
                            .filter(|_| initial.is_empty())
                            .map(|s| (self.sessions.clone(), s.clone())),
                        usage: (self.usage.clone(), owner.to_string()),
                    };
                    return Ok(StreamReply {
                        meta: ReplyMeta {
                            degraded,
                            cached: false,
                            provider_wait: waited,
                        },
                        body: relay.run(first, rest),
                    });
                }
                Err(AttemptError::Provider(e)) if e.is_caller_error() => {
                    count_request(model, "refused");
                    let (status, message) = provider_refusal(&e);
                    return Err(refusal(status, &message));
                }
                Err(e) => last_error = step_down(&chain, i, &e),
            }
        }
        let reason = format!("the model provider failed: {last_error}");
        let answer = self
            .without_model(request, &context, degraded, &reason)
            .await;
        self.usage
            .record(usage_of(&self.usage, owner, &answer, false))
            .await;
        Ok(StreamReply {
            meta: ReplyMeta {
                degraded: answer.degraded.clone(),
                cached: false,
                provider_wait: waited,
            },
            body: sse::replay(answer.completion, include_usage),
        })
    }

    /// Opens a stream and waits for its first chunk, with retries: nothing has been
    /// sent to the caller yet, so every failure here can still fall back.
    async fn open_stream(
        &self,
        provider: &dyn ChatProvider,
        model: &str,
        body: &Value,
    ) -> Result<
        (
            Value,
            ChunkStream,
            crate::resilience::breaker::Permit,
            CircuitBreaker,
        ),
        AttemptError,
    > {
        let breaker = self.breaker(provider, model);
        let timeout = self.settings.llm_timeout;
        retry(&self.retry, "llm", || async {
            let permit = breaker.acquire().await?;
            let first = async {
                let mut stream = provider.stream(body).await?;
                match tokio::time::timeout(timeout, stream.next()).await {
                    Err(_) => Err(ProviderError::Timeout(timeout)),
                    Ok(None) => Err(ProviderError::StreamCut(
                        "the stream ended before its first chunk".into(),
                    )),
                    Ok(Some(Err(e))) => Err(e),
                    Ok(Some(Ok(chunk))) => Ok((chunk, stream)),
                }
            }
            .await;
            match first {
                Ok((chunk, stream)) => Ok((chunk, stream, permit, breaker.clone())),
                Err(e) => {
                    breaker.record(permit, !e.is_caller_error()).await;
                    Err(AttemptError::Provider(e))
                }
            }
        })
        .await
    }
}
