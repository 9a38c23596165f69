//! Retries with exponential backoff and full jitter (C7), on top of `backon`.
//!
//! Only errors the caller marks retryable are retried (network errors, 429, 5xx); a
//! `Retry-After` from the dependency replaces the computed delay. Attempts stop at the
//! maximum count or when the next wait would pass the total time budget. Streaming
//! calls must only wrap the part before the first byte is sent to the client.

use std::future::Future;
use std::time::Duration;

// tokio's clock, so paused-time tests see the same budget the waits use.
use tokio::time::Instant;

use backon::{ExponentialBuilder, Retryable};

/// What a retry loop may spend.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    pub max_attempts: usize,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Wall-clock budget for all attempts and waits together.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(20),
        }
    }
}

/// How an error tells the retry loop what to do.
pub trait RetryClass {
    /// Worth another attempt (network error, timeout, 429, 5xx)?
    fn is_retryable(&self) -> bool;
    /// The dependency's `Retry-After`, if it sent one.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// "Full jitter": a uniformly random wait between zero and the exponential delay.
fn full_jitter(delay: Duration) -> Duration {
    let millis = delay.as_millis() as u64;
    Duration::from_millis(fastrand::u64(0..=millis))
}

/// The wait before the next attempt, or `None` to stop: the dependency's `Retry-After`
/// wins over the jittered backoff, and no wait may end past the budget.
pub(crate) fn next_delay(
    backoff: Option<Duration>,
    retry_after: Option<Duration>,
    elapsed: Duration,
    budget: Duration,
) -> Option<Duration> {
    let backoff = backoff?;
    let wait = retry_after.unwrap_or_else(|| full_jitter(backoff));
    (elapsed + wait < budget).then_some(wait)
}

/// Runs `operation` until it succeeds, fails with a non-retryable error, or the policy
/// is spent; returns the last result.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    name: &'static str,
    operation: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: RetryClass + std::fmt::Display,
{
    let started = Instant::now();
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.base_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_attempts.saturating_sub(1));
    let budget = policy.budget;
    operation
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &E| e.is_retryable())
        .adjust(move |e: &E, delay| next_delay(delay, e.retry_after(), started.elapsed(), budget))
        .notify(|e: &E, wait| {
            metrics::counter!(crate::observability::metrics::names::RETRIES_TOTAL, "operation" => name).increment(1);
            tracing::warn!(operation = name, error = %e, wait_ms = wait.as_millis() as u64, "retrying");
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Failure {
        retryable: bool,
        retry_after: Option<Duration>,
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failure (retryable: {})", self.retryable)
        }
    }

    impl RetryClass for Failure {
        fn is_retryable(&self) -> bool {
            self.retryable
        }
        fn retry_after(&self) -> Option<Duration> {
            self.retry_after
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_time_budget() {
        let policy = RetryPolicy {
            max_attempts: 1000,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            budget: Duration::from_secs(3),
        };
        let attempts = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<(), Failure> = retry(&policy, "test", || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err(Failure {
                retryable: true,
                retry_after: None,
            })
        })
        .await;
        assert!(result.is_err());
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(3),
            "waited {elapsed:?}, past the budget"
        );
        let attempts = attempts.load(Ordering::SeqCst);
        assert!(
            attempts > 3 && attempts < 1000,
            "{attempts} attempts: the budget, not the count, stopped it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_attempts_and_succeeds_when_the_dependency_recovers() {
        let policy = RetryPolicy::default();
        let attempts = AtomicUsize::new(0);
        let result: Result<(), Failure> = retry(&policy, "test", || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err(Failure {
                retryable: true,
                retry_after: None,
            })
        })
        .await;
        assert!(result.is_err());
        assert_eq!(attempts.load(Ordering::SeqCst), 3);

        let attempts = AtomicUsize::new(0);
        let result = retry(&policy, "test", || async {
            if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(Failure {
                    retryable: true,
                    retry_after: None,
                })
            } else {
                Ok("answer")
            }
        })
        .await;
        assert_eq!(result.unwrap(), "answer");
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_a_caller_error() {
        let attempts = AtomicUsize::new(0);
        let result: Result<(), Failure> = retry(&RetryPolicy::default(), "test", || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err(Failure {
                retryable: false,
                retry_after: None,
            })
        })
        .await;
        assert!(result.is_err());
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let attempts = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let result = retry(&RetryPolicy::default(), "test", || async {
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(Failure {
                    retryable: true,
                    retry_after: Some(Duration::from_secs(7)),
                })
            } else {
                Ok(())
            }
        })
        .await;
        assert!(result.is_ok());
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(7) && elapsed < Duration::from_secs(8),
            "{elapsed:?}"
        );
    }

    #[test]
    fn a_retry_after_past_the_budget_stops_retrying() {
        let d = next_delay(
            Some(Duration::from_millis(200)),
            Some(Duration::from_secs(30)),
            Duration::from_secs(1),
            Duration::from_secs(20),
        );
        assert_eq!(d, None);
        let d = next_delay(
            Some(Duration::from_millis(200)),
            None,
            Duration::ZERO,
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(d <= Duration::from_millis(200));
        assert_eq!(
            next_delay(None, None, Duration::ZERO, Duration::from_secs(20)),
            None
        );
    }
}
