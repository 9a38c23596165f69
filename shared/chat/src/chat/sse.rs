//! Server-sent events in OpenAI's streaming format: relaying an upstream stream (and
//! caching what it said), and replaying a finished answer as a stream.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::assemble::Assembler;
use super::continuation::{as_continued, Continuation};
use super::provider::{Chunk, ChunkStream, ProviderError};
use super::{record_usage_metrics, Answer};
use crate::cache::{Namespace, TieredCache};
use crate::resilience::breaker::{CircuitBreaker, Permit};

/// One `data:` event. Written straight into its buffer: `format!` with the value's
/// `Display` went through the formatting machinery fragment by fragment, a seventh of a
/// relayed stream's instructions (docs/benchmarks.md, "Streams: the relay's own cost").
fn event(value: &Value) -> Bytes {
    let mut line = Vec::with_capacity(320);
    line.extend_from_slice(b"data: ");
    // Cannot fail: a `Value`'s keys are strings, and a `Vec` takes every write.
    let _ = serde_json::to_writer(&mut line, value);
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// A relayed chunk's event: the upstream's own text when the chunk is unchanged (no
/// second serialisation), else written from its value.
fn chunk_event(chunk: &Chunk) -> Bytes {
    let Some(text) = chunk.text() else {
        return event(chunk);
    };
    let mut line = Vec::with_capacity(text.len() + 8);
    line.extend_from_slice(b"data: ");
    line.extend_from_slice(text.as_bytes());
    line.extend_from_slice(b"\n\n");
    Bytes::from(line)
}

/// The error event that ends a stream the upstream cut: clients see an error, never a
/// stream that looks complete.
fn error_event(message: &str) -> Bytes {
    event(&json!({"error": {
        "message": message,
        "type": "server_error",
        "code": "upstream_stream_interrupted"
    }}))
}

/// The usage of a continued answer as billed once: the partial answer the continuing
/// model read as its prompt was produced by the earlier model, so those tokens count as
/// completion, not prompt.
fn bill_continued(usage: &mut Value, partial_tokens: u64) {
    let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0);
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    let prompt = prompt.saturating_sub(partial_tokens);
    let completion = completion + partial_tokens;
    usage["prompt_tokens"] = json!(prompt);
    usage["completion_tokens"] = json!(completion);
    usage["total_tokens"] = json!(prompt + completion);
}

/// A finished answer as a stream: every choice with its content, refusal and calls,
/// its finish, usage (when asked), `[DONE]`; the gateway's fields on the first chunk.
pub fn replay(completion: Value, include_usage: bool) -> BoxStream<'static, Bytes> {
    let mut chunks = super::assemble::chunks(&completion, include_usage);
    if let Some(first) = chunks.first_mut() {
        for field in ["sources", "degraded", "cached"] {
            if !completion[field].is_null() {
                first[field] = completion[field].clone();
            }
        }
    }
    let mut events: Vec<Bytes> = chunks.iter().map(event).collect();
    events.push(Bytes::from_static(DONE));
    futures_util::stream::iter(events).boxed()
}

/// Relays an upstream stream whose first chunk has arrived.
pub(crate) struct Relay {
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
    /// Longest wait for the next chunk (`LLM_STREAM_IDLE_MS`).
    pub idle: std::time::Duration,
    /// The models that may continue a stream that breaks mid-answer
    /// (`LLM_STREAM_CONTINUATION`); `None`: it ends with the error event.
    pub(super) continuation: Option<Continuation>,
    /// The session and usage step, run once the stream completes.
    pub(super) after: super::settle::AfterAnswer,
}

struct State {
    /// Boxed: the state moves in and out of each step's future, and the relay's settings
    /// and handles are most of its size.
    relay: Box<Relay>,
    rest: ChunkStream,
    pending: Option<Chunk>,
    /// What the chunks so far add up to.
    assembler: Assembler,
    first_sent: bool,
    done: bool,
    /// The stream's id, kept by continuations.
    id: Value,
    /// Tokens of the partial answers other models continued (estimated).
    continued_tokens: u64,
    /// The idle timeout, one timer moved on with each chunk: a new `timeout` per chunk
    /// registered and removed a timer each time, where moving a pending deadline later is
    /// one atomic update.
    idle_timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Relay {
    pub fn run(self, first: Chunk, rest: ChunkStream) -> BoxStream<'static, Bytes> {
        let idle_timer = Box::pin(tokio::time::sleep(self.idle));
        let state = State {
            relay: Box::new(self),
            rest,
            pending: Some(first),
            assembler: Assembler::default(),
            first_sent: false,
            done: false,
            id: Value::Null,
            continued_tokens: 0,
            idle_timer,
        };
        let body = futures_util::stream::unfold(state, |mut s| async move {
            if s.done {
                return None;
            }
            loop {
                let next = match s.pending.take() {
                    Some(chunk) => Some(Ok(chunk)),
                    None => match s.next_within_idle().await {
                        Some(next) => next,
                        None => match s.stalled().await {
                            Some(end) => return Some((end, s)),
                            None => continue,
                        },
                    },
                };
                match next {
                    Some(Ok(mut chunk)) => {
                        if !s.assembler.started() {
                            // The first chunk's whole value (built anyway: it gets the
                            // gateway's fields), for the answer's id, time and model.
                            s.assembler.start(&chunk);
                        }
                        if s.id.is_null() {
                            // The first id the stream gives (normally the first chunk's).
                            s.id = chunk["id"].clone();
                        }
                        if s.continued_tokens > 0 && chunk.view().usage.is_object() {
                            bill_continued(&mut chunk.value_mut()["usage"], s.continued_tokens);
                        }
                        s.assembler.push(chunk.view());
                        // Skipped before the gateway's fields are added, so the first
                        // chunk the caller sees carries them.
                        if chunk.view().is_usage_only() && !s.relay.include_usage {
                            continue;
                        }
                        if !s.first_sent {
                            s.first_sent = true;
                            // An object (a chunk that is not one is relayed as it came).
                            if let Some(first) = chunk.value_mut().as_object_mut() {
                                first.insert("sources".into(), json!(s.relay.sources));
                                if !s.relay.degraded.is_empty() {
                                    first.insert(
                                        "degraded".into(),
                                        json!(s.relay.degraded.join(",")),
                                    );
                                }
                            }
                        }
                        // Usage the caller did not ask for is taken out; an upstream's
                        // `"usage": null` on every chunk (OpenAI's, as the gateway always
                        // asks for usage) says nothing and is relayed as it came.
                        if !s.relay.include_usage && !chunk.view().usage.is_null() {
                            if let Some(map) = chunk.value_mut().as_object_mut() {
                                map.remove("usage");
                            }
                        }
                        return Some((chunk_event(&chunk), s));
                    }
                    Some(Err(err)) => {
                        tracing::warn!(model = %s.relay.model, error = %err, "upstream stream failed after the first byte");
                        let message = format!(
                            "the model's stream was interrupted: {err}; the answer is incomplete"
                        );
                        match s.broke("stream_cut", message).await {
                            Some(end) => return Some((end, s)),
                            None => continue,
                        }
                    }
                    None => {
                        if !s.assembler.finished() {
                            let message = "the model's stream ended without finishing; the answer is incomplete";
                            match s.broke("stream_cut", message.into()).await {
                                Some(end) => return Some((end, s)),
                                None => continue,
                            }
                        }
                        s.done = true;
                        if let Some(permit) = s.relay.permit.take() {
                            s.relay.breaker.record(permit, false).await;
                        }
                        let Some(notice) = s.finished().await else {
                            return Some((Bytes::from_static(DONE), s));
                        };
                        return Some(([notice, Bytes::from_static(DONE)].concat().into(), s));
                    }
                }
            }
        })
        .boxed();
        super::telemetry::in_current_span(body)
    }
}

/// A stream the caller abandoned (the body was dropped before it ended): what the model
/// produced until then was paid for, so it is recorded and settled.
impl Drop for State {
    fn drop(&mut self) {
        if self.done || !self.first_sent {
            return;
        }
        let (after, model, produced) = (
            self.relay.after.clone(),
            self.relay.model.clone(),
            self.assembler.produced(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { after.settle_unfinished(&model, &produced).await });
        }
    }
}

impl State {
    /// The next item of the upstream stream, or `None` when none came within the idle
    /// timeout.
    async fn next_within_idle(&mut self) -> Option<Option<Result<Chunk, ProviderError>>> {
        let deadline = tokio::time::Instant::now() + self.relay.idle;
        self.idle_timer.as_mut().reset(deadline);
        tokio::select! {
            biased;
            next = self.rest.next() => Some(next),
            () = self.idle_timer.as_mut() => None,
        }
    }

    /// No chunk within the idle timeout: the upstream stalled. Its breaker counts a
    /// failure; the next model continues the answer, or the stream ends here (which frees
    /// the caller's slot).
    async fn stalled(&mut self) -> Option<Bytes> {
        let idle_ms = self.relay.idle.as_millis();
        tracing::warn!(model = %self.relay.model, idle_ms, "upstream stream stalled after the first byte");
        let message = format!(
            "the model's stream stalled: no chunk for {idle_ms} ms; the answer is incomplete"
        );
        self.broke("stream_stalled", message).await
    }

    /// The upstream broke after the first byte: its breaker counts a failure, then the
    /// next model continues the answer (`None`: relay on) or the stream ends with the
    /// error event (`Some`).
    async fn broke(&mut self, outcome: &'static str, message: String) -> Option<Bytes> {
        if let Some(permit) = self.relay.permit.take() {
            self.relay.breaker.record(permit, true).await;
        }
        super::count_request(&self.relay.model, outcome);
        if self.continue_on_next_model().await {
            return None;
        }
        self.done = true;
        let produced = self.assembler.produced();
        self.relay
            .after
            .settle_unfinished(&self.relay.model, &produced)
            .await;
        Some(error_event(&message))
    }

    /// Asks the next model of the chain to continue the partial answer; on success its
    /// stream replaces the broken one.
    async fn continue_on_next_model(&mut self) -> bool {
        let Some(partial) = self.assembler.continuable_text() else {
            return false;
        };
        let Some(continuation) = self.relay.continuation.as_mut() else {
            return false;
        };
        let Some(resumed) = continuation.resume(&partial).await else {
            return false;
        };
        tracing::info!(from = %self.relay.model, to = %resumed.model, "the answer is continued by the next model");
        super::count_fallback(&self.relay.model, &resumed.model);
        // The whole partial answer so far (earlier continuations included).
        self.continued_tokens = super::retrieval::estimate_tokens(&partial) as u64;
        self.relay
            .degraded
            .push(format!("{}:{}", super::degraded::CONTINUED, resumed.model));
        // A continued answer is not the requested model's: not cached as its answer.
        self.relay.cache_key = None;
        self.relay.model = resumed.model;
        self.relay.breaker = resumed.breaker;
        self.relay.permit = Some(resumed.permit);
        self.pending = Some(as_continued(resumed.first, &self.id));
        let id = self.id.clone();
        self.rest = Box::pin(
            resumed
                .rest
                .map(move |item| item.map(|c| as_continued(c, &id))),
        );
        true
    }

    /// A complete stream: count it, and cache it as a plain answer. When the session
    /// store failed to record it, the event that tells the caller so (headers are long
    /// gone): a chunk with no choices, as a usage chunk has, carrying `degraded`.
    async fn finished(&mut self) -> Option<Bytes> {
        super::count_request(&self.relay.model, "ok");
        let mut completion = self.assembler.completion();
        completion["sources"] = json!(self.relay.sources);
        record_usage_metrics(
            &self.relay.model,
            completion["usage"]["prompt_tokens"].as_u64(),
            completion["usage"]["completion_tokens"].as_u64(),
        );
        if !self.relay.degraded.is_empty() {
            completion["degraded"] = json!(self.relay.degraded.join(","));
        }
        let answer = Answer {
            completion: completion.into(),
            degraded: self.relay.degraded.clone(),
            model: self.relay.model.clone(),
        };
        if let Some(key) = &self.relay.cache_key {
            self.relay.cache.set(Namespace::Chat, key, &answer).await;
        }
        if let Some(key) = &self.relay.question_key {
            self.relay.cache.set(Namespace::Chat, key, &answer).await;
        }
        // Headers are long gone: a session that could not be saved, or a model that
        // continued the answer, is told in a last chunk with no choices.
        let saved = self.relay.after.settle(&answer, false).await;
        if saved && self.continued_tokens == 0 {
            return None;
        }
        let degraded = super::with_session(answer.degraded, saved);
        Some(event(&json!({
            "id": answer.completion["id"],
            "object": "chat.completion.chunk",
            "created": answer.completion["created"],
            "model": answer.completion["model"],
            "choices": [],
            "degraded": degraded.join(","),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_chunk_is_written_as_it_came_and_a_changed_one_anew() {
        let text = r#"{"id": "c1",  "choices": []}"#;
        let mut chunk = Chunk::parse(text.to_string()).unwrap();
        assert_eq!(
            chunk_event(&chunk),
            Bytes::from(format!("data: {text}\n\n"))
        );
        chunk.value_mut()["id"] = json!("c2");
        assert_eq!(
            chunk_event(&chunk),
            Bytes::from_static(b"data: {\"id\":\"c2\",\"choices\":[]}\n\n")
        );
        // A chunk that came on several `data:` lines goes out on one.
        let text = "{\"id\": \"c3\",\n\"choices\": []}";
        let chunk = Chunk::parse(text.to_string()).unwrap();
        assert_eq!(
            chunk_event(&chunk),
            Bytes::from_static(b"data: {\"id\":\"c3\",\"choices\":[]}\n\n")
        );
    }
}
