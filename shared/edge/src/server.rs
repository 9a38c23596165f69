//! The standalone HTTP server (containers, `make run`): hyper's connection handling with
//! the limits a server facing untrusted clients needs, which `axum::serve` does not set.
//!
//! - A connection must send a complete request head within `header_timeout`; the same
//!   bound closes a keep-alive connection that sends no next request (slowloris, idle).
//! - A request body must arrive within `body_timeout` (408 after it).
//! - At most `max_connections` are open; one more is answered 503 and closed at once, so
//!   the process never runs out of file descriptors and `/health` keeps answering.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// The standalone server's limits (`HTTP_*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Longest wait for a complete request head, the first or the next on a kept-alive
    /// connection (`HTTP_HEADER_TIMEOUT_MS`).
    pub header_timeout: Duration,
    /// Longest wait for a whole request body (`HTTP_BODY_TIMEOUT_MS`).
    pub body_timeout: Duration,
    /// Most connections open at once (`HTTP_MAX_CONNECTIONS`).
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// What a connection over the cap gets before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 115\r\n\r\n\
{\"error\":{\"message\":\"too many open connections; retry shortly\",\"type\":\"server_error\",\"code\":\"service_unavailable\"}}";

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in
/// progress finish (at most 30 s).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        body_deadline,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let draining = Arc::new(Semaphore::new(REFUSED_DRAINING));
    // Built once; each connection gets a clone.
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_timeout));
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors or a connection reset while queued: not fatal.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("http_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream, draining.clone()));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service =
            router
                .clone()
                .map_request(move |mut request: http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.map(axum::body::Body::new)
                });
        let mut stopped = stopped.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    _ = stopped.changed() => connection.as_mut().graceful_shutdown(),
                }
            }
            drop(slot);
        });
    }
    tracing::info!("shutting down: no new connections; waiting for requests in progress");
    let _ = stop.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(30), slots.acquire_many(all)).await;
    Ok(())
}

/// Gives the request body `limit` to arrive. A body still incomplete then fails as it
/// is read, and whatever the handler made of that failure becomes a 408 naming the limit.
async fn body_deadline(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body::Body as _;
    // No body to wait for (most GETs): no timer.
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(limit)),
        timed_out: timed_out.clone(),
    };
    let response = next
        .run(http::Request::from_parts(
            parts,
            axum::body::Body::new(body),
        ))
        .await;
    if !timed_out.load(Ordering::Relaxed) {
        return response;
    }
    let message = format!(
        "the request body did not arrive within {} ms",
        limit.as_millis()
    );
    let timeout = || crate::error::error_response(http::StatusCode::REQUEST_TIMEOUT, message);
    // The app's layers already ran on the answer being replaced: keep what they set (the
    // request id, security headers, CORS), and the request id in the body too.
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
    let mut response = replacement;
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// A request body with a deadline for its last byte.
struct DeadlineBody {
    inner: axum::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
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

/// Refused connections whose unread request is drained before the close, at most.
const REFUSED_DRAINING: usize = 64;

/// Tells a connection over the cap to come back, without parsing its request. What the
/// client is still sending is read and dropped (up to 64 KiB, within 200 ms, at most
/// `REFUSED_DRAINING` connections at a time) before the
/// close: closing with unread data resets the connection, and a client still sending a
/// body would see a broken pipe instead of the 503.
async fn refuse(mut stream: TcpStream, draining: Arc<tokio::sync::Semaphore>) {
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        let _ = stream.write_all(OVER_CAPACITY).await;
        let _ = stream.shutdown().await;
        // Bounded: under a flood of connections, the ones past this many close at once.
        let Ok(_draining) = draining.try_acquire() else {
            return;
        };
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// The client's address: the TCP peer in standalone mode, the source IP that API
/// Gateway or the function URL saw under Lambda. `None` in tests that call the router
/// directly.
pub fn client_address(request: &http::Request<axum::body::Body>) -> Option<String> {
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        return Some(peer.ip().to_string());
    }
    use lambda_http::request::RequestContext;
    match request.extensions().get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.clone(),
        RequestContext::ApiGatewayV1(ctx) => ctx.identity.source_ip.clone(),
        _ => None,
    }
}
