//! The outermost layer: the request's id (`x-request-id`, echoed on the response), then
//! one structured log line and the request metrics (X2, X3).
//!
//! A tower layer whose future is a plain struct, not an axum `from_fn`: that costs a
//! boxed service, a boxed `Next` and a boxed future per request and layer, on the proxy's
//! hot path (docs/benchmarks.md, "The shared layers without `from_fn`").

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use http::{HeaderValue, Method};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};
use tracing::instrument::Instrumented;
use tracing::Instrument;

use super::request_id;
use super::request_metrics::RequestMetrics;
use super::trace;
use crate::observability::logging::emit_redacted;
use crate::observability::metrics::{names, EmfRecord};
use crate::observability::redact::redact;
use crate::observability::request_scope::{self, RequestScope};

/// True until the first request of this process has been handled.
static COLD_START: AtomicBool = AtomicBool::new(true);

/// Request extension: whether this request is the first one of its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdStart(pub bool);

/// What every request is logged and counted with.
pub(crate) struct Observe {
    pub(crate) function: Arc<str>,
    pub(crate) emf_namespace: Option<String>,
    pub(crate) metrics: RequestMetrics,
}

/// Wraps a service in [`Observed`] requests.
#[derive(Clone)]
pub(crate) struct ObserveLayer(pub(crate) Arc<Observe>);

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            observe: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct ObserveService<S> {
    inner: S,
    observe: Arc<Observe>,
}

impl<S, B> Service<Request> for ObserveService<S>
where
    S: Service<Request, Response = http::Response<B>, Error = Infallible>,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let request_id::Assigned {
            id: request_id,
            header,
            from_caller,
        } = request_id::assign(&mut request);
        let started = Instant::now();
        let cold_start = COLD_START.swap(false, Ordering::Relaxed);
        request.extensions_mut().insert(ColdStart(cold_start));
        let method = request.method().clone();
        let aws_request_id = request
            .extensions()
            .get::<lambda_runtime::Context>()
            .map(|c| c.request_id.clone());
        let server_span = trace::server_span(&request, &request_id, from_caller, cold_start);
        // The request's id and function for the log lines of its events: a task-local, not
        // a span per request (`request_scope`).
        let scope = Arc::new(RequestScope {
            id: request_id.clone(),
            function: Some(self.observe.function.clone()),
            outer: tracing::Span::current().id(),
        });
        // The inner layers' own synchronous work is part of the request too: its id is
        // in the errors it builds and the logs it writes, its spans in its trace.
        let inner = request_scope::within(scope.clone(), || {
            let _server = server_span.enter();
            self.inner.call(request)
        });
        let inner = inner.instrument(server_span.clone());
        Observed {
            inner: request_scope::scope(scope, inner),
            finish: Some(Finish {
                observe: self.observe.clone(),
                request_id,
                header,
                id_from_caller: from_caller,
                started,
                cold_start,
                method,
                aws_request_id,
                server_span,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The request's future, then its log line and metrics.
    pub(crate) struct Observed<F> {
        #[pin]
        inner: TaskLocalFuture<Arc<RequestScope>, Instrumented<F>>,
        finish: Option<Finish>,
    }
}

impl<F, B> Future for Observed<F>
where
    F: Future<Output = Result<http::Response<B>, Infallible>>,
{
    type Output = Result<http::Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        let finish = this.finish.take().expect("polled after completion");
        Poll::Ready(Ok(finish.complete(response)))
    }
}

/// The request id as it may be logged or exported: a caller's is the caller's text, and
/// redacted; a generated one is the service's own.
pub(super) fn loggable_id(id: &str, from_caller: bool) -> Cow<'_, str> {
    if from_caller {
        redact(id)
    } else {
        Cow::Borrowed(id)
    }
}

/// The method as it may be logged or exported: one HTTP defines is not the caller's text;
/// any other (an extension method is any token) is redacted.
pub(super) fn loggable_method(method: &Method) -> Cow<'_, str> {
    let standard = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::TRACE,
        Method::CONNECT,
    ]
    .contains(method);
    if standard {
        Cow::Borrowed(method.as_str())
    } else {
        redact(method.as_str())
    }
}

/// What the log line and metrics need once the response is there.
pub(crate) struct Finish {
    observe: Arc<Observe>,
    request_id: String,
    header: HeaderValue,
    id_from_caller: bool,
    started: Instant,
    cold_start: bool,
    method: Method,
    aws_request_id: Option<String>,
    server_span: tracing::Span,
}

impl Finish {
    /// Logs and counts the request; echoes its id on the response.
    fn complete<B>(self, mut response: http::Response<B>) -> http::Response<B> {
        let observe = &*self.observe;
        response
            .headers_mut()
            .insert(request_id::X_REQUEST_ID.clone(), self.header);
        let route = response
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str())
            .unwrap_or("unmatched");
        let key = response
            .extensions()
            .get::<crate::auth::ApiKeyName>()
            .map(|k| &*k.0);
        let status = response.status().as_u16();
        let elapsed = self.started.elapsed();
        let function = &observe.function;
        observe.metrics.record(route, status, elapsed);
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        trace::finish_server_span(&self.server_span, &self.method, route, status);
        let trace_id = crate::observability::traces::trace_id(&self.server_span);
        drop(self.server_span);
        // The line is written without a whole-line redaction pass (`emit_redacted`): the
        // values a caller or an operator chose are redacted here, one by one. The rest are
        // the service's own: a generated id, the route's template, numbers, AWS's ids.
        let request_id = loggable_id(&self.request_id, self.id_from_caller);
        let method = loggable_method(&self.method);
        let key = key.map(redact);
        // Our own failures are errors in the log; 501 (not built yet) and caller errors are not.
        macro_rules! log_request {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    request_id = %request_id,
                    aws_request_id = self.aws_request_id.as_deref(),
                    function = %function,
                    method = %method,
                    route = %route,
                    key = key.as_deref(),
                    trace_id = trace_id.as_deref(),
                    status,
                    duration_ms,
                    cold_start = self.cold_start,
                    "request completed"
                )
            };
        }
        emit_redacted(module_path!(), || {
            if status >= 500 && status != 501 {
                log_request!(tracing::Level::ERROR);
            } else {
                log_request!(tracing::Level::INFO);
            }
        });
        if let Some(namespace) = &observe.emf_namespace {
            EmfRecord::new(namespace)
                .dimension_set(&["function"])
                .dimension_set(&["function", "route"])
                .dimension("function", function)
                .dimension("route", route)
                .property("status", status)
                .property("request_id", request_id.as_ref())
                .property("cold_start", self.cold_start)
                .metric(names::HTTP_REQUESTS_TOTAL, 1.0, "Count")
                .metric(
                    names::HTTP_REQUEST_DURATION_SECONDS,
                    elapsed.as_secs_f64(),
                    "Seconds",
                )
                .metric(
                    names::HTTP_SERVER_ERRORS_TOTAL,
                    if status >= 500 { 1.0 } else { 0.0 },
                    "Count",
                )
                .emit();
        }
        response
    }
}
