//! Namespaces, sizes and TTLs of the cache (the `CACHE_*` settings).

use std::time::Duration;

/// The cache's namespaces; each has its own TTL and key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    Chat,
    Search,
    Embedding,
    Session,
    Config,
}

impl Namespace {
    pub const ALL: [Namespace; 5] = [
        Namespace::Chat,
        Namespace::Search,
        Namespace::Embedding,
        Namespace::Session,
        Namespace::Config,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Chat => "chat",
            Namespace::Search => "search",
            Namespace::Embedding => "embedding",
            Namespace::Session => "session",
            Namespace::Config => "config",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Sizes, TTLs and timings of the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Prefix of every Redis key, so deployments can share a Redis.
    pub prefix: String,
    pub l1_max_entries: u64,
    pub l1_max_bytes: u64,
    /// TTL per namespace, in [`Namespace::ALL`] order.
    pub ttls: [Duration; 5],
    /// How long one instance holds the load lock of a key.
    pub lock_ttl: Duration,
    /// How long other instances wait for the lock holder's value before loading themselves.
    pub lock_wait: Duration,
    /// How stale this instance's view of another instance's namespace invalidation may be.
    pub generation_refresh: Duration,
    /// After a Redis failure, how long to use L1 alone before trying Redis again.
    pub l2_retry_after: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            prefix: "chatkb".into(),
            l1_max_entries: 10_000,
            // Sized for a gateway instance under 40 MB resident (issue 5): ~4,000 short
            // answers. L1 is the hot set; Redis (L2) is the shared, larger tier.
            l1_max_bytes: 4 * 1024 * 1024,
            ttls: [
                Duration::from_secs(3600),       // chat answers
                Duration::from_secs(300),        // search results
                Duration::from_secs(7 * 86_400), // embeddings (content-addressed)
                Duration::from_secs(1800),       // sessions
                Duration::from_secs(60),         // configuration
            ],
            lock_ttl: Duration::from_secs(10),
            lock_wait: Duration::from_secs(2),
            generation_refresh: Duration::from_secs(1),
            l2_retry_after: Duration::from_secs(1),
        }
    }
}

impl CacheConfig {
    pub fn ttl(&self, namespace: Namespace) -> Duration {
        self.ttls[namespace.index()]
    }
}
