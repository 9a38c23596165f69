//! The `chat` function binary: everything it does lives in its library and `shared`.

/// mimalloc rather than the system allocator: less CPU per request and no memory kept
/// back by per-thread arenas (docs/benchmarks.md, "Gateway as a proxy").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), shared::runtime::BoxError> {
    chat::allocator::purge_freed_memory_at_once();
    shared::app::start("chat", chat::router, None).await
}
