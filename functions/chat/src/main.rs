//! The `chat` function binary: everything it does lives in its library and `shared`.

/// mimalloc rather than the system allocator: less CPU per request and no memory kept
/// back by per-thread arenas (docs/benchmarks.md, "Gateway as a proxy").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread under Lambda (one event at a time); standalone, a runtime per core, each
/// serving its share of the connections (`shared::runtime::Threads`;
/// `TOKIO_WORKER_THREADS` chooses tokio's work-stealing runtime instead).
fn main() -> Result<(), shared::runtime::BoxError> {
    chat::allocator::purge_freed_memory_at_once();
    shared::runtime::block_on_per_core(shared::app::start("chat", chat::router, None))?
}
