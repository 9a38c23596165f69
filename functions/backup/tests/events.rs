//! Until the backup issue lands, these routes answer JSON 501, never a fake success,
//! and only to a caller with an API key (issue 14: they answered anyone).

use chatkb_testing::{assert_not_implemented, call, context, TestDatabase};
use shared::auth::hash_key;

#[tokio::test]
async fn backup_routes_need_an_api_key_then_answer_json_501() {
    let db = TestDatabase::sqlite();
    let keys = format!("ops:{}", hash_key("local-dev-key"));
    let router = backup::router(context(
        "backup",
        &[("DATABASE_URL", &db.url), ("API_KEYS", &keys)],
    ));
    assert_not_implemented(&router, &["backup-list.json", "backup-create.json"]).await;
    for (method, uri) in [
        ("GET", "/backups"),
        ("POST", "/backups"),
        ("GET", "/backups/b-1"),
        ("POST", "/backups/b-1/restore"),
    ] {
        let anonymous = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = call(&router, anonymous).await;
        assert_eq!(res.status, 401, "{method} {uri}: {}", res.text);
        assert_eq!(res.json["error"]["code"], "unauthorized", "{}", res.text);
    }
}
