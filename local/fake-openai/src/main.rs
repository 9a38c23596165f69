//! `fake-openai [--port N]`: serves the `fake_openai` library on 127.0.0.1 (default 8090).
//! Its behaviour (latency, failures, Retry-After, hangs, cut streams) is set over HTTP:
//! `curl -X PUT localhost:8090/_fake/behaviour -d '{"failure_rate": 1.0}'`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port = match args.iter().position(|a| a == "--port") {
        Some(i) => args
            .get(i + 1)
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("--port needs a port number"))?,
        None => std::env::var("FAKE_OPENAI_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(8090),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!(
        "fake OpenAI server on http://127.0.0.1:{port}/v1 (control: /_fake/behaviour, /_fake/calls)"
    );
    fake_openai::serve(listener).await
}
