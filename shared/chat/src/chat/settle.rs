//! The one "after the answer" step of plain and streamed answers. However an answer came
//! about (the model, the response cache, or a degraded path), once it is complete the
//! exchange goes into the session and the caller's usage is recorded, in one place.
//! (Caching happens where the answer is made; idempotency completion is the edge's
//! `http::idempotent` layer.)

use std::sync::Arc;

use super::error::ChatError;
use super::request::ChatRequest;
use super::retrieval::estimate_tokens;
use super::session::SessionStore;
use super::usage::{Reservation, UsageRecord, UsageRecorder};
use super::{remember, usage_of, Answer, ChatGateway, SessionRef};

/// What is left to do once an answer is complete.
#[derive(Clone)]
pub(super) struct AfterAnswer {
    usage: Arc<UsageRecorder>,
    owner: String,
    /// Where the exchange is recorded: `None` without a session, or when its store
    /// already failed for this request (the answer then says it is degraded).
    session: Option<(Arc<dyn SessionStore>, SessionRef)>,
    /// The request's hold on its key's budget, settled with the actual cost; released
    /// when the answer fails (dropped unsettled).
    reservation: Option<Arc<Reservation>>,
    /// The prompt's tokens (estimated), for an answer that ends before the provider
    /// reports usage.
    prompt_tokens: u64,
}

impl AfterAnswer {
    /// A stream that ended without finishing (cut with no model to continue it, or
    /// abandoned by the caller): the provider was paid for what it produced, so that is
    /// recorded, estimated, and the reservation settled with it, never released at 0.
    pub(super) async fn settle_unfinished(&self, model: &str, produced: &str) {
        let completion = estimate_tokens(produced) as u64;
        let cost = self.usage.cost(model, self.prompt_tokens, completion);
        self.usage
            .record(UsageRecord {
                key: self.owner.clone(),
                model: model.to_string(),
                prompt_tokens: self.prompt_tokens,
                completion_tokens: completion,
                cached: false,
                cost_usd: cost,
                at: chrono::Utc::now(),
            })
            .await;
        if let Some(reservation) = &self.reservation {
            reservation.settle(cost).await;
        }
    }

    /// Releases the reservation of a request that failed before any model was paid.
    pub(super) async fn release(&self) {
        if let Some(reservation) = &self.reservation {
            reservation.settle(0.0).await;
        }
    }

    /// Records the exchange in the session and the usage (`cached`: from the response
    /// cache, so at no cost). False when the session store failed to record it.
    pub(super) async fn settle(&self, answer: &Answer, cached: bool) -> bool {
        let saved = match &self.session {
            Some((store, session)) => remember(store.as_ref(), session, answer).await,
            None => true,
        };
        let record = usage_of(&self.usage, &self.owner, answer, cached);
        let cost = record.cost_usd;
        self.usage.record(record).await;
        if let Some(reservation) = &self.reservation {
            reservation.settle(cost).await;
        }
        saved
    }
}

impl ChatGateway {
    /// The step for one request: `initial` lists what was already degraded before the
    /// answer (a session store that failed), in which case the session is left alone.
    pub(super) fn after_answer(
        &self,
        owner: &str,
        session: Option<&SessionRef>,
        initial: &[String],
        reservation: Option<Arc<Reservation>>,
        prompt_tokens: u64,
    ) -> AfterAnswer {
        AfterAnswer {
            usage: self.parts.usage.clone(),
            owner: owner.to_string(),
            session: session
                .filter(|_| initial.is_empty())
                .map(|s| (self.parts.sessions.clone(), s.clone())),
            reservation,
            prompt_tokens,
        }
    }

    /// The prompt's tokens, estimated without serialising it: about four characters a
    /// token, plus a few per message.
    pub(super) fn prompt_estimate(&self, request: &ChatRequest) -> u64 {
        request
            .messages()
            .iter()
            .map(|m| estimate_tokens(&super::request::message_text(m)) as u64 + 4)
            .sum()
    }

    /// Reserves the request's worst-case cost on the caller's daily budget before any
    /// model is called, or refuses it (429). See `usage::budget` for the rule.
    pub(super) async fn reserve(
        &self,
        owner: &str,
        request: &ChatRequest,
    ) -> Result<Option<Arc<Reservation>>, ChatError> {
        if !self.parts.usage.has_budget() {
            return Ok(None);
        }
        let cost = self.worst_case_cost(request);
        self.parts.usage.reserve(owner, cost).await
    }

    /// The most a request can cost: its prompt (messages, and the passages retrieval
    /// may add) and `max_tokens` (or `BUDGET_DEFAULT_MAX_TOKENS`) per choice, at the
    /// price of the dearest model it may be answered by.
    pub(super) fn worst_case_cost(&self, request: &ChatRequest) -> f64 {
        let settings = &self.parts.settings;
        let mut prompt = self.prompt_estimate(request);
        if settings.retrieval_enabled && request.retrieval {
            prompt += settings.retrieval_token_budget as u64;
        }
        let body = &request.body;
        let max_tokens = body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(settings.budget_default_max_tokens);
        let choices = body
            .get("n")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(1)
            .max(1);
        let completion = max_tokens.saturating_mul(choices);
        self.chain(&request.model)
            .iter()
            .map(|model| self.parts.usage.cost(model, prompt, completion))
            .fold(0.0, f64::max)
    }
}

/// `degraded`, plus `session-unavailable` when the session store failed to record the
/// exchange (`saved` is what `settle` returned).
pub(super) fn with_session(mut degraded: Vec<String>, saved: bool) -> Vec<String> {
    if !saved {
        degraded.push(super::degraded::SESSION_UNAVAILABLE.to_string());
    }
    degraded
}
