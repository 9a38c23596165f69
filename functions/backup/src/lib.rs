//! Backup function (B1-B5). Until its issue lands, every route answers a JSON 501
//! rather than a fake success; like every route that reads or writes data, only to a
//! caller with an API key.

use std::sync::Arc;

use axum::Router;
use shared::http::not_implemented;
use shared::AppContext;

pub fn router(ctx: Arc<AppContext>) -> Router {
    let routes = Router::new()
        .route("/backups", not_implemented("backups"))
        .route("/backups/{id}", not_implemented("backups"))
        .route("/backups/{id}/restore", not_implemented("restore"));
    ctx.protected_app(routes, true)
}
