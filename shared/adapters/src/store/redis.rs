//! Optional Redis connection, opened lazily and shared.
//!
//! A Redis that is down at cold start does not stop the function: the first use
//! tries to connect (bounded by `REDIS_TIMEOUT_MS`) and later uses try again until
//! it answers. Once connected, the connection manager reconnects by itself.

use std::sync::Arc;
use std::time::Duration;

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
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
            .field("connected", &self.inner.manager.initialized())
            .finish()
    }
}

impl RedisHandle {
    /// Prepares the client without connecting.
    pub fn new(url: &RedisUrl, timeout: Duration) -> Result<Self, StoreError> {
        Ok(Self {
            inner: Arc::new(Inner {
                client: redis::Client::open(url.expose())?,
                manager: OnceCell::new(),
                timeout,
            }),
        })
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
