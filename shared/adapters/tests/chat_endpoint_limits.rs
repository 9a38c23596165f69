//! An upstream that answers without end: a whole answer is read up to
//! `MAX_ANSWER_BYTES` and an error answer up to `MAX_ERROR_BODY_BYTES`, and the rest is
//! left unread, so a broken provider or a proxy's error page cannot grow the gateway's
//! memory past them.

use std::time::Duration;

use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use chatkb_adapters::openai::{
    ChatEndpoint, EndpointError, UpstreamStatus, MAX_ANSWER_BYTES, MAX_ERROR_BODY_BYTES,
};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

mod support;

const MIB: usize = 1 << 20;

/// Answers one request with `head` and then `body`, chunked; after `body`, with
/// `endless`, 1 MiB chunks of spaces until the connection is closed (or 256 MiB).
/// Reports how many body bytes the socket took.
async fn serve(
    head: &'static str,
    body: Vec<u8>,
    endless: bool,
) -> (u16, tokio::task::JoinHandle<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        support::read_chat_request(&mut socket).await;
        let head = format!("HTTP/1.1 {head}\r\ntransfer-encoding: chunked\r\n\r\n");
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut written = 0;
        let filler = vec![b' '; MIB];
        let pieces = [body];
        let mut next = 0;
        loop {
            let piece = match pieces.get(next) {
                Some(piece) => piece.as_slice(),
                None if endless && written < 256 * MIB => filler.as_slice(),
                None => break,
            };
            next += 1;
            let mut chunk = format!("{:X}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            if socket.write_all(&chunk).await.is_err() {
                return written;
            }
            written += piece.len();
        }
        let _ = socket.write_all(b"0\r\n\r\n").await;
        written
    });
    (port, written)
}

fn endpoint(port: u16) -> ChatEndpoint {
    ChatEndpoint::new(
        &format!("http://127.0.0.1:{port}/v1"),
        None,
        Duration::from_secs(2),
    )
    .unwrap()
}

fn request() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn an_answer_without_end_stops_at_the_limit_unread_past_it() {
    let (port, written) = serve(
        "200 OK\r\ncontent-type: application/json",
        b"{\"choices\": [], \"padding\": \"".to_vec(),
        true,
    )
    .await;
    let err = endpoint(port).complete(&request()).await.unwrap_err();
    assert!(
        matches!(&err, EndpointError::Shape(m) if m == "the answer is longer than 32 MiB"),
        "{err:?}"
    );
    let written = written.await.unwrap();
    // Past the limit, only what the loopback's buffers hold was taken.
    assert!(written > MAX_ANSWER_BYTES, "{written}");
    assert!(written < MAX_ANSWER_BYTES + 48 * MIB, "{written}");
}

#[tokio::test]
async fn a_long_answer_under_the_limit_is_read_whole() {
    let text = "a".repeat(5 * MIB);
    let answer = json!({"id": "c", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]});
    let (port, written) = serve(
        "200 OK\r\ncontent-type: application/json",
        serde_json::to_vec(&answer).unwrap(),
        false,
    )
    .await;
    let got = endpoint(port).complete(&request()).await.unwrap();
    assert_eq!(got, answer);
    assert!(written.await.unwrap() > 5 * MIB);
}

#[tokio::test]
async fn an_error_answer_without_end_is_read_only_for_its_message() {
    let (port, written) = serve(
        "503 Service Unavailable\r\ncontent-type: text/html\r\nretry-after: 3",
        b"<html><body>upstream overloaded".to_vec(),
        true,
    )
    .await;
    let err = endpoint(port).complete(&request()).await.unwrap_err();
    let EndpointError::Status(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(status.status, 503);
    assert_eq!(status.retry_after, Some(Duration::from_secs(3)));
    assert!(
        status
            .message
            .starts_with("<html><body>upstream overloaded   "),
        "{}",
        status.message
    );
    assert_eq!(status.message.chars().count(), 200);
    let written = written.await.unwrap();
    assert!(written < MAX_ERROR_BODY_BYTES + 48 * MIB, "{written}");
}

/// The embeddings calls go through async-openai on reqwest; their error answers are read
/// the same way.
#[tokio::test]
async fn an_embeddings_error_answer_without_end_is_read_only_for_its_message() {
    let (port, written) = serve(
        "500 Internal Server Error\r\ncontent-type: application/json",
        br#"{"error": {"message": "the model is loading", "code": "loading"}}"#.to_vec(),
        true,
    )
    .await;
    let client = chatkb_adapters::openai::client(
        &format!("http://127.0.0.1:{port}/v1"),
        None,
        Duration::from_secs(2),
    );
    let request = CreateEmbeddingRequest {
        model: "e".into(),
        input: EmbeddingInput::StringArray(vec!["hi".into()]),
        encoding_format: None,
        user: None,
        dimensions: None,
    };
    let err = client.embeddings().create(request).await.unwrap_err();
    let status = UpstreamStatus::from_error(err).expect("an upstream status");
    assert_eq!(status.status, 500);
    // The first 64 KiB: the JSON error and spaces after it.
    assert_eq!(status.message, "the model is loading");
    assert_eq!(status.code.as_deref(), Some("loading"));
    let written = written.await.unwrap();
    assert!(written < MAX_ERROR_BODY_BYTES + 48 * MIB, "{written}");
}
