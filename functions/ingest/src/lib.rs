//! Ingest function (I1-I6): the knowledge base. Until its issue lands, every route
//! answers a JSON 501 rather than a fake success.

use std::sync::Arc;

use axum::Router;
use shared::http::not_implemented;
use shared::AppContext;

pub fn router(ctx: Arc<AppContext>) -> Router {
    let routes = Router::new()
        .route("/documents", not_implemented("document ingestion"))
        .route("/documents/{id}", not_implemented("document ingestion"))
        .route("/search", not_implemented("search"))
        .route("/events", not_implemented("the document event log"));
    shared::http::app(routes, &ctx.settings)
}
