//! Until the backup issue lands, these routes answer JSON 501, never a fake success.

use chatkb_testing::{assert_not_implemented, context, TestDatabase};

#[tokio::test]
async fn backup_routes_answer_json_501() {
    let db = TestDatabase::sqlite();
    let router = backup::router(context("backup", &[("DATABASE_URL", &db.url)]));
    assert_not_implemented(&router, &["backup-list.json", "backup-create.json"]).await;
}
