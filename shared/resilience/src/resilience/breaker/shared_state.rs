//! Breaker state shared through Redis: one state and one half-open probe for every instance.

use super::*;

impl CircuitBreaker {
    pub(super) fn note_redis(
        &self,
        shared: &Shared,
        ok: bool,
        error: Option<&crate::store::StoreError>,
    ) {
        if !ok {
            // Every other user of Redis skips it for a moment too.
            shared.redis.failed();
        }
        let was = shared.healthy.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!(breaker = %self.inner.name, "shared breaker state reachable again");
            } else {
                tracing::warn!(breaker = %self.inner.name, error = ?error.map(|e| e.to_string()), "shared breaker state unreachable; using the local breaker");
            }
        }
    }

    pub(super) async fn sync_from_shared(&self) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        // Redis failed a moment ago: the local state decides, at once.
        if shared.redis.paused() {
            return;
        }
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
        let read = async {
            let mut conn = shared.redis.connection().await?;
            let value: Option<u64> = redis::cmd("GET")
                .arg(&shared.open_key)
                .query_async(&mut conn)
                .await?;
            Ok::<_, crate::store::StoreError>(value)
        };
        let open_until = match tokio::time::timeout(shared.redis.timeout() * 2, read).await {
            Ok(Ok(value)) => {
                self.note_redis(shared, true, None);
                value
            }
            Ok(Err(err)) => {
                self.note_redis(shared, false, Some(&err));
                return;
            }
            Err(_) => {
                self.note_redis(shared, false, None);
                return;
            }
        };
        let mut local = self.inner.local.lock().expect("breaker lock");
        let open_for = self.inner.config.open_for.as_millis() as u64;
        match open_until {
            // Open somewhere (or re-opened by a failed probe): open here, ending together.
            Some(until) if until > now => {
                if local.state != BreakerState::Open {
                    self.transition(&mut local, BreakerState::Open, "opened by another instance");
                }
                local.opened_at = until.saturating_sub(open_for);
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
        if shared.redis.paused() {
            return None;
        }
        let ttl = self.inner.config.open_for.max(Duration::from_secs(1));
        let claim = async {
            let mut conn = shared.redis.connection().await?;
            let set: Option<String> = redis::cmd("SET")
                .arg(&shared.probe_key)
                .arg(self.inner.clock.now_millis())
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            Ok::<_, crate::store::StoreError>(set.is_some())
        };
        match tokio::time::timeout(shared.redis.timeout() * 2, claim).await {
            Ok(Ok(won)) => {
                self.note_redis(shared, true, None);
                Some(won)
            }
            Ok(Err(err)) => {
                self.note_redis(shared, false, Some(&err));
                None
            }
            Err(_) => {
                self.note_redis(shared, false, None);
                None
            }
        }
    }

    pub(super) async fn publish(&self, shared: &Shared, transition: Transition, was_probe: bool) {
        let keep = self.inner.config.open_for + Duration::from_secs(60);
        let write = async {
            let mut conn = shared.redis.connection().await?;
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
                    let _: () = pipe.query_async(&mut conn).await?;
                }
                Transition::Closed => {
                    let _: () = redis::pipe()
                        .cmd("DEL")
                        .arg(&shared.open_key)
                        .cmd("DEL")
                        .arg(&shared.probe_key)
                        .query_async(&mut conn)
                        .await?;
                }
                Transition::None => {}
            }
            Ok::<_, crate::store::StoreError>(())
        };
        if transition == Transition::None || shared.redis.paused() {
            return;
        }
        match tokio::time::timeout(shared.redis.timeout() * 2, write).await {
            Ok(Ok(())) => self.note_redis(shared, true, None),
            Ok(Err(err)) => self.note_redis(shared, false, Some(&err)),
            Err(_) => self.note_redis(shared, false, None),
        }
    }
}
