//! The per-key rate limit (C9).
//!
//! The rate limit is GCRA: in Redis, one Lua script decides atomically with Redis's own
//! clock, so every instance shares one budget per key; in-process (`governor`) when no
//! Redis is configured, and as a fallback while Redis does not answer.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::LimitExceeded;
use crate::observability::metrics::names;
use crate::store::RedisHandle;

/// GCRA in one atomic step: `TAT` (theoretical arrival time) per key, microseconds.
/// ARGV: emission interval (µs per request), burst (requests per window).
/// Returns {1, 0} when allowed, {0, wait_µs} when not.
const GCRA_SCRIPT: &str = r#"
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - emission * burst
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
"#;

/// `limit` requests per `window` for each key.
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    local: DefaultKeyedRateLimiter<String>,
    redis: Option<(RedisHandle, redis::Script)>,
    prefix: String,
    redis_healthy: AtomicBool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

impl RateLimiter {
    /// `limit` must be at least 1 and `window` at least 1 ms (configuration validates both).
    pub fn new(limit: u32, window: Duration, redis: Option<RedisHandle>, prefix: &str) -> Self {
        let burst = NonZeroU32::new(limit.max(1)).expect("at least one");
        let period = (window / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("non-zero period")
            .allow_burst(burst);
        Self {
            limit: burst.get(),
            window,
            local: DefaultKeyedRateLimiter::keyed(quota),
            redis: redis.map(|r| (r, redis::Script::new(GCRA_SCRIPT))),
            prefix: prefix.to_string(),
            redis_healthy: AtomicBool::new(true),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window `limit` applies to: no refusal lasts longer.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Decides for one request of `key` (an API key name, a client id...).
    pub async fn check(&self, key: &str) -> Result<(), LimitExceeded> {
        if let Some((redis, script)) = &self.redis {
            match self.check_redis(redis, script, key).await {
                Ok(decision) => {
                    self.note_redis(true, None);
                    return self.count(decision, "redis");
                }
                Err(err) => {
                    self.note_redis(false, Some(err));
                    metrics::counter!(names::RATE_LIMIT_FALLBACKS_TOTAL).increment(1);
                }
            }
        }
        self.count(self.check_local(key), "local")
    }

    /// The in-process decision alone (no I/O).
    pub fn check_local(&self, key: &str) -> Result<(), LimitExceeded> {
        match self.local.check_key(&key.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                Err(self.exceeded(not_until.wait_time_from(DefaultClock::default().now())))
            }
        }
    }

    async fn check_redis(
        &self,
        redis: &RedisHandle,
        script: &redis::Script,
        key: &str,
    ) -> Result<Result<(), LimitExceeded>, String> {
        let emission_us = (self.window.as_micros() / self.limit as u128).max(1) as u64;
        let redis_key = format!("{}:ratelimit:{key}", self.prefix);
        // While Redis is paused after a failure (of any of its users) this fails at
        // once, and the in-process limit decides.
        let limit = self.limit;
        let (allowed, wait_us): (i64, i64) = redis
            .run(|mut conn| async move {
                script
                    .key(&redis_key)
                    .arg(emission_us)
                    .arg(limit)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(if allowed == 1 {
            Ok(())
        } else {
            Err(self.exceeded(Duration::from_micros(wait_us.max(0) as u64)))
        })
    }

    fn exceeded(&self, wait: Duration) -> LimitExceeded {
        LimitExceeded {
            message: format!(
                "rate limit of {} requests per {} s exceeded",
                self.limit,
                self.window.as_secs_f64()
            ),
            retry_after: wait.max(Duration::from_millis(1)),
        }
    }

    fn count(
        &self,
        decision: Result<(), LimitExceeded>,
        backend: &'static str,
    ) -> Result<(), LimitExceeded> {
        if decision.is_err() {
            metrics::counter!(names::RATE_LIMITED_TOTAL, "backend" => backend).increment(1);
        }
        decision
    }

    fn note_redis(&self, ok: bool, error: Option<String>) {
        if self.redis_healthy.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("rate limits back on Redis");
            } else {
                tracing::warn!(
                    error = error.as_deref(),
                    "Redis rate limit unavailable; deciding in-process"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_limit_lets_exactly_the_limit_through() {
        let limiter = RateLimiter::new(10, Duration::from_secs(60), None, "t");
        let passed = (0..40)
            .filter(|_| limiter.check_local("alice").is_ok())
            .count();
        assert_eq!(passed, 10);
        let refused = limiter.check_local("alice").unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(5), "{refused:?}");
        assert!(
            limiter.check_local("bob").is_ok(),
            "keys have separate budgets"
        );
    }
}
