//! Until the chat issue lands, its routes answer JSON 501, never a fake success.

use shared::testing::{call, context, load_event, TestDatabase};

#[tokio::test]
async fn chat_routes_answer_json_501() {
    let router = chat::router(context(
        "chat",
        &[("DATABASE_URL", &TestDatabase::sqlite().url)],
    ));
    for event in ["chat-completions.json", "chat-models.json"] {
        let res = call(&router, load_event(event)).await;
        assert_eq!(res.status, 501, "{event}");
        assert_eq!(res.json["error"]["code"], "not_implemented", "{event}");
        assert!(res.headers.contains_key("x-request-id"));
    }
}
