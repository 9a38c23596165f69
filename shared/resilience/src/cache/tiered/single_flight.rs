//! Loads on a miss, once per process (moka) and once across instances (a Redis lock).

use super::*;

impl TieredCache {
    /// The cached value, or the loader's, cached for the namespace's TTL. Concurrent
    /// misses of one key run `loader` once in this process, and with Redis once across
    /// instances unless the lock holder takes longer than `lock_wait`. Loader errors are
    /// returned and not cached.
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        namespace: Namespace,
        key: &str,
        loader: F,
    ) -> Result<T, Arc<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let generation = self.generation(namespace).await;
        let l1_key = Self::l1_key(namespace, key);
        let l2_key = self.l2_key(namespace, key);
        // The caller whose load runs gets its value as is; callers that waited for it
        // decode the cached JSON.
        let mut own: Option<T> = None;
        let mut loader = Some(loader);
        // One L1 lookup: `try_get_with` returns what L1 holds, or runs the load once for
        // every caller that asks meanwhile (a separate `get` first cost a second lookup).
        // A second round only after an entry that is stale or of another type.
        for round in 0..2 {
            let entry = self
                .inner
                .l1
                .try_get_with_by_ref(&l1_key, async {
                    self.miss(namespace, "l1");
                    if let Some((value, generation, json)) =
                        self.read_l2::<T>(namespace, &l2_key).await
                    {
                        self.hit(namespace, "l2");
                        own = Some(value);
                        return Ok(self.entry(namespace, json, generation));
                    }
                    if self.inner.l2.is_some() {
                        self.miss(namespace, "l2");
                    }
                    let loader = loader.take().expect("the loader runs at most once");
                    let (value, entry) = self
                        .load_with_lock(namespace, &l2_key, generation, loader)
                        .await?;
                    own = Some(value);
                    Ok(entry)
                })
                .await?;
            if let Some(value) = own {
                self.inner
                    .metrics
                    .l1_entries
                    .set(self.inner.l1.entry_count() as f64);
                return Ok(value);
            }
            // Held already, or loaded meanwhile by another caller (counted as a hit: the
            // answer came from the cache, not from a load of this caller's).
            if let Some(value) = self.l1_lookup::<T>(Some(entry), generation) {
                self.hit(namespace, "l1");
                return Ok(value);
            }
            if round == 0 {
                self.drop_if_outdated::<T>(&l1_key, generation).await;
            }
        }
        // The shared entry still does not decode as a T (another type under the same key,
        // written again meanwhile, or a value JSON cannot represent): load here, uncached.
        match loader.take() {
            Some(loader) => loader().await.map_err(Arc::new),
            None => unreachable!("a loader that ran set `own`"),
        }
    }

    /// Removes the L1 entry under `l1_key` if it is older than `generation` or not a
    /// `T`'s, and only then: re-checked inside `and_compute_with`, so an entry another
    /// caller has loaded in its place since this caller looked is kept (a plain
    /// `invalidate` would drop it, and the next callers would load again). moka
    /// serialises this with other computations on the key, not with a load or an insert:
    /// one landing between the check and the removal costs one more load.
    pub(super) async fn drop_if_outdated<T: DeserializeOwned>(
        &self,
        l1_key: &str,
        generation: u64,
    ) {
        use moka::ops::compute::Op;
        self.inner
            .l1
            .entry_by_ref(l1_key)
            .and_compute_with(|held| async move {
                match held {
                    Some(entry) if current::<T>(entry.value(), generation).is_some() => Op::Nop,
                    Some(_) => Op::Remove,
                    None => Op::Nop,
                }
            })
            .await;
    }

    pub(super) async fn load_with_lock<T, E, F, Fut>(
        &self,
        namespace: Namespace,
        l2_key: &str,
        generation: u64,
        loader: F,
    ) -> Result<(T, Entry), E>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // Without Redis there is no lock to take (and no token to make for it).
        let (lock_key, token, locked) = match self.inner.l2.is_some() {
            true => {
                let token = uuid::Uuid::new_v4().to_string();
                let lock_key = self.lock_key(l2_key);
                let locked = self.try_lock(&lock_key, &token).await;
                (lock_key, token, locked)
            }
            false => (String::new(), String::new(), None),
        };
        if locked == Some(false) {
            // Another instance is loading: wait for its value rather than call upstream too.
            let deadline = Instant::now() + self.inner.config.lock_wait;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Some((value, generation, json)) = self.read_l2::<T>(namespace, l2_key).await
                {
                    self.hit(namespace, "l2");
                    return Ok((value, self.entry(namespace, json, generation)));
                }
            }
            tracing::debug!(
                namespace = namespace.as_str(),
                "cache: lock holder too slow; loading here too"
            );
        }
        self.inner.metrics.load(namespace);
        let loaded = loader().await;
        let result = match loaded {
            Ok(value) => {
                let json = serde_json::to_vec(&Stored {
                    g: generation,
                    v: &value,
                })
                .unwrap_or_default();
                let json: Arc<[u8]> = Arc::from(json);
                if !json.is_empty() {
                    self.write_l2(namespace, l2_key, json.clone()).await;
                }
                let entry = self.entry(namespace, json, generation);
                Ok((value, entry))
            }
            Err(err) => Err(err),
        };
        if locked == Some(true) {
            self.unlock(&lock_key, &token).await;
        }
        result
    }

    /// `Some(true)`: this instance holds the lock; `Some(false)`: another does; `None`: no Redis.
    pub(super) async fn try_lock(&self, lock_key: &str, token: &str) -> Option<bool> {
        let ttl = self.inner.config.lock_ttl.as_millis() as u64;
        let key = lock_key.to_string();
        let token = token.to_string();
        self.l2_call("lock", |mut conn| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl)
                .query_async(&mut conn)
                .await?;
            Ok(set.is_some())
        })
        .await
        .ok()
    }

    pub(super) async fn unlock(&self, lock_key: &str, token: &str) {
        // Delete only our own lock, not one a later holder took after ours expired.
        const UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
        let key = lock_key.to_string();
        let token = token.to_string();
        let _ = self
            .l2_call("unlock", |mut conn| async move {
                redis::Script::new(UNLOCK)
                    .key(&key)
                    .arg(&token)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }
}
