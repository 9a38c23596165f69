//! Health function (H1, H2): thin handlers over `shared::health`.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shared::health;
use shared::http::ColdStart;
use shared::runtime::EventHandler;
use shared::{AppContext, VERSION};

type Ctx = State<Arc<AppContext>>;

pub fn router(ctx: Arc<AppContext>) -> Router {
    let routes = Router::new()
        .route("/health", get(health))
        .route("/health/detailed", get(detailed))
        .with_state(ctx.clone())
        .merge(shared::probes::routes(ctx.clone(), true));
    shared::http::app(routes, &ctx.settings)
}

/// The EventBridge schedule's handler: the deep check, returned as the invocation result.
pub fn on_schedule(ctx: Arc<AppContext>) -> EventHandler {
    Arc::new(move |event| {
        let ctx = ctx.clone();
        Box::pin(async move {
            if !shared::runtime::is_scheduled_event(&event) {
                return Err("the health function handles only HTTP and scheduled events".into());
            }
            let report = health::run_deep_check(&ctx).await;
            Ok(serde_json::to_value(report)?)
        })
    })
}

/// Cheap: no dependency is touched.
async fn health(State(ctx): Ctx) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "function": ctx.settings.function, "version": VERSION}))
}

async fn detailed(
    State(ctx): Ctx,
    Extension(ColdStart(cold)): Extension<ColdStart>,
) -> Json<serde_json::Value> {
    Json(health::detailed(&ctx, cold).await)
}
