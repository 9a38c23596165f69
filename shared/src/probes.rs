//! `/health/live`, `/health/ready` and `/health/metrics` on every function (H1, X3),
//! outside API-key checks: a load balancer in front of a chat or ingest container asks
//! the container itself, and Prometheus scrapes each function's own metrics (they are per
//! process). Readiness fails only on what that function cannot serve without.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde_json::json;

use crate::health::{self, DependencyState};
use crate::AppContext;

/// The probes of a function; `database_required`: readiness fails while its database is
/// down (ingest, backup, health), not for chat, which answers without it (flagged).
pub fn routes(ctx: Arc<AppContext>, database_required: bool) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/metrics", get(crate::http::exposition))
        .with_state((ctx, database_required))
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// 200 while the function can serve: `ready`, or `degraded` naming an optional
/// dependency (Redis) that is down; 503 naming what it cannot serve without.
async fn ready(State((ctx, database_required)): State<(Arc<AppContext>, bool)>) -> Response {
    let checks = health::check_dependencies(&ctx).await;
    let failing = health::not_ready(&checks, ctx.settings.redis_required, database_required);
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
        let (code, kind) = crate::error::code_for(StatusCode::SERVICE_UNAVAILABLE);
        fields.insert(
            "error".into(),
            json!({"message": message, "type": kind, "code": code, "request_id": crate::http::request_id::current()}),
        );
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}
