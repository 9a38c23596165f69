//! Loads on a miss, once per process (a flight in L1) and once across instances (a Redis
//! lock).

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
        let seen = self.inner.l1.get(&l1_key);
        if let Some(value) = seen.as_ref().and_then(|e| current::<T>(e, generation)) {
            self.hit(namespace, "l1");
            return Ok(value);
        }
        // The caller whose load runs gets its value (and error) as is; callers that
        // waited for it decode the stored JSON (and downcast the shared error).
        let mut loader = Some(loader);
        // A second round only for callers that waited for a load of an older generation
        // (they adopted a namespace bump meanwhile): they share a new load.
        for _ in 0..2 {
            let flight = match self.inner.l1.join(&l1_key, generation, seen.as_ref()) {
                // Stored by a load that landed since the lookup above.
                l1::Joined::Held(entry) => match current::<T>(&entry, generation) {
                    Some(value) => {
                        self.hit(namespace, "l1");
                        return Ok(value);
                    }
                    None => break,
                },
                l1::Joined::Flight(flight) => flight,
            };
            let landing = l1::Landing::new(&self.inner.l1, &l1_key, flight);
            let mut own: Option<Result<T, Arc<E>>> = None;
            let outcome = landing
                .flight()
                .outcome
                .get_or_init(|| async {
                    let loader = loader.take().expect("a caller's load runs at most once");
                    let loaded = self
                        .load_entry(namespace, key, &l1_key, generation, loader)
                        .await;
                    let outcome = match &loaded {
                        Ok((_, entry)) => Ok(entry.clone()),
                        Err(error) => Err(error.clone() as Arc<dyn std::any::Any + Send + Sync>),
                    };
                    own = Some(loaded.map(|(value, _)| value));
                    outcome
                })
                .await
                .clone();
            drop(landing);
            if let Some(result) = own {
                return result;
            }
            // Another caller's load: a hit when its value decodes as a T (answered from
            // the cache, not by a load of this caller's), its error when it is an E.
            match outcome {
                Ok(entry) if entry.generation < generation => continue,
                Ok(entry) => match current::<T>(&entry, generation) {
                    Some(value) => {
                        self.hit(namespace, "l1");
                        return Ok(value);
                    }
                    None => break,
                },
                Err(error) => match error.downcast::<E>() {
                    Ok(error) => return Err(error),
                    Err(_) => break,
                },
            }
        }
        // Another type under the key (a value or an error that is not this caller's), or
        // outdated twice: this caller loads, uncached.
        self.load_uncached(loader).await
    }

    /// The load of a caller that cannot use what is held or was loaded: uncached.
    async fn load_uncached<T, E, F, Fut>(&self, loader: Option<F>) -> Result<T, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let loader = loader.expect("a caller whose load did not run still has its loader");
        loader().await.map_err(Arc::new)
    }

    /// A miss's load: from L2 if it holds the key, else the loader (once across
    /// instances); the entry is stored in L1 before the flight lands.
    async fn load_entry<T, E, F, Fut>(
        &self,
        namespace: Namespace,
        key: &str,
        l1_key: &str,
        generation: u64,
        loader: F,
    ) -> Result<(T, Entry), Arc<E>>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.miss(namespace, "l1");
        let l2_key = self.l2_key(namespace, key);
        let (value, entry) = match self.read_l2::<T>(namespace, &l2_key).await {
            Some((value, generation, json)) => {
                self.hit(namespace, "l2");
                (value, self.entry(namespace, json, generation))
            }
            None => {
                if self.inner.l2.is_some() {
                    self.miss(namespace, "l2");
                }
                self.load_with_lock(namespace, &l2_key, generation, loader)
                    .await
                    .map_err(Arc::new)?
            }
        };
        if !entry.json.is_empty() {
            self.store_l1(l1_key.to_string(), entry.clone());
        }
        Ok((value, entry))
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
