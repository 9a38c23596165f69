//! The stack every protected route needs, applied in the only correct order: failed
//! authentications are limited per client address (429), then the API key is checked
//! (401), then that key's rate limit (429, C9).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::StatusCode;

use crate::auth::{require_api_key, ApiKeyName, ApiKeys};
use crate::error::ApiError;
use crate::resilience::limits::RateLimiter;

/// Puts `routes` behind API keys and the per-key rate limit (`None`: no per-key limit,
/// `RATE_LIMIT_ENABLED=false`); `failures` limits failed authentications per client
/// address, always.
pub fn protect<S>(
    routes: Router<S>,
    keys: ApiKeys,
    limiter: Option<Arc<RateLimiter>>,
    failures: Arc<RateLimiter>,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let guard = Arc::new(FailedAuthentications {
        blocked: moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(failures.window())
            .build(),
        limiter: failures,
    });
    // The last layer added runs first: the address guard, authentication, the rate limit.
    let routes = match limiter {
        Some(limiter) => routes.layer(from_fn_with_state(limiter, rate_limit)),
        None => routes,
    };
    routes
        .layer(from_fn_with_state(keys, require_api_key))
        .layer(from_fn_with_state(guard, limit_failed_authentications))
}

/// Failed authentications per client address: counted by `limiter` (shared through
/// Redis when configured); an address over it is refused before its key is even
/// checked, so a guesser cannot tell a right key from a wrong one until it is unblocked.
struct FailedAuthentications {
    limiter: Arc<RateLimiter>,
    /// Addresses refused, until when (this instance's view; bounded, and no entry
    /// outlives the limiter's window, the longest a refusal lasts).
    blocked: moka::future::Cache<String, Instant>,
}

impl FailedAuthentications {
    async fn blocked_for(&self, address: &str) -> Option<Duration> {
        let until = self.blocked.get(address).await?;
        until.checked_duration_since(Instant::now())
    }
}

fn too_many_failures(wait: Duration) -> Response {
    ApiError::TooManyRequests {
        message: "too many failed authentications from this address; retry later".into(),
        retry_after: Some(wait.max(Duration::from_secs(1))),
    }
    .into_response()
}

/// Runs before authentication. A request with no known client address (a router called
/// in-process) is not limited.
async fn limit_failed_authentications(
    State(guard): State<Arc<FailedAuthentications>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(address) = crate::server::client_address(&request) else {
        return next.run(request).await;
    };
    if let Some(wait) = guard.blocked_for(&address).await {
        return too_many_failures(wait);
    }
    let response = next.run(request).await;
    if response.status() != StatusCode::UNAUTHORIZED {
        return response;
    }
    // The address is logged, never the key that was presented.
    tracing::warn!(client = %address, "authentication failed");
    metrics::counter!("auth_failures_total").increment(1);
    match guard.limiter.check(&format!("authfail:{address}")).await {
        Ok(()) => response,
        Err(exceeded) => {
            tracing::warn!(client = %address, "too many failed authentications; address refused for a while");
            let until = Instant::now() + exceeded.retry_after;
            guard.blocked.insert(address, until).await;
            too_many_failures(exceeded.retry_after)
        }
    }
}

/// The per-key rate limit, run after `require_api_key` has named the caller.
async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // `protect` authenticates first, so every request here carries its key's name. Were
    // the order ever wrong, refuse rather than let every caller share one budget.
    let Some(key) = request.extensions().get::<ApiKeyName>().cloned() else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "rate limit reached before authentication: the protected-route layers are out of order"
        )));
    };
    limiter.check(&key.0).await?;
    Ok(next.run(request).await)
}
