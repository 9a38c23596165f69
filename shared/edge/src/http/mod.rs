//! HTTP plumbing shared by every function: request ids, logs and metrics per
//! request, JSON errors for every failure (X5), security headers and CORS (X6),
//! and a request-body limit.

#[cfg(feature = "chat")]
pub mod idempotency;
#[cfg(feature = "protected")]
pub mod protected;
pub mod request_id;
mod request_metrics;
mod security_headers;
mod trace;

#[cfg(feature = "chat")]
pub use idempotency::idempotent;
#[cfg(feature = "protected")]
pub use protected::protect;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, MethodRouter};
use axum::Router;
use http::header::{self, HeaderName};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::Instrument;

use crate::error::{error_response, ApiError};
use crate::observability::metrics::{names, EmfRecord};
use security_headers::SecurityHeadersLayer;

/// True until the first request of this process has been handled.
static COLD_START: AtomicBool = AtomicBool::new(true);

/// Request extension: whether this request is the first one of its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdStart(pub bool);

/// The shared layers' own configuration section.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The function's name, in logs and metric labels.
    pub function: String,
    /// `Some(namespace)`: a CloudWatch EMF line per request as well.
    pub emf_namespace: Option<String>,
    /// Larger request bodies get 413 before a handler runs.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS; none: no CORS headers.
    pub cors_origins: Vec<String>,
}

/// Wraps a function's routes with the shared layers. Call once per cold start.
pub fn app(routes: Router, settings: impl Into<HttpSettings>) -> Router {
    let settings: HttpSettings = settings.into();
    let observe = Arc::new(Observe {
        function: settings.function.clone(),
        emf_namespace: settings.emf_namespace.clone(),
        metrics: request_metrics::RequestMetrics::new(&settings.function),
    });
    let max_body = settings.max_body_bytes;

    let routes = routes
        .route_layer(from_fn(remember_matched_path))
        .fallback(not_found);
    // The shared layers wrap the whole router as one service (not each route), so they
    // see responses exactly as the client will, including axum's `Allow` on 405.
    Router::new().fallback_service(routes).layer(
        ServiceBuilder::new()
            .layer(from_fn_with_state(observe, observe_request))
            .layer(CatchPanicLayer::custom(|_| {
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }))
            .layer(SecurityHeadersLayer)
            .option_layer(cors(&settings.cors_origins))
            .layer(from_fn_with_state(max_body, json_errors))
            .layer(RequestBodyLimitLayer::new(max_body))
            .layer(DefaultBodyLimit::max(max_body)),
    )
}

/// A route that answers 501 until its capability lands: never a fake success.
pub fn not_implemented<S: Clone + Send + Sync + 'static>(
    capability: &'static str,
) -> MethodRouter<S> {
    any(
        move || async move { ApiError::NotImplemented(format!("{capability} is not implemented yet")) },
    )
}

/// No field accepts U+0000: PostgreSQL cannot store it in text, so an id, cursor or
/// filter holding one would reach one backend and fail on the other. Refused alike on
/// both, before any handler runs.
fn refuse_nul_in_uri(uri: &http::Uri) -> Option<Response> {
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

async fn not_found(method: Method, uri: http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

/// Copies the matched route template to the response, so the outer metrics layer can
/// label by route (`/documents/{id}`) rather than by raw path.
async fn remember_matched_path(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        response.extensions_mut().insert(matched);
    }
    response
}

struct Observe {
    function: String,
    emf_namespace: Option<String>,
    metrics: request_metrics::RequestMetrics,
}

/// The request's id (`x-request-id`, echoed on the response), then one structured log
/// line and the request metrics (X2, X3). One layer for both: each layer costs a boxed
/// service and future per request.
async fn observe_request(
    State(observe): State<Arc<Observe>>,
    mut request: Request,
    next: Next,
) -> Response {
    let (request_id, header) = request_id::assign(&mut request);
    let mut response = request_id::scope(
        request_id.clone(),
        observed(&observe, request_id, request, next),
    )
    .await;
    response
        .headers_mut()
        .insert(request_id::X_REQUEST_ID.clone(), header);
    response
}

/// The request run, logged and counted.
async fn observed(
    observe: &Observe,
    request_id: String,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let cold_start = COLD_START.swap(false, Ordering::Relaxed);
    request.extensions_mut().insert(ColdStart(cold_start));
    let method = request.method().clone();
    let aws_request_id = request
        .extensions()
        .get::<lambda_runtime::Context>()
        .map(|c| c.request_id.clone());
    let server_span = trace::server_span(&request, &request_id, cold_start);
    let span = tracing::info_span!(parent: &server_span, "request", request_id = %request_id, function = %observe.function);

    let response = next
        .run(request)
        .instrument(span)
        .instrument(server_span.clone())
        .await;

    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let key = response
        .extensions()
        .get::<crate::auth::ApiKeyName>()
        .map(|k| k.0.clone());
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let function = &observe.function;
    observe.metrics.record(&route, status, elapsed);
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    trace::finish_server_span(&server_span, &method, &route, status);
    let trace_id = crate::observability::traces::trace_id(&server_span);
    drop(server_span);
    // Our own failures are errors in the log; 501 (not built yet) and caller errors are not.
    macro_rules! log_request {
        ($level:expr) => {
            tracing::event!(
                $level,
                request_id = %request_id,
                aws_request_id = aws_request_id.as_deref(),
                function = %function,
                method = %method,
                route = %route,
                key = key.as_deref(),
                trace_id = trace_id.as_deref(),
                status,
                duration_ms,
                cold_start,
                "request completed"
            )
        };
    }
    if status >= 500 && status != 501 {
        log_request!(tracing::Level::ERROR);
    } else {
        log_request!(tracing::Level::INFO);
    }
    if let Some(namespace) = &observe.emf_namespace {
        EmfRecord::new(namespace)
            .dimension_set(&["function"])
            .dimension_set(&["function", "route"])
            .dimension("function", function)
            .dimension("route", &route)
            .property("status", status)
            .property("request_id", request_id)
            .property("cold_start", cold_start)
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

/// Turns every non-JSON error response (axum's 405, body-limit 413, extractor
/// rejections...) into the shared JSON error, keeping headers such as `Allow`.
/// Refuses a NUL in the URI first (the same layer: one boxed service less per request).
async fn json_errors(State(max_body): State<usize>, request: Request, next: Next) -> Response {
    if let Some(refused) = refuse_nul_in_uri(request.uri()) {
        return refused;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, 4096).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_string(),
        Err(_) => String::new(),
    };
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
            format!("method {method} is not allowed on {path}; allowed: {allowed}")
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

/// CORS for the configured origins only; none configured means no CORS headers.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The HTTP answer of a metrics route: this process's metrics as Prometheus text.
pub async fn exposition() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::observability::metrics::render(),
    )
        .into_response()
}
