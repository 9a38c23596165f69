//! Hits and misses: per process, and summed over every instance in Redis.

use serde::Serialize;

use crate::store::{RedisHandle, StoreError};

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
        self.counts().hit_rate()
    }

    /// This process's counts alone.
    pub fn counts(&self) -> CacheCounts {
        CacheCounts {
            l1_hits: self.l1_hits,
            l2_hits: self.l2_hits,
            misses: self.misses,
        }
    }
}

/// Lookups counted over every instance of the service: each instance with Redis adds its
/// counts to one hash (`TieredCache` publishes at most every few seconds). The health
/// function caches nothing itself, so this is the hit rate `/health/detailed` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheCounts {
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
}

impl CacheCounts {
    /// Hits over lookups, `None` before any lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let total = self.l1_hits + self.l2_hits + self.misses;
        (total > 0).then(|| (self.l1_hits + self.l2_hits) as f64 / total as f64)
    }
}

/// The Redis hash of the service-wide counts.
pub fn service_counts_key(prefix: &str) -> String {
    format!("{prefix}:stats:cache")
}

/// The fields of that hash, in `CacheCounts` order.
pub(crate) const COUNT_FIELDS: [&str; 3] = ["l1_hits", "l2_hits", "misses"];

/// What every instance has published so far; an error when Redis does not answer in time.
pub async fn read_service_counts(
    redis: &RedisHandle,
    prefix: &str,
) -> Result<CacheCounts, StoreError> {
    let key = service_counts_key(prefix);
    let read = async {
        let mut conn = redis.connection().await?;
        let values: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(&COUNT_FIELDS[..])
            .query_async(&mut conn)
            .await?;
        Ok::<_, StoreError>(values)
    };
    let budget = redis.timeout() * 2;
    let values = tokio::time::timeout(budget, read)
        .await
        .map_err(|_| StoreError::Timeout("redis", budget.as_millis()))??;
    let count = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
    Ok(CacheCounts {
        l1_hits: count(0),
        l2_hits: count(1),
        misses: count(2),
    })
}
