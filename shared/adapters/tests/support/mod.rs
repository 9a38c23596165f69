//! What the endpoint tests' one-shot servers share.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads a chat request off `socket` until its JSON body has begun (`"model"`), and
/// returns what was read.
pub async fn read_chat_request(socket: &mut TcpStream) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&request).contains("\"model\"") {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the request ended early");
        request.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(request).unwrap()
}
