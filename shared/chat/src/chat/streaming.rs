//! Streamed answers: everything before the first byte is decided by the routing step;
//! after it the relay (`sse`) carries the stream to the caller.

use super::*;

impl ChatGateway {
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
        let deadline = self.answer_deadline();
        let reservation = self.reserve(owner, request).await?;
        let prompt = self.prompt_estimate(request);
        let after = self.after_answer(owner, session, &initial, reservation, prompt);
        let cacheable = self.cacheable(request) && initial.is_empty();
        // Hashed only for a request the cache may answer or keep (not at temperature 0.7).
        let key = cacheable.then(|| self.cache_key(request));
        if let Some(key) = &key {
            if let Some(mut answer) = self.parts.cache.get::<Answer>(Namespace::Chat, key).await {
                answer.completion.insert("cached", json!(true));
                count_request(&answer.model, "cache_hit");
                let saved = after.settle(&answer, true).await;
                return Ok(StreamReply {
                    meta: ReplyMeta {
                        degraded: with_session(answer.degraded.clone(), saved),
                        cached: true,
                        provider_wait: Duration::ZERO,
                    },
                    body: sse::replay(answer.completion.into_value(), include_usage),
                });
            }
        }
        let mut degraded = initial.clone();
        let context = self.context(request, &mut degraded).await;
        let Some(provider) = self.parts.provider.clone() else {
            let answer = self
                .without_model(request, &context, degraded, "no provider is configured")
                .await;
            let saved = after.settle(&answer, false).await;
            return Ok(StreamReply {
                meta: ReplyMeta {
                    degraded: with_session(answer.degraded.clone(), saved),
                    ..ReplyMeta::default()
                },
                body: sse::replay(answer.completion.into_value(), include_usage),
            });
        };
        let mut body = upstream_body(request, &context);
        // Usage is always asked for upstream (it is recorded and cached); the caller
        // sees it only when it asked.
        body["stream_options"] = json!({"include_usage": true});
        body["stream"] = Value::Bool(true);
        let (routed, waited) = self
            .route(
                provider.as_ref(),
                &request.model,
                &mut body,
                Mode::Stream,
                deadline,
            )
            .await;
        let last_error = match routed {
            Routed::Answered {
                fallback,
                model,
                opened: Opened::Stream(first, rest, permit, breaker),
            } => {
                if fallback {
                    degraded.push(degraded::FALLBACK_MODEL.to_string());
                }
                let relay = sse::Relay {
                    model: model.clone(),
                    sources: context.sources(),
                    degraded: degraded.clone(),
                    include_usage,
                    cache: self.parts.cache.clone(),
                    cache_key: key.filter(|_| degraded.is_empty()),
                    question_key: request.question_key(),
                    breaker,
                    permit: Some(permit),
                    idle: self.parts.settings.llm_stream_idle,
                    continuation: self.continuation(&provider, &request.model, &model, &body),
                    after,
                };
                return Ok(StreamReply {
                    meta: ReplyMeta {
                        degraded,
                        cached: false,
                        provider_wait: waited,
                    },
                    body: relay.run(*first, rest),
                });
            }
            Routed::Answered { .. } => unreachable!("a stream route opens streams"),
            Routed::Refused { status, message } => {
                after.release().await;
                return Err(refusal(status, &message));
            }
            Routed::Exhausted { last_error } => last_error,
        };
        let reason = format!("the model provider failed: {last_error}");
        let answer = self
            .without_model(request, &context, degraded, &reason)
            .await;
        let saved = after.settle(&answer, false).await;
        Ok(StreamReply {
            meta: ReplyMeta {
                degraded: with_session(answer.degraded.clone(), saved),
                cached: false,
                provider_wait: waited,
            },
            body: sse::replay(answer.completion.into_value(), include_usage),
        })
    }
}

impl ChatGateway {
    /// What continues `model`'s stream if it breaks mid-answer: the models after it in
    /// the chain (`None` with `LLM_STREAM_CONTINUATION=false`, or when none is left).
    fn continuation(
        &self,
        provider: &Arc<dyn ChatProvider>,
        requested: &str,
        model: &str,
        body: &Value,
    ) -> Option<continuation::Continuation> {
        let settings = &self.parts.settings;
        // One choice only: the next model cannot continue several answers at once.
        let choices = body["n"].as_u64().unwrap_or(1);
        if !settings.llm_stream_continuation || choices > 1 {
            return None;
        }
        let chain = self.chain(requested);
        let at = chain.iter().position(|m| m == model)?;
        let next_models = chain[at + 1..].to_vec();
        if next_models.is_empty() {
            return None;
        }
        Some(continuation::Continuation {
            provider: provider.clone(),
            breakers: self.parts.breakers.clone(),
            next_models,
            body: body.clone(),
            timeout: settings.llm_timeout,
            first_token: settings.llm_first_token,
            max_bad_chunks: settings.llm_stream_max_bad_chunks,
        })
    }
}
