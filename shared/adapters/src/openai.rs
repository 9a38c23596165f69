//! OpenAI-compatible HTTP APIs (chat completions, embeddings) through async-openai, with
//! its built-in retries taken out: async-openai retries a refused connection three times
//! with 100-400 ms pauses (0.7 s per call, seen as 2.1 s per search with our own retries
//! on top), which no breaker sees. Our callers retry and break themselves.

use std::pin::Pin;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::Client;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::observability::redact::{redact, redact_url_credentials};
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
    let http = http_client(connect_timeout);
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
    if response.status().is_success() {
        return Ok(response);
    }
    Err(OpenAIError::Boxed(Box::new(
        upstream_status(response).await,
    )))
}

/// The pooled HTTP client of every OpenAI-compatible call.
fn http_client(connect_timeout: Duration) -> openai_http::Client {
    crate::store::tls::install_crypto_provider();
    openai_http::Client::builder()
        .connect_timeout(connect_timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(60))
        // An API answers where it is asked; following a redirect would send the key
        // and the prompt to wherever it points (and costs a layer per call).
        .redirect(openai_http::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// A non-success answer read as its status, redacted message, code and `Retry-After`.
async fn upstream_status(response: openai_http::Response) -> UpstreamStatus {
    let status = response.status();
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
    UpstreamStatus {
        status: status.as_u16(),
        message: redact(&message).into_owned(),
        code,
        retry_after,
    }
}

/// Why a call of a [`ChatEndpoint`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Status(#[from] UpstreamStatus),
    /// The request did not get an answer (connection, TLS, a body cut while read).
    #[error("{0}")]
    Network(String),
    /// The answer, or one event of a stream, is not the JSON an answer is.
    #[error("{0}")]
    Shape(String),
    /// A stream broke while it was read.
    #[error("{0}")]
    StreamCut(String),
}

/// Chunks of a streamed answer, as JSON objects.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Value, EndpointError>> + Send>>;

/// One OpenAI-compatible `/chat/completions` endpoint, called directly on the pooled
/// client: the URL parsed and the headers built once, the body serialised once, and a
/// stream's events read in the caller's task. (async-openai's request factory, URL
/// parse and stream task cost the proxy a tenth of its CPU per request.)
#[derive(Clone)]
pub struct ChatEndpoint {
    http: openai_http::Client,
    url: openai_http::Url,
    authorization: Option<openai_http::header::HeaderValue>,
}

impl std::fmt::Debug for ChatEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ChatEndpoint")
            .field("url", &redact_url_credentials(self.url.as_str()))
            .finish()
    }
}

impl ChatEndpoint {
    /// The endpoint under `base_url` (`.../v1`). Fails on a URL that does not parse.
    pub fn new(
        base_url: &str,
        api_key: Option<&Secret>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let url =
            openai_http::Url::parse(&url).map_err(|e| format!("LLM_BASE_URL is not a URL: {e}"))?;
        let authorization = match api_key {
            Some(key) => {
                let mut value =
                    openai_http::header::HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                        .map_err(|_| {
                            "LLM_API_KEY holds characters a header cannot carry".to_string()
                        })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            http: http_client(connect_timeout),
            url,
            authorization,
        })
    }

    async fn send(&self, body: &Value) -> Result<openai_http::Response, EndpointError> {
        let body = serde_json::to_vec(body).map_err(|e| EndpointError::Shape(e.to_string()))?;
        let mut request = self
            .http
            .post(self.url.clone())
            .header(openai_http::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(openai_http::header::AUTHORIZATION, authorization.clone());
        }
        // The model call's span as the provider's parent, when traces are exported.
        for (name, value) in crate::observability::traces::outgoing_headers() {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| EndpointError::Network(e.to_string()))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(upstream_status(response).await.into())
    }

    /// A whole answer (`body` with `stream: false`).
    pub async fn complete(&self, body: &Value) -> Result<Value, EndpointError> {
        let bytes = self
            .send(body)
            .await?
            .bytes()
            .await
            .map_err(|e| EndpointError::Network(e.to_string()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EndpointError::Shape(format!("the answer is not JSON: {e}")))
    }

    /// A streamed answer (`body` with `stream: true`): its events until `[DONE]` or the
    /// end of the body. An event that is not JSON is an error item; the stream goes on.
    pub async fn stream(&self, body: &Value) -> Result<EventStream, EndpointError> {
        let bytes = self.send(body).await?.bytes_stream();
        let events = eventsource_stream::EventStream::new(bytes);
        let chunks = futures_util::stream::unfold(Box::pin(events), |mut events| async move {
            loop {
                let event = match events.next().await? {
                    Ok(event) => event,
                    Err(e) => {
                        return Some((Err(EndpointError::StreamCut(e.to_string())), events));
                    }
                };
                if event.data == "[DONE]" {
                    return None;
                }
                if event.event == "keepalive" {
                    continue;
                }
                let chunk = serde_json::from_str::<Value>(&event.data)
                    .map_err(|e| EndpointError::Shape(format!("a stream event is not JSON: {e}")));
                return Some((chunk, events));
            }
        });
        Ok(Box::pin(chunks))
    }
}
