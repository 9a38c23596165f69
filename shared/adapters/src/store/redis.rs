//! Optional Redis connection, opened lazily and shared.
//!
//! A Redis that is down at cold start does not stop the function: the first use
//! tries to connect (bounded by `REDIS_TIMEOUT_MS`) and later uses try again until
//! it answers. Once connected, the connection manager reconnects by itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::StoreError;
use crate::observability::redact::redact_url_credentials;

/// A validated `REDIS_URL`; `Display` hides any password.
#[derive(Clone)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match redis::Client::open(raw) {
            Ok(_) => Ok(Self(raw.to_string())),
            Err(_) => Err("expected redis://host:port[/db] or rediss://...".into()),
        }
    }

    /// The URL including credentials: only for opening connections, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url_credentials(&self.0))
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

#[derive(Clone)]
pub struct RedisHandle {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
    timeout: Duration,
    /// After a failure, every user skips Redis this long (`REDIS_RETRY_MS`).
    pause: Duration,
    /// Milliseconds after `epoch` until which Redis is skipped.
    paused_until: AtomicU64,
    /// A call failed and none has succeeded since: after the pause, one call probes
    /// while every other keeps skipping Redis, so an outage costs one request one
    /// timeout per pause, not every request that arrives while the probe waits.
    suspect: AtomicBool,
    probing: AtomicBool,
    epoch: Instant,
}

/// Ends a probe however its call ends (a cancelled probe must not block Redis forever).
struct Probe<'a>(&'a AtomicBool);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
            .field("connected", &self.inner.manager.initialized())
            .finish()
    }
}

impl RedisHandle {
    /// Prepares the client without connecting; a failure pauses Redis for 1 s.
    pub fn new(url: &RedisUrl, timeout: Duration) -> Result<Self, StoreError> {
        Self::with_pause(url, timeout, Duration::from_secs(1))
    }

    /// Prepares the client without connecting. After any user's call fails, every user
    /// (cache, rate limits, breaker sync) skips Redis for `pause` and falls back at
    /// once, instead of each request waiting out the timeout on a Redis that is down
    /// or frozen.
    pub fn with_pause(
        url: &RedisUrl,
        timeout: Duration,
        pause: Duration,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            inner: Arc::new(Inner {
                client: redis::Client::open(url.expose())?,
                manager: OnceCell::new(),
                timeout,
                pause,
                paused_until: AtomicU64::new(0),
                suspect: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                epoch: Instant::now(),
            }),
        })
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Whether Redis is in its pause after a failure: callers take their fallback.
    pub fn paused(&self) -> bool {
        self.now_ms() < self.inner.paused_until.load(Ordering::Relaxed)
    }

    /// A call failed or timed out: pause Redis for every user.
    pub fn failed(&self) {
        let until = self.now_ms() + self.inner.pause.as_millis() as u64;
        self.inner.paused_until.store(until, Ordering::Relaxed);
        self.inner.suspect.store(true, Ordering::Release);
    }

    /// Runs one operation unless Redis is paused, bounded by twice the timeout; a
    /// failure starts the pause.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        if self.paused() {
            return Self::skipped().await;
        }
        // After a failure, one call at a time finds out whether Redis is back.
        let _probe = if self.inner.suspect.load(Ordering::Acquire) {
            if self
                .inner
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Self::skipped().await;
            }
            Some(Probe(&self.inner.probing))
        } else {
            None
        };
        let limit = self.inner.timeout * 2;
        let attempt = async {
            let conn = self.connection().await?;
            Ok::<T, StoreError>(call(conn).await?)
        };
        let outcome = match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout("redis", limit.as_millis())),
        };
        match &outcome {
            Err(_) => self.failed(),
            Ok(_) => self.inner.suspect.store(false, Ordering::Release),
        }
        outcome
    }

    /// A call skipped while Redis is paused or probed. It spends the task's cooperative
    /// budget: a caller looping on fallbacks that never wait (an L1 hit, an in-process
    /// limit) would otherwise never yield, and on a single-threaded runtime the probe it
    /// waits for could never finish.
    async fn skipped<T>() -> Result<T, StoreError> {
        tokio::task::consume_budget().await;
        Err(StoreError::Paused("redis"))
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// A shared, self-reconnecting connection; connects on first use.
    pub async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let timeout = self.inner.timeout;
        let manager = self
            .inner
            .manager
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(1000);
                let connect = ConnectionManager::new_with_config(self.inner.client.clone(), config);
                match tokio::time::timeout(timeout * 2, connect).await {
                    Ok(result) => result.map_err(StoreError::from),
                    Err(_) => Err(StoreError::Timeout("redis", (timeout * 2).as_millis())),
                }
            })
            .await?;
        Ok(manager.clone())
    }

    /// `PING`, bounded by the configured timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let timeout = self.inner.timeout;
        let attempt = async {
            let mut conn = self.connection().await?;
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok::<(), StoreError>(())
        };
        match tokio::time::timeout(timeout * 3, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout("redis", (timeout * 3).as_millis())),
        }
    }
}
