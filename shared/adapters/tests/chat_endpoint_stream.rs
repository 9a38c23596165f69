//! A streamed answer read as the wire delivers it: events split anywhere (mid-JSON,
//! inside a multi-byte character), CRLF line ends, comments and keep-alive events, an
//! event that is not JSON, and bytes after `[DONE]`.

use std::time::Duration;

use chatkb_adapters::openai::{ChatEndpoint, EndpointError};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

mod support;

/// One HTTP/1.1 chunk of the response body.
fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{:X}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test]
async fn events_are_read_whatever_the_framing() {
    let first = json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Caf\u{e9} "}}]});
    let second = json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "ol\u{e9}"}}]});
    let body = format!(
        ": a comment line\r\n\r\nevent: keepalive\r\ndata: {{}}\r\n\r\ndata: {first}\r\n\r\ndata: {{not json\n\ndata: {second}\n\ndata: [DONE]\n\ndata: {{\"after\": \"done\"}}\n\n"
    )
    .into_bytes();
    // Split inside the first event's JSON, and between the two bytes of its `é`.
    let e_acute = body
        .windows(2)
        .position(|w| w == "é".as_bytes())
        .expect("the body has an é");
    let pieces = [
        body[..40].to_vec(),
        body[40..e_acute + 1].to_vec(),
        body[e_acute + 1..].to_vec(),
    ];

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        support::read_chat_request(&mut socket).await;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for piece in pieces {
            socket.write_all(&chunk(&piece)).await.unwrap();
            socket.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        socket.write_all(b"0\r\n\r\n").await.unwrap();
    });

    let endpoint = ChatEndpoint::new(
        &format!("http://127.0.0.1:{port}/v1"),
        None,
        Duration::from_secs(2),
    )
    .unwrap();
    let events: Vec<Result<Value, EndpointError>> = endpoint
        .stream(&json!({"model": "m", "stream": true, "messages": []}))
        .await
        .expect("the stream opened")
        .collect()
        .await;

    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].as_ref().unwrap(), &first);
    // Not JSON: an error item, and the stream goes on.
    assert!(
        matches!(&events[1], Err(EndpointError::Shape(m)) if m.contains("not JSON")),
        "{:?}",
        events[1]
    );
    assert_eq!(events[2].as_ref().unwrap(), &second);
}
