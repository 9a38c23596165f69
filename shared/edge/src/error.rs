//! One JSON error type for every function (X5).
//!
//! The body follows the OpenAI error shape (`{"error": {"message", "type", "code"}}`)
//! so the official SDKs surface our errors the same way as the provider's, plus the
//! request id so a caller can quote it to support.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

/// An error a handler returns; each variant maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key that may not do this (backups: `BACKUP_OPERATOR_KEYS`).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{0}")]
    NotImplemented(String),
    #[error("{message}")]
    ServiceUnavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Our own fault: the details are logged, never sent.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub(crate) struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::ServiceUnavailable {
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::TooManyRequests { retry_after, .. }
            | ApiError::ServiceUnavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

/// A store that fails is a dependency outage: 503, details logged, never sent. Data the
/// database refuses (a constraint, a value it cannot hold) is the request's fault: 422,
/// since a retry could never succeed.
impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        if let Some(reason) = err.refused_data() {
            tracing::warn!(error = %err, "the database refused the request's data");
            return ApiError::Unprocessable(format!(
                "the database refused this data ({reason}); nothing was stored"
            ));
        }
        tracing::error!(error = %err, "store failed");
        match err {
            // A set-up problem the operator can fix: say which, it holds no secret.
            crate::store::StoreError::MissingExtension(fix) => {
                ApiError::unavailable(format!("the database is unavailable: {fix}"))
            }
            crate::store::StoreError::BreakerOpen(_, retry_after) => {
                ApiError::ServiceUnavailable {
                    message: "the database is unavailable (failing repeatedly; not tried until its circuit breaker lets a trial call through)".into(),
                    retry_after: Some(retry_after),
                }
            }
            _ => ApiError::unavailable("the database is unavailable"),
        }
    }
}

// Every mapping from a capability's error to a status lives here, at the edge: the
// capabilities know nothing of HTTP.

/// An open breaker means the dependency is unavailable: 503 with `Retry-After`.
impl From<crate::resilience::BreakerOpen> for ApiError {
    fn from(e: crate::resilience::BreakerOpen) -> Self {
        ApiError::ServiceUnavailable {
            message: e.to_string(),
            retry_after: Some(e.retry_after),
        }
    }
}

/// A request over a limit: 429 with `Retry-After`.
impl From<crate::resilience::limits::LimitExceeded> for ApiError {
    fn from(e: crate::resilience::limits::LimitExceeded) -> Self {
        ApiError::TooManyRequests {
            message: e.message,
            retry_after: Some(e.retry_after),
        }
    }
}

/// The caller's document is invalid (422) or unknown (404); a failed embedder or store
/// is a dependency outage (503) with nothing stored.
#[cfg(feature = "kb")]
impl From<crate::kb::KbError> for ApiError {
    fn from(e: crate::kb::KbError) -> Self {
        use crate::kb::KbError;
        match e {
            KbError::Invalid(m) => ApiError::Unprocessable(m),
            KbError::NotFound(_) => ApiError::NotFound(e.to_string()),
            KbError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            KbError::Embedder(err) => ApiError::unavailable(format!("{err}; nothing was stored")),
            KbError::Store(err) => err.into(),
        }
    }
}

/// Backups: an unknown or malformed id (404, 400), a state that forbids the operation
/// (409: running, incomplete, a non-empty target), a backup that cannot be used (422,
/// naming the file), and a store that fails (503).
#[cfg(feature = "backup")]
impl From<crate::backup::BackupError> for ApiError {
    fn from(e: crate::backup::BackupError) -> Self {
        use crate::backup::BackupError as B;
        use crate::store::blobs::BlobError;
        match e {
            B::NotFound(_) | B::NoneYet => ApiError::NotFound(e.to_string()),
            B::BadId(m) => ApiError::BadRequest(m),
            B::Incomplete(_) | B::Busy(_) | B::NotEmpty(_) => ApiError::Conflict(e.to_string()),
            B::Incompatible(_) | B::Corrupt { .. } | B::Mismatch(_) | B::Load(..) => {
                ApiError::Unprocessable(e.to_string())
            }
            B::Store(err) => err.into(),
            // Ids are checked before any key is built: a bad key comes from a manifest.
            B::Blob(BlobError::BadKey(m)) => ApiError::Unprocessable(m),
            B::Blob(err) => {
                tracing::error!(error = %err, "backup store failed");
                ApiError::unavailable(format!("the backup store is unavailable: {err}"))
            }
            B::Snapshot(_) | B::Dynamo(_) => {
                tracing::error!(error = %e, "backup dependency failed");
                ApiError::unavailable(e.to_string())
            }
            B::Internal(m) => ApiError::Internal(anyhow::anyhow!(m)),
        }
    }
}

/// The gateway's refusals: the caller's request (400, 404, 413), the provider's refusal
/// with its status kept, and a spent budget (429 until midnight UTC).
#[cfg(feature = "chat")]
impl From<crate::chat::ChatError> for ApiError {
    fn from(e: crate::chat::ChatError) -> Self {
        use crate::chat::ChatError;
        match e {
            ChatError::Invalid(m) => ApiError::BadRequest(m),
            ChatError::UnknownModel(m) => ApiError::NotFound(m),
            ChatError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            ChatError::Refused { status, message } => match status {
                404 => ApiError::NotFound(message),
                413 => ApiError::PayloadTooLarge(message),
                422 => ApiError::Unprocessable(message),
                503 => ApiError::unavailable(message),
                _ => ApiError::BadRequest(message),
            },
            ChatError::OverBudget {
                message,
                retry_after,
            } => ApiError::TooManyRequests {
                message,
                retry_after: Some(retry_after),
            },
        }
    }
}

/// The stable machine-readable code and OpenAI-style type for a status.
pub fn code_for(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 => ("bad_request", "invalid_request_error"),
        401 => ("unauthorized", "authentication_error"),
        403 => ("forbidden", "permission_error"),
        404 => ("not_found", "invalid_request_error"),
        405 => ("method_not_allowed", "invalid_request_error"),
        408 => ("request_timeout", "invalid_request_error"),
        409 => ("conflict", "invalid_request_error"),
        413 => ("payload_too_large", "invalid_request_error"),
        415 => ("unsupported_media_type", "invalid_request_error"),
        422 => ("unprocessable_entity", "invalid_request_error"),
        429 => ("rate_limited", "rate_limit_error"),
        501 => ("not_implemented", "server_error"),
        503 => ("service_unavailable", "server_error"),
        s if s >= 500 => ("internal_error", "server_error"),
        _ => ("error", "invalid_request_error"),
    }
}

/// Builds the JSON error response for any status; used by [`ApiError`] and by the
/// layer that turns framework rejections (405, 413, bad JSON...) into the same shape.
pub fn error_response(status: StatusCode, message: String) -> Response {
    let (code, kind) = code_for(status);
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind: kind.to_string(),
            code: code.to_string(),
            request_id: crate::http::request_id::current(),
        },
    };
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(err) = &self {
            tracing::error!(error = %format!("{err:#}"), "internal error");
        }
        let mut response = error_response(status, self.public_message());
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(response: Response) -> ErrorBody {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn capability_errors_map_to_their_statuses() {
        let open = crate::resilience::BreakerOpen {
            name: "openai".into(),
            retry_after: Duration::from_secs(60),
        };
        let api: ApiError = open.into();
        assert_eq!(api.status(), 503);
        assert_eq!(api.retry_after(), Some(Duration::from_secs(60)));
        let over = crate::resilience::limits::LimitExceeded {
            message: "concurrent sessions at their limit 2".into(),
            retry_after: Duration::from_secs(1),
        };
        let api: ApiError = over.into();
        assert_eq!(api.status(), 429);
        assert_eq!(api.retry_after(), Some(Duration::from_secs(1)));
    }

    #[cfg(feature = "kb")]
    #[test]
    fn knowledge_base_errors_map_to_their_statuses() {
        let invalid: ApiError = crate::kb::KbError::Invalid("empty text".into()).into();
        assert_eq!(invalid.status(), 422);
    }

    #[cfg(feature = "chat")]
    #[test]
    fn chat_errors_map_to_their_statuses() {
        use crate::chat::ChatError;
        for (error, status) in [
            (ChatError::Invalid("bad".into()), 400),
            (ChatError::UnknownModel("no such model".into()), 404),
            (ChatError::TooLarge("too many messages".into()), 413),
            (
                ChatError::Refused {
                    status: 422,
                    message: "refused".into(),
                },
                422,
            ),
            (
                ChatError::Refused {
                    status: 400,
                    message: "context too long".into(),
                },
                400,
            ),
            (
                ChatError::Refused {
                    status: 503,
                    message: "overloaded".into(),
                },
                503,
            ),
        ] {
            assert_eq!(ApiError::from(error).status(), status);
        }
        let spent: ApiError = ChatError::OverBudget {
            message: "spent".into(),
            retry_after: Duration::from_secs(90),
        }
        .into();
        assert_eq!(spent.status(), 429);
        assert_eq!(spent.retry_after(), Some(Duration::from_secs(90)));
    }

    #[tokio::test]
    async fn every_variant_has_its_status_and_a_json_body() {
        let cases = vec![
            (ApiError::BadRequest("b".into()), 400, "bad_request"),
            (ApiError::Unauthorized("u".into()), 401, "unauthorized"),
            (ApiError::NotFound("n".into()), 404, "not_found"),
            (
                ApiError::MethodNotAllowed("m".into()),
                405,
                "method_not_allowed",
            ),
            (ApiError::Conflict("c".into()), 409, "conflict"),
            (
                ApiError::PayloadTooLarge("p".into()),
                413,
                "payload_too_large",
            ),
            (
                ApiError::UnsupportedMediaType("t".into()),
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::Unprocessable("e".into()),
                422,
                "unprocessable_entity",
            ),
            (
                ApiError::TooManyRequests {
                    message: "slow down".into(),
                    retry_after: Some(Duration::from_millis(1500)),
                },
                429,
                "rate_limited",
            ),
            (
                ApiError::NotImplemented("later".into()),
                501,
                "not_implemented",
            ),
            (ApiError::unavailable("db down"), 503, "service_unavailable"),
        ];
        for (error, status, code) in cases {
            let message = error.to_string();
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.headers()["content-type"],
                "application/json",
                "status {status}"
            );
            if status == 429 {
                assert_eq!(response.headers()["retry-after"], "2");
            }
            let body = body_of(response).await;
            assert_eq!(body.error.code, code);
            assert_eq!(body.error.message, message);
        }
    }

    #[tokio::test]
    async fn a_failed_store_is_a_503_without_details() {
        let err: ApiError =
            crate::store::StoreError::Timeout("database at db.internal:5432", 2000).into();
        let response = err.into_response();
        assert_eq!(response.status(), 503);
        let body = body_of(response).await;
        assert_eq!(body.error.code, "service_unavailable");
        assert!(
            !body.error.message.contains("db.internal"),
            "{}",
            body.error.message
        );
    }

    #[tokio::test]
    async fn internal_errors_hide_their_details() {
        let response =
            ApiError::Internal(anyhow::anyhow!("password=hunter2 at db.internal")).into_response();
        assert_eq!(response.status(), 500);
        let body = body_of(response).await;
        assert_eq!(body.error.message, "internal error");
        assert_eq!(body.error.kind, "server_error");
    }
}
