//! Until the knowledge-base issue lands, these routes answer JSON 501, never a fake success.

use shared::testing::{assert_not_implemented, context, TestDatabase};

#[tokio::test]
async fn ingest_routes_answer_json_501() {
    let db = TestDatabase::sqlite();
    let router = ingest::router(context("ingest", &[("DATABASE_URL", &db.url)]));
    assert_not_implemented(
        &router,
        &["ingest-documents-post.json", "ingest-search.json"],
    )
    .await;
}
