//! The chat endpoint honours the system's proxy: with `HTTP_PROXY` set, a call to an
//! endpoint the proxy applies to is sent to the proxy (in absolute form), not to the
//! endpoint's host, which does not even resolve here. Its own test binary: the proxy
//! setting is the process's environment.

use std::time::Duration;

use chatkb_adapters::openai::ChatEndpoint;
use tokio::io::AsyncWriteExt;

mod support;

#[tokio::test]
async fn a_call_goes_through_the_configured_proxy() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = proxy.local_addr().unwrap().port();
    // Set before any client reads the environment; the only test of this binary.
    // Both spellings (a machine's own lowercase setting would otherwise win), and no
    // exclusion list.
    for name in ["HTTP_PROXY", "http_proxy"] {
        std::env::set_var(name, format!("http://127.0.0.1:{port}"));
    }
    for name in ["NO_PROXY", "no_proxy"] {
        std::env::remove_var(name);
    }
    let seen = tokio::spawn(async move {
        let (mut socket, _) = proxy.accept().await.unwrap();
        let request = support::read_chat_request(&mut socket).await;
        let body = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        request
    });
    let endpoint =
        ChatEndpoint::new("http://upstream.invalid/v1", None, Duration::from_secs(2)).unwrap();
    assert!(endpoint.is_proxied());
    let answer = endpoint
        .complete(&serde_json::json!({"model": "m", "messages": []}))
        .await
        .expect("the proxy answered");
    assert_eq!(answer["object"], "chat.completion");
    let request = seen.await.unwrap();
    assert!(
        request.starts_with("POST http://upstream.invalid/v1/chat/completions HTTP/1.1\r\n"),
        "{request}"
    );
}
