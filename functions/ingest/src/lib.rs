//! Ingest function (I1-I6): HTTP adapter over `shared::kb`. Every route needs an API
//! key and counts against the key's rate limit.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::http::request_id::RequestId;
use shared::kb::store::SearchFilter;
use shared::kb::{IngestRequest, KnowledgeBase};
use shared::{ApiError, AppContext};

pub mod s3;

#[derive(Clone)]
struct Ingest {
    kb: Arc<KnowledgeBase>,
}

pub fn router(ctx: Arc<AppContext>) -> Router {
    let state = Ingest {
        kb: ctx.knowledge_base(),
    };
    let routes = Router::new()
        .route("/documents", post(create).get(list))
        .route("/documents/{id}", get(show).delete(remove))
        .route("/search", get(search))
        .route("/events", get(events))
        .with_state(state);
    ctx.protected_app(routes, true)
}

/// The handler for non-HTTP events under Lambda: the schedule (vector index
/// maintenance: bulk imports leave chunks outside the HNSW index until it runs) and S3
/// object-created events.
pub fn on_event(ctx: Arc<AppContext>) -> shared::runtime::EventHandler {
    let kb = ctx.knowledge_base();
    let s3 = s3::handler(ctx, kb.clone());
    Arc::new(move |event| {
        if !shared::runtime::is_scheduled_event(&event) {
            return s3(event);
        }
        let kb = kb.clone();
        Box::pin(async move {
            let done = kb.maintain_vector_index(true).await?;
            let dimensions: Vec<Value> = done
                .into_iter()
                .map(|(dims, outcome)| json!({"dims": dims, "maintenance": outcome}))
                .collect();
            Ok(json!({"vector_index": dimensions}))
        })
    })
}

/// One document of a JSON body.
#[derive(Debug, Deserialize)]
struct JsonDocument {
    id: Option<String>,
    title: Option<String>,
    text: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Batch {
    documents: Vec<JsonDocument>,
}

#[derive(Debug, Deserialize)]
struct TextParams {
    id: Option<String>,
    title: Option<String>,
}

/// The file name of a `Content-Disposition: attachment; filename="..."` header.
fn file_name(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_DISPOSITION)?.to_str().ok()?;
    value.split(';').find_map(|part| {
        let name = part
            .trim()
            .strip_prefix("filename=")?
            .trim()
            .trim_matches('"');
        (!name.is_empty()).then(|| name.to_string())
    })
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Parses the body into documents: `text/plain`, `text/markdown`, or JSON (one
/// document, an array, or `{"documents": [...]}`).
fn parse_documents(
    headers: &HeaderMap,
    params: TextParams,
    body: &Bytes,
) -> Result<Vec<IngestRequest>, ApiError> {
    let content_type = media_type(headers);
    match content_type.as_str() {
        "text/plain" | "text/markdown" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::BadRequest("the body is not UTF-8 text".into()))?;
            // `?id=`, else the file's name, else (in the knowledge base) the text's hash.
            // (An explicit `?id=` is validated as given; a file name that sanitises to
            // nothing falls through to the hash.)
            let id = params.id.or_else(|| {
                file_name(headers)
                    .map(|name| s3::document_id(&name))
                    .filter(|id| !id.is_empty())
            });
            Ok(vec![IngestRequest {
                id,
                title: params.title,
                text: text.to_string(),
                content_type,
                source: "http".into(),
                metadata: json!({}),
            }])
        }
        "application/json" => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
            let items: Vec<JsonDocument> = match value {
                Value::Array(_) => serde_json::from_value(value),
                Value::Object(ref o) if o.contains_key("documents") => {
                    serde_json::from_value::<Batch>(value).map(|b| b.documents)
                }
                Value::Object(_) => serde_json::from_value(value).map(|d| vec![d]),
                _ => {
                    return Err(ApiError::Unprocessable(
                        "expected a document object, an array, or {\"documents\": [...]}".into(),
                    ))
                }
            }
            .map_err(|e| ApiError::Unprocessable(format!("invalid document: {e}")))?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, d)| {
                    let text = d.text.ok_or_else(|| {
                        ApiError::Unprocessable(format!("document {}: `text` is required", i + 1))
                    })?;
                    let metadata = match d.metadata {
                        None | Some(Value::Null) => json!({}),
                        Some(Value::Object(m)) => Value::Object(m),
                        Some(_) => {
                            return Err(ApiError::Unprocessable(format!(
                                "document {}: `metadata` must be an object",
                                i + 1
                            )))
                        }
                    };
                    Ok(IngestRequest {
                        id: d.id,
                        title: d.title,
                        text,
                        content_type: "application/json".into(),
                        source: "http".into(),
                        metadata,
                    })
                })
                .collect()
        }
        "" => Err(ApiError::UnsupportedMediaType(
            "missing content-type: use text/plain, text/markdown or application/json".into(),
        )),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported content-type `{other}`: use text/plain, text/markdown or application/json"
        ))),
    }
}

async fn create(
    State(s): State<Ingest>,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    Query(params): Query<TextParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let documents = parse_documents(&headers, params, &body)?;
    if documents.is_empty() {
        return Err(ApiError::Unprocessable(
            "no documents in the request".into(),
        ));
    }
    // Sizes and counts are the knowledge base's to check (413), for every adapter alike.
    let results = s.kb.ingest_batch(documents, &request_id).await?;
    let status = if results.iter().any(|r| r.status == "created") {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "documents": results }))).into_response())
}

#[derive(Debug, Deserialize)]
struct ListParams {
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(s): State<Ingest>,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = p.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be from 1 to 100".into()));
    }
    let documents = s.kb.documents(p.cursor.as_deref(), limit).await?;
    let next_cursor = (documents.len() as i64 == limit)
        .then(|| documents.last().map(|d| d.id.clone()))
        .flatten();
    Ok(Json(
        json!({ "documents": documents, "next_cursor": next_cursor }),
    ))
}

async fn show(State(s): State<Ingest>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        serde_json::to_value(s.kb.document(&id).await?).unwrap_or(Value::Null),
    ))
}

async fn remove(
    State(s): State<Ingest>,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let version = s.kb.delete(&id, &request_id).await?;
    Ok(Json(
        json!({ "id": id, "status": "deleted", "version": version }),
    ))
}

#[derive(Debug, Deserialize)]
struct SearchParams {
    q: Option<String>,
    k: Option<usize>,
    filter: Option<String>,
}

async fn search(
    State(s): State<Ingest>,
    Query(p): Query<SearchParams>,
) -> Result<Json<Value>, ApiError> {
    let q = p.q.unwrap_or_default();
    if q.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "the query parameter `q` is required".into(),
        ));
    }
    if q.chars().count() > 2000 {
        return Err(ApiError::BadRequest(
            "`q` is longer than 2000 characters".into(),
        ));
    }
    let k = p.k.unwrap_or(5);
    if !(1..=50).contains(&k) {
        return Err(ApiError::BadRequest("k must be from 1 to 50".into()));
    }
    let filter = match p.filter.as_deref() {
        None | Some("") => None,
        Some(f) => match f.split_once(':') {
            Some((key, value))
                if !key.is_empty()
                    && key.len() <= 64
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                Some(SearchFilter {
                    key: key.into(),
                    value: value.into(),
                })
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "filter must look like key:value (key of A-Z a-z 0-9 _)".into(),
                ))
            }
        },
    };
    let response = s.kb.search(&q, k, filter.as_ref()).await?;
    Ok(Json(serde_json::to_value(response).unwrap_or(Value::Null)))
}

#[derive(Debug, Deserialize)]
struct EventParams {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn events(
    State(s): State<Ingest>,
    Query(p): Query<EventParams>,
) -> Result<Json<Value>, ApiError> {
    let after = p.after.unwrap_or(0);
    let limit = p.limit.unwrap_or(100);
    if after < 0 || !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "after must be >= 0 and limit from 1 to 500".into(),
        ));
    }
    let events = s.kb.events_after(after, limit).await?;
    let next_after = events.last().map(|e| e.seq).unwrap_or(after);
    Ok(Json(json!({ "events": events, "next_after": next_after })))
}
