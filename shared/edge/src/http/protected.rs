//! The stack every protected route needs, applied in the only correct order: failed
//! authentications are limited per client address (429), then the API key is checked
//! (401), then that key's rate limit (429, C9).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};

use crate::auth::{authenticate, ApiKeys};
use crate::error::ApiError;
use crate::resilience::limits::RateLimiter;

/// Puts `routes` behind API keys and the per-key rate limit (`None`: no per-key limit,
/// `RATE_LIMIT_ENABLED=false`); `failures` limits failed authentications per client
/// address, always. One layer for the three steps: each layer costs a boxed service and a
/// boxed future per request on the proxy's hot path.
pub fn protect<S>(
    routes: Router<S>,
    keys: ApiKeys,
    limiter: Option<Arc<RateLimiter>>,
    failures: Arc<RateLimiter>,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let protection = Arc::new(Protection {
        keys,
        limiter,
        failures: FailedAuthentications {
            blocked: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(failures.window())
                .build(),
            started: Instant::now(),
            last_block_ends_ms: AtomicU64::new(0),
            limiter: failures,
        },
    });
    routes.layer(ProtectLayer(protection))
}

#[derive(Clone)]
struct ProtectLayer(Arc<Protection>);

impl<S> Layer<S> for ProtectLayer {
    type Service = Protect<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Protect {
            inner,
            protection: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Protect<S> {
    inner: S,
    protection: Arc<Protection>,
}

impl<S> Service<Request> for Protect<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The checks are asynchronous (a shared limiter is in Redis): the inner service
        // that was made ready goes with the request, a clone stays for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let protection = self.protection.clone();
        Box::pin(async move { Ok(protect_request(&protection, request, inner).await) })
    }
}

/// What `protect` checks, in order.
struct Protection {
    keys: ApiKeys,
    limiter: Option<Arc<RateLimiter>>,
    failures: FailedAuthentications,
}

/// Failed authentications per client address: counted by `limiter` (shared through
/// Redis when configured); an address over it is refused before its key is even
/// checked, so a guesser cannot tell a right key from a wrong one until it is unblocked.
struct FailedAuthentications {
    limiter: Arc<RateLimiter>,
    /// Addresses refused, until when (this instance's view; bounded, and no entry
    /// outlives the limiter's window, the longest a refusal lasts).
    blocked: moka::future::Cache<String, Instant>,
    started: Instant,
    /// When the latest refusal ends, in milliseconds since `started` (rounded up): past
    /// it no address is refused, and a request skips the lookup (and writing its
    /// address out) that would otherwise cost every request one.
    last_block_ends_ms: AtomicU64,
}

impl FailedAuthentications {
    /// Whether some address may still be refused.
    fn any_blocked(&self) -> bool {
        let now_ms = self.started.elapsed().as_millis() as u64;
        now_ms < self.last_block_ends_ms.load(Ordering::Relaxed)
    }

    async fn blocked_for(&self, address: &str) -> Option<Duration> {
        let until = self.blocked.get(address).await?;
        until.checked_duration_since(Instant::now())
    }

    /// Refuses `address` until `until`.
    async fn block(&self, address: String, until: Instant) {
        let ends_ms = until.saturating_duration_since(self.started).as_millis() as u64 + 1;
        // Before the entry: a request that comes meanwhile may miss it, as one that came
        // a moment earlier would have; no request after both is let through.
        self.last_block_ends_ms
            .fetch_max(ends_ms, Ordering::Relaxed);
        self.blocked.insert(address, until).await;
    }
}

fn too_many_failures(wait: Duration) -> Response {
    ApiError::TooManyRequests {
        message: "too many failed authentications from this address; retry later".into(),
        retry_after: Some(wait.max(Duration::from_secs(1))),
    }
    .into_response()
}

/// The address guard, then the key (401), then the key's rate limit (429). A request
/// with no known client address (a router called in-process) has no address guard.
async fn protect_request<S>(protection: &Protection, mut request: Request, mut inner: S) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    if protection.failures.any_blocked() {
        if let Some(address) = crate::server::client_address(&request) {
            if let Some(wait) = protection.failures.blocked_for(&address).await {
                return too_many_failures(wait);
            }
        }
    }
    let name = match authenticate(&protection.keys, request.headers()) {
        Ok(name) => name,
        Err(refused) => {
            let response = refused.into_response();
            return match crate::server::client_address(&request) {
                Some(address) => protection.failures.count(address, response).await,
                None => response,
            };
        }
    };
    if let Some(limiter) = &protection.limiter {
        if let Err(exceeded) = limiter.check(&name.0).await {
            // The request log names the key that was limited.
            let mut refused = ApiError::from(exceeded).into_response();
            refused.extensions_mut().insert(name);
            return refused;
        }
    }
    request.extensions_mut().insert(name.clone());
    let Ok(mut response) = inner.call(request).await;
    // For the request log: which key (by name, never the key) made the request, so an
    // operator rotating a key sees who still uses the old one.
    response.extensions_mut().insert(name);
    response
}

impl FailedAuthentications {
    /// Counts a failed authentication from `address`; the 401, or a 429 once the
    /// address is over the limit.
    async fn count(&self, address: String, unauthorized: Response) -> Response {
        // The address is logged, never the key that was presented.
        tracing::warn!(client = %address, "authentication failed");
        metrics::counter!("auth_failures_total").increment(1);
        match self.limiter.check(&format!("authfail:{address}")).await {
            Ok(()) => unauthorized,
            Err(exceeded) => {
                tracing::warn!(client = %address, "too many failed authentications; address refused for a while");
                let until = Instant::now() + exceeded.retry_after;
                self.block(address, until).await;
                too_many_failures(exceeded.retry_after)
            }
        }
    }
}
