//! What the chat gateway's HTTP tests share: a router on a fresh database in front of
//! the fake OpenAI server, request builders and SSE parsing.
#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use chatkb_testing::fake_openai::FakeOpenAi;
use chatkb_testing::{context, TestDatabase, TestResponse};
use serde_json::{json, Value};
use shared::auth::hash_key;
use shared::kb::IngestRequest;
use shared::AppContext;

pub const KEY: &str = "local-dev-key";

pub fn keys() -> String {
    format!("example:{}", hash_key(KEY))
}

/// A chat router on a fresh SQLite database, with `LLM_BASE_URL` at `fake` when given.
pub fn chat_router(
    db: &TestDatabase,
    fake: Option<&FakeOpenAi>,
    extra: &[(&str, &str)],
) -> (axum::Router, Arc<AppContext>) {
    let keys = keys();
    let mut vars: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("API_KEYS", keys.as_str()),
        ("RETRY_MAX_ATTEMPTS", "1"),
        ("LLM_MODEL", "gpt-4o-mini"),
        ("LLM_FALLBACK_MODELS", "gpt-4o-backup"),
        ("LLM_TIMEOUT_MS", "5000"),
    ];
    if let Some(fake) = fake {
        vars.push(("LLM_BASE_URL", fake.base_url.as_str()));
    }
    vars.extend_from_slice(extra);
    let ctx = context("chat", &vars);
    (chat::router(ctx.clone()), ctx)
}

pub fn post(body: Value) -> http::Request<Body> {
    post_with(body, &[])
}

pub fn post_with(body: Value, headers: &[(&str, &str)]) -> http::Request<Body> {
    let mut builder = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

pub fn ask_model(model: &str, question: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0})
}

pub fn ask(question: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}], "temperature": 0})
}

/// Two unrelated documents: one answers refund questions, the other nothing asked here.
pub async fn ingest_refund_policy_and_office_plants(ctx: &AppContext) {
    ingest(
        ctx,
        "refund-policy",
        "Refund policy",
        "Customers can ask for a refund within 30 days of delivery. Refunds go back to the original card.",
    )
    .await;
    ingest(
        ctx,
        "office-plants",
        "Office plants",
        "Water the ficus on Mondays and keep the cactus away from the radiator.",
    )
    .await;
}

pub async fn ingest(ctx: &AppContext, id: &str, title: &str, text: &str) {
    ctx.knowledge_base()
        .ingest(
            IngestRequest {
                id: Some(id.into()),
                title: Some(title.into()),
                text: text.into(),
                content_type: "text/plain".into(),
                source: "test".into(),
                metadata: json!({}),
            },
            "test",
        )
        .await
        .expect("ingest");
}

pub fn header<'a>(res: &'a TestResponse, name: &str) -> Option<&'a str> {
    res.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The chunks of an SSE body, parsed.
pub fn sse_chunks(text: &str) -> Vec<Value> {
    sse_events(text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .collect()
}

/// The text of a stream's content deltas.
pub fn streamed_text(text: &str) -> String {
    sse_chunks(text)
        .into_iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// The `data:` payloads of an SSE body.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}
