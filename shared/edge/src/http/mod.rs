//! HTTP plumbing shared by every function: request ids, logs and metrics per
//! request, JSON errors for every failure (X5), security headers and CORS (X6),
//! and a request-body limit.

#[cfg(feature = "chat")]
pub mod idempotency;
mod json_errors;
mod matched_path;
mod observe;
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

pub use observe::ColdStart;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, MethodRouter};
use axum::Router;
use http::header::{self, HeaderName};
use http::{HeaderValue, Method, StatusCode};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use crate::error::{error_response, ApiError};
use json_errors::JsonErrorsLayer;
use matched_path::RememberMatchedPathLayer;
use observe::{Observe, ObserveLayer};
use security_headers::SecurityHeadersLayer;

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
        function: settings.function.as_str().into(),
        emf_namespace: settings.emf_namespace.clone(),
        metrics: request_metrics::RequestMetrics::new(&settings.function),
    });
    let max_body = settings.max_body_bytes;

    let routes = routes
        .route_layer(RememberMatchedPathLayer)
        .fallback(not_found);
    // The shared layers wrap the whole router as one service (not each route), so they
    // see responses exactly as the client will, including axum's `Allow` on 405.
    Router::new().fallback_service(routes).layer(
        ServiceBuilder::new()
            .layer(ObserveLayer(observe))
            .layer(CatchPanicLayer::custom(|_| {
                error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }))
            .layer(SecurityHeadersLayer)
            .option_layer(cors(&settings.cors_origins))
            .layer(JsonErrorsLayer { max_body })
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

async fn not_found(method: Method, uri: http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
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
