//! Backup function (B1-B5): thin adapters over `shared::backup` for HTTP (behind API
//! keys), the daily EventBridge schedule, on-demand events (`{"action": ...}`) and the
//! operator's command line (`backup run|list|verify|restore|prune`, in `cli`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::backup::{Backups, Quiet};
use shared::{ApiError, AppContext};

pub mod cli;

pub fn router(ctx: Arc<AppContext>) -> Router {
    let operators: Arc<[String]> = ctx.settings.backup.operator_keys.clone().into();
    let routes = Router::new()
        .route("/backups", post(create).get(list))
        .route("/backups/{id}", get(show))
        .route("/backups/{id}/verify", post(verify))
        .route("/backups/{id}/restore", post(restore))
        .route_layer(axum::middleware::from_fn_with_state(
            operators,
            operators_only,
        ))
        .with_state(ctx.backups());
    ctx.protected_app(routes, true)
}

/// Backups hold every row and a restore replaces the database: only the keys named in
/// `BACKUP_OPERATOR_KEYS` may use these routes (403 for any other valid key). The
/// schedule, events and the command line are governed by IAM and shell access instead.
async fn operators_only(
    State(operators): State<Arc<[String]>>,
    key: shared::auth::ApiKeyName,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    if operators.iter().any(|name| **name == *key.0) {
        return Ok(next.run(request).await);
    }
    Err(ApiError::Forbidden(format!(
        "the API key `{}` may not use backups: add its name to BACKUP_OPERATOR_KEYS",
        key.0
    )))
}

/// `POST /backups`: a backup now, then retention. Answers when the manifest is written.
async fn create(
    State(backups): State<Arc<Backups>>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let _: NoOptions = options(&body)?;
    let manifest = backups.run("api", &Quiet).await?;
    let retention = backups.prune().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "backup": manifest, "retention": retention })),
    ))
}

async fn list(State(backups): State<Arc<Backups>>) -> Result<Json<Value>, ApiError> {
    let found = backups.list().await?;
    Ok(Json(
        json!({ "location": backups.location(), "backups": found }),
    ))
}

async fn show(
    State(backups): State<Arc<Backups>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(backups.manifest(&id).await?)))
}

async fn verify(
    State(backups): State<Arc<Backups>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let _: NoOptions = options(&body)?;
    let report = backups.verify(&id, &Quiet).await?;
    Ok(Json(json!({ "status": "ok", "verified": report })))
}

async fn restore(
    State(backups): State<Arc<Backups>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let RestoreOptions { force } = options(&body)?;
    let report = backups.restore(&id, force, &Quiet).await?;
    Ok(Json(json!({ "status": "restored", "restored": report })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreOptions {
    /// Replace the rows of a target that is not empty.
    #[serde(default)]
    force: bool,
}

/// A JSON object of options; an empty body means the defaults. Only an object: serde
/// would also read a struct from an array (`[true]` as `{"force": true}`).
fn options<T: Default + serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object of options, like {\"force\": true}".into(),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid options: {e}")))
}

/// An on-demand invocation (`cargo lambda invoke backup --data-ascii '{"action":"list"}'`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Invocation {
    action: Action,
    /// The backup to verify or restore; `latest` (the default) is the newest good one.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Backup,
    List,
    Verify,
    Restore,
    Prune,
}

/// The EventBridge schedule takes a backup and applies retention; other events name
/// an action. A failure fails the invocation (so Lambda's retries and alarms see it).
pub fn on_event(ctx: Arc<AppContext>) -> shared::runtime::EventHandler {
    let backups = ctx.backups();
    // The standalone server's own schedule (`SCHEDULE_EVERY_SECS`) runs soon after each
    // start: a restart must not postpone the daily backup by a day, nor take one more.
    let standalone_every = ctx
        .settings
        .schedule_every
        .filter(|_| !shared::runtime::in_lambda());
    Arc::new(move |event| {
        let backups = backups.clone();
        Box::pin(async move {
            let progress = shared::backup::LogProgress { operation: "event" };
            if shared::runtime::is_scheduled_event(&event) {
                if let Some(every) = standalone_every {
                    if let Some(recent) = backups.good_within(every * 9 / 10).await? {
                        return Ok(
                            json!({ "skipped": "a good backup is recent enough", "last_good": recent }),
                        );
                    }
                }
                let manifest = backups.run("schedule", &progress).await?;
                let retention = backups.prune().await?;
                return Ok(json!({ "backup": manifest, "retention": retention }));
            }
            let call: Invocation = serde_json::from_value(event).map_err(|e| {
                format!("expected a scheduled event or {{\"action\": \"backup|list|verify|restore|prune\"}}: {e}")
            })?;
            let id = call.id.as_deref().unwrap_or("latest");
            Ok(match call.action {
                Action::Backup => {
                    let manifest = backups.run("event", &progress).await?;
                    let retention = backups.prune().await?;
                    json!({ "backup": manifest, "retention": retention })
                }
                Action::List => {
                    json!({ "location": backups.location(), "backups": backups.list().await? })
                }
                Action::Verify => json!({ "verified": backups.verify(id, &progress).await? }),
                Action::Restore => {
                    json!({ "restored": backups.restore(id, call.force, &progress).await? })
                }
                Action::Prune => json!({ "retention": backups.prune().await? }),
            })
        })
    })
}
