//! The standalone HTTP server (containers, `make run`): hyper's connection handling with
//! the limits a server facing untrusted clients needs, which `axum::serve` does not set.
//!
//! - A connection must send a complete request head within `header_timeout`; the same
//!   bound closes a keep-alive connection that sends no next request (slowloris, idle).
//! - A request body must arrive within `body_timeout` (408 after it).
//! - At most `max_connections` are open; one more is answered 503 and closed at once, so
//!   the process never runs out of file descriptors and `/health` keeps answering.

mod body_deadline;
mod shards;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

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
/// progress finish (at most 30 s). Connections are spread over `chatkb_core::shard::count()`
/// threads, this one among them (`serve_on_threads`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let threads = crate::shard::count();
    serve_on_threads(listener, router, limits, threads, shutdown).await
}

/// [`serve`] with its connections spread over `threads` threads: the caller's, and
/// `threads - 1` started here, each with its own current-thread runtime (`shards`).
pub async fn serve_on_threads(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    threads: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let draining = Arc::new(Semaphore::new(REFUSED_DRAINING));
    let (stop, stopped) = watch::channel(false);
    let serving = Serving {
        builder: http_builder(limits.header_timeout),
        router,
        body_timeout: limits.body_timeout,
        stopped,
    };
    let shards = shards::Shards::start(threads, serving)?;
    let anchor = tokio::spawn(shards::anchor_timers());
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
        shards.serve(stream, peer, slot);
    }
    tracing::info!("shutting down: no new connections; waiting for requests in progress");
    let _ = stop.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(30), slots.acquire_many(all)).await;
    anchor.abort();
    Ok(())
}

/// hyper's connection settings, built once; each connection gets a clone.
fn http_builder(header_timeout: Duration) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_timeout));
    builder
}

/// What every connection is served with, on whichever thread it runs.
#[derive(Clone)]
pub(crate) struct Serving {
    builder: Builder<TokioExecutor>,
    router: Router,
    body_timeout: Duration,
    /// Turns true at shutdown: each connection finishes its request and closes.
    stopped: watch::Receiver<bool>,
}

impl Serving {
    /// Serves one connection until it closes, or until shutdown lets its request finish;
    /// `slot` (its place under the connection cap) and `open` (its count on its thread)
    /// are freed when it ends.
    async fn connection(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        open: shards::Open,
    ) {
        let Self {
            builder,
            router,
            body_timeout,
            mut stopped,
        } = self;
        let service = body_deadline::Connection {
            router,
            peer,
            body_timeout,
        };
        let connection = builder.serve_connection_with_upgrades(
            TokioIo::new(stream),
            TowerToHyperService::new(service),
        );
        let mut connection = std::pin::pin!(connection);
        // Told once: after the stop the connection is only awaited. Once the stop's sender
        // is gone `changed` fails at every call, and awaiting it again would poll the
        // connection in a loop until its request ended.
        let mut told = false;
        loop {
            tokio::select! {
                _ = connection.as_mut() => break,
                _ = stopped.changed(), if !told => {
                    told = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
        drop((slot, open));
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
