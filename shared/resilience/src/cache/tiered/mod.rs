//! The tiered cache itself: L1 in this process (quick_cache), L2 in Redis, single-flight
//! loads.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::observability::metrics::names;
use crate::store::RedisHandle;

use super::{CacheConfig, CacheStats, Namespace};
mod kept_metrics;
mod l1;
mod l2;
mod publish;
mod single_flight;

/// What L1 holds: the value's JSON exactly as L2 stores it (`Stored`), decoded on each
/// hit. Keeping JSON rather than the decoded value makes `CACHE_L1_MAX_BYTES` the real
/// footprint: a decoded `serde_json::Value` answer takes several times its JSON size.
/// An entry is served until `expires` (its namespace's TTL from when it was stored); an
/// expired one is a miss, and is evicted as the cache fills like any cold entry.
#[derive(Clone)]
struct Entry {
    json: Arc<[u8]>,
    generation: u64,
    expires: Instant,
    weight: u32,
}

/// The value an L1 entry holds for a caller whose view of the namespace's generation is
/// `generation`: `None` if the entry is older or not a `T`. Newer is current too:
/// generations only move forward.
fn current<T: DeserializeOwned>(entry: &Entry, generation: u64) -> Option<T> {
    if entry.generation < generation {
        return None;
    }
    decode(&entry.json)
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

struct L2 {
    redis: RedisHandle,
    /// Milliseconds since `started` until which Redis is skipped after a failure.
    skip_until: AtomicU64,
    healthy: AtomicBool,
}

struct Inner {
    config: CacheConfig,
    l1: l1::L1,
    l2: Option<L2>,
    started: Instant,
    generations: [AtomicU64; 5],
    generations_checked: [AtomicU64; 5],
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    /// How much of each count (l1 hits, l2 hits, misses) is already in Redis.
    published: [AtomicU64; 3],
    /// When counts were last sent to Redis, in milliseconds since `started`.
    published_at: AtomicU64,
    metrics: kept_metrics::CacheMetrics,
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

/// What an L1 entry costs beyond its JSON and key: its slot in the shard's slab (key,
/// entry, links: about 100 bytes), the ghost slots CLOCK-PRO keeps for evicted keys
/// (half as many again), the slab's spare capacity, the index, and the `Arc` and
/// allocator headers. moka's entries measured 400 with heaptrack (10,000 short answers,
/// ~450 bytes of JSON and ~75 of key, held 9.2 MB); quick_cache's take less, and the
/// bound keeps counting 400 so `CACHE_L1_MAX_BYTES` stays an upper bound.
const L1_ENTRY_OVERHEAD_BYTES: u64 = 400;

impl TieredCache {
    pub fn new(config: CacheConfig, redis: Option<RedisHandle>) -> Self {
        let l1 = l1::L1::new(
            config.l1_max_bytes,
            config.l1_max_entries,
            L1_ENTRY_OVERHEAD_BYTES,
        );
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
                published: Default::default(),
                published_at: AtomicU64::new(0),
                metrics: kept_metrics::CacheMetrics::new(),
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
            l1_entries: self.inner.l1.len(),
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
    /// Empty without Redis: every use of it is a Redis call, and hashing costs.
    fn l2_key(&self, namespace: Namespace, key: &str) -> String {
        if self.inner.l2.is_none() {
            return String::new();
        }
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
        current(&entry?, generation)
    }

    fn hit(&self, namespace: Namespace, tier: &'static str) {
        match tier {
            "l1" => self.inner.l1_hits.fetch_add(1, Ordering::Relaxed),
            _ => self.inner.l2_hits.fetch_add(1, Ordering::Relaxed),
        };
        self.inner.metrics.hit(namespace, tier);
        crate::observability::metrics::emf(&[(names::CACHE_HITS_TOTAL, 1.0, "Count")], &[]);
        self.publish_counts_when_due();
    }

    fn miss(&self, namespace: Namespace, tier: &'static str) {
        if tier == "l2" || self.inner.l2.is_none() {
            self.inner.misses.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.metrics.miss(namespace, tier);
        crate::observability::metrics::emf(&[(names::CACHE_MISSES_TOTAL, 1.0, "Count")], &[]);
        self.publish_counts_when_due();
    }

    /// A cached value, from L1 or L2 (which back-fills L1); `None` on a miss.
    pub async fn get<T>(&self, namespace: Namespace, key: &str) -> Option<T>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let generation = self.generation(namespace).await;
        let l1_key = Self::l1_key(namespace, key);
        if let Some(value) = self.l1_lookup::<T>(self.inner.l1.get(&l1_key), generation) {
            self.hit(namespace, "l1");
            return Some(value);
        }
        self.miss(namespace, "l1");
        let l2_key = self.l2_key(namespace, key);
        match self.read_l2::<T>(namespace, &l2_key).await {
            Some((value, generation, json)) => {
                self.hit(namespace, "l2");
                self.put_l1(namespace, l1_key, json, generation);
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
            let entry = self.inner.l1.get(&Self::l1_key(namespace, key));
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
                    );
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
            self.put_l1(namespace, Self::l1_key(namespace, key), json, generation);
        }
    }

    fn put_l1(&self, namespace: Namespace, l1_key: String, json: Arc<[u8]>, generation: u64) {
        self.store_l1(l1_key, self.entry(namespace, json, generation));
    }

    /// Stores `entry` in L1 and updates the entries gauge.
    fn store_l1(&self, l1_key: String, entry: Entry) {
        self.inner.l1.insert(l1_key, entry);
        self.inner
            .metrics
            .l1_entries
            .set(self.inner.l1.len() as f64);
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
        self.put_l1(namespace, Self::l1_key(namespace, key), json, generation);
    }

    /// Stores under `key` the value this process holds under `source`, as it is stored:
    /// one serialisation for a value kept under two keys. False, and nothing written, if
    /// `source` is not in L1 under the current generation; then call [`Self::set`].
    pub async fn copy(&self, namespace: Namespace, source: &str, key: &str) -> bool {
        let generation = self.generation(namespace).await;
        let Some(entry) = self.inner.l1.peek(&Self::l1_key(namespace, source)) else {
            return false;
        };
        if entry.generation != generation {
            return false;
        }
        self.write_l2(namespace, &self.l2_key(namespace, key), entry.json.clone())
            .await;
        self.put_l1(
            namespace,
            Self::l1_key(namespace, key),
            entry.json,
            generation,
        );
        true
    }

    fn entry(&self, namespace: Namespace, json: Arc<[u8]>, generation: u64) -> Entry {
        Entry {
            weight: json.len().min(u32::MAX as usize) as u32,
            json,
            generation,
            expires: Instant::now() + self.inner.config.ttl(namespace),
        }
    }

    // ---- invalidation -----------------------------------------------------------------

    /// Drops this instance's L1 copy only (L2 keeps the value): for memory pressure,
    /// tests and benchmarks of the L2 path.
    pub async fn forget_local(&self, namespace: Namespace, key: &str) {
        self.inner.l1.remove(&Self::l1_key(namespace, key));
    }

    /// Removes one key from both tiers.
    pub async fn invalidate(&self, namespace: Namespace, key: &str) {
        self.inner.l1.remove(&Self::l1_key(namespace, key));
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
        self.mark_generation_checked(namespace);
        metrics::counter!(names::CACHE_INVALIDATIONS_TOTAL, "namespace" => namespace.as_str(), "scope" => "namespace").increment(1);
    }
}

#[cfg(test)]
mod tests;
