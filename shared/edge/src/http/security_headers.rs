//! The security headers every response carries (X6), in one layer.
//!
//! Each set unless the handler chose its own value. One layer for all of them, not one
//! `SetResponseHeader` per header: each nested layer is one more future built and polled
//! per request.

use std::task::{Context, Poll};

use futures_util::future::{MapOk, TryFutureExt};
use http::header::{self, HeaderName};
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

/// The headers, in the order they are added (built at compile time).
const HEADERS: [(HeaderName, HeaderValue); 6] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
    (
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
    ),
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    ),
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
];

/// Adds [`HEADERS`] to every response that lacks them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SecurityHeadersLayer;

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SecurityHeaders { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SecurityHeaders<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SecurityHeaders<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(Response<ResBody>) -> Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        self.inner.call(request).map_ok(add_headers::<ResBody>)
    }
}

fn add_headers<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        headers.entry(name).or_insert(value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn every_header_is_added_unless_the_handler_set_it() {
        let handler = tower::service_fn(|request: Request<()>| async move {
            let mut response = Response::new(());
            if request.uri().path() == "/own-cache-control" {
                response
                    .headers_mut()
                    .insert("cache-control", HeaderValue::from_static("max-age=60"));
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let service = SecurityHeadersLayer.layer(handler);
        let plain = service
            .clone()
            .oneshot(Request::new(()))
            .await
            .expect("infallible");
        for (name, value) in HEADERS {
            assert_eq!(plain.headers()[&name], value, "{name}");
        }
        let own = service
            .oneshot(
                Request::builder()
                    .uri("/own-cache-control")
                    .body(())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(own.headers()["cache-control"], "max-age=60");
        assert_eq!(own.headers().get_all("cache-control").iter().count(), 1);
        assert_eq!(own.headers()["x-frame-options"], "DENY");
    }
}
