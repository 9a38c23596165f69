//! The project's own OpenAI-compatible fake server (C-tests, benchmarks, offline demos):
//! chat completions (plain and streamed) and embeddings, with configurable latency,
//! failure rate, status codes, `Retry-After`, hangs and cut streams, and call counters
//! readable over HTTP. It stands in for the paid LLM API and nothing else.
//!
//! Control endpoints (no key needed):
//! - `GET /_fake/calls`: `{"chat_completions", "embeddings", "by_model": {model: n}}`
//! - `GET /_fake/last_request`: the last chat completion request body
//! - `PUT /_fake/behaviour`: a [`Behaviour`] as JSON (fields may be left out)
//! - `POST /_fake/reset`: counters and behaviour back to the start
//!
//! Run it alone with `cargo run -p fake-openai -- --port 8090` (see `local/fake-openai`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use chatkb_chat::chat::continuation::CONTINUE_INSTRUCTION;
use chatkb_chat::chat::request::message_text;
use chatkb_kb::kb::embed::OfflineEmbedder;

/// How the fake answers. Failures and delays apply to chat completions and embeddings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Delay before every answer (and before the first streamed chunk), in ms.
    pub latency_ms: u64,
    /// Delay between streamed chunks, in ms.
    pub chunk_delay_ms: u64,
    /// Share of calls that fail, 0.0-1.0.
    pub failure_rate: f64,
    /// Status of a failure (default 500).
    pub failure_status: Option<u16>,
    /// `Retry-After` seconds sent with failures.
    pub retry_after_s: Option<u64>,
    /// Never answer (the client must time out).
    pub hang: bool,
    /// End streams abruptly after this many content chunks (no `[DONE]`).
    pub cut_stream_after: Option<usize>,
    /// Stop sending after this many content chunks but keep the stream open (a stall).
    pub stall_stream_after: Option<usize>,
    /// Send a broken (unparseable) event before the chunk at each of these indexes (an
    /// index given twice: two broken events in a row).
    pub malformed_chunks_at: Vec<usize>,
    /// The error's `message` and `code` in failures (e.g. a 400 with
    /// `context_length_exceeded`); a generic message and no code when unset.
    pub failure_message: Option<String>,
    pub failure_code: Option<String>,
    /// Models that refuse an assistant message last (a prefill to continue from) with a
    /// 400, as some providers do. Others continue it: they answer what they would have
    /// answered without it, less as many characters as it has.
    pub refuse_prefill: Vec<String>,
    /// Fail only the first this many chat calls after the behaviour is set (with
    /// `failure_status`, default 500, and `retry_after_s`), then answer.
    pub fail_first: Option<usize>,
    /// End streams after their last chunk without `data: [DONE]`.
    pub omit_done: bool,
    /// An outage: every call fails (with `failure_status`, default 503) for this long
    /// after the behaviour is set, then the fake answers normally again.
    pub down_for_ms: Option<u64>,
    /// Apply every fault above, latency included, only to these models (all when empty).
    pub models: Vec<String>,
    /// Answer chat calls only with `Authorization: Bearer <api_key>`; others get the 401
    /// OpenAI answers a wrong key with (`invalid_api_key`). Any key when unset.
    pub api_key: Option<String>,
    /// Write streamed events as Python's `json.dumps` does (`", "` and `": "` between
    /// items), as Python-based servers send them, instead of compact JSON.
    pub spaced_stream: bool,
    /// Answer chat calls with a body that never ends: the start of an answer, then
    /// spaces, 1 MiB at a time, until the client stops reading (or 1 GiB), as a broken
    /// upstream or proxy might.
    pub endless_answer: bool,
}

impl Behaviour {
    fn applies_to(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// Compatibility shorthand used by older tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// 500 with an OpenAI error body.
    Fail,
    /// Never answers.
    Hang,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    /// The end of the outage `down_for_ms` started.
    down_until: Mutex<Option<std::time::Instant>>,
    /// Chat calls left to fail (`fail_first`).
    failures_left: AtomicUsize,
    /// When each chat call arrived, by model.
    call_times: Mutex<Vec<(String, std::time::Instant)>>,
    chat_completions: AtomicUsize,
    embedding_requests: AtomicUsize,
    embedded_texts: AtomicUsize,
    by_model: Mutex<HashMap<String, usize>>,
    last_request: Mutex<Value>,
    /// The `traceparent` header of the last chat call (trace propagation tests).
    last_traceparent: Mutex<Option<String>>,
}

impl Shared {
    fn behaviour(&self) -> Behaviour {
        self.behaviour.lock().expect("behaviour lock").clone()
    }

    fn set(&self, behaviour: Behaviour) {
        self.failures_left
            .store(behaviour.fail_first.unwrap_or(0), Ordering::SeqCst);
        *self.down_until.lock().expect("outage lock") = behaviour
            .down_for_ms
            .map(|ms| std::time::Instant::now() + Duration::from_millis(ms));
        *self.behaviour.lock().expect("behaviour lock") = behaviour;
    }

    fn down(&self) -> bool {
        self.down_until
            .lock()
            .expect("outage lock")
            .is_some_and(|until| std::time::Instant::now() < until)
    }

    fn count_model(&self, model: &str) {
        *self
            .by_model
            .lock()
            .expect("model counts")
            .entry(model.to_string())
            .or_default() += 1;
    }
}

/// The router of the fake server.
fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/_fake/calls", get(calls))
        .route("/_fake/last_request", get(last_request))
        .route("/_fake/behaviour", put(set_behaviour).get(get_behaviour))
        .route("/_fake/reset", post(reset))
        .with_state(shared)
}

/// Serves the fake on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, app(Arc::new(Shared::default()))).await
}

fn error_response(status: StatusCode, retry_after: Option<u64>) -> Response {
    error_with(status, retry_after, None, None)
}

fn error_with(
    status: StatusCode,
    retry_after: Option<u64>,
    message: Option<&str>,
    code: Option<&str>,
) -> Response {
    let kind = if status == StatusCode::TOO_MANY_REQUESTS {
        "rate_limit_error"
    } else if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let mut response = (
        status,
        Json(json!({"error": {
            "message": message.map_or_else(|| format!("fake upstream failure ({})", status.as_u16()), str::to_string),
            "type": kind, "param": null, "code": code
        }})),
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Waits, hangs or fails as configured; `None` means answer normally.
async fn misbehave(behaviour: &Behaviour, model: &str) -> Option<Response> {
    if !behaviour.applies_to(model) {
        return None;
    }
    if behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    if behaviour.hang {
        std::future::pending::<()>().await;
    }
    if behaviour.failure_rate > 0.0 && fastrand::f64() < behaviour.failure_rate {
        let status = behaviour
            .failure_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Some(error_with(
            status,
            behaviour.retry_after_s,
            behaviour.failure_message.as_deref(),
            behaviour.failure_code.as_deref(),
        ));
    }
    None
}

/// A 200 whose body starts as an answer and never ends (`endless_answer`).
fn endless_answer() -> Response {
    let start =
        Bytes::from_static(b"{\"id\": \"chatcmpl-endless\", \"choices\": [], \"padding\": \"");
    let spaces = Bytes::from(vec![b' '; 1 << 20]);
    let pieces = std::iter::once(start).chain(std::iter::repeat_n(spaces, 1024));
    let body = futures_util::stream::iter(pieces.map(Ok::<_, Infallible>));
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Token estimates as the gateway makes them (about four characters per token).
fn estimate_tokens(text: &str) -> u64 {
    chatkb_chat::chat::retrieval::estimate_tokens(text) as u64
}

/// A deterministic answer that shows what the model was given.
fn answer_for(model: &str, messages: &[Value]) -> String {
    let question = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(message_text)
        .unwrap_or_default();
    let question: String = question.chars().take(200).collect();
    format!(
        "Fake answer from {model} to \"{question}\" ({} messages in the prompt).",
        messages.len()
    )
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    shared.chat_completions.fetch_add(1, Ordering::SeqCst);
    *shared.last_traceparent.lock().expect("last traceparent") = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // One copy of the behaviour per call: the fake is also the benchmarks' upstream.
    let behaviour = shared.behaviour();
    if let Some(expected) = &behaviour.api_key {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if presented != Some(format!("Bearer {expected}").as_str()) {
            return error_with(
                StatusCode::UNAUTHORIZED,
                None,
                Some("Incorrect API key provided."),
                Some("invalid_api_key"),
            );
        }
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error_response(StatusCode::BAD_REQUEST, None);
    };
    let model = request["model"]
        .as_str()
        .unwrap_or("fake-model")
        .to_string();
    shared.count_model(&model);
    shared
        .call_times
        .lock()
        .expect("call times")
        .push((model.clone(), std::time::Instant::now()));
    *shared.last_request.lock().expect("last request") = request.clone();
    let fail_now = shared
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if fail_now && behaviour.applies_to(&model) {
        let status = behaviour
            .failure_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error_response(status, behaviour.retry_after_s);
    }
    if shared.down() && behaviour.applies_to(&model) {
        let status = behaviour
            .failure_status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error_response(status, behaviour.retry_after_s);
    }
    if let Some(failure) = misbehave(&behaviour, &model).await {
        return failure;
    }
    if behaviour.endless_answer && behaviour.applies_to(&model) {
        return endless_answer();
    }
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let prefilled = prefill_of(&messages).is_some();
    if prefilled && behaviour.refuse_prefill.contains(&model) {
        return error_with(
            StatusCode::BAD_REQUEST,
            None,
            Some("this model does not support assistant message prefill"),
            Some("unsupported_prefill"),
        );
    }
    let choices = fake_choices(&model, &request, &messages);
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| estimate_tokens(&message_text(m)) + 4)
        .sum();
    let completion_tokens: u64 = choices.iter().map(|c| estimate_tokens(&c.text())).sum();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    });
    let id = format!("chatcmpl-fake-{}", uuid::Uuid::new_v4().simple());
    let created = chrono::Utc::now().timestamp();
    if request["stream"].as_bool() != Some(true) {
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices.iter().enumerate().map(|(i, c)| c.plain(i)).collect::<Vec<_>>(),
            "usage": usage
        }))
        .into_response();
    }

    let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
    let model_name = model.clone();
    let cut_after = behaviour
        .cut_stream_after
        .filter(|_| behaviour.applies_to(&model));
    let chunk = move |index: usize, delta: Value, finish: Value| {
        let mut chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": null}]
        });
        // As OpenAI does: with usage asked for, every chunk carries `"usage": null` and
        // the last one, with no choices, the usage.
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let mut events: Vec<Value> = Vec::new();
    for (index, choice) in choices.iter().enumerate() {
        for (delta, finish) in choice.deltas() {
            events.push(chunk(index, delta, finish));
        }
    }
    if include_usage {
        let mut last = chunk(0, json!({}), Value::Null);
        last["choices"] = json!([]);
        last["usage"] = usage;
        events.push(last);
    }
    let stall_after = behaviour
        .stall_stream_after
        .filter(|_| behaviour.applies_to(&model_name));
    let delay = Duration::from_millis(behaviour.chunk_delay_ms);
    let malformed = if behaviour.applies_to(&model_name) {
        behaviour.malformed_chunks_at.clone()
    } else {
        Vec::new()
    };
    let stream = sse_body(
        events,
        cut_after,
        stall_after,
        delay,
        malformed,
        behaviour.omit_done,
        behaviour.spaced_stream,
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("static response parts")
}

/// A continuation request: an assistant message last, or followed by the gateway's
/// instruction to continue it. Returns the messages before it and its text.
fn prefill_of(messages: &[Value]) -> Option<(&[Value], String)> {
    let (mut last, mut before) = messages.split_last()?;
    if last["role"] == "user" && message_text(last) == CONTINUE_INSTRUCTION {
        (last, before) = before.split_last()?;
    }
    (last["role"] == "assistant").then(|| (before, message_text(last)))
}

/// Sent with every answer, as OpenAI does.
const FINGERPRINT: &str = "fp_fake";

/// One choice of a fake answer: text, or a call of the request's first tool.
enum FakeChoice {
    Text(String),
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
}

/// `n` choices (1-8); with `tools`, and unless the last message is a tool's result,
/// each choice calls the first tool with the question as its argument.
fn fake_choices(model: &str, request: &Value, messages: &[Value]) -> Vec<FakeChoice> {
    let n = request["n"].as_u64().unwrap_or(1).clamp(1, 8) as usize;
    let tool = request["tools"][0]["function"]["name"].as_str();
    let answered_by_tool = messages.last().is_some_and(|m| m["role"] == "tool");
    // A prefill: continue it, from where it stops in what would have been answered.
    let (asked, prefill) = match prefill_of(messages) {
        Some((asked, prefill)) => (asked, Some(prefill)),
        None => (messages, None),
    };
    let mut text = answer_for(model, asked);
    if let Some(prefill) = prefill {
        text = text.chars().skip(prefill.chars().count()).collect();
    }
    (0..n)
        .map(|i| match tool {
            Some(name) if !answered_by_tool => FakeChoice::ToolCall {
                id: format!("call_fake_{i}"),
                name: name.to_string(),
                arguments: json!({"question": text.len(), "choice": i}).to_string(),
            },
            _ if n > 1 => FakeChoice::Text(format!("{text} (choice {i})")),
            _ => FakeChoice::Text(text.clone()),
        })
        .collect()
}

impl FakeChoice {
    fn text(&self) -> String {
        match self {
            FakeChoice::Text(text) => text.clone(),
            FakeChoice::ToolCall { arguments, .. } => arguments.clone(),
        }
    }

    fn plain(&self, index: usize) -> Value {
        match self {
            FakeChoice::Text(text) => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": null
            }),
            FakeChoice::ToolCall {
                id,
                name,
                arguments,
            } => json!({
                "index": index,
                "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
                ]},
                "finish_reason": "tool_calls",
                "logprobs": null
            }),
        }
    }

    /// The streamed deltas: the role, the content word by word (or the call's name, then
    /// its arguments in two pieces), and the finish.
    fn deltas(&self) -> Vec<(Value, Value)> {
        match self {
            FakeChoice::Text(text) => {
                let mut out = vec![(json!({"role": "assistant", "content": ""}), Value::Null)];
                for word in text.split_inclusive(' ') {
                    out.push((json!({"content": word}), Value::Null));
                }
                out.push((json!({}), json!("stop")));
                out
            }
            FakeChoice::ToolCall {
                id,
                name,
                arguments,
            } => {
                let (head, tail) = arguments.split_at(arguments.len() / 2);
                let piece = |text: &str| json!({"tool_calls": [{"index": 0, "function": {"arguments": text}}]});
                vec![
                    (
                        json!({"role": "assistant", "content": null, "tool_calls": [
                            {"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}
                        ]}),
                        Value::Null,
                    ),
                    (piece(head), Value::Null),
                    (piece(tail), Value::Null),
                    (json!({}), json!("tool_calls")),
                ]
            }
        }
    }
}

/// The SSE body: one `data:` line per event and `[DONE]`, or an abrupt end after
/// `cut_after` content chunks (the connection closes mid-body).
fn sse_body(
    events: Vec<Value>,
    cut_after: Option<usize>,
    stall_after: Option<usize>,
    delay: Duration,
    malformed: Vec<usize>,
    omit_done: bool,
    spaced: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(
        (events.into_iter().enumerate(), false, malformed),
        move |(mut iter, done, malformed)| async move {
            if done {
                return None;
            }
            match iter.next() {
                Some((index, event)) => {
                    if cut_after.is_some_and(|n| index > n) {
                        // Let what was sent reach the client before the connection
                        // drops (hyper discards unflushed output when a body fails).
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return Some((
                            Err(std::io::Error::other("fake upstream cut the stream")),
                            (iter, true, malformed),
                        ));
                    }
                    if stall_after.is_some_and(|n| index > n) {
                        std::future::pending::<()>().await;
                    }
                    if index > 0 && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let broken = "data: {\"id\": \"chatcmpl-broken\", \"choices\": [{\"delta\n\n"
                        .repeat(malformed.iter().filter(|&&at| at == index).count());
                    let event = if spaced {
                        spaced_json(&event)
                    } else {
                        event.to_string()
                    };
                    let line = Bytes::from(format!("{broken}data: {event}\n\n"));
                    Some((Ok(line), (iter, false, malformed)))
                }
                None if omit_done => None,
                None => Some((
                    Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                    (iter, true, malformed),
                )),
            }
        },
    )
}

/// JSON as Python's `json.dumps` writes it by default: `", "` and `": "` between items
/// (what the fake streams with `spaced_stream`).
pub fn spaced_json(value: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            self.begin_array_value(writer, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
        ) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
    }
    let mut out = serde_json::Serializer::with_formatter(Vec::new(), Spaced);
    // Cannot fail: a `Value`'s keys are strings, and a `Vec` takes every write.
    let _ = serde::Serialize::serialize(value, &mut out);
    String::from_utf8(out.into_inner()).unwrap_or_default()
}

async fn embeddings(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    shared.embedding_requests.fetch_add(1, Ordering::SeqCst);
    let model = body["model"]
        .as_str()
        .unwrap_or("fake-embedding")
        .to_string();
    let behaviour = shared.behaviour();
    if let Some(failure) = misbehave(&behaviour, &model).await {
        return failure;
    }
    let dims = body["dimensions"].as_u64().unwrap_or(384) as usize;
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    };
    shared
        .embedded_texts
        .fetch_add(inputs.len(), Ordering::SeqCst);
    let embedder = OfflineEmbedder::new(dims);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embedder.vector(text)}))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": inputs.len() * 8, "total_tokens": inputs.len() * 8}
    }))
    .into_response()
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "fake"}]}),
    )
}

async fn calls(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "chat_completions": shared.chat_completions.load(Ordering::SeqCst),
        "embeddings": shared.embedding_requests.load(Ordering::SeqCst),
        "embedded_texts": shared.embedded_texts.load(Ordering::SeqCst),
        "by_model": *shared.by_model.lock().expect("model counts"),
    }))
}

async fn last_request(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.last_request.lock().expect("last request").clone())
}

async fn get_behaviour(State(shared): State<Arc<Shared>>) -> Json<Behaviour> {
    Json(shared.behaviour())
}

/// The body is JSON whatever its content type says: `curl -d '{...}'` sends
/// `application/x-www-form-urlencoded`, and steering the fake should just work.
async fn set_behaviour(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Behaviour>(&body) {
        Ok(behaviour) => {
            shared.set(behaviour.clone());
            Json(behaviour).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": format!("not a behaviour: {e}"), "type": "invalid_request_error"}})),
        )
            .into_response(),
    }
}

async fn reset(State(shared): State<Arc<Shared>>) -> Result<StatusCode, Infallible> {
    shared.set(Behaviour::default());
    shared.chat_completions.store(0, Ordering::SeqCst);
    shared.embedding_requests.store(0, Ordering::SeqCst);
    shared.embedded_texts.store(0, Ordering::SeqCst);
    shared.by_model.lock().expect("model counts").clear();
    shared.call_times.lock().expect("call times").clear();
    Ok(StatusCode::NO_CONTENT)
}

/// A fake server running inside a test process on 127.0.0.1; stops when dropped.
pub struct FakeOpenAi {
    /// `http://127.0.0.1:<port>/v1`
    pub base_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOpenAi {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base_url = format!("http://{}/v1", listener.local_addr().expect("address"));
        let router = app(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            base_url,
            shared,
            task,
        }
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.set(behaviour);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.set_behaviour(match mode {
            Mode::Normal => Behaviour::default(),
            Mode::Fail => Behaviour {
                failure_rate: 1.0,
                ..Behaviour::default()
            },
            Mode::Hang => Behaviour {
                hang: true,
                ..Behaviour::default()
            },
        });
    }

    pub fn chat_completions(&self) -> usize {
        self.shared.chat_completions.load(Ordering::SeqCst)
    }

    /// When each chat call for `model` arrived, in order.
    pub fn call_times(&self, model: &str) -> Vec<std::time::Instant> {
        self.shared
            .call_times
            .lock()
            .expect("call times")
            .iter()
            .filter(|(m, _)| m == model)
            .map(|(_, at)| *at)
            .collect()
    }

    pub fn calls_for(&self, model: &str) -> usize {
        self.shared
            .by_model
            .lock()
            .expect("model counts")
            .get(model)
            .copied()
            .unwrap_or(0)
    }

    pub fn last_request(&self) -> Value {
        self.shared
            .last_request
            .lock()
            .expect("last request")
            .clone()
    }

    /// The `traceparent` header the last chat call came with, if any.
    pub fn last_traceparent(&self) -> Option<String> {
        self.shared
            .last_traceparent
            .lock()
            .expect("last traceparent")
            .clone()
    }

    pub fn embedding_requests(&self) -> usize {
        self.shared.embedding_requests.load(Ordering::SeqCst)
    }

    pub fn embedded_texts(&self) -> usize {
        self.shared.embedded_texts.load(Ordering::SeqCst)
    }
}
