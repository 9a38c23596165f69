//! The `backup` function binary: the Lambda function or standalone server, or with a
//! command (`backup run|list|verify|restore|prune`) the operator's command line.

/// mimalloc rather than the system allocator: less CPU per request and no memory kept
/// back by per-thread arenas (docs/benchmarks.md, "Gateway as a proxy").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread under Lambda (one event at a time), a worker per core standalone
/// (`shared::runtime::Threads`; `TOKIO_WORKER_THREADS` overrides).
fn main() -> Result<(), shared::runtime::BoxError> {
    shared::runtime::block_on(async {
        if let Some(code) = backup::cli::run_if_asked().await {
            std::process::exit(code);
        }
        shared::app::start("backup", backup::router, Some(backup::on_event)).await
    })?
}
