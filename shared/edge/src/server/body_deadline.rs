//! Each connection's service: the router, with the client's address on every request and
//! a deadline for each request body (408 after it).
//!
//! A tower service whose future is a plain struct, not an axum `from_fn` layer: that
//! costs a boxed service, a boxed `Next` and a boxed future per request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tower::Service;

/// The router as one connection serves it.
#[derive(Clone)]
pub(super) struct Connection {
    pub(super) router: Router,
    pub(super) peer: SocketAddr,
    /// How long a request body has to arrive, from the request head.
    pub(super) body_timeout: Duration,
}

impl Service<http::Request<Incoming>> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = WithBodyDeadline<<Router as Service<http::Request<Body>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        // No body to wait for (most GETs): no deadline.
        let (body, timed_out) = if body.is_end_stream() {
            (Body::new(body), None)
        } else {
            let timed_out = Arc::new(AtomicBool::new(false));
            let body = DeadlineBody {
                inner: body,
                due: Instant::now() + self.body_timeout,
                deadline: None,
                timed_out: timed_out.clone(),
            };
            (Body::new(body), Some(timed_out))
        };
        WithBodyDeadline {
            inner: self.router.call(http::Request::from_parts(parts, body)),
            timed_out,
            limit: self.body_timeout,
        }
    }
}

pin_project_lite::pin_project! {
    /// The router's answer, or a 408 in its place when the body missed its deadline
    /// (whatever the handler made of the failed read).
    pub(super) struct WithBodyDeadline<F> {
        #[pin]
        inner: F,
        timed_out: Option<Arc<AtomicBool>>,
        limit: Duration,
    }
}

impl<F> Future for WithBodyDeadline<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        let missed = this
            .timed_out
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed));
        Poll::Ready(Ok(if missed {
            request_timeout(response, *this.limit)
        } else {
            response
        }))
    }
}

/// The 408 that replaces `response`. The app's layers already ran on the answer being
/// replaced: keep what they set (the request id, security headers, CORS), and the
/// request id in the body too. The connection closes after it.
fn request_timeout(response: Response, limit: Duration) -> Response {
    let message = format!(
        "the request body did not arrive within {} ms",
        limit.as_millis()
    );
    let timeout = || crate::error::error_response(http::StatusCode::REQUEST_TIMEOUT, message);
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut replacement = match request_id {
        Some(id) => crate::http::request_id::within(id, timeout),
        None => timeout(),
    };
    for (name, value) in response.headers() {
        if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            replacement
                .headers_mut()
                .entry(name)
                .or_insert(value.clone());
        }
    }
    replacement.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    replacement
}

/// A request body with a deadline for its last byte. The timer is set only when the body
/// has to be waited for: a body that came with its head needs none.
struct DeadlineBody {
    inner: Incoming,
    due: Instant,
    deadline: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(axum::Error::new)));
        }
        let due = self.due;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if deadline.as_mut().poll(cx).is_ready() {
            self.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new("request body timed out"))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
