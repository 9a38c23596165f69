//! The `health` function binary: HTTP health endpoints plus the scheduled deep check.

#[tokio::main]
async fn main() -> Result<(), shared::runtime::BoxError> {
    shared::app::start("health", health::router, Some(health::on_schedule)).await
}
