//! The `chat` function binary: everything it does lives in its library and `shared`.

#[tokio::main]
async fn main() -> Result<(), shared::runtime::BoxError> {
    shared::app::start("chat", chat::router, None).await
}
