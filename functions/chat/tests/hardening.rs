//! The chat gateway under hostile input and failing dependencies (issue 14): NUL
//! characters, a session store that refuses a write, stalled streams. Real databases,
//! the fake OpenAI server as the only stand-in.

mod support;

use chatkb_testing::fake_openai::FakeOpenAi;
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
