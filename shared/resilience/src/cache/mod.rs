//! Tiered cache (C5, I6, X4): L1 in-process (quick_cache), L2 Redis (optional).
//!
//! - Namespaces (`chat`, `search`, `embedding`, `session`, `config`) each have a TTL and
//!   a key prefix; values travel as JSON, never a language-specific format.
//! - Reads: L1, then L2 (back-filling L1), then the loader. Concurrent misses of one key
//!   run the loader once per process (a load in flight that they all await, its error
//!   included: `tiered/l1.rs`); with Redis a short lock
//!   lets one instance load while the others wait for its result.
//! - Invalidation by key, or by namespace through a generation counter in Redis that
//!   every instance reads (at most `generation_refresh` old), so nothing is scanned.
//! - Degradation: when Redis fails or is slow, the cache works from L1 alone, logs once
//!   per state change, never returns an error, and retries Redis after a short pause.

mod config;
mod stats;
#[cfg(feature = "tiered")]
mod tiered;

pub use config::{CacheConfig, Namespace};
pub use stats::{read_service_counts, service_counts_key, CacheCounts, CacheStats};
#[cfg(feature = "tiered")]
pub use tiered::TieredCache;
