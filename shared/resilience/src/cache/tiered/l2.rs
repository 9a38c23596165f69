//! The Redis tier: every call with degradation to L1 alone, namespace generations, reads and writes.

use super::*;
use crate::store::StoreError;

impl TieredCache {
    /// Runs one Redis operation unless Redis is in its pause after a failure; records
    /// the outcome and logs only changes between reachable and unreachable.
    pub(super) async fn l2_call<T, Fut>(
        &self,
        op: &'static str,
        call: impl FnOnce(redis::aio::ConnectionManager) -> Fut,
    ) -> Result<T, L2Unavailable>
    where
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let Some(l2) = &self.inner.l2 else {
            return Err(L2Unavailable);
        };
        // Paused by this cache's own failure, or (inside `run`) by any other user's of
        // the same Redis; `run` bounds the call and starts the shared pause on failure.
        if self.now_ms() < l2.skip_until.load(Ordering::Relaxed) {
            return Err(L2Unavailable);
        }
        match l2.redis.run(call).await {
            Ok(value) => {
                if !l2.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("cache: Redis (L2) is back; using both tiers");
                }
                Ok(value)
            }
            Err(StoreError::Paused(_)) => Err(L2Unavailable),
            Err(error) => {
                metrics::counter!(names::CACHE_L2_ERRORS_TOTAL, "op" => op).increment(1);
                let pause = self.inner.config.l2_retry_after.as_millis() as u64;
                l2.skip_until
                    .store(self.now_ms() + pause, Ordering::Relaxed);
                if l2.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(op, error = %crate::observability::redact::redact(&error.to_string()), "cache: Redis (L2) unavailable; serving from L1 only");
                }
                Err(L2Unavailable)
            }
        }
    }

    /// The namespace's current generation; refreshed from Redis at most every `generation_refresh`.
    pub(super) async fn generation(&self, namespace: Namespace) -> u64 {
        let i = namespace.index();
        let local = self.inner.generations[i].load(Ordering::Acquire);
        if self.inner.l2.is_none() {
            return local;
        }
        let refresh = self.inner.config.generation_refresh.as_millis() as u64;
        let checked = self.inner.generations_checked[i].load(Ordering::Relaxed);
        if checked != 0 && self.generation_stamp() < checked + refresh {
            return local;
        }
        self.mark_generation_checked(namespace);
        let key = self.generation_key(namespace);
        match self
            .l2_call("generation", |mut conn| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<u64>>(&mut conn)
                    .await
            })
            .await
        {
            Ok(remote) => self.adopt_generation(namespace, remote.unwrap_or(0)),
            Err(L2Unavailable) => local,
        }
    }

    /// When a namespace's generation was last read: milliseconds plus one, so 0 stays
    /// "never" and a read in the cache's first millisecond is not taken, with no refresh
    /// interval, for one still fresh.
    fn generation_stamp(&self) -> u64 {
        self.now_ms() + 1
    }

    pub(super) fn mark_generation_checked(&self, namespace: Namespace) {
        self.inner.generations_checked[namespace.index()]
            .store(self.generation_stamp(), Ordering::Relaxed);
    }

    /// Generations only move forward, whichever instance bumped them.
    pub(super) fn adopt_generation(&self, namespace: Namespace, seen: u64) -> u64 {
        let i = namespace.index();
        self.inner.generations[i]
            .fetch_max(seen, Ordering::AcqRel)
            .max(seen)
    }

    /// Reads L2 and the namespace generation in one round trip; a value written under
    /// an older generation is a miss.
    pub(super) async fn read_l2<T: DeserializeOwned>(
        &self,
        namespace: Namespace,
        l2_key: &str,
    ) -> Option<FromL2<T>> {
        self.inner.l2.as_ref()?;
        let generation_key = self.generation_key(namespace);
        let key = l2_key.to_string();
        let (remote_generation, raw) = self
            .l2_call("get", |mut conn| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&generation_key)
                    .cmd("GET")
                    .arg(&key)
                    .query_async::<(Option<u64>, Option<Vec<u8>>)>(&mut conn)
                    .await
            })
            .await
            .ok()?;
        let mut found = self.accept_l2(namespace, remote_generation, vec![raw]);
        found.pop().flatten()
    }

    /// Decodes values read from L2 together with the namespace generation: a value
    /// written under an older generation is a miss, and one written under a newer
    /// generation means another instance invalidated the namespace while Redis was
    /// unreachable for it, so this instance adopts that generation too.
    pub(super) fn accept_l2<T: DeserializeOwned>(
        &self,
        namespace: Namespace,
        remote_generation: Option<u64>,
        raws: Vec<Option<Vec<u8>>>,
    ) -> Vec<Option<FromL2<T>>> {
        let decoded: Vec<Option<(Stored<T>, Vec<u8>)>> = raws
            .into_iter()
            .map(|raw| {
                let raw = raw?;
                let stored = serde_json::from_slice(&raw).ok()?;
                Some((stored, raw))
            })
            .collect();
        let seen = decoded
            .iter()
            .flatten()
            .map(|(stored, _)| stored.g)
            .fold(remote_generation.unwrap_or(0), u64::max);
        let generation = self.adopt_generation(namespace, seen);
        self.mark_generation_checked(namespace);
        decoded
            .into_iter()
            .map(|found| {
                let (stored, raw) = found?;
                (stored.g == generation).then(|| (stored.v, generation, Arc::from(raw)))
            })
            .collect()
    }

    pub(super) async fn write_l2(&self, namespace: Namespace, l2_key: &str, json: Arc<[u8]>) {
        if self.inner.l2.is_none() {
            return;
        }
        let ttl_ms = self.inner.config.ttl(namespace).as_millis() as u64;
        let key = l2_key.to_string();
        let _ = self
            .l2_call("set", |mut conn| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&*json)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
    }
}
