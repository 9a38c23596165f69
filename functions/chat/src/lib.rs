//! Chat function (C1-C10): an OpenAI-compatible gateway. Until its issue lands,
//! every route answers a JSON 501 rather than a fake success.

use std::sync::Arc;

use axum::Router;
use shared::http::not_implemented;
use shared::AppContext;

pub fn router(ctx: Arc<AppContext>) -> Router {
    let routes = Router::new()
        .route("/v1/chat/completions", not_implemented("chat completions"))
        .route("/v1/models", not_implemented("model listing"))
        .route("/v1/usage", not_implemented("usage reporting"));
    shared::http::app(routes, &ctx.settings)
}
