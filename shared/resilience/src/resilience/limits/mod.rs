//! Per-key rate limits (C9, feature `rate-limits`) and a cap on concurrent sessions.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::observability::metrics::names;

#[cfg(feature = "rate-limits")]
mod rate;
#[cfg(feature = "rate-limits")]
pub use rate::RateLimiter;

/// A request over a limit; becomes a 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LimitExceeded {
    pub message: String,
    pub retry_after: Duration,
}

/// Caps concurrent work (chat sessions by default); refuses with a hint instead of queueing.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimiter {
    name: &'static str,
    max: usize,
    semaphore: Arc<Semaphore>,
    retry_after: Duration,
    /// `concurrent_sessions{limiter=...}`, kept: it is set twice per session.
    in_use_gauge: metrics::Gauge,
}

/// Held while the session runs; the slot is released when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    _permit: OwnedSemaphorePermit,
    limiter: ConcurrencyLimiter,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        // The permit is returned right after this; count it as gone already.
        self.limiter.export(1);
    }
}

impl ConcurrencyLimiter {
    pub fn new(name: &'static str, max: usize, retry_after: Duration) -> Self {
        // Handles taken before the recorder is installed would count nowhere.
        crate::observability::metrics::install();
        let limiter = Self {
            name,
            max,
            semaphore: Arc::new(Semaphore::new(max)),
            retry_after,
            in_use_gauge: metrics::gauge!(names::CONCURRENT_SESSIONS, "limiter" => name),
        };
        limiter.export(0);
        limiter
    }

    /// Number of slots in use.
    pub fn in_use(&self) -> usize {
        self.max - self.semaphore.available_permits()
    }

    fn export(&self, releasing: usize) {
        self.in_use_gauge
            .set(self.in_use().saturating_sub(releasing) as f64);
    }

    pub fn try_acquire(&self) -> Result<SessionSlot, LimitExceeded> {
        match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => {
                let slot = SessionSlot {
                    _permit: permit,
                    limiter: self.clone(),
                };
                self.export(0);
                Ok(slot)
            }
            Err(_) => {
                metrics::counter!(names::CONCURRENCY_REJECTIONS_TOTAL, "limiter" => self.name)
                    .increment(1);
                Err(LimitExceeded {
                    message: format!(
                        "too many concurrent {} (limit {}); retry shortly",
                        self.name, self.max
                    ),
                    retry_after: self.retry_after,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_limit_refuses_then_frees_slots() {
        let limiter = ConcurrencyLimiter::new("sessions", 2, Duration::from_secs(1));
        let a = limiter.try_acquire().unwrap();
        let _b = limiter.try_acquire().unwrap();
        let refused = limiter.try_acquire().unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(refused.message.contains("limit 2"));
        assert_eq!(limiter.in_use(), 2);
        drop(a);
        assert_eq!(limiter.in_use(), 1);
        assert!(limiter.try_acquire().is_ok());
    }

    #[test]
    fn the_slots_in_use_are_exported_through_the_kept_gauge() {
        // A limiter name of its own: the gauge is the process's.
        let limiter = ConcurrencyLimiter::new("kept-gauge-test", 3, Duration::from_secs(1));
        let in_use = || {
            crate::observability::metrics::series_value(
                &crate::observability::metrics::render(),
                r#"chat_concurrent_sessions{limiter="kept-gauge-test"}"#,
            )
        };
        assert_eq!(in_use(), 0.0);
        let a = limiter.try_acquire().unwrap();
        let b = limiter.try_acquire().unwrap();
        assert_eq!(in_use(), 2.0);
        drop(a);
        assert_eq!(in_use(), 1.0);
        drop(b);
        assert_eq!(in_use(), 0.0);
    }
}
