//! The one "after the answer" step of plain and streamed answers. However an answer came
//! about (the model, the response cache, or a degraded path), once it is complete the
//! exchange goes into the session and the caller's usage is recorded, in one place.
//! (Caching happens where the answer is made; idempotency completion is the edge's
//! `http::idempotent` layer.)

use std::sync::Arc;

use super::session::SessionStore;
use super::usage::UsageRecorder;
use super::{remember, usage_of, Answer, ChatGateway, SessionRef};

/// What is left to do once an answer is complete.
#[derive(Clone)]
pub(super) struct AfterAnswer {
    usage: Arc<UsageRecorder>,
    owner: String,
    /// Where the exchange is recorded: `None` without a session, or when its store
    /// already failed for this request (the answer then says it is degraded).
    session: Option<(Arc<dyn SessionStore>, SessionRef)>,
}

impl AfterAnswer {
    /// Records the exchange in the session and the usage (`cached`: from the response
    /// cache, so at no cost). False when the session store failed to record it.
    pub(super) async fn settle(&self, answer: &Answer, cached: bool) -> bool {
        let saved = match &self.session {
            Some((store, session)) => remember(store.as_ref(), session, answer).await,
            None => true,
        };
        self.usage
            .record(usage_of(&self.usage, &self.owner, answer, cached))
            .await;
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
    ) -> AfterAnswer {
        AfterAnswer {
            usage: self.parts.usage.clone(),
            owner: owner.to_string(),
            session: session
                .filter(|_| initial.is_empty())
                .map(|s| (self.parts.sessions.clone(), s.clone())),
        }
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
