//! Hot paths of the cache and resilience layer (issue 3 targets in brackets):
//! L1 hit [< 1 µs], L2 hit on loopback Redis [< 300 µs], closed-breaker check [< 100 ns],
//! in-process rate-limit decision [< 1 µs], Redis rate-limit decision [< 300 µs].
//! Needs Redis on TEST_REDIS_URL (default redis://127.0.0.1:6379). Run with `make bench`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use shared::cache::{CacheConfig, Namespace, TieredCache};
use shared::config::RedisUrl;
use shared::resilience::limits::RateLimiter;
use shared::resilience::{BreakerConfig, CircuitBreaker, SystemClock};
use shared::store::RedisHandle;

fn redis() -> RedisHandle {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    RedisHandle::new(&RedisUrl::parse(&url).unwrap(), Duration::from_millis(500)).unwrap()
}

fn prefix() -> String {
    format!("bench-{}", std::process::id())
}

fn cache(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    shared::observability::metrics::install();
    let answer = "The refund window is 14 days from delivery; contact support with the order id."
        .to_string();
    let config = CacheConfig {
        prefix: prefix(),
        ..CacheConfig::default()
    };
    let l1_only = TieredCache::new(config.clone(), None);
    let tiered = TieredCache::new(config, Some(redis()));
    runtime.block_on(async {
        l1_only.set(Namespace::Chat, "q", &answer).await;
        tiered.set(Namespace::Chat, "q", &answer).await;
    });

    let mut group = c.benchmark_group("cache");
    group.bench_function("l1_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            l1_only
                .get::<String>(Namespace::Chat, black_box("q"))
                .await
                .unwrap()
        })
    });
    group.bench_function("l1_hit_with_redis_configured", |b| {
        b.to_async(&runtime).iter(|| async {
            tiered
                .get::<String>(Namespace::Chat, black_box("q"))
                .await
                .unwrap()
        })
    });
    group.bench_function("l2_hit_loopback_redis", |b| {
        b.to_async(&runtime).iter(|| async {
            tiered.forget_local(Namespace::Chat, "q").await;
            tiered
                .get::<String>(Namespace::Chat, black_box("q"))
                .await
                .unwrap()
        })
    });
    group.finish();
}

fn breaker(c: &mut Criterion) {
    let breaker = CircuitBreaker::new("bench", BreakerConfig::default(), Arc::new(SystemClock));
    c.bench_function("breaker/closed_check_and_record", |b| {
        b.iter(|| {
            let permit = breaker.try_acquire().unwrap();
            breaker.record_sync(permit, false);
        })
    });
}

fn rate_limits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Limits high enough that every decision in the run is an admission.
    let local = RateLimiter::new(u32::MAX / 2, Duration::from_secs(1), None, "bench");
    let remote = RateLimiter::new(
        1_000_000_000,
        Duration::from_secs(1),
        Some(redis()),
        &prefix(),
    );
    let mut group = c.benchmark_group("rate_limit");
    group.bench_function("in_process_decision", |b| {
        b.iter(|| local.check_local(black_box("key-1")).is_ok())
    });
    group.bench_function("redis_decision_loopback", |b| {
        b.to_async(&runtime)
            .iter(|| async { remote.check(black_box("key-1")).await.is_ok() })
    });
    group.finish();
}

criterion_group!(benches, cache, breaker, rate_limits);
criterion_main!(benches);
