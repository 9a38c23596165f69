//! Copies the matched route template to the response, so the outer metrics layer can
//! label by route (`/documents/{id}`) rather than by raw path. A route layer: only the
//! router knows the template, and only while it routes.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy)]
pub(crate) struct RememberMatchedPathLayer;

impl<S> Layer<S> for RememberMatchedPathLayer {
    type Service = RememberMatchedPath<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RememberMatchedPath { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RememberMatchedPath<S> {
    inner: S,
}

impl<S> Service<Request> for RememberMatchedPath<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = WithMatchedPath<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        WithMatchedPath {
            matched: request.extensions().get::<MatchedPath>().cloned(),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct WithMatchedPath<F> {
        #[pin]
        inner: F,
        matched: Option<MatchedPath>,
    }
}

impl<F, E> Future for WithMatchedPath<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(matched) = this.matched.take() {
            response.extensions_mut().insert(matched);
        }
        Poll::Ready(Ok(response))
    }
}
