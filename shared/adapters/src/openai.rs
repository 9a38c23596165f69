//! OpenAI-compatible HTTP APIs (chat completions, embeddings) through async-openai, with
//! its built-in retries taken out: async-openai retries a refused connection three times
//! with 100-400 ms pauses (0.7 s per call, seen as 2.1 s per search with our own retries
//! on top), which no breaker sees. Our callers retry and break themselves.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::Client;
use serde_json::Value;

use crate::observability::redact::redact;
use crate::secret::Secret;

/// An upstream error answer, read inside the HTTP service so its status, message and
/// `Retry-After` survive (async-openai's own error keeps neither the header nor the
/// status of a body that is not OpenAI-shaped).
#[derive(Debug, thiserror::Error)]
#[error("upstream answered {status}: {message}")]
pub struct UpstreamStatus {
    pub status: u16,
    /// The upstream's message, redacted.
    pub message: String,
    /// The error's `code` (`context_length_exceeded`, `content_filter`...), when given.
    pub code: Option<String>,
    pub retry_after: Option<Duration>,
}

impl UpstreamStatus {
    /// The status carried by an error of a client from [`client`], if it is one.
    pub fn from_error(err: OpenAIError) -> Result<Self, OpenAIError> {
        match err {
            OpenAIError::Boxed(boxed) => match boxed.downcast::<UpstreamStatus>() {
                Ok(status) => Ok(*status),
                Err(other) => Err(OpenAIError::Boxed(other)),
            },
            other => Err(other),
        }
    }
}

/// A client for `base_url` that makes exactly one HTTP attempt per call; non-success
/// answers come back as [`UpstreamStatus`] (see [`UpstreamStatus::from_error`]).
pub fn client(
    base_url: &str,
    api_key: Option<&Secret>,
    connect_timeout: Duration,
) -> Client<OpenAIConfig> {
    let mut config = OpenAIConfig::new().with_api_base(base_url.trim_end_matches('/'));
    if let Some(key) = api_key {
        config = config.with_api_key(key.expose());
    }
    crate::store::tls::install_crypto_provider();
    let http = openai_http::Client::builder()
        .connect_timeout(connect_timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    let service =
        tower::service_fn(move |factory: HttpRequestFactory| execute(http.clone(), factory));
    Client::with_config(config).with_http_service(service)
}

fn retry_after_header(headers: &openai_http::header::HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// async-openai's HTTP layer without its retries; non-success answers become
/// [`UpstreamStatus`].
async fn execute(
    http: openai_http::Client,
    factory: HttpRequestFactory,
) -> Result<openai_http::Response, OpenAIError> {
    let mut request = factory.build().await?;
    // The model call's span as the provider's parent, when traces are exported.
    for (name, value) in crate::observability::traces::outgoing_headers() {
        if let Ok(value) = openai_http::header::HeaderValue::from_str(&value) {
            request.headers_mut().insert(name, value);
        }
    }
    let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after_header(response.headers());
    let body = response.text().await.unwrap_or_default();
    let parsed = serde_json::from_str::<Value>(&body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let code = parsed
        .as_ref()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    Err(OpenAIError::Boxed(Box::new(UpstreamStatus {
        status: status.as_u16(),
        message: redact(&message).into_owned(),
        code,
        retry_after,
    })))
}
