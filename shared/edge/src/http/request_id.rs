//! `x-request-id`: taken from the caller when well-formed, generated otherwise,
//! echoed on the response and available to errors and logs of the same request.

use axum::extract::Request;
use http::{HeaderName, HeaderValue};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `f` as part of the request `id` (for a response built outside the request's
/// own task, such as the standalone server's 408).
pub fn within<R>(id: String, f: impl FnOnce() -> R) -> R {
    REQUEST_ID.sync_scope(id, f)
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The request id as a request extension, for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// A caller's id is kept only if it is short and made of safe characters, so it
/// cannot forge log lines or carry personal data of arbitrary length.
fn accept(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    ok.then(|| s.to_string())
}

/// Gives the request its id (the caller's, when well-formed, else a new one) as a header
/// and an extension; returns the id and the header value to echo on the response.
pub(crate) fn assign(request: &mut Request) -> (String, HeaderValue) {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(accept)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let header = HeaderValue::from_str(&id).expect("request id is visible ASCII");
    request
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), header.clone());
    request.extensions_mut().insert(RequestId(id.clone()));
    (id, header)
}

/// Runs the rest of the request as part of request `id` (errors built inside carry it).
pub(crate) fn scoped<F: std::future::Future>(
    id: String,
    f: F,
) -> tokio::task::futures::TaskLocalFuture<String, F> {
    REQUEST_ID.scope(id, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_safe_ids() {
        assert_eq!(
            accept(&HeaderValue::from_static("abc-123_x.y:z")).as_deref(),
            Some("abc-123_x.y:z")
        );
        assert_eq!(accept(&HeaderValue::from_static("has space")), None);
        assert_eq!(accept(&HeaderValue::from_static("a\"b")), None);
        assert_eq!(
            accept(&HeaderValue::from_str(&"x".repeat(129)).unwrap()),
            None
        );
    }
}
