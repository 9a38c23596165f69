//! Breaker state shared through Redis: one state and one half-open probe for every instance.

use super::*;

impl CircuitBreaker {
    /// Logs only changes between reachable and unreachable. Each call goes through
    /// `RedisHandle::run`: while Redis is paused after a failure (of any of its users) it
    /// fails at once, and the local state decides.
    fn note_redis<T>(
        &self,
        shared: &Shared,
        outcome: Result<T, crate::store::StoreError>,
    ) -> Option<T> {
        let ok = outcome.is_ok();
        let was = shared.healthy.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!(breaker = %self.inner.name, "shared breaker state reachable again");
            } else {
                let error = outcome.as_ref().err().map(|e| e.to_string());
                tracing::warn!(breaker = %self.inner.name, error, "shared breaker state unreachable; using the local breaker");
            }
        }
        outcome.ok()
    }

    pub(super) async fn sync_from_shared(&self) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        let now = self.inner.clock.now_millis();
        {
            let mut local = self.inner.local.lock().expect("breaker lock");
            let interval = self.inner.config.shared_sync.as_millis() as u64;
            if let Some(last) = local.last_sync {
                if now < last + interval {
                    return;
                }
            }
            local.last_sync = Some(now);
        }
        let read = shared
            .redis
            .run(|mut conn| async move {
                redis::cmd("GET")
                    .arg(&shared.open_key)
                    .query_async::<Option<u64>>(&mut conn)
                    .await
            })
            .await;
        let Some(open_until) = self.note_redis(shared, read) else {
            return;
        };
        let mut local = self.inner.local.lock().expect("breaker lock");
        match open_until {
            // Open somewhere (or re-opened by a failed probe): open here, ending together.
            Some(until) if until > now => {
                if local.state != BreakerState::Open {
                    self.transition(&mut local, BreakerState::Open, "opened by another instance");
                }
                local.open_until = until;
            }
            // The shared cool-down is over: half-open together (one instance will probe).
            Some(_) => {
                if local.state == BreakerState::Open {
                    self.transition(
                        &mut local,
                        BreakerState::HalfOpen,
                        "shared cool-down elapsed",
                    );
                }
            }
            // The prober closed it (key deleted): close here too.
            None => {
                if local.state != BreakerState::Closed {
                    self.transition(
                        &mut local,
                        BreakerState::Closed,
                        "closed by another instance",
                    );
                }
            }
        }
    }

    /// `Some(true)` if this instance got the probe lock, `Some(false)` if another has it,
    /// `None` if Redis did not answer.
    pub(super) async fn claim_probe(&self, shared: &Shared) -> Option<bool> {
        // As long as the shortest cool-down: a trial that was cancelled (its caller
        // left) never deletes the lock, and must not hold every instance off for the
        // longest cool-down.
        let ttl = self.inner.config.open_min.max(Duration::from_secs(1));
        let now = self.inner.clock.now_millis();
        let claim = shared
            .redis
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&shared.probe_key)
                    .arg(now)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await;
        self.note_redis(shared, claim).map(|set| set.is_some())
    }

    pub(super) async fn publish(&self, shared: &Shared, transition: Transition, was_probe: bool) {
        if transition == Transition::None {
            return;
        }
        let keep = self.inner.config.open_for + Duration::from_secs(60);
        let write = shared.redis.run(|mut conn| async move {
            match transition {
                Transition::Opened { until } => {
                    let mut pipe = redis::pipe();
                    pipe.cmd("SET")
                        .arg(&shared.open_key)
                        .arg(until)
                        .arg("PX")
                        .arg(keep.as_millis() as u64);
                    if was_probe {
                        pipe.cmd("DEL").arg(&shared.probe_key);
                    }
                    pipe.query_async::<()>(&mut conn).await
                }
                Transition::Closed => {
                    redis::pipe()
                        .cmd("DEL")
                        .arg(&shared.open_key)
                        .cmd("DEL")
                        .arg(&shared.probe_key)
                        .query_async::<()>(&mut conn)
                        .await
                }
                Transition::None => Ok(()),
            }
        });
        self.note_redis(shared, write.await);
    }
}
