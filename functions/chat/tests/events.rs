//! Until the chat issue lands, these routes answer JSON 501, never a fake success.

use shared::testing::{assert_not_implemented, context, TestDatabase};

#[tokio::test]
async fn chat_routes_answer_json_501() {
    let db = TestDatabase::sqlite();
    let router = chat::router(context("chat", &[("DATABASE_URL", &db.url)]));
    assert_not_implemented(&router, &["chat-completions.json", "chat-models.json"]).await;
}
