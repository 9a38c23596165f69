//! The process speaks TLS with one crypto library (ring, `store::tls`): the OpenAI
//! client completes an HTTPS exchange with a local TLS server, and the AWS SDK's client
//! runs the handshake and refuses a certificate it does not trust.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// What the server answers: a chat completion, for the chat endpoint's tests.
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 41\r\nconnection: close\r\n\r\n{\"object\":\"chat.completion\",\"choices\":[]}";

/// A self-signed certificate for `localhost`, its key, and a TLS server on a random port
/// that answers one HTTP request per connection; reports each handshake's outcome.
async fn tls_server() -> (
    CertificateDer<'static>,
    u16,
    tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>,
) {
    shared::store::tls::install_crypto_provider();
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = issued.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_pair.serialize_der()));
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (report, outcomes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let report = report.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let _ = report.send(Ok(()));
                        let mut buf = [0u8; 4096];
                        let _ = tls.read(&mut buf).await;
                        let _ = tls.write_all(ANSWER).await;
                        let _ = tls.shutdown().await;
                    }
                    Err(e) => {
                        let _ = report.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (cert, port, outcomes)
}

#[tokio::test]
async fn the_openai_client_completes_an_https_exchange_on_ring() {
    let (cert, port, mut outcomes) = tls_server().await;
    // Built as the chat provider builds it (no provider feature: ring is the default).
    let client = openai_http::Client::builder()
        .tls_certs_only([openai_http::Certificate::from_der(&cert).unwrap()])
        .build()
        .expect("a TLS client builds once the process has a crypto provider");
    let response = client
        .get(format!("https://localhost:{port}/v1/models"))
        .send()
        .await
        .expect("the HTTPS exchange completes");
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("chat.completion"));
    assert_eq!(outcomes.recv().await, Some(Ok(())));
}

fn question() -> serde_json::Value {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

/// The chat endpoint's own client (hyper and hyper-rustls, not reqwest) completes an
/// exchange with a server whose certificate it trusts...
#[tokio::test]
async fn the_chat_endpoint_completes_an_https_exchange_with_a_trusted_certificate() {
    let (cert, port, mut outcomes) = tls_server().await;
    let base = format!("https://localhost:{port}/v1");
    let endpoint = chatkb_adapters::openai::ChatEndpoint::with_roots(
        &base,
        None,
        std::time::Duration::from_secs(2),
        vec![cert],
    )
    .unwrap();
    assert!(!endpoint.is_proxied());
    let answer = endpoint
        .complete(&question())
        .await
        .expect("the HTTPS call");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(outcomes.recv().await, Some(Ok(())));
}

/// ...and refuses one whose certificate the platform's roots do not vouch for, before
/// anything is sent.
#[tokio::test]
async fn the_chat_endpoint_refuses_an_untrusted_certificate() {
    let (_cert, port, mut outcomes) = tls_server().await;
    let base = format!("https://localhost:{port}/v1");
    let endpoint =
        chatkb_adapters::openai::ChatEndpoint::new(&base, None, std::time::Duration::from_secs(2))
            .unwrap();
    let error = endpoint.complete(&question()).await.unwrap_err();
    match &error {
        // The platform's roots were read and do not vouch for it (not: no roots at all).
        chatkb_adapters::openai::EndpointError::Network(message) => {
            assert!(message.contains("UnknownIssuer"), "{message}")
        }
        other => panic!("expected a network error, got {other:?}"),
    }
    let outcome = outcomes.recv().await.expect("the client connected");
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn the_aws_client_runs_the_handshake_and_refuses_an_untrusted_certificate() {
    let (_cert, port, mut outcomes) = tls_server().await;
    let config = shared::store::aws::load_config().await;
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config)
            .endpoint_url(format!("https://localhost:{port}"))
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "AKIDTEST", "test", None, None, "test",
            ))
            .build(),
    );
    let err = dynamo.list_tables().send().await.unwrap_err();
    let detail = aws_sdk_dynamodb::error::DisplayErrorContext(&err).to_string();
    assert!(
        detail.contains("certificate") || detail.contains("UnknownIssuer"),
        "the client must reject the self-signed certificate: {detail}"
    );
    // The server saw a TLS client hello and then the client's refusal.
    let outcome = outcomes.recv().await.expect("the client connected");
    assert!(outcome.is_err(), "{outcome:?}");
}

/// `rediss://` (ElastiCache with TLS in transit) is spoken, on the same TLS stack: the
/// handshake runs and a certificate nobody trusts is refused, as a real one would be
/// accepted.
#[tokio::test]
async fn a_rediss_url_runs_the_tls_handshake_and_refuses_an_untrusted_certificate() {
    let (_cert, port, mut outcomes) = tls_server().await;
    let url = shared::config::RedisUrl::parse(&format!("rediss://:token@localhost:{port}/0"))
        .expect("rediss:// is accepted");
    let redis = shared::store::RedisHandle::with_pause(
        &url,
        std::time::Duration::from_secs(5),
        std::time::Duration::from_millis(10),
    )
    .unwrap();
    let err = redis.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let outcome = outcomes
        .recv()
        .await
        .expect("the client connected over TLS");
    assert!(
        outcome.is_err(),
        "the untrusted certificate must be refused: {outcome:?}"
    );
}
