//! Until the knowledge-base issue lands, ingest routes answer JSON 501, never a fake success.

use shared::testing::{call, context, load_event, TestDatabase};

#[tokio::test]
async fn ingest_routes_answer_json_501() {
    let router = ingest::router(context(
        "ingest",
        &[("DATABASE_URL", &TestDatabase::sqlite().url)],
    ));
    for event in ["ingest-documents-post.json", "ingest-search.json"] {
        let res = call(&router, load_event(event)).await;
        assert_eq!(res.status, 501, "{event}");
        assert_eq!(res.json["error"]["code"], "not_implemented", "{event}");
    }
}
