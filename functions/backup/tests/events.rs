//! Until the backup issue lands, backup routes answer JSON 501, never a fake success.

use shared::testing::{call, context, load_event, TestDatabase};

#[tokio::test]
async fn backup_routes_answer_json_501() {
    let router = backup::router(context(
        "backup",
        &[("DATABASE_URL", &TestDatabase::sqlite().url)],
    ));
    for event in ["backup-list.json", "backup-create.json"] {
        let res = call(&router, load_event(event)).await;
        assert_eq!(res.status, 501, "{event}");
        assert_eq!(res.json["error"]["code"], "not_implemented", "{event}");
    }
}
