//! The chat gateway under hostile input and failing dependencies (issue 14): NUL
//! characters, a session store that refuses a write, stalled streams. Real databases,
//! the fake OpenAI server as the only stand-in.

mod support;

use std::time::Duration;

use chatkb_testing::fake_openai::{Behaviour, FakeOpenAi};
use chatkb_testing::{call, TestDatabase};
use serde_json::{json, Value};
use support::*;

/// Finding 2: a NUL in a chat turn was accepted, answered, and silently not saved on
/// PostgreSQL (SQLite kept it). Now refused alike on both, before the model is paid.
#[tokio::test]
async fn a_nul_character_in_a_chat_request_is_refused_alike_on_both_backends() {
    for db in TestDatabase::both().await {
        let fake = FakeOpenAi::start().await;
        let (router, _) = chat_router(&db, Some(&fake), &[]);
        let mut body = ask("hello\u{0}world");
        body["session_id"] = json!("nul-session");
        let res = call(&router, post(body)).await;
        assert_eq!(res.status, 400, "{:?}: {}", db.kind, res.text);
        let error: Value = serde_json::from_str(&res.text).unwrap();
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("messages[0].content contains a NUL character"),
            "{}",
            res.text
        );
        assert_eq!(
            fake.chat_completions(),
            0,
            "refused before the model is paid"
        );

        // A NUL escape the JSON parser never turns into NUL (an escaped backslash) is text.
        let mut body = ask(r"a path like C:\u0000 is fine");
        body["session_id"] = json!("nul-session");
        let res = call(&router, post(body)).await;
        assert_eq!(res.status, 200, "{:?}: {}", db.kind, res.text);
    }
}

/// A session store that fails on write: the answer is still given, and it says the
/// exchange was not recorded, plain and streamed alike, instead of a silent loss.
#[tokio::test]
async fn a_session_that_cannot_be_saved_is_flagged_on_plain_and_streamed_answers() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, ctx) = chat_router(&db, Some(&fake), &[]);
    // Reads work, every write of a message fails.
    let shared::store::Pool::Sqlite(pool) = ctx.database.pool().await.unwrap() else {
        unreachable!("a SQLite test database");
    };
    sqlx::query(
        "CREATE TRIGGER refuse_messages BEFORE INSERT ON chat_messages \
         BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END",
    )
    .execute(pool)
    .await
    .unwrap();

    let mut body = ask("Remember that my name is Ada.");
    body["session_id"] = json!("unsaved");
    body["temperature"] = json!(1.0);
    let res = call(&router, post(body.clone())).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(header(&res, "x-degraded"), Some("session-unavailable"));
    let answer: Value = serde_json::from_str(&res.text).unwrap();
    assert_eq!(answer["degraded"], "session-unavailable");

    body["stream"] = json!(true);
    let res = call(&router, post(body)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let chunks = sse_chunks(&res.text);
    let last = chunks.last().expect("chunks");
    assert_eq!(last["degraded"], "session-unavailable", "{}", res.text);
    assert_eq!(last["choices"], json!([]));
    assert!(res.text.ends_with("data: [DONE]\n\n"), "{}", res.text);
    assert!(!streamed_text(&res.text).is_empty());
}

/// Finding 3: a stream that stalls after its first chunk held its slot for ever, and
/// the breaker never heard of it. Now the idle timeout ends it with the documented
/// error event, the slot is free for the next caller, and the breaker counts it.
#[tokio::test]
async fn a_stream_that_stalls_after_its_first_chunk_is_ended_and_frees_its_slot() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, ctx) = chat_router(
        &db,
        Some(&fake),
        &[
            ("MAX_CONCURRENT_SESSIONS", "2"),
            ("LLM_STREAM_IDLE_MS", "300"),
            ("LLM_MODEL", "stall-model"),
            ("BREAKER_FAILURE_THRESHOLD", "2"),
            ("BREAKER_OPEN_SECS", "60"),
        ],
    );
    fake.set_behaviour(Behaviour {
        stall_stream_after: Some(1),
        ..Behaviour::default()
    });
    let streamed = |i: usize| {
        let mut body = ask_model("stall-model", &format!("stalled question {i}"));
        body["stream"] = json!(true);
        let router = router.clone();
        async move {
            // Without the idle timeout this would wait for ever: fail instead of hanging.
            tokio::time::timeout(Duration::from_secs(20), call(&router, post(body)))
                .await
                .expect("the stalled stream was never ended")
        }
    };
    let (first, second) = tokio::join!(streamed(1), streamed(2));
    for res in [&first, &second] {
        assert_eq!(res.status, 200, "{}", res.text);
        let chunks = sse_chunks(&res.text);
        let last = chunks.last().expect("chunks");
        assert_eq!(
            last["error"]["code"], "upstream_stream_interrupted",
            "{}",
            res.text
        );
        assert!(
            last["error"]["message"]
                .as_str()
                .unwrap()
                .contains("stalled: no chunk for 300 ms"),
            "{}",
            res.text
        );
        assert!(!res.text.contains("[DONE]"), "{}", res.text);
        assert!(
            !streamed_text(&res.text).is_empty(),
            "the first chunk was relayed"
        );
    }
    // Both failures reached the breaker, which is now open for that model.
    assert_eq!(
        ctx.breakers.get("llm:openai:stall-model").state().as_str(),
        "open"
    );
    // And both slots are free again: the next caller is answered, not refused with 429.
    fake.set_behaviour(Behaviour::default());
    let res = call(&router, post(ask_model("gpt-4o-backup", "after the stall"))).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(ctx.sessions.in_use(), 0);
}

/// The idle timeout is the longest wait for one chunk, not for the whole stream: a slow
/// but steady stream that lasts several idle timeouts is relayed whole (one timer is moved
/// on with each chunk, so a deadline left where it was would cut this one).
#[tokio::test]
async fn a_slow_steady_stream_outlasting_the_idle_timeout_is_relayed_whole() {
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (router, _) = chat_router(&db, Some(&fake), &[("LLM_STREAM_IDLE_MS", "250")]);
    fake.set_behaviour(Behaviour {
        chunk_delay_ms: 100,
        ..Behaviour::default()
    });
    let mut body = ask("A slow and steady answer, please.");
    body["stream"] = json!(true);
    body["retrieval"] = json!(false);
    let started = std::time::Instant::now();
    let res = call(&router, post(body)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert!(res.text.ends_with("data: [DONE]\n\n"), "{}", res.text);
    assert!(!res.text.contains("\"error\""), "{}", res.text);
    assert!(header(&res, "x-degraded").is_none(), "{}", res.text);
    assert!(streamed_text(&res.text).starts_with("Fake answer from gpt-4o-mini"));
    // The premise: the stream lasted more than two idle timeouts.
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

/// Finding 8: the same request re-serialised (another whitespace, another key order)
/// with the same `Idempotency-Key` got 422. It is the same request: replayed.
#[tokio::test]
async fn an_idempotent_retry_serialised_differently_is_replayed_not_refused() {
    for db in TestDatabase::both().await {
        let fake = FakeOpenAi::start().await;
        let (router, _) = chat_router(&db, Some(&fake), &[]);
        let compact = r#"{"model":"gpt-4o-mini","temperature":1.0,"messages":[{"role":"user","content":"Summarise the refund policy"}]}"#;
        let reordered = "{\n  \"messages\": [ { \"content\": \"Summarise the refund policy\", \"role\": \"user\" } ],\n  \"temperature\": 1.0,\n  \"model\": \"gpt-4o-mini\"\n}";
        let send = |body: &'static str| {
            http::Request::builder()
                .method("POST")
                .uri("/v1/chat/completions")
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .header("idempotency-key", "retry-1")
                .body(axum::body::Body::from(body))
                .unwrap()
        };
        let first = call(&router, send(compact)).await;
        assert_eq!(first.status, 200, "{}", first.text);
        let again = call(&router, send(reordered)).await;
        assert_eq!(again.status, 200, "{:?}: {}", db.kind, again.text);
        assert_eq!(header(&again, "x-idempotent-replay"), Some("true"));
        assert_eq!(again.json, first.json);
        assert_eq!(fake.chat_completions(), 1);
    }
}

/// Finding 5: with the database down, every chat request waited for a connection
/// (DATABASE_TIMEOUT_MS) before answering without passages. A breaker now opens after
/// the failures and later requests skip retrieval at once: the frozen server is offered
/// no more connections, and the answers stay flagged.
#[tokio::test]
async fn a_database_that_stops_answering_is_skipped_by_retrieval_once_its_breaker_opens() {
    use std::sync::atomic::Ordering;
    let db = TestDatabase::sqlite();
    let fake = FakeOpenAi::start().await;
    let (address, accepted) = chatkb_testing::frozen_server().await;
    let frozen = format!("postgres://postgres@{address}/frozen");
    let (router, ctx) = chat_router(
        &db,
        Some(&fake),
        &[
            ("DATABASE_URL", frozen.as_str()),
            ("DATABASE_TIMEOUT_MS", "200"),
            ("BREAKER_FAILURE_THRESHOLD", "2"),
        ],
    );
    for question in ["first question", "second question"] {
        let res = call(&router, post(ask(question))).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(header(&res, "x-degraded"), Some("retrieval-unavailable"));
    }
    let state = |ctx: &shared::AppContext| {
        ctx.breakers
            .states()
            .into_iter()
            .find(|(name, _)| name == "knowledge-base")
            .map(|(_, state)| state.as_str())
    };
    assert_eq!(state(&ctx), Some("open"));
    let offered = accepted.load(Ordering::SeqCst);
    assert!(offered > 0, "retrieval did try the database");
    for question in ["third question", "fourth question", "fifth question"] {
        let res = call(&router, post(ask(question))).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(header(&res, "x-degraded"), Some("retrieval-unavailable"));
        assert_eq!(res.json["degraded"], "retrieval-unavailable");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        offered,
        "no connection is attempted while the breaker is open"
    );
    assert_eq!(
        fake.chat_completions(),
        5,
        "every question was still answered"
    );
    // The container's own readiness, without a key: chat answers without its database
    // (flagged), so it stays in the load balancer, degraded.
    let ready = call(
        &router,
        http::Request::get("/health/ready")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.json["status"], "degraded");
    assert_eq!(ready.json["degraded"], json!(["database"]));
}
