//! The chat endpoint's HTTP client: hyper's pooled client, called directly.
//!
//! reqwest wraps every call in its redirect layer even with redirects off, and that layer
//! parses the request's URL into a `Url` twice per call (once for the policy, once for the
//! response): 4.5 % of a proxied request's instructions, the largest single cost in the
//! client (docs/benchmarks.md, "The chat endpoint on hyper's own client"). The TLS settings
//! are reqwest's: rustls on the process's provider (ring), verified against the
//! platform's roots.
//!
//! Where a system proxy applies to the endpoint (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, less `NO_PROXY`), or its URL carries credentials (`user:pass@`), calls go
//! through reqwest, which speaks to proxies and turns credentials into a basic
//! `Authorization` header (a key from `LLM_API_KEY` replaces it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A response body from either client.
pub(crate) type ResponseBody = Either<hyper::body::Incoming, openai_http::Body>;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Direct = Client<Connector, Full<Bytes>>;

/// hyper's pooled client, one pool per thread of the standalone server
/// (`crate::shard`): an upstream connection's task is spawned on the runtime that
/// opened it, so a request that took a connection opened on another thread would wake
/// that thread twice (to send, and to pass the answer back). Each pool is built when its
/// thread first calls.
pub(crate) struct PerThread {
    connector: Connector,
    pools: Box<[std::sync::OnceLock<Direct>]>,
}

impl PerThread {
    fn new(connector: Connector) -> Self {
        let pools = (0..crate::shard::count())
            .map(|_| std::sync::OnceLock::new())
            .collect();
        Self { connector, pools }
    }

    /// The calling thread's pool.
    fn client(&self) -> &Direct {
        let slot = crate::shard::index() % self.pools.len();
        self.pools[slot].get_or_init(|| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(self.connector.clone())
        })
    }
}

/// How calls reach the endpoint.
#[derive(Clone)]
pub(crate) enum Transport {
    /// hyper's pooled clients, no proxy (shared: built once, and one per thread).
    Direct(Arc<PerThread>),
    /// reqwest, for an endpoint behind a proxy or with credentials in its URL.
    Proxied(openai_http::Client),
}

/// The error of one call, with its causes (hyper's own message alone says only
/// "client error (Connect)").
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Transport {
    /// The client for `uri`: direct unless `proxies` intercept it or it carries
    /// credentials. `extra_roots` are trusted besides the platform's (tests). The
    /// platform's roots are read only for an https:// endpoint, off this thread.
    pub(crate) fn for_endpoint(
        uri: &http::Uri,
        proxies: &Matcher,
        connect_timeout: Duration,
        extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<Self, String> {
        let credentials = uri.authority().is_some_and(|a| a.as_str().contains('@'));
        if credentials || proxies.intercept(uri).is_some() {
            return Ok(Self::Proxied(super::http_client(connect_timeout)));
        }
        crate::store::tls::install_crypto_provider();
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .ok_or("no TLS crypto provider is installed")?;
        let roots = super::roots::PlatformRoots::for_endpoint(uri, provider.clone(), extra_roots);
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout.min(Duration::from_secs(5))));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self::Direct(Arc::new(PerThread::new(https))))
    }

    /// Sends one request; the error is the call's, described with its causes.
    pub(crate) async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<ResponseBody>, String> {
        match self {
            Self::Direct(clients) => {
                let response = clients
                    .client()
                    .request(request.map(Full::new))
                    .await
                    .map_err(|e| describe(&e))?;
                Ok(response.map(Either::Left))
            }
            Self::Proxied(client) => {
                // Through reqwest's request builder, which turns a URL's `user:pass@`
                // into a basic `Authorization` header (its `execute` would drop them).
                let (parts, body) = request.into_parts();
                let response = client
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| describe(&e))?;
                Ok(http::Response::from(response).map(Either::Right))
            }
        }
    }
}

/// Why a body was not read whole.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// It is longer than the limit; reading stopped there.
    TooLong,
    /// The connection broke while it was read.
    Broken(String),
}

/// The whole body, if it is at most `limit` bytes: an upstream that never ends its answer
/// cannot grow memory past that.
pub(crate) async fn read_body(body: ResponseBody, limit: usize) -> Result<Bytes, ReadError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLong),
        Err(e) => Err(ReadError::Broken(describe(&*e))),
    }
}

/// At most the first `limit` bytes of the body, which is left unread after them (an error
/// answer's message is at its start); what arrived before a broken connection.
pub(crate) async fn read_prefix(mut body: ResponseBody, limit: usize) -> Bytes {
    let mut prefix = bytes::BytesMut::new();
    while prefix.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = limit - prefix.len();
                    prefix.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    prefix.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn uri(text: &str) -> http::Uri {
        text.parse().unwrap()
    }

    fn transport(endpoint: &str, proxies: &Matcher) -> Transport {
        Transport::for_endpoint(&uri(endpoint), proxies, Duration::from_secs(1), Vec::new())
            .unwrap()
    }

    #[test]
    fn the_direct_client_is_used_unless_a_proxy_applies_or_the_url_has_credentials() {
        let none = Matcher::builder().build();
        let proxy = Matcher::builder().all("http://proxy.internal:3128").build();
        let bypassed = Matcher::builder()
            .all("http://proxy.internal:3128")
            .no("api.example.com")
            .build();
        let endpoint = "https://api.example.com/v1/chat/completions";
        assert!(matches!(transport(endpoint, &none), Transport::Direct(_)));
        assert!(matches!(transport(endpoint, &proxy), Transport::Proxied(_)));
        assert!(matches!(
            transport(endpoint, &bypassed),
            Transport::Direct(_)
        ));
        assert!(matches!(
            transport(
                "http://user:pass@api.example.com/v1/chat/completions",
                &none
            ),
            Transport::Proxied(_)
        ));
    }

    #[test]
    fn an_error_is_described_with_its_causes_once_each() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(describe(&Outer(io)), "client error (Connect): refused");
        #[derive(Debug, thiserror::Error)]
        #[error("sending failed: refused")]
        struct Repeats(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&Repeats(io)), "sending failed: refused");
    }

    /// A server that answers one request with a fixed response and reports the request.
    async fn one_answer(response: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body its content-length announces.
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            socket.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (port, seen)
    }

    #[tokio::test]
    async fn both_clients_send_the_request_as_built_and_read_the_answer() {
        const ANSWER: &str =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        for proxied in [false, true] {
            let (port, seen) = one_answer(ANSWER).await;
            let endpoint = format!("http://127.0.0.1:{port}/v1/chat/completions");
            let transport = if proxied {
                Transport::Proxied(super::super::http_client(Duration::from_secs(1)))
            } else {
                transport(&endpoint, &Matcher::builder().build())
            };
            let request = http::Request::post(endpoint.as_str())
                .header("content-type", "application/json")
                .header("authorization", "Bearer k")
                .body(Bytes::from_static(b"{\"model\":\"m\"}"))
                .unwrap();
            let response = transport.send(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = read_body(response.into_body(), 1 << 10).await.unwrap();
            assert_eq!(&body[..], b"{\"ok\":true}", "proxied: {proxied}");
            let request = seen.await.unwrap();
            assert!(
                request.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
                "{request}"
            );
            assert!(request.contains("authorization: Bearer k\r\n"), "{request}");
            assert!(request.ends_with("\r\n\r\n{\"model\":\"m\"}"), "{request}");
        }
    }

    /// Credentials in the endpoint's URL reach the server as a basic `Authorization`
    /// header (as before this client), never in the request line.
    #[tokio::test]
    async fn credentials_in_the_url_become_a_basic_authorization_header() {
        const ANSWER: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let (port, seen) = one_answer(ANSWER).await;
        let endpoint = format!("http://user:pa%20ss@127.0.0.1:{port}/v1/chat/completions");
        let transport = transport(&endpoint, &Matcher::builder().build());
        assert!(matches!(transport, Transport::Proxied(_)));
        let request = http::Request::post(endpoint.as_str())
            .body(Bytes::from_static(b"{}"))
            .unwrap();
        let response = transport.send(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let request = seen.await.unwrap();
        assert!(
            request.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{request}"
        );
        // base64("user:pa ss")
        assert!(
            request.contains("authorization: Basic dXNlcjpwYSBzcw==\r\n"),
            "{request}"
        );
        assert!(!request.contains("pa%20ss"), "{request}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_described_not_just_named() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let endpoint = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let transport = transport(&endpoint, &Matcher::builder().build());
        let request = http::Request::post(endpoint.as_str())
            .body(Bytes::new())
            .unwrap();
        let error = transport.send(request).await.unwrap_err();
        assert!(
            error.to_lowercase().contains("connection refused"),
            "{error}"
        );
    }

    /// Each of the server's threads keeps its own pool: a thread's calls reuse its
    /// connection, and another thread's first call opens one of its own (whose task then
    /// runs on that thread's runtime).
    #[tokio::test]
    async fn each_server_thread_keeps_its_own_upstream_connections() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // One request per read (each is small and sent whole): answer each.
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(ANSWER).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        crate::shard::set_count(2);
        let endpoint = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let transport = transport(&endpoint, &Matcher::builder().build());
        async fn call(transport: &Transport, endpoint: &str) {
            let request = http::Request::post(endpoint).body(Bytes::new()).unwrap();
            let response = transport.send(request).await.unwrap();
            assert_eq!(response.status(), 200);
            read_body(response.into_body(), 64).await.unwrap();
        }
        call(&transport, &endpoint).await;
        call(&transport, &endpoint).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one thread, one connection"
        );
        let other = transport.clone();
        let other_endpoint = endpoint.clone();
        // Its own thread and runtime, as the server's; this one keeps serving meanwhile.
        tokio::task::spawn_blocking(move || {
            crate::shard::enter(1);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                call(&other, &other_endpoint).await;
                call(&other, &other_endpoint).await;
            });
        })
        .await
        .unwrap();
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the other thread opened its own"
        );
        call(&transport, &endpoint).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the first thread's is kept"
        );
    }
}
