//! Server-sent events in OpenAI's streaming format: relaying an upstream stream (and
//! caching what it said), and replaying a finished answer as a stream.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::provider::ChunkStream;
use super::session::SessionStore;
use super::{record_usage_metrics, Answer, SessionRef};
use crate::cache::{Namespace, TieredCache};
use crate::resilience::breaker::{CircuitBreaker, Permit};

fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// The error event that ends a stream the upstream cut: clients see an error, never a
/// stream that looks complete.
fn error_event(message: &str) -> Bytes {
    event(&json!({"error": {
        "message": message,
        "type": "server_error",
        "code": "upstream_stream_interrupted"
    }}))
}

/// A finished answer as a stream: role, content, finish, usage (when asked), `[DONE]`.
pub fn replay(completion: Value, include_usage: bool) -> BoxStream<'static, Bytes> {
    let base = json!({
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
    });
    let chunk = |delta: Value, finish: Value| {
        let mut c = base.clone();
        c["choices"] =
            json!([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]);
        c
    };
    let content = completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut first = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    for field in ["sources", "degraded", "cached"] {
        if !completion[field].is_null() {
            first[field] = completion[field].clone();
        }
    }
    let mut events = vec![
        event(&first),
        event(&chunk(json!({"content": content}), Value::Null)),
        event(&chunk(json!({}), json!("stop"))),
    ];
    if include_usage {
        let mut usage = base.clone();
        usage["choices"] = json!([]);
        usage["usage"] = completion["usage"].clone();
        events.push(event(&usage));
    }
    events.push(Bytes::from_static(DONE));
    futures_util::stream::iter(events).boxed()
}

/// Relays an upstream stream whose first chunk has arrived.
pub struct Relay {
    pub model: String,
    pub sources: Vec<String>,
    pub degraded: Vec<String>,
    pub include_usage: bool,
    pub cache: TieredCache,
    /// Where to cache the assembled answer (cacheable, not degraded requests).
    pub cache_key: Option<String>,
    /// Where to keep it as the last good answer to this question.
    pub question_key: Option<String>,
    pub breaker: CircuitBreaker,
    pub permit: Option<Permit>,
    /// Where to record the exchange once the stream completes.
    pub session: Option<(std::sync::Arc<dyn SessionStore>, SessionRef)>,
    /// Where to record the answer's usage, and for which API key.
    pub usage: (std::sync::Arc<super::usage::UsageRecorder>, String),
}

struct State {
    relay: Relay,
    rest: ChunkStream,
    pending: Option<Value>,
    content: String,
    finish_reason: Option<Value>,
    usage: Option<Value>,
    first: Option<Value>,
    done: bool,
}

impl Relay {
    pub fn run(self, first: Value, rest: ChunkStream) -> BoxStream<'static, Bytes> {
        let state = State {
            relay: self,
            rest,
            pending: Some(first),
            content: String::new(),
            finish_reason: None,
            usage: None,
            first: None,
            done: false,
        };
        futures_util::stream::unfold(state, |mut s| async move {
            if s.done {
                return None;
            }
            loop {
                let next = match s.pending.take() {
                    Some(chunk) => Some(Ok(chunk)),
                    None => s.rest.next().await,
                };
                match next {
                    Some(Ok(mut chunk)) => {
                        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str() {
                            s.content.push_str(delta);
                        }
                        let finish = &chunk["choices"][0]["finish_reason"];
                        if !finish.is_null() {
                            s.finish_reason = Some(finish.clone());
                        }
                        let is_usage_chunk = chunk["choices"]
                            .as_array()
                            .is_some_and(|c| c.is_empty())
                            && !chunk["usage"].is_null();
                        if !chunk["usage"].is_null() {
                            s.usage = Some(chunk["usage"].clone());
                        }
                        if s.first.is_none() {
                            s.first = Some(chunk.clone());
                            chunk["sources"] = json!(s.relay.sources);
                            if !s.relay.degraded.is_empty() {
                                chunk["degraded"] = json!(s.relay.degraded.join(","));
                            }
                        }
                        if is_usage_chunk && !s.relay.include_usage {
                            continue;
                        }
                        if !s.relay.include_usage {
                            if let Some(map) = chunk.as_object_mut() {
                                map.remove("usage");
                            }
                        }
                        return Some((event(&chunk), s));
                    }
                    Some(Err(err)) => {
                        s.done = true;
                        tracing::warn!(model = %s.relay.model, error = %err, "upstream stream failed after the first byte");
                        if let Some(permit) = s.relay.permit.take() {
                            s.relay.breaker.record(permit, true).await;
                        }
                        super::count_request(&s.relay.model, "stream_cut");
                        return Some((
                            error_event(&format!(
                                "the model's stream was interrupted: {err}; the answer is incomplete"
                            )),
                            s,
                        ));
                    }
                    None => {
                        s.done = true;
                        if s.finish_reason.is_none() {
                            if let Some(permit) = s.relay.permit.take() {
                                s.relay.breaker.record(permit, true).await;
                            }
                            super::count_request(&s.relay.model, "stream_cut");
                            return Some((
                                error_event(
                                    "the model's stream ended without finishing; the answer is incomplete",
                                ),
                                s,
                            ));
                        }
                        if let Some(permit) = s.relay.permit.take() {
                            s.relay.breaker.record(permit, false).await;
                        }
                        s.finished().await;
                        return Some((Bytes::from_static(DONE), s));
                    }
                }
            }
        })
        .boxed()
    }
}

impl State {
    /// A complete stream: count it, and cache it as a plain answer.
    async fn finished(&mut self) {
        super::count_request(&self.relay.model, "ok");
        let first = self.first.take().unwrap_or_default();
        let mut completion = json!({
            "id": first["id"],
            "object": "chat.completion",
            "created": first["created"],
            "model": first["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.content},
                "finish_reason": self.finish_reason.clone().unwrap_or(json!("stop")),
                "logprobs": null
            }],
            "usage": self.usage.clone().unwrap_or(json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})),
            "sources": self.relay.sources,
        });
        record_usage_metrics(&self.relay.model, &completion);
        if !self.relay.degraded.is_empty() {
            completion["degraded"] = json!(self.relay.degraded.join(","));
        }
        let answer = Answer {
            completion,
            degraded: self.relay.degraded.clone(),
            model: self.relay.model.clone(),
        };
        if let Some(key) = &self.relay.cache_key {
            self.relay.cache.set(Namespace::Chat, key, &answer).await;
        }
        if let Some(key) = &self.relay.question_key {
            self.relay.cache.set(Namespace::Chat, key, &answer).await;
        }
        if let Some((store, session)) = &self.relay.session {
            super::remember(store.as_ref(), session, &answer).await;
        }
        let (recorder, key) = &self.relay.usage;
        recorder
            .record(super::usage_of(recorder, key, &answer, false))
            .await;
    }
}
