//! Breakers, rate limits and concurrency limits against the real local Redis.

use std::sync::Arc;
use std::time::Duration;

use shared::config::RedisUrl;
use shared::resilience::limits::{ConcurrencyLimiter, RateLimiter};
use shared::resilience::{BreakerConfig, BreakerState, CircuitBreaker, ManualClock};
use shared::store::{RedisHandle, StoreError};

fn redis() -> RedisHandle {
    chatkb_testing::test_redis(Duration::from_millis(500))
}

fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

fn shared_config() -> BreakerConfig {
    BreakerConfig {
        shared_sync: Duration::ZERO,
        ..BreakerConfig::default()
    }
}

async fn fail(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        let permit = b.acquire().await.expect("admitted");
        b.record(permit, true).await;
    }
}

#[tokio::test]
async fn two_instances_sharing_redis_open_and_close_together() {
    let prefix = unique_prefix();
    let clock = ManualClock::new(shared::resilience::SystemClock.now_millis_for_tests());
    let a = CircuitBreaker::shared("provider", shared_config(), clock.clone(), redis(), &prefix);
    let b = CircuitBreaker::shared("provider", shared_config(), clock.clone(), redis(), &prefix);

    fail(&a, 5).await;
    assert_eq!(a.state(), BreakerState::Open);
    let refused = b.acquire().await.expect_err("b follows a's open state");
    assert!(refused.retry_after > Duration::from_secs(50));
    assert_eq!(b.state(), BreakerState::Open);

    // After the cool-down only one instance probes.
    clock.advance(Duration::from_secs(61));
    let probe = b.acquire().await.expect("b probes");
    assert!(a.acquire().await.is_err(), "a must not probe while b does");
    b.record(probe, false).await;
    assert_eq!(b.state(), BreakerState::Closed);
    let permit = a.acquire().await.expect("a closes with b");
    a.record(permit, false).await;
    assert_eq!(a.state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_failed_probe_reopens_everywhere() {
    let prefix = unique_prefix();
    let clock = ManualClock::new(shared::resilience::SystemClock.now_millis_for_tests());
    let a = CircuitBreaker::shared("llm", shared_config(), clock.clone(), redis(), &prefix);
    let b = CircuitBreaker::shared("llm", shared_config(), clock.clone(), redis(), &prefix);
    fail(&a, 5).await;
    assert!(b.acquire().await.is_err(), "b has seen the open state");
    clock.advance(Duration::from_secs(61));
    let probe = a.acquire().await.unwrap();
    a.record(probe, true).await;
    assert_eq!(a.state(), BreakerState::Open);
    let refused = b
        .acquire()
        .await
        .expect_err("b follows the re-opening, it does not probe");
    assert!(refused.retry_after > Duration::from_secs(50), "{refused:?}");
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test]
async fn with_redis_unreachable_the_local_breaker_still_works() {
    let url = RedisUrl::parse("redis://127.0.0.1:1").unwrap();
    let dead = RedisHandle::new(&url, Duration::from_millis(100)).unwrap();
    let clock = ManualClock::new(1_000_000);
    let b = CircuitBreaker::shared("local-only", shared_config(), clock.clone(), dead, "t");
    fail(&b, 5).await;
    assert_eq!(b.state(), BreakerState::Open);
    assert!(b.acquire().await.is_err());
    clock.advance(Duration::from_secs(60));
    let probe = b
        .acquire()
        .await
        .expect("probes locally when Redis is gone");
    b.record(probe, false).await;
    assert_eq!(b.state(), BreakerState::Closed);
}

async fn concurrent_passes(limiter: Arc<RateLimiter>, key: &str, calls: usize) -> usize {
    let tasks: Vec<_> = (0..calls)
        .map(|_| {
            let limiter = limiter.clone();
            let key = key.to_string();
            tokio::spawn(async move { limiter.check(&key).await.is_ok() })
        })
        .collect();
    let mut passed = 0;
    for task in tasks {
        if task.await.unwrap() {
            passed += 1;
        }
    }
    passed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_rate_limit_is_exact_under_concurrency_across_instances() {
    let prefix = unique_prefix();
    let n = 25;
    let first = Arc::new(RateLimiter::new(
        n,
        Duration::from_secs(60),
        Some(redis()),
        &prefix,
    ));
    let second = Arc::new(RateLimiter::new(
        n,
        Duration::from_secs(60),
        Some(redis()),
        &prefix,
    ));
    let (a, b) = tokio::join!(
        concurrent_passes(first.clone(), "key-1", 2 * n as usize),
        concurrent_passes(second.clone(), "key-1", 2 * n as usize)
    );
    assert_eq!(
        a + b,
        n as usize,
        "4N calls over two instances, exactly N pass"
    );
    let refused = first.check("key-1").await.unwrap_err();
    assert!(refused.retry_after > Duration::from_secs(1));
    assert!(first.check("key-2").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_rate_limit_is_exact_under_concurrency() {
    let n = 25;
    let limiter = Arc::new(RateLimiter::new(n, Duration::from_secs(60), None, "t"));
    assert_eq!(
        concurrent_passes(limiter, "k", 4 * n as usize).await,
        n as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_falls_back_in_process_when_redis_is_down() {
    let url = RedisUrl::parse("redis://127.0.0.1:1").unwrap();
    let dead = RedisHandle::new(&url, Duration::from_millis(100)).unwrap();
    let limiter = Arc::new(RateLimiter::new(
        5,
        Duration::from_secs(60),
        Some(dead),
        "t",
    ));
    assert_eq!(concurrent_passes(limiter, "k", 20).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_limiter_admits_exactly_its_capacity() {
    let limiter = ConcurrencyLimiter::new("sessions", 100, Duration::from_secs(1));
    let slots: Vec<_> = (0..150)
        .filter_map(|_| limiter.try_acquire().ok())
        .collect();
    assert_eq!(slots.len(), 100);
    assert_eq!(limiter.in_use(), 100);
    drop(slots);
    assert_eq!(limiter.in_use(), 0);
}

/// Issue 14, finding 5: with Redis frozen, every authenticated request waited out the
/// Redis timeout in the rate limiter, again and again. A Redis that accepts connections
/// and never answers (what a SIGSTOPped server does) is tried once; then the rate
/// limiter, the breaker sync and the cache all skip it during the pause and decide
/// in-process. Counted by the connections the frozen server sees, not by a clock.
#[tokio::test]
async fn a_frozen_redis_is_tried_once_then_every_user_skips_it_during_the_pause() {
    let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = RedisUrl::parse(&format!("redis://{}", frozen.local_addr().unwrap())).unwrap();
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = frozen.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream); // accepted, never answered
        }
    });
    let redis =
        RedisHandle::with_pause(&url, Duration::from_millis(50), Duration::from_secs(60)).unwrap();
    let limiter = RateLimiter::new(5, Duration::from_secs(60), Some(redis.clone()), "t");
    let breaker = CircuitBreaker::shared(
        "frozen",
        shared_config(),
        ManualClock::new(1_000_000),
        redis.clone(),
        "t",
    );
    let cache = shared::cache::TieredCache::new(Default::default(), Some(redis.clone()));

    let mut passed = 0;
    for _ in 0..20 {
        passed += usize::from(limiter.check("alice").await.is_ok());
    }
    assert_eq!(
        passed, 5,
        "the in-process limit decides while Redis is frozen"
    );
    assert!(redis.paused());
    let seen = attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(seen <= 1, "{seen} connection attempts");

    for _ in 0..10 {
        if let Ok(permit) = breaker.acquire().await {
            breaker.record(permit, true).await;
        }
        cache
            .set(shared::cache::Namespace::Chat, "k", &"v".to_string())
            .await;
        let _: Option<String> = cache.get(shared::cache::Namespace::Chat, "k").await;
    }
    assert_eq!(breaker.state(), BreakerState::Open, "decided locally");
    assert_eq!(
        attempts.load(std::sync::atomic::Ordering::SeqCst),
        seen,
        "nobody tried the paused Redis again"
    );
}

/// Issue 14, finding 5 (the chaos script's measure): after a pause, every request that
/// arrived while Redis was tried again waited its own timeout (48 of 224 requests took
/// 250 ms with Redis frozen). Now one call probes and the others keep their fallback
/// until it succeeds, and a probe that succeeds ends the outage for everyone.
#[tokio::test]
async fn after_a_pause_one_call_probes_redis_while_the_others_skip_it() {
    let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = RedisUrl::parse(&format!("redis://{}", frozen.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = frozen.accept().await {
            held.push(stream); // accepted, never answered
        }
    });
    let redis =
        RedisHandle::with_pause(&url, Duration::from_millis(100), Duration::from_millis(50))
            .unwrap();
    let ping = |redis: RedisHandle| async move {
        redis
            .run(
                |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
            )
            .await
    };
    assert!(matches!(
        ping(redis.clone()).await,
        Err(StoreError::Timeout(..))
    ));
    tokio::time::sleep(Duration::from_millis(80)).await; // the pause is over
    let outcomes = futures_util::future::join_all((0..10).map(|_| ping(redis.clone()))).await;
    let waited = outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::Timeout(..))))
        .count();
    let skipped = outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::Paused(_))))
        .count();
    assert_eq!((waited, skipped), (1, 9), "{outcomes:?}");

    // A Redis that answers: the probe's success ends the outage for every caller.
    let live = chatkb_testing::test_redis(Duration::from_millis(500));
    live.failed();
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..3 {
        assert!(ping(live.clone()).await.is_ok());
    }
}
