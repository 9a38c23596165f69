//! Idempotency keys (C8) as a layer any protected route can wear: the first completed
//! answer to `Idempotency-Key` is stored and replayed for repeats (streams whole); a repeat
//! while the first is in progress gets 409, one with another body 422; an error or a
//! degraded first answer frees the key, so a retry can get the real answer later.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use futures_util::future::{BoxFuture, Either, Ready};
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use tower::{Layer, Service};

use crate::auth::ApiKeyName;
use crate::chat::idempotency::{self, Begin, IdempotencyStore, StoredResponse};
use crate::error::ApiError;
use crate::observability::traces::db_span;
use tracing::Instrument;

/// `route` with idempotency keys honoured. Put it behind `protect`, which names the
/// caller: keys belong to the API key that used them. A route layer: a method the route
/// does not serve still gets its plain 405, whatever the headers.
pub fn idempotent<S>(route: MethodRouter<S>, store: Arc<dyn IdempotencyStore>) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    route.route_layer(IdempotentLayer(store))
}

#[derive(Clone)]
struct IdempotentLayer(Arc<dyn IdempotencyStore>);

impl<S> Layer<S> for IdempotentLayer {
    type Service = Idempotent<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotent {
            inner,
            store: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Idempotent<S> {
    inner: S,
    store: Arc<dyn IdempotencyStore>,
}

type Answer = Result<Response, Infallible>;

impl<S> Service<Request> for Idempotent<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    /// A request without a key goes straight through, with nothing boxed.
    type Future = Either<S::Future, Either<Ready<Answer>, BoxFuture<'static, Answer>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let key = match idempotency_key(request.headers()) {
            Ok(Some(key)) => key,
            Ok(None) => return Either::Left(self.inner.call(request)),
            Err(refused) => {
                return Either::Right(Either::Left(futures_util::future::ready(Ok(
                    refused.into_response()
                ))))
            }
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let store = self.store.clone();
        Either::Right(Either::Right(Box::pin(async move {
            Ok(idempotent_call(store, key, request, inner)
                .await
                .into_response())
        })))
    }
}

async fn idempotent_call<S>(
    store: Arc<dyn IdempotencyStore>,
    key: String,
    request: Request,
    mut inner: S,
) -> Result<Response, ApiError>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let Some(owner) = request.extensions().get::<ApiKeyName>().cloned() else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "idempotency keys on a route that is not behind `protect`"
        )));
    };
    let key = format!("{}#{key}", owner.0);
    let (parts, body) = request.into_parts();
    // The shared body limit bounds what can be read here. Its refusal, like any other
    // failed read, goes back as a plain status for the JSON-error layer to word as it
    // does for every route (413 names the limit).
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(err) if is_over_limit(&err) => return Ok(StatusCode::PAYLOAD_TOO_LARGE.into_response()),
        Err(_) => return Ok(StatusCode::BAD_REQUEST.into_response()),
    };
    let span = db_span(store.db_system(), "INSERT", "idempotency_records");
    let begun = store
        .begin(&key, &idempotency::payload_hash(&body))
        .instrument(span)
        .await;
    match begun {
        Ok(Begin::Started) => {}
        Ok(Begin::InProgress) => {
            return Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still in progress; retry it shortly".into(),
            ))
        }
        Ok(Begin::Completed(stored)) => return Ok(replay(stored)),
        Ok(Begin::Mismatch) => {
            return Err(ApiError::Unprocessable(
                "this Idempotency-Key was already used with a different request body".into(),
            ))
        }
        Err(err) => {
            tracing::error!(error = %err, "idempotency store unavailable");
            return Err(ApiError::unavailable(
                "the idempotency store is unavailable; retry, or send the request without an Idempotency-Key",
            ));
        }
    }
    let Ok(response) = inner
        .call(Request::from_parts(parts, Body::from(body)))
        .await;
    // Only a real answer is kept: an error or a degraded answer frees the key, so a
    // retry with it can get the model's answer once the provider is back.
    if !response.status().is_success() || response.headers().contains_key("x-degraded") {
        if let Err(err) = store.release(&key).await {
            tracing::warn!(error = %err, "idempotency key not released");
        }
        return Ok(response);
    }
    keep(store, key, response).await
}

/// Stores a successful answer for replay: a stream as it passes, a whole body at once.
async fn keep(
    store: Arc<dyn IdempotencyStore>,
    key: String,
    response: Response,
) -> Result<Response, ApiError> {
    let replay_headers = replayable_headers(&response);
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (parts, body) = response.into_parts();
    if is_stream {
        let recorded = idempotency::record_stream(
            body.into_data_stream()
                .filter_map(|chunk| async move { chunk.ok() })
                .boxed(),
            store,
            key,
            replay_headers,
        );
        let body = Body::from_stream(recorded.map(Ok::<_, std::convert::Infallible>));
        return Ok(Response::from_parts(parts, body));
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        content_type: "application/json".into(),
        headers: replay_headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    let span = db_span(store.db_system(), "UPDATE", "idempotency_records");
    if let Err(err) = store.complete(&key, &stored).instrument(span).await {
        tracing::warn!(error = %err, "idempotency record not completed");
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// Whether reading the body failed on the body-size limit.
fn is_over_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The caller's `Idempotency-Key`. (Not `x-request-id`: the shared layer generates one for
/// every request, which would turn every request into a stored record.)
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if idempotency::valid_key(key) => Ok(Some(key.to_string())),
        _ => Err(ApiError::BadRequest(
            "Idempotency-Key must be 1-255 visible ASCII characters".into(),
        )),
    }
}

/// A stored response, sent again.
fn replay(stored: StoredResponse) -> Response {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK))
        .header(header::CONTENT_TYPE, stored.content_type)
        .header("x-idempotent-replay", "true")
        .body(Body::from(stored.body))
        .unwrap_or_default();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Headers of an answer worth replaying with it.
fn replayable_headers(response: &Response) -> Vec<(String, String)> {
    ["x-degraded", "x-cache"]
        .iter()
        .filter_map(|name| {
            response
                .headers()
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (name.to_string(), v.to_string()))
        })
        .collect()
}
