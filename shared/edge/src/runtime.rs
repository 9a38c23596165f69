//! Runs a function's router under the Lambda runtime, or as a plain HTTP server
//! when no Lambda runtime is present (containers, Kubernetes, benchmarks).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use http_body_util::BodyExt;
use lambda_http::request::LambdaRequest;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use tower::ServiceExt;

mod threads;

pub(crate) use threads::server_thread_builder;
pub use threads::{block_on, block_on_per_core, Threads};

/// Boxed error type of the Lambda runtime.
pub type BoxError = lambda_runtime::Error;

/// Handles a non-HTTP event (an EventBridge schedule, S3 notifications) and returns its JSON result.
pub type EventHandler = Arc<
    dyn Fn(Value) -> Pin<Box<dyn Future<Output = Result<Value, BoxError>> + Send>> + Send + Sync,
>;

/// True when the process was started by a Lambda runtime (or `cargo lambda watch`).
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// True when responses should be streamed under Lambda (`LAMBDA_RESPONSE_STREAMING`): the
/// function sits behind a function URL with `InvokeMode: RESPONSE_STREAM`, so a chat
/// answer reaches the caller token by token. API Gateway HTTP APIs buffer whole
/// responses and need the default (buffered) mode.
pub(crate) fn lambda_response_streaming() -> bool {
    matches!(
        std::env::var("LAMBDA_RESPONSE_STREAMING")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// An HTTP event from API Gateway (v1 or v2), a function URL or an ALB.
pub(crate) fn is_http_event(event: &Value) -> bool {
    ["requestContext", "httpMethod", "rawPath", "routeKey"]
        .iter()
        .any(|k| event.get(k).is_some())
}

/// An EventBridge (CloudWatch Events) scheduled event.
pub fn is_scheduled_event(event: &Value) -> bool {
    event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
        || event.get("source").and_then(Value::as_str) == Some("aws.events")
}

pub use crate::server::ServerLimits;

/// Serves `router` until shutdown. `on_schedule` handles scheduled events: under Lambda
/// those EventBridge sends, in standalone mode one every `schedule_every` (containers have
/// no EventBridge: the deep check, index upkeep and backups run in-process). `limits`
/// bound the standalone server's connections.
pub async fn serve(
    router: Router,
    port: u16,
    limits: ServerLimits,
    on_schedule: Option<EventHandler>,
    schedule_every: Option<std::time::Duration>,
) -> Result<(), BoxError> {
    if in_lambda() && lambda_response_streaming() {
        if on_schedule.is_some() {
            tracing::warn!("streaming responses: only HTTP events (function URL) are handled");
        }
        let router = router.layer(axum::middleware::from_fn(send_spans_while_streaming));
        lambda_http::run_with_streaming_response_concurrent(router).await
    } else if in_lambda() {
        serve_lambda(router, on_schedule).await
    } else {
        let schedule = on_schedule
            .zip(schedule_every)
            .map(|(handler, every)| tokio::spawn(run_schedule(handler, every)));
        let served = serve_http(router, port, limits).await;
        if let Some(schedule) = schedule {
            schedule.abort();
        }
        served
    }
}

/// The standalone server's schedule: the function's scheduled event a minute after start
/// (or `every`, if shorter), then every `every`; a run that takes longer delays the next,
/// never overlaps it. (The backup function skips a run while its last backup is recent.)
pub async fn run_schedule(handler: EventHandler, every: std::time::Duration) {
    use tokio::time::{interval_at, Instant, MissedTickBehavior};
    let first = every.min(std::time::Duration::from_secs(60));
    let mut ticks = interval_at(Instant::now() + first, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let event = serde_json::json!({
            "source": "aws.events",
            "detail-type": "Scheduled Event",
            "detail": {},
        });
        match handler(event).await {
            Ok(_) => tracing::info!(
                every_secs = every.as_secs(),
                "scheduled run done (SCHEDULE_EVERY_SECS)"
            ),
            Err(err) => tracing::error!(error = %err, "scheduled run failed"),
        }
    }
}

/// A streamed invocation lasts as long as its body: once the headers are out, the spans
/// ended so far (this request's server span, earlier streams' model calls) are sent in
/// the background while it streams.
async fn send_spans_while_streaming(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    if crate::observability::traces::enabled() {
        drop(tokio::task::spawn_blocking(
            crate::observability::traces::flush,
        ));
    }
    response
}

async fn serve_http(router: Router, port: u16, limits: ServerLimits) -> Result<(), BoxError> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "listening (standalone HTTP mode)");
    crate::server::serve(listener, router, limits, shutdown_signal()).await?;
    tokio::task::spawn_blocking(crate::observability::traces::shutdown).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

async fn serve_lambda(router: Router, on_event: Option<EventHandler>) -> Result<(), BoxError> {
    // One invocation at a time, as classic Lambda delivers them; several at once where
    // `AWS_LAMBDA_MAX_CONCURRENCY` allows (the router and the handlers are shared safely).
    lambda_runtime::run_concurrent(service_fn(move |event: LambdaEvent<Value>| {
        let router = router.clone();
        let on_event = on_event.clone();
        async move { dispatch(router, on_event, event).await }
    }))
    .await
}

/// Lambda may freeze the process once an invocation returns, so its spans are sent
/// first, but never at the answer's expense: after `TRACE_FLUSH_WAIT` the invocation
/// returns and the export goes on in the background (when the process next runs).
async fn flush_traces_before_returning() {
    if !crate::observability::traces::enabled() {
        return;
    }
    let flush = tokio::task::spawn_blocking(crate::observability::traces::flush);
    if tokio::time::timeout(TRACE_FLUSH_WAIT, flush).await.is_err() {
        tracing::warn!(
            wait_ms = TRACE_FLUSH_WAIT.as_millis() as u64,
            "the trace collector is slow: spans are sent after the invocation"
        );
    }
}

/// The longest an invocation waits for its spans to be sent (a collector on the same
/// host, such as the ADOT layer, takes about a millisecond).
pub const TRACE_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Routes one Lambda event: HTTP events through the router, anything else (schedules,
/// S3 notifications) to the function's event handler; then sends the invocation's spans
/// (at most `TRACE_FLUSH_WAIT`).
pub async fn dispatch(
    router: Router,
    on_event: Option<EventHandler>,
    event: LambdaEvent<Value>,
) -> Result<Value, BoxError> {
    let result = route_event(router, on_event, event).await;
    flush_traces_before_returning().await;
    result
}

async fn route_event(
    router: Router,
    on_event: Option<EventHandler>,
    event: LambdaEvent<Value>,
) -> Result<Value, BoxError> {
    let LambdaEvent { payload, context } = event;
    if !is_http_event(&payload) {
        return match on_event {
            Some(handler) => handler(payload).await,
            None => Err("this function handles only HTTP events".into()),
        };
    }
    let request: LambdaRequest = serde_json::from_value(payload)
        .map_err(|e| format!("unsupported event: not an HTTP or scheduled event ({e})"))?;
    // The body is read whole before lambda_http converts the response (a buffered
    // invocation returns it whole anyway): its conversion holds the body across an await,
    // which needs a `Sync` body for the future to be `Send` (concurrent invocations). A
    // body that fails while being read fails the invocation; it is never cut short silently.
    let never = |never: std::convert::Infallible| -> std::io::Error { match never {} };
    let errors = ServiceExt::<lambda_http::Request>::map_err(router, never);
    let buffered = ServiceExt::<lambda_http::Request>::and_then(
        errors,
        |response: axum::response::Response| async move {
            let (parts, body) = response.into_parts();
            let collected = body.collect().await;
            let bytes = collected.map_err(std::io::Error::other)?.to_bytes();
            Ok::<_, std::io::Error>(http::Response::from_parts(
                parts,
                http_body_util::Full::new(bytes),
            ))
        },
    );
    let response = lambda_http::Adapter::from(buffered)
        .oneshot(LambdaEvent::new(request, context))
        .await?;
    Ok(serde_json::to_value(response)?)
}
