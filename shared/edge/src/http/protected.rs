//! The stack every protected route needs, applied in the only correct order: the API key
//! is checked first (401), then that key's rate limit (429, C9).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::Router;

use crate::auth::{require_api_key, ApiKeyName, ApiKeys};
use crate::error::ApiError;
use crate::resilience::limits::RateLimiter;

/// Puts `routes` behind API keys and the per-key rate limit.
pub fn protect<S>(routes: Router<S>, keys: ApiKeys, limiter: Arc<RateLimiter>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    // The last layer added runs first: authentication, then the rate limit.
    routes
        .layer(from_fn_with_state(limiter, rate_limit))
        .layer(from_fn_with_state(keys, require_api_key))
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
