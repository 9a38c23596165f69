//! Every error answer is the shared JSON error (X5): axum's 405, the body limit's 413 and
//! extractor rejections come out as plain text, and are rewritten here, keeping headers
//! such as `Allow`. A NUL in the URI is refused first, in the same layer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{header, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use crate::error::{error_response, ApiError};

/// Rewrites non-JSON error answers; `max_body` is named in the 413's message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JsonErrorsLayer {
    pub(crate) max_body: usize,
}

impl<S> Layer<S> for JsonErrorsLayer {
    type Service = JsonErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JsonErrors {
            inner,
            max_body: self.max_body,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct JsonErrors<S> {
    inner: S,
    max_body: usize,
}

impl<S, B> Service<Request> for JsonErrors<S>
where
    S: Service<Request, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = JsonErrorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Some(refused) = refuse_nul_in_uri(request.uri()) {
            return JsonErrorsFuture {
                inner: None,
                asked: None,
                ready: Some(refused),
                converting: None,
            };
        }
        let asked = Asked {
            method: request.method().clone(),
            uri: request.uri().clone(),
            max_body: self.max_body,
        };
        JsonErrorsFuture {
            inner: Some(self.inner.call(request)),
            asked: Some(asked),
            ready: None,
            converting: None,
        }
    }
}

/// What the request asked, for the words of a rewritten error.
struct Asked {
    method: Method,
    uri: Uri,
    max_body: usize,
}

pin_project_lite::pin_project! {
    /// The inner answer as it is, unless it is an error that is not JSON yet: then its
    /// text is read (at most 4 KiB) and reworded.
    pub(crate) struct JsonErrorsFuture<F> {
        #[pin]
        inner: Option<F>,
        asked: Option<Asked>,
        ready: Option<Response>,
        converting: Option<BoxFuture<'static, Response>>,
    }
}

impl<F, B> Future for JsonErrorsFuture<F>
where
    F: Future<Output = Result<http::Response<B>, Infallible>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(refused) = this.ready.take() {
            return Poll::Ready(Ok(refused));
        }
        if let Some(converting) = this.converting.as_mut() {
            return converting.as_mut().poll(cx).map(Ok);
        }
        let inner = this
            .inner
            .as_mut()
            .as_pin_mut()
            .expect("polled after completion");
        let Ok(response) = ready!(inner.poll(cx));
        this.inner.set(None);
        let response = response.map(Body::new);
        if !needs_rewording(&response) {
            return Poll::Ready(Ok(response));
        }
        let asked = this.asked.take().expect("polled after completion");
        let converting = this.converting.insert(Box::pin(reword(response, asked)));
        converting.as_mut().poll(cx).map(Ok)
    }
}

/// An error status without a JSON body.
fn needs_rewording(response: &Response) -> bool {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (status.is_client_error() || status.is_server_error()) && !is_json
}

/// The shared JSON error for `response`, with its headers (`Allow`, `Retry-After`...).
async fn reword(response: Response, asked: Asked) -> Response {
    let status = response.status();
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, 4096).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_string(),
        Err(_) => String::new(),
    };
    let Asked {
        method,
        uri,
        max_body,
    } = asked;
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed: Vec<&str> = parts
                .headers
                .get_all(header::ALLOW)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .collect();
            let allowed = allowed.join(",");
            format!(
                "method {method} is not allowed on {}; allowed: {allowed}",
                uri.path()
            )
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request body is larger than the limit of {max_body} bytes")
        }
        _ if !text.is_empty() => text,
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut converted = error_response(status, message);
    for (name, value) in parts.headers.iter() {
        let empty_allow = name == header::ALLOW && value.is_empty();
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH && !empty_allow {
            converted.headers_mut().append(name.clone(), value.clone());
        }
    }
    converted.into_response()
}

/// No field accepts U+0000: PostgreSQL cannot store it in text, so an id, cursor or
/// filter holding one would reach one backend and fail on the other. Refused alike on
/// both, before any handler runs.
fn refuse_nul_in_uri(uri: &Uri) -> Option<Response> {
    let encoded_nul = |part: &str| {
        part.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%00"))
    };
    (encoded_nul(uri.path()) || uri.query().is_some_and(encoded_nul)).then(|| {
        ApiError::BadRequest(
            "the request URI contains a NUL character (%00), which no field accepts".into(),
        )
        .into_response()
    })
}
