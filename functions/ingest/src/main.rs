//! The `ingest` function binary: everything it does lives in its library and `shared`.

#[tokio::main]
async fn main() -> Result<(), shared::runtime::BoxError> {
    shared::app::start("ingest", ingest::router, Some(ingest::on_event)).await
}
