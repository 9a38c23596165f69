//! The chat endpoint's own client speaks TLS on the process's rustls (ring): it
//! completes an exchange with a server whose certificate it trusts, and refuses one whose
//! certificate it does not, before anything is sent.

use std::sync::Arc;
use std::time::Duration;

use chatkb_adapters::openai::{ChatEndpoint, EndpointError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A TLS server for `localhost` with a self-signed certificate, answering each request
/// with a JSON completion; reports each handshake's outcome.
async fn tls_server() -> (
    CertificateDer<'static>,
    u16,
    tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>,
) {
    chatkb_adapters::store::tls::install_crypto_provider();
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
                        let body = r#"{"object":"chat.completion","choices":[]}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(answer.as_bytes()).await;
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

fn question() -> serde_json::Value {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_trusted_certificate_completes_the_exchange() {
    let (cert, port, mut outcomes) = tls_server().await;
    let base = format!("https://localhost:{port}/v1");
    let endpoint =
        ChatEndpoint::with_roots(&base, None, Duration::from_secs(2), vec![cert]).unwrap();
    assert!(!endpoint.is_proxied());
    let answer = endpoint
        .complete(&question())
        .await
        .expect("the HTTPS call");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(outcomes.recv().await, Some(Ok(())));
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let (_cert, port, mut outcomes) = tls_server().await;
    let base = format!("https://localhost:{port}/v1");
    let endpoint = ChatEndpoint::new(&base, None, Duration::from_secs(2)).unwrap();
    let error = endpoint.complete(&question()).await.unwrap_err();
    match &error {
        EndpointError::Network(message) => assert!(
            message.contains("certificate") || message.contains("UnknownIssuer"),
            "{message}"
        ),
        other => panic!("expected a network error, got {other:?}"),
    }
    let outcome = outcomes.recv().await.expect("the client connected");
    assert!(outcome.is_err(), "{outcome:?}");
}
