//! The request a task is handling: its id and function, for the errors it builds and the
//! log lines of the events inside it.
//!
//! A task-local rather than a `tracing` span per request: the span cost about 7,800
//! instructions per request (opened, its fields written as JSON, entered at every poll,
//! closed), and the log lines print the same `"span":{"request_id":...}` object from
//! this (docs/benchmarks.md, "The request log line redacted field by field, and no span
//! per request").

use std::future::Future;
use std::sync::Arc;

use tokio::task::futures::TaskLocalFuture;

/// What the log lines of a request's events carry.
#[derive(Debug)]
pub struct RequestScope {
    pub id: String,
    /// The function serving it; `None` where a response is built outside the request.
    pub function: Option<Arc<str>>,
    /// The span current when the request began (under Lambda, the runtime's invocation
    /// span): an event in it, and in no span of the request's own, names the request.
    pub outer: Option<tracing::span::Id>,
}

tokio::task_local! {
    static CURRENT: Arc<RequestScope>;
}

/// Runs the rest of the request (`future`) inside `scope`.
pub fn scope<F: Future>(
    scope: Arc<RequestScope>,
    future: F,
) -> TaskLocalFuture<Arc<RequestScope>, F> {
    CURRENT.scope(scope, future)
}

/// Runs `f` inside `scope` (a request's synchronous work, or a response built outside
/// the request's own task).
pub fn within<R>(scope: Arc<RequestScope>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(scope, f)
}

/// The request being handled on this task, if any.
pub fn current() -> Option<Arc<RequestScope>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// The id of the request being handled on this task, if any.
pub fn current_id() -> Option<String> {
    CURRENT.try_with(|scope| scope.id.clone()).ok()
}

/// Calls `f` with the current request, if any, without cloning it.
pub(crate) fn with_current<R>(f: impl FnOnce(&RequestScope) -> R) -> Option<R> {
    CURRENT.try_with(|scope| f(scope)).ok()
}
