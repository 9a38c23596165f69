//! Health function (H1, H2): thin handlers over `shared::health`.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde_json::json;
use shared::health::{self, DependencyState};
use shared::http::ColdStart;
use shared::runtime::EventHandler;
use shared::{AppContext, VERSION};

type Ctx = State<Arc<AppContext>>;

pub fn router(ctx: Arc<AppContext>) -> Router {
    let routes = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/detailed", get(detailed))
        .route("/health/metrics", get(shared::http::exposition))
        .with_state(ctx.clone());
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

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// 200 while the function can serve: `ready`, or `degraded` naming an optional
/// dependency (Redis) that is down; 503 naming what it cannot serve without.
async fn ready(State(ctx): Ctx) -> Response {
    let checks = health::check_dependencies(&ctx).await;
    let failing = health::not_ready(&checks, ctx.settings.redis_required);
    let degraded = health::failing(&checks);
    let dependencies: Vec<_> = checks
        .iter()
        .filter(|c| c.status != DependencyState::Disabled)
        .collect();
    if failing.is_empty() && degraded.is_empty() {
        return Json(json!({"status": "ready", "dependencies": dependencies})).into_response();
    }
    if failing.is_empty() {
        return Json(
            json!({"status": "degraded", "degraded": degraded, "dependencies": dependencies}),
        )
        .into_response();
    }
    // Each failing dependency with its (redacted) cause, so a fixable set-up problem
    // such as a missing extension is named in the message itself.
    let causes: Vec<String> = checks
        .iter()
        .filter(|c| failing.contains(&c.name))
        .map(|c| match &c.error {
            Some(error) => format!("{} ({error})", c.name),
            None => c.name.clone(),
        })
        .collect();
    let message = format!("not ready: {} unavailable", causes.join(", "));
    let mut body = json!({
        "status": "not_ready",
        "failing": failing,
        "dependencies": dependencies,
    });
    if let serde_json::Value::Object(fields) = &mut body {
        let (code, kind) = shared::error::code_for(StatusCode::SERVICE_UNAVAILABLE);
        fields.insert(
            "error".into(),
            json!({"message": message, "type": kind, "code": code, "request_id": shared::http::request_id::current()}),
        );
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn detailed(
    State(ctx): Ctx,
    Extension(ColdStart(cold)): Extension<ColdStart>,
) -> Json<serde_json::Value> {
    Json(health::detailed(&ctx, cold).await)
}
