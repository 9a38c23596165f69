//! A streamed answer read as the wire delivers it: events split anywhere (mid-JSON,
//! inside a multi-byte character, between a CR and its LF), CRLF and CR-only line ends,
//! a byte order mark, comments and keep-alive events, an event that is not JSON, bytes
//! after `[DONE]`, a last event with no blank line after it, and an upstream that never
//! ends a line.

use std::time::Duration;

use chatkb_adapters::openai::{ChatEndpoint, EndpointError, StreamEvent, MAX_STREAM_EVENT_BYTES};
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

/// Answers one streamed request with `pieces`, one write each (20 ms apart), then ends
/// the body; or holds the connection open with `hold`.
async fn serve(pieces: Vec<Vec<u8>>, hold: bool) -> u16 {
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
        if hold {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let _ = socket.write_all(b"0\r\n\r\n").await;
    });
    port
}

/// Every item of the stream the endpoint reads from the server on `port`.
async fn read_events(port: u16) -> Vec<Result<StreamEvent, EndpointError>> {
    let endpoint = ChatEndpoint::new(
        &format!("http://127.0.0.1:{port}/v1"),
        None,
        Duration::from_secs(2),
    )
    .unwrap();
    endpoint
        .stream(
            &json!({"model": "m", "stream": true, "messages": []}),
            StreamEvent::parse,
        )
        .await
        .expect("the stream opened")
        .collect()
        .await
}

/// The chunks (parsed) of [`read_events`].
async fn read_all(port: u16) -> Vec<Result<Value, EndpointError>> {
    read_events(port)
        .await
        .into_iter()
        .map(|item| item.map(|event| event.chunk))
        .collect()
}

/// `body` cut before each of `at` (byte offsets, ascending).
fn split(body: &[u8], at: &[usize]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut from = 0;
    for &to in at {
        pieces.push(body[from..to].to_vec());
        from = to;
    }
    pieces.push(body[from..].to_vec());
    pieces
}

fn position(body: &[u8], needle: &str) -> usize {
    body.windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("no {needle:?} in the body"))
}

#[tokio::test]
async fn events_are_read_whatever_the_framing() {
    let first = json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Caf\u{e9} "}}]});
    let second = json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "ol\u{e9}"}}]});
    let body = format!(
        ": a comment line\r\n\r\nevent: keepalive\r\ndata: {{}}\r\n\r\ndata: {first}\r\n\r\ndata: {{not json\n\ndata: {second}\n\ndata: [DONE]\n\ndata: {{\"after\": \"done\"}}\n\n"
    )
    .into_bytes();
    // Cut inside the first event's JSON (before `"choices"`), between the two bytes of
    // its `é`, and between the CR and the LF that end its line.
    let json = position(&body, "\"choices\"");
    let e_acute = position(&body, "é") + 1;
    let first_end = position(&body, "}]}\r\n") + 4;
    let events = read_all(serve(split(&body, &[json, e_acute, first_end]), false).await).await;

    // The comment and the keep-alive are not answers; a CRLF is one line end.
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

#[tokio::test]
async fn a_byte_order_mark_and_cr_line_ends_are_read_and_an_unended_event_is_dropped() {
    let first = json!({"id": "c2", "choices": [{"index": 0, "delta": {"content": "a"}}]});
    let second = json!({"id": "c2", "choices": [{"index": 0, "delta": {"content": "b"}}]});
    let mut body = "\u{feff}".as_bytes().to_vec();
    // CR-only line ends; the last event has no blank line after it before the body ends.
    body.extend_from_slice(
        format!("data: {first}\r\rdata: {second}\r\rdata: {{\"unended\": true}}\r").as_bytes(),
    );
    // The mark is cut in two, and the second event's blank line between its two CRs.
    let second_end = position(&body, "\"b\"}}]}\r") + 8;
    let events = read_all(serve(split(&body, &[1, second_end]), false).await).await;
    let answers: Vec<&Value> = events.iter().map(|e| e.as_ref().unwrap()).collect();
    assert_eq!(answers, [&first, &second]);
}

#[tokio::test]
async fn an_upstream_that_never_ends_a_line_is_cut_at_the_cap() {
    let first = json!({"id": "c3", "choices": [{"index": 0, "delta": {"content": "a"}}]});
    let mut endless = b"data: \"".to_vec();
    endless.resize(MAX_STREAM_EVENT_BYTES + 64 * 1024, b'x');
    let pieces = vec![format!("data: {first}\n\n").into_bytes(), endless];
    // The connection stays open: the cut comes from the cap (at the body's end the
    // unended event would only be dropped, with no error).
    let events = read_all(serve(pieces, true).await).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].as_ref().unwrap(), &first);
    assert!(
        matches!(&events[1], Err(EndpointError::StreamCut(m)) if m.contains("longer than 4 MiB")),
        "{:?}",
        events[1]
    );
}

#[tokio::test]
async fn each_event_keeps_the_upstreams_own_text() {
    // Spacing and key order as the upstream wrote them; an event on two `data:` lines
    // is one text, its lines joined by a line feed.
    let body = "data: {\"id\": \"c4\",  \"choices\":[]}\n\ndata: {\"id\":\"c4\",\ndata: \"choices\":[]}\n\ndata: [DONE]\n\n";
    let events = read_events(serve(vec![body.as_bytes().to_vec()], false).await).await;
    let texts: Vec<&str> = events
        .iter()
        .map(|e| e.as_ref().expect("an event").data.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "{\"id\": \"c4\",  \"choices\":[]}",
            "{\"id\":\"c4\",\n\"choices\":[]}"
        ]
    );
    for event in &events {
        assert_eq!(
            event.as_ref().unwrap().chunk,
            json!({"id": "c4", "choices": []})
        );
    }
}
