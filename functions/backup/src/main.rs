//! The `backup` function binary: everything it does lives in its library and `shared`.

#[tokio::main]
async fn main() -> Result<(), shared::runtime::BoxError> {
    shared::app::start("backup", backup::router, None).await
}
