//! Plain (non-streamed) answers: the response cache with single-flight around the
//! routing step.

use super::*;

/// Not cached by the single-flight loader: a degraded answer (so recovery is
/// immediate) or a refusal.
pub(super) enum Uncached {
    Degraded(Answer, Duration),
    Refused { status: u16, message: String },
}

pub(super) fn refusal(status: u16, message: &str) -> ChatError {
    ChatError::Refused {
        status,
        message: message.to_string(),
    }
}

impl ChatGateway {
    /// The answer without the response cache: retrieval, then the fallback chain.
    /// `cached_whole`: a clean answer will be cached by the caller, which then keeps it
    /// as the question's last answer too, without serialising it a second time.
    pub(super) async fn answer(
        &self,
        request: &ChatRequest,
        initial: &[String],
        deadline: Instant,
        cached_whole: bool,
    ) -> Result<(Answer, Duration), Uncached> {
        let mut degraded = initial.to_vec();
        let context = self.context(request, &mut degraded).await;
        let Some(provider) = self.parts.provider.clone() else {
            let answer = self
                .without_model(request, &context, degraded, "no provider is configured")
                .await;
            return Err(Uncached::Degraded(answer, Duration::ZERO));
        };
        let mut body = upstream_body(request, &context);
        // As the provider sends it, so it need not copy the body to change it.
        body["stream"] = Value::Bool(false);
        if let Some(map) = body.as_object_mut() {
            map.remove("stream_options");
        }
        let (routed, waited) = self
            .route(
                provider.as_ref(),
                &request.model,
                &mut body,
                Mode::Plain,
                deadline,
            )
            .await;
        match routed {
            Routed::Answered {
                fallback,
                model,
                opened: Opened::Plain(completion),
            } => {
                let mut degraded = degraded.clone();
                if fallback {
                    degraded.push(degraded::FALLBACK_MODEL.to_string());
                }
                let answer = self.finish(completion, &model, &context, degraded.clone());
                // The question's last answer: the fallback when every model fails.
                if !(cached_whole && degraded.is_empty()) {
                    if let Some(key) = request.question_key() {
                        self.parts.cache.set(Namespace::Chat, &key, &answer).await;
                    }
                }
                if degraded.is_empty() {
                    Ok((answer, waited))
                } else {
                    Err(Uncached::Degraded(answer, waited))
                }
            }
            Routed::Answered { .. } => unreachable!("a plain route opens plain answers"),
            Routed::Refused { status, message } => Err(Uncached::Refused { status, message }),
            Routed::Exhausted { last_error } => {
                let reason = format!("the model provider failed: {last_error}");
                let answer = self
                    .without_model(request, &context, degraded, &reason)
                    .await;
                Err(Uncached::Degraded(answer, waited))
            }
        }
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
        let reservation = self.reserve(owner, request).await?;
        let prompt = self.prompt_estimate(request);
        let after = self.after_answer(owner, session, &initial, reservation, prompt);
        let deadline = self.answer_deadline();
        let mut reply = match self.complete_inner(request, &initial, deadline).await {
            Ok(reply) => reply,
            Err(err) => {
                // Released here, not when dropped: under Lambda nothing runs after the
                // response, and the shared ledger would hold it until it expires.
                after.release().await;
                return Err(err);
            }
        };
        if !after.settle(&reply.answer, reply.meta.cached).await {
            reply.meta.degraded = with_session(std::mem::take(&mut reply.meta.degraded), false);
            let degraded = json!(reply.meta.degraded.join(","));
            reply.answer.completion.insert("degraded", degraded);
        }
        Ok(reply)
    }

    /// Keeps a freshly cached answer as its question's last answer too: a copy of the
    /// cache entry just written (the same bytes), or a new one if it is already gone.
    async fn remember_question(&self, request: &ChatRequest, key: &str, answer: &Answer) {
        let Some(question) = request.question_key() else {
            return;
        };
        let cache = &self.parts.cache;
        if !cache.copy(Namespace::Chat, key, &question).await {
            cache.set(Namespace::Chat, &question, answer).await;
        }
    }

    pub(super) async fn complete_inner(
        &self,
        request: &ChatRequest,
        initial: &[String],
        deadline: Instant,
    ) -> Result<Reply, ChatError> {
        if !self.cacheable(request) || !initial.is_empty() {
            return match self.answer(request, initial, deadline, false).await {
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
            .parts
            .cache
            .get_or_load(Namespace::Chat, &key, || async {
                let result = self.answer(request, initial, deadline, true).await;
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
                if !cached {
                    self.remember_question(request, &key, &answer).await;
                }
                if cached {
                    answer.completion.insert("cached", json!(true));
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
}
