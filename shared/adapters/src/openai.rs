//! OpenAI-compatible HTTP APIs (chat completions, embeddings) through async-openai, with
//! its built-in retries taken out: async-openai retries a refused connection three times
//! with 100-400 ms pauses (0.7 s per call, seen as 2.1 s per search with our own retries
//! on top), which no breaker sees. Our callers retry and break themselves.

mod roots;
mod transport;

use std::pin::Pin;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::Client;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyDataStream;
use hyper_util::client::proxy::matcher::Matcher;
use serde_json::Value;
use transport::Transport;

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

/// The pooled reqwest client of the embeddings calls, and of chat calls through a proxy.
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
    let status = response.status().as_u16();
    let retry_after = retry_after_header(response.headers());
    let body = http::Response::from(response).into_body();
    let body = transport::read_prefix(http_body_util::Either::Right(body), MAX_ERROR_BODY_BYTES);
    status_of(status, retry_after, &body.await)
}

/// The status, redacted message and code of an error answer's body.
fn status_of(status: u16, retry_after: Option<Duration>, body: &[u8]) -> UpstreamStatus {
    let body = String::from_utf8_lossy(body);
    let parsed = serde_json::from_str::<Value>(&body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let code = parsed
        .as_ref()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    UpstreamStatus {
        status,
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

/// The events of a streamed answer, each read by the caller's parse step.
pub type EventStream<T = StreamEvent> =
    Pin<Box<dyn Stream<Item = Result<T, EndpointError>> + Send>>;

/// How a stream's event becomes its item: given the event's `data` text (one JSON
/// object; several `data:` lines are joined by line feeds, as the SSE specification
/// says), the item, or why the text is not JSON.
pub type ParseEvent<T> = fn(String) -> Result<T, String>;

/// One chunk of a streamed answer: parsed, and as the upstream wrote it, so a relay can
/// pass an unchanged chunk on without serialising it again.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    pub chunk: Value,
    /// The event's `data` text.
    pub data: String,
}

impl StreamEvent {
    /// The event's text parsed as any JSON value.
    pub fn parse(data: String) -> Result<Self, String> {
        match serde_json::from_str(&data) {
            Ok(chunk) => Ok(Self { chunk, data }),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// One OpenAI-compatible `/chat/completions` endpoint, called directly on the pooled
/// client: the URL parsed and the headers built once, the body serialised once, and a
/// stream's events read in the caller's task. (async-openai's request factory, URL
/// parse and stream task cost the proxy a tenth of its CPU per request; reqwest's
/// redirect layer another 4.5 %, see [`transport`].)
#[derive(Clone)]
pub struct ChatEndpoint {
    http: Transport,
    url: http::Uri,
    authorization: Option<http::HeaderValue>,
}

impl std::fmt::Debug for ChatEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ChatEndpoint")
            .field("url", &redact_url_credentials(&self.url.to_string()))
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
        Self::with_roots(base_url, api_key, connect_timeout, Vec::new())
    }

    /// As [`ChatEndpoint::new`], also trusting `extra_roots` (a test's own certificate
    /// authority).
    #[doc(hidden)]
    pub fn with_roots(
        base_url: &str,
        api_key: Option<&Secret>,
        connect_timeout: Duration,
        extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<Self, String> {
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        // Checked as a URL (scheme, host) as before; sent as the `Uri` hyper takes.
        let parsed =
            openai_http::Url::parse(&url).map_err(|e| format!("LLM_BASE_URL is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
            return Err(format!(
                "LLM_BASE_URL must be an http:// or https:// URL with a host, not `{}`",
                redact_url_credentials(base_url)
            ));
        }
        let url: http::Uri = parsed
            .as_str()
            .parse()
            .map_err(|e| format!("LLM_BASE_URL is not a URL: {e}"))?;
        let authorization = match api_key {
            Some(key) => {
                let mut value = http::HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| {
                        "LLM_API_KEY holds characters a header cannot carry".to_string()
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let proxies = Matcher::from_system();
        let http = Transport::for_endpoint(&url, &proxies, connect_timeout, extra_roots)?;
        Ok(Self {
            http,
            url,
            authorization,
        })
    }

    /// Whether calls go through reqwest (a proxy applies, or the URL has credentials).
    #[doc(hidden)]
    pub fn is_proxied(&self) -> bool {
        matches!(self.http, Transport::Proxied(_))
    }

    async fn send(
        &self,
        body: &Value,
    ) -> Result<http::Response<transport::ResponseBody>, EndpointError> {
        let body = serde_json::to_vec(body).map_err(|e| EndpointError::Shape(e.to_string()))?;
        let mut request = http::Request::new(Bytes::from(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.url.clone();
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
        if let Some(authorization) = &self.authorization {
            headers.insert(http::header::AUTHORIZATION, authorization.clone());
        }
        // The model call's span as the provider's parent, when traces are exported.
        for (name, value) in crate::observability::traces::outgoing_headers() {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        let response = self
            .http
            .send(request)
            .await
            .map_err(EndpointError::Network)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers());
        let body = transport::read_prefix(response.into_body(), MAX_ERROR_BODY_BYTES).await;
        Err(status_of(status, retry_after, &body).into())
    }

    /// A whole answer (`body` with `stream: false`); one longer than [`MAX_ANSWER_BYTES`]
    /// is a [`EndpointError::Shape`] error, and is not read past that.
    pub async fn complete(&self, body: &Value) -> Result<Value, EndpointError> {
        let bytes = self.complete_body(body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| EndpointError::Shape(format!("the answer is not JSON: {e}")))
    }

    /// A plain answer's body as it came (at most [`MAX_ANSWER_BYTES`]), for a caller that
    /// reads only part of it.
    pub async fn complete_body(&self, body: &Value) -> Result<Bytes, EndpointError> {
        let response = self.send(body).await?;
        let bytes = transport::read_body(response.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                transport::ReadError::TooLong => EndpointError::Shape(format!(
                    "the answer is longer than {} MiB",
                    MAX_ANSWER_BYTES >> 20
                )),
                transport::ReadError::Broken(e) => EndpointError::Network(e),
            })?;
        Ok(bytes)
    }

    /// A streamed answer (`body` with `stream: true`): its events until `[DONE]` or the
    /// end of the body, each read by `parse` ([`StreamEvent::parse`] for plain JSON). An
    /// event that `parse` refuses is an error item; the stream goes on. An event longer
    /// than [`MAX_STREAM_EVENT_BYTES`] ends it with an error.
    pub async fn stream<T: Send + 'static>(
        &self,
        body: &Value,
        parse: ParseEvent<T>,
    ) -> Result<EventStream<T>, EndpointError> {
        let bytes = Box::pin(BodyDataStream::new(self.send(body).await?.into_body()));
        let parser = sse_parse::SseParser::new().max_buffer(MAX_STREAM_EVENT_BYTES);
        let chunks = futures_util::stream::unfold(
            (bytes, parser, false),
            move |(mut bytes, mut parser, mut ended)| async move {
                loop {
                    if let Some(event) = parser.next_event() {
                        if event.data == "[DONE]" {
                            return None;
                        }
                        if event.event == "keepalive" {
                            continue;
                        }
                        let item = parse(event.data).map_err(|e| {
                            EndpointError::Shape(format!("a stream event is not JSON: {e}"))
                        });
                        return Some((item, (bytes, parser, ended)));
                    }
                    if ended {
                        return None;
                    }
                    if parser.overflows() > 0 {
                        let cut = EndpointError::StreamCut(format!(
                            "an event of the stream is longer than {} MiB",
                            MAX_STREAM_EVENT_BYTES >> 20
                        ));
                        return Some((Err(cut), (bytes, parser, true)));
                    }
                    match bytes.next().await {
                        Some(Ok(data)) => parser.feed(&data),
                        Some(Err(e)) => {
                            let cut = EndpointError::StreamCut(transport::describe(&*e));
                            return Some((Err(cut), (bytes, parser, ended)));
                        }
                        None => {
                            parser.finish();
                            ended = true;
                        }
                    }
                }
            },
        );
        Ok(Box::pin(chunks))
    }
}

/// The longest event of a streamed answer the endpoint holds: one chunk of an answer is a
/// few hundred bytes, so an upstream that never ends a line cannot grow memory past this.
pub const MAX_STREAM_EVENT_BYTES: usize = 4 << 20;

/// The longest whole answer the endpoint reads. A long answer with every token's
/// log-probabilities is a few MiB; an upstream that sends without end stops here instead
/// of at the process's memory.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

/// How much of an error answer is read: its message is at the start, and the rest is left
/// unread (a proxy's error page can be any size).
pub const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
