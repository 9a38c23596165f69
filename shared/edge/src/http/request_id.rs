//! `x-request-id`: taken from the caller when well-formed, generated otherwise,
//! echoed on the response and available to errors and logs of the same request.

use axum::extract::Request;
use http::{HeaderName, HeaderValue};
use std::sync::Arc;

use crate::observability::request_scope::{self, RequestScope};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Runs `f` as part of the request `id` (for a response built outside the request's
/// own task, such as the standalone server's 408).
pub fn within<R>(id: String, f: impl FnOnce() -> R) -> R {
    let scope = RequestScope {
        id,
        function: None,
        outer: tracing::Span::current().id(),
    };
    request_scope::within(Arc::new(scope), f)
}

/// The id of the request being handled on this task, if any.
pub fn current() -> Option<String> {
    request_scope::current_id()
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

/// A request's id, as [`assign`] gave it.
pub(crate) struct Assigned {
    pub(crate) id: String,
    /// The header value to echo on the response.
    pub(crate) header: HeaderValue,
    /// The caller sent it (so it is the caller's text, redacted before it is logged).
    pub(crate) from_caller: bool,
}

/// Gives the request its id (the caller's, when well-formed, else a new one) as a header
/// and an extension.
pub(crate) fn assign(request: &mut Request) -> Assigned {
    let given = request.headers().get(&X_REQUEST_ID).and_then(accept);
    let from_caller = given.is_some();
    let id = given.unwrap_or_else(|| {
        // Encoded into a buffer: `to_string` goes through the formatting machinery.
        let mut buffer = uuid::Uuid::encode_buffer();
        uuid::Uuid::new_v4()
            .hyphenated()
            .encode_lower(&mut buffer)
            .to_owned()
    });
    let header = HeaderValue::from_str(&id).expect("request id is visible ASCII");
    request
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), header.clone());
    request.extensions_mut().insert(RequestId(id.clone()));
    Assigned {
        id,
        header,
        from_caller,
    }
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
