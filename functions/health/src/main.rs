//! The `health` function binary: HTTP health endpoints plus the scheduled deep check.

/// mimalloc rather than the system allocator: less CPU per request and no memory kept
/// back by per-thread arenas (docs/benchmarks.md, "Gateway as a proxy").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread under Lambda (one event at a time), a worker per core standalone
/// (`shared::runtime::Threads`; `TOKIO_WORKER_THREADS` overrides).
fn main() -> Result<(), shared::runtime::BoxError> {
    shared::runtime::block_on(shared::app::start(
        "health",
        health::router,
        Some(health::on_schedule),
    ))?
}
