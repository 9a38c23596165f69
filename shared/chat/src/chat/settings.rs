//! The chat gateway's own configuration section (read by `config::Settings`).

use std::time::Duration;

use crate::secret::Secret;

/// The model name of the offline retrieval-only provider (no `LLM_BASE_URL`).
pub const OFFLINE_MODEL: &str = "retrieval-only";

/// The chat gateway's providers, limits and retrieval (C1-C5).
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// OpenAI-compatible endpoint; unset selects the offline retrieval-only provider.
    pub llm_base_url: Option<String>,
    pub llm_api_key: Option<Secret>,
    /// The primary model, and the model callers get when they name none.
    pub llm_model: String,
    /// Tried in order when the primary model fails or its breaker is open.
    pub llm_fallback_models: Vec<String>,
    /// Whole answer (plain) or first byte (stream) from the provider, per model.
    pub llm_timeout: Duration,
    /// Longest wait from sending a streamed request to its first content chunk; then the
    /// next model is tried (`LLM_FIRST_TOKEN_MS`).
    pub llm_first_token: Duration,
    /// Longest silence between two chunks of a stream that has started: a stalled
    /// stream ends with an error event, frees its slot and counts for the breaker.
    pub llm_stream_idle: Duration,
    /// Malformed stream events skipped in a row before the stream counts as broken
    /// (`LLM_STREAM_MAX_BAD_CHUNKS`).
    pub llm_stream_max_bad_chunks: u32,
    /// A stream that breaks mid-answer is continued by the next model of the chain
    /// (`LLM_STREAM_CONTINUATION`, default on).
    pub llm_stream_continuation: bool,
    /// The whole answer: every model of the chain, every retry and every wait share it;
    /// a tenth of it (at most 1 s) is kept for the degraded answer (`CHAT_DEADLINE_MS`).
    pub chat_deadline: Duration,
    pub max_messages: usize,
    /// Requests with a temperature up to this are answered from the response cache.
    pub cache_max_temperature: f64,
    pub retrieval_enabled: bool,
    pub retrieval_top_k: usize,
    /// Most tokens of knowledge-base passages put into the system prompt.
    pub retrieval_token_budget: usize,
    /// DynamoDB table of session history; the SQL database when unset.
    pub sessions_table: Option<String>,
    pub session_ttl: Duration,
    /// The history window: at most this many messages and this many tokens.
    pub history_messages: usize,
    pub history_tokens: usize,
    /// DynamoDB table of idempotency records; the SQL database when unset.
    pub idempotency_table: Option<String>,
    pub idempotency_ttl: Duration,
    /// After this, an in-progress record whose owner vanished may be taken over.
    pub idempotency_in_progress: Duration,
    /// Per-model prices per million tokens (`LLM_PRICES`).
    pub prices: std::collections::HashMap<String, super::usage::Price>,
    /// Per-model context windows in tokens (`LLM_CONTEXT_WINDOWS`): where a request too
    /// long for one model may go instead.
    pub context_windows: std::collections::HashMap<String, u64>,
    /// How often buffered usage is written in standalone mode.
    pub usage_flush: Duration,
    /// Keep a usage row per answer (`USAGE_RECORDING`, on by default): `GET /v1/usage`
    /// and daily budgets read them.
    pub usage_recording: bool,
    /// How old an instance's view of a key's stored spend may get (budgets are shared).
    pub budget_refresh: Duration,
    /// Completion tokens a request without `max_tokens` is assumed to cost at most, for
    /// its budget reservation (`BUDGET_DEFAULT_MAX_TOKENS`).
    pub budget_default_max_tokens: u64,
}

/// `LLM_CONTEXT_WINDOWS`: `model=tokens,...`.
pub fn parse_context_windows(text: &str) -> Result<std::collections::HashMap<String, u64>, String> {
    let mut windows = std::collections::HashMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (model, tokens) = entry
            .split_once('=')
            .ok_or_else(|| format!("`{entry}` is not model=tokens"))?;
        let tokens = tokens
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|t| *t > 0)
            .ok_or_else(|| format!("`{entry}`: the window must be a positive number of tokens"))?;
        windows.insert(model.trim().to_string(), tokens);
    }
    Ok(windows)
}
