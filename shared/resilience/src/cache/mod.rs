//! Tiered cache (C5, I6, X4): L1 in-process (moka), L2 Redis (optional).
//!
//! - Namespaces (`chat`, `search`, `embedding`, `session`, `config`) each have a TTL and
//!   a key prefix; values travel as JSON, never a language-specific format.
//! - Reads: L1, then L2 (back-filling L1), then the loader. Concurrent misses of one key
//!   run the loader once per process (moka's `try_get_with`); with Redis a short lock
//!   lets one instance load while the others wait for its result.
//! - Invalidation by key, or by namespace through a generation counter in Redis that
//!   every instance reads (at most `generation_refresh` old), so nothing is scanned.
//! - Degradation: when Redis fails or is slow, the cache works from L1 alone, logs once
//!   per state change, never returns an error, and retries Redis after a short pause.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache as MokaCache;
use moka::Expiry;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::observability::metrics::names;
use crate::store::RedisHandle;
mod l2;
mod single_flight;

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

    fn index(self) -> usize {
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

/// What L1 holds: the value's JSON exactly as L2 stores it (`Stored`), decoded on each
/// hit. Keeping JSON rather than the decoded value makes `CACHE_L1_MAX_BYTES` the real
/// footprint: a decoded `serde_json::Value` answer takes several times its JSON size.
#[derive(Clone)]
struct Entry {
    json: Arc<[u8]>,
    generation: u64,
    ttl: Duration,
    weight: u32,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Entry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A cached value from its `Stored` JSON; `None` if it is not a `T`.
fn decode<T: DeserializeOwned>(json: &[u8]) -> Option<T> {
    serde_json::from_slice::<Stored<T>>(json).ok().map(|s| s.v)
}

/// The JSON stored in Redis: the namespace generation it was written under, and the value.
#[derive(Serialize, Deserialize)]
struct Stored<T> {
    g: u64,
    v: T,
}

/// Hits and misses of this process, for `/health/detailed`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CacheStats {
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    pub l1_entries: u64,
    pub l2_available: Option<bool>,
}

impl CacheStats {
    /// Hits over lookups, `None` before any lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let total = self.l1_hits + self.l2_hits + self.misses;
        (total > 0).then(|| (self.l1_hits + self.l2_hits) as f64 / total as f64)
    }
}

struct L2 {
    redis: RedisHandle,
    /// Milliseconds since `started` until which Redis is skipped after a failure.
    skip_until: AtomicU64,
    healthy: AtomicBool,
}

struct Inner {
    config: CacheConfig,
    l1: MokaCache<String, Entry>,
    l2: Option<L2>,
    started: Instant,
    generations: [AtomicU64; 5],
    generations_checked: [AtomicU64; 5],
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
}

/// The shared tiered cache; clones share everything.
#[derive(Clone)]
pub struct TieredCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TieredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("config", &self.inner.config)
            .field("l2", &self.inner.l2.is_some())
            .finish()
    }
}

/// A value read from L2: decoded, its generation, and its JSON (for L1).
type FromL2<T> = (T, u64, Arc<[u8]>);

/// A failed Redis operation; never reaches callers.
#[derive(Debug)]
struct L2Unavailable;

/// What an L1 entry costs beyond its JSON and key: moka's node, deques and timer entry,
/// the `Arc` and allocator headers. Measured with heaptrack: 10,000 short answers (~450
/// bytes of JSON, ~75 of key) held 9.2 MB, ~400 bytes each beyond JSON and key.
const L1_ENTRY_OVERHEAD_BYTES: u64 = 400;

impl TieredCache {
    pub fn new(config: CacheConfig, redis: Option<RedisHandle>) -> Self {
        // Each entry weighs at least the per-entry share of the byte budget, so the
        // byte bound also bounds the number of entries.
        let floor = (config.l1_max_bytes / config.l1_max_entries.max(1)).max(1);
        let l1 = MokaCache::builder()
            .max_capacity(config.l1_max_bytes)
            .weigher(move |key: &String, entry: &Entry| {
                (entry.weight as u64 + key.len() as u64 + L1_ENTRY_OVERHEAD_BYTES)
                    .max(floor)
                    .min(u32::MAX as u64) as u32
            })
            .expire_after(PerEntryTtl)
            .build();
        Self {
            inner: Arc::new(Inner {
                config,
                l1,
                l2: redis.map(|redis| L2 {
                    redis,
                    skip_until: AtomicU64::new(0),
                    healthy: AtomicBool::new(true),
                }),
                started: Instant::now(),
                generations: Default::default(),
                generations_checked: Default::default(),
                l1_hits: AtomicU64::new(0),
                l2_hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            l1_hits: self.inner.l1_hits.load(Ordering::Relaxed),
            l2_hits: self.inner.l2_hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            l1_entries: self.inner.l1.entry_count(),
            l2_available: self
                .inner
                .l2
                .as_ref()
                .map(|l2| l2.healthy.load(Ordering::Relaxed)),
        }
    }

    fn l1_key(namespace: Namespace, key: &str) -> String {
        let mut k = String::with_capacity(namespace.as_str().len() + 1 + key.len());
        k.push_str(namespace.as_str());
        k.push(':');
        k.push_str(key);
        k
    }

    /// Redis keys carry a hash of the caller's key: bounded length, and no request
    /// content (which may be personal data) in key names.
    fn l2_key(&self, namespace: Namespace, key: &str) -> String {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        format!(
            "{}:cache:{}:{}",
            self.inner.config.prefix,
            namespace.as_str(),
            digest
        )
    }

    fn generation_key(&self, namespace: Namespace) -> String {
        format!(
            "{}:cache:{}:generation",
            self.inner.config.prefix,
            namespace.as_str()
        )
    }

    fn lock_key(&self, l2_key: &str) -> String {
        format!("{l2_key}:lock")
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    // ---- Redis with degradation -------------------------------------------------------

    // ---- generations ------------------------------------------------------------------

    // ---- reads ------------------------------------------------------------------------

    fn l1_lookup<T: DeserializeOwned>(&self, entry: Option<Entry>, generation: u64) -> Option<T> {
        let entry = entry?;
        if entry.generation != generation {
            return None;
        }
        decode(&entry.json)
    }

    fn hit(&self, namespace: Namespace, tier: &'static str) {
        match tier {
            "l1" => self.inner.l1_hits.fetch_add(1, Ordering::Relaxed),
            _ => self.inner.l2_hits.fetch_add(1, Ordering::Relaxed),
        };
        metrics::counter!(names::CACHE_HITS_TOTAL, "namespace" => namespace.as_str(), "tier" => tier).increment(1);
    }

    fn miss(&self, namespace: Namespace, tier: &'static str) {
        if tier == "l2" || self.inner.l2.is_none() {
            self.inner.misses.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!(names::CACHE_MISSES_TOTAL, "namespace" => namespace.as_str(), "tier" => tier).increment(1);
    }

    /// A cached value, from L1 or L2 (which back-fills L1); `None` on a miss.
    pub async fn get<T>(&self, namespace: Namespace, key: &str) -> Option<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let generation = self.generation(namespace).await;
        let l1_key = Self::l1_key(namespace, key);
        if let Some(value) = self.l1_lookup::<T>(self.inner.l1.get(&l1_key).await, generation) {
            self.hit(namespace, "l1");
            return Some(value);
        }
        self.miss(namespace, "l1");
        let l2_key = self.l2_key(namespace, key);
        match self.read_l2::<T>(namespace, &l2_key).await {
            Some((value, generation, json)) => {
                self.hit(namespace, "l2");
                self.put_l1(namespace, l1_key, json, generation).await;
                Some(value)
            }
            None => {
                if self.inner.l2.is_some() {
                    self.miss(namespace, "l2");
                }
                None
            }
        }
    }

    /// Several cached values at once, in the order of `keys`: L1 first, then one Redis
    /// round trip for all of L1's misses (a batch of chunks at ingest would otherwise
    /// cost one round trip per chunk).
    pub async fn get_many<T>(&self, namespace: Namespace, keys: &[String]) -> Vec<Option<T>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let generation = self.generation(namespace).await;
        let mut values: Vec<Option<T>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let entry = self.inner.l1.get(&Self::l1_key(namespace, key)).await;
            let value = self.l1_lookup::<T>(entry, generation);
            if value.is_some() {
                self.hit(namespace, "l1");
            } else {
                self.miss(namespace, "l1");
                missing.push(i);
            }
            values.push(value);
        }
        if missing.is_empty() || self.inner.l2.is_none() {
            return values;
        }
        let generation_key = self.generation_key(namespace);
        let l2_keys: Vec<String> = missing
            .iter()
            .map(|&i| self.l2_key(namespace, &keys[i]))
            .collect();
        let read = self
            .l2_call("mget", |mut conn| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&generation_key)
                    .cmd("MGET")
                    .arg(&l2_keys)
                    .query_async::<(Option<u64>, Vec<Option<Vec<u8>>>)>(&mut conn)
                    .await
            })
            .await;
        let Ok((remote_generation, raws)) = read else {
            missing.iter().for_each(|_| self.miss(namespace, "l2"));
            return values;
        };
        let found = self.accept_l2::<T>(namespace, remote_generation, raws);
        for (i, found) in missing.into_iter().zip(found) {
            match found {
                Some((value, generation, json)) => {
                    self.hit(namespace, "l2");
                    self.put_l1(
                        namespace,
                        Self::l1_key(namespace, &keys[i]),
                        json,
                        generation,
                    )
                    .await;
                    values[i] = Some(value);
                }
                None => self.miss(namespace, "l2"),
            }
        }
        values
    }

    /// Stores several values in both tiers, with one Redis round trip for all of them.
    pub async fn set_many<T>(&self, namespace: Namespace, items: &[(&str, &T)])
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        let generation = self.generation(namespace).await;
        let encoded: Vec<(&str, Arc<[u8]>)> = items
            .iter()
            .filter_map(|(key, value)| {
                let json = serde_json::to_vec(&Stored {
                    g: generation,
                    v: *value,
                })
                .ok()?;
                Some((*key, Arc::from(json)))
            })
            .collect();
        if self.inner.l2.is_some() && !encoded.is_empty() {
            let ttl_ms = self.inner.config.ttl(namespace).as_millis() as u64;
            let mut pipe = redis::pipe();
            for (key, json) in &encoded {
                pipe.cmd("SET")
                    .arg(self.l2_key(namespace, key))
                    .arg(&**json)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            let _ = self
                .l2_call("mset", |mut conn| async move {
                    pipe.query_async::<()>(&mut conn).await
                })
                .await;
        }
        for (key, json) in encoded {
            self.put_l1(namespace, Self::l1_key(namespace, key), json, generation)
                .await;
        }
    }

    async fn put_l1(&self, namespace: Namespace, l1_key: String, json: Arc<[u8]>, generation: u64) {
        let entry = self.entry(namespace, json, generation);
        self.inner.l1.insert(l1_key, entry).await;
        metrics::gauge!(names::CACHE_ENTRIES, "tier" => "l1")
            .set(self.inner.l1.entry_count() as f64);
    }

    /// Stores a value in both tiers.
    pub async fn set<T>(&self, namespace: Namespace, key: &str, value: &T)
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        let generation = self.generation(namespace).await;
        let Ok(json) = serde_json::to_vec(&Stored {
            g: generation,
            v: value,
        }) else {
            return;
        };
        let json: Arc<[u8]> = Arc::from(json);
        self.write_l2(namespace, &self.l2_key(namespace, key), json.clone())
            .await;
        self.put_l1(namespace, Self::l1_key(namespace, key), json, generation)
            .await;
    }

    fn entry(&self, namespace: Namespace, json: Arc<[u8]>, generation: u64) -> Entry {
        Entry {
            weight: json.len().min(u32::MAX as usize) as u32,
            json,
            generation,
            ttl: self.inner.config.ttl(namespace),
        }
    }

    // ---- invalidation -----------------------------------------------------------------

    /// Drops this instance's L1 copy only (L2 keeps the value): for memory pressure,
    /// tests and benchmarks of the L2 path.
    pub async fn forget_local(&self, namespace: Namespace, key: &str) {
        self.inner
            .l1
            .invalidate(&Self::l1_key(namespace, key))
            .await;
    }

    /// Removes one key from both tiers.
    pub async fn invalidate(&self, namespace: Namespace, key: &str) {
        self.inner
            .l1
            .invalidate(&Self::l1_key(namespace, key))
            .await;
        let l2_key = self.l2_key(namespace, key);
        let _ = self
            .l2_call("del", |mut conn| async move {
                redis::cmd("DEL")
                    .arg(&l2_key)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        metrics::counter!(names::CACHE_INVALIDATIONS_TOTAL, "namespace" => namespace.as_str(), "scope" => "key").increment(1);
    }

    /// Makes every entry of the namespace stale, on every instance: bumps the generation
    /// (in Redis when available) instead of scanning keys.
    pub async fn invalidate_namespace(&self, namespace: Namespace) {
        let key = self.generation_key(namespace);
        let remote = self
            .l2_call("invalidate", |mut conn| async move {
                redis::cmd("INCR")
                    .arg(&key)
                    .query_async::<u64>(&mut conn)
                    .await
            })
            .await;
        let i = namespace.index();
        match remote {
            Ok(generation) => {
                self.adopt_generation(namespace, generation);
            }
            Err(L2Unavailable) => {
                // Without Redis the bump is local; other instances adopt it when they
                // read a value this instance wrote under the newer generation.
                self.inner.generations[i].fetch_add(1, Ordering::AcqRel);
            }
        }
        self.inner.generations_checked[i].store(self.now_ms().max(1), Ordering::Relaxed);
        metrics::counter!(names::CACHE_INVALIDATIONS_TOTAL, "namespace" => namespace.as_str(), "scope" => "namespace").increment(1);
    }
}

#[cfg(test)]
mod tests;
