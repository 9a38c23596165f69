//! The model-routing step shared by plain and streamed answers: the chain of models,
//! each through its breaker and retries, and the answer when no model can give one.

use std::sync::LazyLock;

use super::*;
use crate::observability::kept_counters::KeptCounters;
use tracing::Instrument;

/// An error of one provider attempt inside the retry loop.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptError {
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

/// Whether a route asks for a whole answer or opens a stream.
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode {
    Plain,
    Stream,
}

/// What a model gave a route: a whole completion, or a stream with its first chunk (the
/// breaker permit is held until the stream ends).
pub(super) enum Opened {
    Plain(Completion),
    Stream(
        // Boxed: a chunk with its view is some 500 bytes, a completion 150.
        Box<Chunk>,
        ChunkStream,
        crate::resilience::breaker::Permit,
        CircuitBreaker,
    ),
}

/// How a walk down the chain of models ended.
pub(super) enum Routed {
    /// A model answered; `fallback` when it was not the requested one.
    Answered {
        fallback: bool,
        model: String,
        opened: Opened,
    },
    /// The provider refused the caller's request (kept status); no other model is tried.
    Refused { status: u16, message: String },
    /// Every model failed; the last failure, for the degraded answer's reason.
    Exhausted { last_error: String },
}

/// A caller's error the provider reported: its status and our message.
pub(super) fn provider_refusal(e: &ProviderError) -> (u16, String) {
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
pub(super) fn step_down(chain: &[String], i: usize, e: &AttemptError) -> String {
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

/// Counts an answer's tokens (`usage.prompt_tokens`, `usage.completion_tokens`).
pub(super) fn record_usage_metrics(model: &str, prompt: Option<u64>, completion: Option<u64>) {
    let mut tokens = 0;
    for (kind, count) in [("prompt", prompt), ("completion", completion)] {
        if let Some(n) = count {
            LLM_TOKENS.increment(model, kind, n);
            tokens += n;
        }
    }
    if tokens > 0 {
        crate::observability::metrics::emf(
            &[(names::LLM_TOKENS_TOTAL, tokens as f64, "Count")],
            &[("model", model)],
        );
    }
}

/// `llm_tokens_total` and `llm_requests_total`, recorded on every answer.
static LLM_TOKENS: LazyLock<KeptCounters> =
    LazyLock::new(|| KeptCounters::new(names::LLM_TOKENS_TOTAL, "model", "kind"));
static LLM_REQUESTS: LazyLock<KeptCounters> =
    LazyLock::new(|| KeptCounters::new(names::LLM_REQUESTS_TOTAL, "model", "outcome"));

pub(super) fn count_request(model: &str, outcome: &'static str) {
    LLM_REQUESTS.increment(model, outcome, 1);
}

pub(super) fn count_fallback(from: &str, to: &str) {
    metrics::counter!(names::LLM_FALLBACKS_TOTAL, "from" => from.to_string(), "to" => to.to_string())
        .increment(1);
}

impl ChatGateway {
    /// When the models must have answered: `CHAT_DEADLINE_MS` from now, less the part
    /// kept for the degraded answer (a tenth, at most 1 s).
    pub(super) fn answer_deadline(&self) -> Instant {
        let whole = self.parts.settings.chat_deadline;
        Instant::now() + whole - (whole / 10).min(Duration::from_secs(1))
    }

    /// The end of the chain when no model answered: the last good answer to the same
    /// question, else the passages themselves.
    pub(super) async fn without_model(
        &self,
        request: &ChatRequest,
        context: &Context,
        mut degraded: Vec<String>,
        reason: &str,
    ) -> Answer {
        if self.parts.provider.is_some() {
            if let Some(key) = request.question_key() {
                if let Some(mut last) = self.parts.cache.get::<Answer>(Namespace::Chat, &key).await
                {
                    count_fallback(&request.model, degraded::CACHED_ANSWER);
                    degraded.push(degraded::CACHED_ANSWER.to_string());
                    last.completion
                        .insert("degraded", json!(degraded.join(",")));
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
            synthetic_completion(OFFLINE_MODEL, &content).into(),
            OFFLINE_MODEL,
            context,
            degraded,
        )
    }

    /// The one model-routing step of plain and streamed answers: the chain of models in
    /// order (the requested one first), each through its breaker and retries, stepping
    /// down on failures; a refusal of the caller's request ends the walk at once. Returns
    /// how it ended and the time spent waiting on providers.
    pub(super) async fn route(
        &self,
        provider: &dyn ChatProvider,
        requested: &str,
        body: &mut Value,
        mode: Mode,
        deadline: Instant,
    ) -> (Routed, Duration) {
        let mut waited = Duration::ZERO;
        let chain = self.chain(requested);
        let mut last_error = String::new();
        // After a model found the request too long: the window a model needs to
        // exceed, and the refusal to pass back if none is left to try.
        let mut overflow: Option<(u64, (u16, String))> = None;
        let mut last_was_overflow = false;
        for (i, model) in chain.iter().enumerate() {
            if let Some((needed, _)) = &overflow {
                if self.window(model).is_some_and(|w| w <= *needed) {
                    count_request(model, "skipped_context");
                    continue;
                }
            }
            body["model"] = json!(model);
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            let attempt = async {
                match mode {
                    Mode::Plain => self
                        .call_model(provider, model, body)
                        .await
                        .map(Opened::Plain),
                    Mode::Stream => self.open_stream(provider, model, body).await.map(
                        |(first, rest, permit, breaker)| {
                            Opened::Stream(Box::new(first), rest, permit, breaker)
                        },
                    ),
                }
            };
            let result = tokio::time::timeout(remaining, attempt).await;
            waited += started.elapsed();
            let Ok(result) = result else {
                // The answer's deadline passed: no further model or retry is tried, and
                // what is left of it goes to the degraded answer.
                count_request(model, "deadline");
                last_error = format!(
                    "no answer within the answer's deadline of {} ms (CHAT_DEADLINE_MS)",
                    self.parts.settings.chat_deadline.as_millis()
                );
                tracing::warn!(model = %model, "{last_error}");
                last_was_overflow = false;
                break;
            };
            match result {
                Ok(opened) => {
                    match &opened {
                        Opened::Plain(completion) => {
                            count_request(model, "ok");
                            record_usage_metrics(
                                model,
                                completion.prompt_tokens(),
                                completion.completion_tokens(),
                            );
                        }
                        Opened::Stream(..) => {
                            metrics::histogram!(names::LLM_TIME_TO_FIRST_TOKEN_SECONDS, "model" => model.clone())
                                .record(started.elapsed().as_secs_f64());
                        }
                    }
                    let routed = Routed::Answered {
                        fallback: i > 0,
                        model: model.clone(),
                        opened,
                    };
                    return (routed, waited);
                }
                Err(AttemptError::Provider(e)) if e.is_context_overflow() => {
                    // Not the model's fault, nor retried: a model with a larger
                    // window may take it (`LLM_CONTEXT_WINDOWS`).
                    count_request(model, "context_overflow");
                    tracing::info!(model = %model, "the request is too long for this model; trying a larger one");
                    let prompt = retrieval::estimate_tokens(&body["messages"].to_string()) as u64;
                    let earlier = overflow.as_ref().map_or(0, |(needed, _)| *needed);
                    let needed = self.window(model).unwrap_or(0).max(prompt).max(earlier);
                    let refusal = provider_refusal(&e);
                    overflow = Some((needed, refusal));
                    last_was_overflow = true;
                    last_error = e.to_string();
                }
                Err(AttemptError::Provider(e)) if e.is_caller_error() => {
                    count_request(model, "refused");
                    let (status, message) = provider_refusal(&e);
                    return (Routed::Refused { status, message }, waited);
                }
                Err(e) => {
                    last_was_overflow = false;
                    last_error = step_down(&chain, i, &e);
                }
            }
        }
        // Every model after the overflow was too small, or none was left: the caller
        // gets the provider's refusal, not a degraded answer.
        if let Some((_, (status, message))) = overflow.filter(|_| last_was_overflow) {
            return (Routed::Refused { status, message }, waited);
        }
        (Routed::Exhausted { last_error }, waited)
    }

    /// A model's context window in tokens, when `LLM_CONTEXT_WINDOWS` gives it.
    fn window(&self, model: &str) -> Option<u64> {
        self.parts.settings.context_windows.get(model).copied()
    }

    /// One model through its breaker, with retries while the breaker admits calls.
    pub(super) async fn call_model(
        &self,
        provider: &dyn ChatProvider,
        model: &str,
        body: &Value,
    ) -> Result<Completion, AttemptError> {
        let breaker = self.breaker(provider, model);
        retry(&self.parts.retry, "llm", || async {
            let permit = breaker.acquire().await?;
            let span = telemetry::model_call_span(provider.name(), model, body);
            let result = provider.complete(body).instrument(span.clone()).await;
            match &result {
                Ok(completion) => telemetry::record_completion(&span, completion),
                Err(error) => telemetry::record_error(&span, error),
            }
            let failed = result.as_ref().is_err_and(|e| !e.is_caller_error());
            breaker.record(permit, failed).await;
            Ok(result?)
        })
        .await
    }

    /// Opens a stream and waits for its first content chunk (the chunks before it,
    /// such as the role, are kept and relayed), with retries: nothing has been sent to
    /// the caller yet, so every failure here can still fall back. A model that sends no
    /// content within `LLM_FIRST_TOKEN_MS` is not retried: the next model is tried.
    pub(super) async fn open_stream(
        &self,
        provider: &dyn ChatProvider,
        model: &str,
        body: &Value,
    ) -> Result<
        (
            Chunk,
            ChunkStream,
            crate::resilience::breaker::Permit,
            CircuitBreaker,
        ),
        AttemptError,
    > {
        let breaker = self.breaker(provider, model);
        let settings = &self.parts.settings;
        let (timeout, first_token) = (settings.llm_timeout, settings.llm_first_token);
        let max_bad_chunks = settings.llm_stream_max_bad_chunks;
        retry(&self.parts.retry, "llm", || async {
            let permit = breaker.acquire().await?;
            let span = telemetry::model_call_span(provider.name(), model, body);
            // The span covers the wait for the first token too.
            let first = async {
                let stream = provider.stream(body).await?;
                let stream = skip_malformed(stream, model, max_bad_chunks);
                first_content(stream, timeout).await
            }
            .instrument(span.clone());
            let first = match tokio::time::timeout(first_token, first).await {
                Ok(first) => first,
                Err(_) => Err(ProviderError::FirstToken(first_token)),
            };
            match first {
                Ok((chunk, stream)) => {
                    let stream = telemetry::traced_stream(&chunk, stream, span);
                    Ok((chunk, stream, permit, breaker.clone()))
                }
                Err(e) => {
                    telemetry::record_error(&span, &e);
                    breaker.record(permit, !e.is_caller_error()).await;
                    Err(AttemptError::Provider(e))
                }
            }
        })
        .await
    }
}

/// Reads until the first content chunk (each chunk within `timeout`); returns the first
/// chunk and the rest, the chunks read before the content chunk included.
pub(super) async fn first_content(
    mut stream: ChunkStream,
    timeout: Duration,
) -> Result<(Chunk, ChunkStream), ProviderError> {
    let mut before: Vec<Chunk> = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(timeout, stream.next()).await {
            Err(_) => return Err(ProviderError::Timeout(timeout)),
            Ok(None) => {
                return Err(ProviderError::StreamCut(
                    "the stream ended before its first chunk".into(),
                ))
            }
            Ok(Some(chunk)) => chunk?,
        };
        let content = chunk.view().has_content();
        before.push(chunk);
        if content || before.len() >= FIRST_CHUNKS_KEPT {
            let first = before.remove(0);
            let rest = futures_util::stream::iter(before.into_iter().map(Ok)).chain(stream);
            return Ok((first, Box::pin(rest)));
        }
    }
}

/// A stream whose first chunks never carry content is relayed after this many anyway.
const FIRST_CHUNKS_KEPT: usize = 16;
