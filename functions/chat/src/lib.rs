//! Chat function (C1-C10): an OpenAI-compatible gateway. A thin HTTP adapter over
//! `shared::chat`: parse, call the gateway, map the reply to headers and a body.

pub mod allocator;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::json;
use shared::auth::ApiKeyName;
use shared::chat::request::valid_session_id;
use shared::chat::{ChatGateway, Completion, ReplyMeta};
use shared::observability::metrics::names;
use shared::{ApiError, AppContext};

#[derive(Clone)]
struct Chat {
    ctx: Arc<AppContext>,
    gateway: Arc<ChatGateway>,
    /// `gateway_overhead_seconds`, kept: `histogram!` looks its key up in the registry
    /// on every call.
    overhead: metrics::Histogram,
}

pub fn router(ctx: Arc<AppContext>) -> Router {
    let services = shared::services::chat(&ctx);
    // A handle taken before the recorder is installed would count nowhere.
    shared::observability::metrics::install();
    let state = Chat {
        gateway: services.gateway,
        ctx: ctx.clone(),
        overhead: metrics::histogram!(names::GATEWAY_OVERHEAD_SECONDS),
    };
    let routes = Router::new()
        .route(
            "/v1/chat/completions",
            shared::http::idempotent(post(completions), services.idempotency),
        )
        .route("/v1/models", get(models))
        .route("/v1/metrics", get(shared::http::exposition))
        .route("/v1/usage", get(usage))
        .with_state(state);
    ctx.protected_app(routes, false)
}

#[derive(Debug, serde::Deserialize)]
struct UsageQuery {
    key: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

fn day(
    value: Option<&str>,
    name: &str,
    default: chrono::NaiveDate,
) -> Result<chrono::NaiveDate, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .or_else(|_| {
                chrono::DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&chrono::Utc).date_naive())
            })
            .map_err(|_| {
                ApiError::BadRequest(format!(
                    "`{name}` must be a date (YYYY-MM-DD) or an RFC 3339 time"
                ))
            }),
    }
}

/// `GET /v1/usage?key=&from=&to=` (C10): a key's totals over UTC days (default today).
/// A key sees its own usage only.
async fn usage(
    State(chat): State<Chat>,
    ApiKeyName(owner): ApiKeyName,
    axum::extract::Query(query): axum::extract::Query<UsageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !chat.gateway.usage().is_recording() {
        return Err(ApiError::NotFound(
            "usage is not recorded on this server (USAGE_RECORDING=false)".into(),
        ));
    }
    let key = query.key.unwrap_or_else(|| owner.to_string());
    if key != *owner {
        return Err(ApiError::NotFound(format!(
            "no usage for key `{key}` is visible to this API key"
        )));
    }
    let today = chrono::Utc::now().date_naive();
    let to = day(query.to.as_deref(), "to", today)?;
    // Without `from`, the day of `to` when that is in the past.
    let from = day(query.from.as_deref(), "from", today.min(to))?;
    if from > to {
        return Err(ApiError::BadRequest("`from` is after `to`".into()));
    }
    let totals = chat.gateway.usage().totals(&key, from, to).await?;
    Ok(Json(json!({
        "key": key,
        "from": from.to_string(),
        "to": to.to_string(),
        "requests": totals.requests,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "cached_requests": totals.cached_requests,
        "cost_usd": totals.cost_usd,
    })))
}

/// `GET /v1/models`: the configured models, in OpenAI's list shape.
async fn models(State(chat): State<Chat>) -> Json<serde_json::Value> {
    let data: Vec<_> = chat
        .gateway
        .models()
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "chatkb"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

fn wants_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|d| matches!(d.trim(), "no-cache" | "no-store"))
        })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_none_or(|m| {
            // Header values are visible ASCII (`to_str`), so any byte offset is a boundary.
            let m = m.trim();
            m.eq_ignore_ascii_case("application/json")
                || m.len() >= 5 && m[m.len() - 5..].eq_ignore_ascii_case("+json")
        })
}

/// The reply headers' names, parsed once.
const X_OVERHEAD_MS: HeaderName = HeaderName::from_static("x-overhead-ms");
const X_DEGRADED: HeaderName = HeaderName::from_static("x-degraded");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// A plain answer's body, written once into a buffer sized for a typical answer (axum's
/// `Json` starts at 128 bytes and grows, copying, three or four times per answer); an
/// answer kept as the upstream's text is copied as it is. Copied, not moved: the text has
/// spare capacity after its appends, and `Bytes` from such a `Vec` allocates again, which
/// measured about 900 instructions more per request than this copy.
fn json_answer(completion: &Completion) -> Result<Response, ApiError> {
    let mut body = Vec::with_capacity(completion.text_len().unwrap_or(1024));
    completion
        .write_json(&mut body)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut response = Response::new(Body::from(body));
    // Room for every header the reply gets on its way out (its own, the security
    // headers, the request id, the length, CORS's when configured): the map grew twice,
    // rehashing each time.
    *response.headers_mut() = HeaderMap::with_capacity(16);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The headers every chat reply carries: what was degraded, whether it came from the
/// cache, and the gateway's own time (`x-overhead-ms`, C10).
fn annotate(chat: &Chat, response: &mut Response, meta: &ReplyMeta, started: Instant) {
    let overhead = started.elapsed().saturating_sub(meta.provider_wait);
    chat.overhead.record(overhead.as_secs_f64());
    shared::observability::metrics::emf(
        &[(
            names::GATEWAY_OVERHEAD_SECONDS,
            overhead.as_secs_f64(),
            "Seconds",
        )],
        &[],
    );
    let headers = response.headers_mut();
    headers.insert(X_OVERHEAD_MS, milliseconds(overhead));
    if !meta.degraded.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&meta.degraded.join(",")) {
            headers.insert(X_DEGRADED, v);
        }
    }
    headers.insert(
        X_CACHE,
        HeaderValue::from_static(if meta.cached { "hit" } else { "miss" }),
    );
}

/// `duration` in milliseconds with three decimals (rounded to the microsecond), written
/// from integers: `format!("{:.3}")` of a float cost about 1 % of a proxied request's
/// instructions.
fn milliseconds(duration: Duration) -> HeaderValue {
    let micros = (duration.as_nanos() + 500) / 1000;
    let text = format!("{}.{:03}", micros / 1000, micros % 1000);
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("0.000"))
}

/// `POST /v1/chat/completions`, plain or streamed (C1); idempotency keys (C8) are the
/// layer's (`shared::http::idempotent`).
async fn completions(
    State(chat): State<Chat>,
    ApiKeyName(owner): ApiKeyName,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    answer(&chat, &owner, &headers, &body).await
}

/// One answer, plain or streamed.
async fn answer(
    chat: &Chat,
    owner: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType(
            "send the request as application/json".into(),
        ));
    }
    let mut request = chat.gateway.parse(body, wants_no_cache(headers))?;
    // A malformed header is refused even when the body names the session too.
    if let Some(id) = headers.get("x-session-id") {
        let id = id.to_str().unwrap_or_default();
        if !valid_session_id(id) {
            return Err(ApiError::BadRequest(
                "x-session-id must be 1-128 of A-Z a-z 0-9 - _ . :".into(),
            ));
        }
        if request.session_id.is_none() {
            request.session_id = Some(id.to_string());
        }
    }
    // One slot per answer in progress (C9); a stream holds it until it ends.
    let slot = chat.ctx.sessions.try_acquire()?;
    let (session, session_degraded) = chat.gateway.with_history(&mut request, owner).await;
    let initial: Vec<String> = session_degraded.into_iter().collect();
    if request.stream {
        let reply = chat
            .gateway
            .stream(owner, &request, session.as_ref(), initial)
            .await?;
        let body = reply.body.map(move |bytes| {
            let _held = &slot;
            Ok::<_, std::convert::Infallible>(bytes)
        });
        let mut response = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(body))
            .map_err(|e| ApiError::Internal(e.into()))?;
        annotate(chat, &mut response, &reply.meta, started);
        return Ok(response);
    }
    let reply = chat
        .gateway
        .complete(owner, &request, session.as_ref(), initial)
        .await?;
    drop(slot);
    let mut response = json_answer(&reply.answer.completion)?;
    annotate(chat, &mut response, &reply.meta, started);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overhead_is_given_in_milliseconds_to_the_microsecond() {
        let ms = |d: Duration| milliseconds(d).to_str().unwrap().to_string();
        assert_eq!(ms(Duration::ZERO), "0.000");
        assert_eq!(ms(Duration::from_micros(250)), "0.250");
        assert_eq!(ms(Duration::from_nanos(1_234_567)), "1.235");
        assert_eq!(ms(Duration::from_nanos(1_234_499)), "1.234");
        assert_eq!(ms(Duration::from_nanos(999_500)), "1.000");
        assert_eq!(ms(Duration::from_secs(12)), "12000.000");
        // As the float format wrote it, away from a half microsecond.
        for nanos in [7_u64, 81_234, 405_999, 3_000_001, 77_777_777] {
            let d = Duration::from_nanos(nanos);
            assert_eq!(ms(d), format!("{:.3}", d.as_secs_f64() * 1000.0), "{nanos}");
        }
    }

    #[test]
    fn json_media_types_are_recognised_in_any_case_and_others_refused() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_json(&headers)
        };
        assert!(
            is_json(&HeaderMap::new()),
            "no content type is taken as JSON"
        );
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ",
            "application/vnd.api+json",
            "application/problem+JSON",
        ] {
            assert!(with(json), "{json}");
        }
        for other in [
            "text/plain",
            "json",
            "application/jsonx",
            "+jso",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!with(other), "{other}");
        }
    }

    #[tokio::test]
    async fn a_plain_answer_is_its_json_with_the_json_content_type() {
        let completion =
            serde_json::json!({"id": "chatcmpl-1", "choices": [{"index": 0}], "x": "é"});
        let response = json_answer(&completion.clone().into()).unwrap();
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let read: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(read, completion);
    }

    /// An answer kept as the upstream's text goes out byte for byte as it came, with the
    /// gateway's fields appended.
    #[tokio::test]
    async fn a_kept_answer_is_written_as_the_upstream_spelled_it() {
        let upstream = r#"{"id":"c","choices":[{"message":{"content":"\u00e9 1.50"}}],"n":1.50}"#;
        let mut completion = Completion::parse(upstream.as_bytes()).unwrap();
        completion.insert("sources", json!([]));
        let response = json_answer(&completion).unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let expected = format!("{},\"sources\":[]}}", &upstream[..upstream.len() - 1]);
        assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
    }
}
