//! The tiered cache against real Redis servers, including one stopped and restarted mid-test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatkb_testing::ServerProcess;
use shared::cache::{CacheConfig, Namespace, TieredCache};
use shared::config::RedisUrl;
use shared::store::RedisHandle;

fn redis_at(url: &str) -> RedisHandle {
    let url = RedisUrl::parse(url).unwrap();
    RedisHandle::with_pause(&url, Duration::from_millis(200), Duration::from_millis(100)).unwrap()
}

fn shared_redis() -> RedisHandle {
    chatkb_testing::test_redis(Duration::from_millis(200))
}

fn config() -> CacheConfig {
    CacheConfig {
        prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
        generation_refresh: Duration::ZERO,
        l2_retry_after: Duration::from_millis(100),
        ..CacheConfig::default()
    }
}

/// The Redis keys holding values of one namespace (not its generation or load locks).
async fn value_keys(config: &CacheConfig, namespace: &str) -> Vec<String> {
    let mut conn = shared_redis().connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:cache:{namespace}:*", config.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.into_iter()
        .filter(|k| !k.ends_with(":generation") && !k.ends_with(":lock"))
        .collect()
}

/// `copy` keeps one stored value under a second key in both tiers: another instance
/// reads it from Redis, with the namespace's TTL; a key not held here is not copied.
#[tokio::test]
async fn a_copied_entry_is_shared_through_redis_and_a_missing_one_is_not_copied() {
    let config = config();
    let a = TieredCache::new(config.clone(), Some(shared_redis()));
    let b = TieredCache::new(config.clone(), Some(shared_redis()));
    a.set(Namespace::Chat, "response-key", &"the answer".to_string())
        .await;
    assert!(
        a.copy(Namespace::Chat, "response-key", "question-key")
            .await
    );
    let from_b: Option<String> = b.get(Namespace::Chat, "question-key").await;
    assert_eq!(from_b.as_deref(), Some("the answer"));
    assert_eq!(b.stats().l2_hits, 1, "read from Redis, not from b's own L1");
    let mut conn = shared_redis().connection().await.unwrap();
    let keys = value_keys(&config, "chat").await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has the namespace's TTL: {ttl}");
    }

    assert!(!b.copy(Namespace::Chat, "never-set", "other-key").await);
    assert_eq!(
        value_keys(&config, "chat").await.len(),
        2,
        "nothing written"
    );
    let other: Option<String> = a.get(Namespace::Chat, "other-key").await;
    assert_eq!(other, None);
}

#[tokio::test]
async fn l2_hits_back_fill_l1_and_values_are_json_in_redis() {
    let config = config();
    let a = TieredCache::new(config.clone(), Some(shared_redis()));
    let b = TieredCache::new(config.clone(), Some(shared_redis()));
    a.set(
        Namespace::Search,
        "refund policy",
        &vec!["doc-1".to_string(), "doc-7".to_string()],
    )
    .await;

    let got: Option<Vec<String>> = b.get(Namespace::Search, "refund policy").await;
    assert_eq!(got.unwrap(), vec!["doc-1", "doc-7"]);
    assert_eq!(b.stats().l2_hits, 1);
    let _: Option<Vec<String>> = b.get(Namespace::Search, "refund policy").await;
    assert_eq!(b.stats().l1_hits, 1, "the L2 hit filled L1");

    // Stored as JSON with the generation, under a hashed key (no request text in key names).
    let mut conn = shared_redis().connection().await.unwrap();
    let keys = value_keys(&config, "search").await;
    let value_key = keys.first().expect("value key");
    assert!(!value_key.contains("refund"));
    let raw: String = redis::cmd("GET")
        .arg(value_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(json["v"][1], "doc-7");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(value_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 300_000, "search TTL applies: {ttl}");
}

#[tokio::test]
async fn namespace_invalidation_reaches_every_instance() {
    let config = config();
    let a = TieredCache::new(config.clone(), Some(shared_redis()));
    let b = TieredCache::new(config.clone(), Some(shared_redis()));
    a.set(Namespace::Chat, "q1", &"old answer".to_string())
        .await;
    a.set(Namespace::Embedding, "e1", &vec![0.5f32, 0.25]).await;
    assert!(b.get::<String>(Namespace::Chat, "q1").await.is_some());

    a.invalidate_namespace(Namespace::Chat).await;
    assert_eq!(
        b.get::<String>(Namespace::Chat, "q1").await,
        None,
        "b's L1 copy is stale now"
    );
    assert_eq!(a.get::<String>(Namespace::Chat, "q1").await, None);
    assert_eq!(
        b.get::<Vec<f32>>(Namespace::Embedding, "e1").await,
        Some(vec![0.5, 0.25])
    );

    a.set(Namespace::Chat, "q1", &"new answer".to_string())
        .await;
    assert_eq!(
        b.get::<String>(Namespace::Chat, "q1").await.as_deref(),
        Some("new answer")
    );

    a.invalidate(Namespace::Chat, "q1").await;
    assert_eq!(a.get::<String>(Namespace::Chat, "q1").await, None);
}

async fn burst(
    cache: TieredCache,
    calls: Arc<AtomicUsize>,
    n: usize,
    delay: Duration,
) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let cache = cache.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load(Namespace::Chat, "same question", || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        Ok::<_, String>("one upstream answer".to_string())
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_misses_run_the_loader_once() {
    for redis in [None, Some(shared_redis())] {
        let cache = TieredCache::new(config(), redis);
        let calls = Arc::new(AtomicUsize::new(0));
        let answers = burst(cache, calls.clone(), 100, Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|a| a == "one upstream answer"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_load_through_the_redis_lock() {
    let config = config();
    let a = TieredCache::new(config.clone(), Some(shared_redis()));
    let b = TieredCache::new(config.clone(), Some(shared_redis()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (left, right) = tokio::join!(
        burst(a, calls.clone(), 50, Duration::from_millis(300)),
        burst(b, calls.clone(), 50, Duration::from_millis(300))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one instance loads, the other waits for its value"
    );
    assert_eq!(left.len() + right.len(), 100);
}

#[tokio::test]
async fn batches_read_and_write_both_tiers_in_one_round_trip_each() {
    let config = config();
    let a = TieredCache::new(config.clone(), Some(shared_redis()));
    let b = TieredCache::new(config.clone(), Some(shared_redis()));
    let (v1, v2) = (vec![0.5f32, 0.25], vec![-1.0f32, 0.0]);
    a.set_many(Namespace::Embedding, &[("e1", &v1), ("e2", &v2)])
        .await;

    // Another instance: L1 is empty, so both come from Redis, in the order asked.
    let keys = ["e1", "missing", "e2"].map(String::from);
    let got: Vec<Option<Vec<f32>>> = b.get_many(Namespace::Embedding, &keys).await;
    assert_eq!(got, vec![Some(v1.clone()), None, Some(v2.clone())]);
    assert_eq!((b.stats().l2_hits, b.stats().l1_hits), (2, 0));
    let again: Vec<Option<Vec<f32>>> = b.get_many(Namespace::Embedding, &keys).await;
    assert_eq!(again, got);
    assert_eq!(b.stats().l1_hits, 2, "the L2 hits filled L1");

    // Written with the namespace's TTL, under hashed keys.
    let mut conn = shared_redis().connection().await.unwrap();
    let values = value_keys(&config, "embedding").await;
    assert_eq!(values.len(), 2, "{values:?}");
    for key in &values {
        let digest = key.rsplit(':').next().unwrap();
        assert!(
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "{key} names a SHA-256, not the key"
        );
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has a TTL");
    }

    // An invalidated namespace: what either instance holds is stale.
    a.invalidate_namespace(Namespace::Embedding).await;
    let stale: Vec<Option<Vec<f32>>> = b.get_many(Namespace::Embedding, &keys).await;
    assert_eq!(stale, vec![None, None, None]);

    // Redis unreachable: batches work on L1 alone.
    let alone = TieredCache::new(config.clone(), Some(redis_at("redis://127.0.0.1:1")));
    alone.set_many(Namespace::Embedding, &[("e1", &v1)]).await;
    let local: Vec<Option<Vec<f32>>> = alone.get_many(Namespace::Embedding, &keys).await;
    assert_eq!(local, vec![Some(v1), None, None]);
    assert_eq!(alone.stats().l2_available, Some(false));
}

#[tokio::test]
async fn a_closed_redis_port_means_l1_only_without_errors() {
    let cache = TieredCache::new(config(), Some(redis_at("redis://127.0.0.1:1")));
    cache.set(Namespace::Session, "s1", &42u32).await;
    assert_eq!(cache.get::<u32>(Namespace::Session, "s1").await, Some(42));
    let loaded: Result<u32, Arc<String>> = cache
        .get_or_load(Namespace::Session, "s2", || async { Ok(7) })
        .await;
    assert_eq!(loaded.unwrap(), 7);
    assert_eq!(cache.stats().l2_available, Some(false));
}

/// A Redis server of this test's own, so it can be stopped and started again.
async fn own_redis(port: u16) -> ServerProcess {
    ServerProcess::start(
        "redis-server",
        &[
            "--port",
            "{port}",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        port,
        "redis-server (local/start-services.sh installs it)",
    )
    .await
}

#[tokio::test]
async fn redis_stopped_mid_test_then_restarted() {
    let port = chatkb_testing::free_port();
    let mut server = own_redis(port).await;
    let url = format!("redis://127.0.0.1:{}", server.port);
    let config = config();
    let cache = TieredCache::new(config.clone(), Some(redis_at(&url)));

    cache
        .set(Namespace::Chat, "before", &"cached".to_string())
        .await;
    assert_eq!(cache.stats().l2_available, Some(true));

    server.stop();
    // L1 keeps serving, writes and loads work, and nothing returns an error.
    assert_eq!(
        cache
            .get::<String>(Namespace::Chat, "before")
            .await
            .as_deref(),
        Some("cached")
    );
    cache
        .set(Namespace::Chat, "during", &"l1 only".to_string())
        .await;
    assert_eq!(
        cache
            .get::<String>(Namespace::Chat, "during")
            .await
            .as_deref(),
        Some("l1 only")
    );
    let loaded: Result<String, Arc<String>> = cache
        .get_or_load(Namespace::Chat, "load", || async { Ok("loaded".into()) })
        .await;
    assert_eq!(loaded.unwrap(), "loaded");
    assert_eq!(cache.stats().l2_available, Some(false));

    // Redis returns (empty): the cache reconnects by itself and writes reach it again.
    let _server = own_redis(port).await;
    let mut reached = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        cache
            .set(Namespace::Chat, "after", &"both tiers".to_string())
            .await;
        let other = TieredCache::new(config.clone(), Some(redis_at(&url)));
        if other
            .get::<String>(Namespace::Chat, "after")
            .await
            .as_deref()
            == Some("both tiers")
        {
            reached = true;
            break;
        }
    }
    assert!(reached, "writes reach Redis again after it restarts");
    assert_eq!(cache.stats().l2_available, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_concurrent_load_costs_no_errors() {
    let port = chatkb_testing::free_port();
    let mut server = own_redis(port).await;
    let cache = TieredCache::new(
        config(),
        Some(redis_at(&format!("redis://127.0.0.1:{port}"))),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let cache = cache.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut served = 0u64;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{}", i % 50);
                    let expected = format!("value of {key}");
                    let got: Result<String, Arc<String>> = cache
                        .get_or_load(Namespace::Search, &key, || {
                            let expected = expected.clone();
                            async move { Ok(expected) }
                        })
                        .await;
                    assert_eq!(
                        got.expect("no error reaches the caller"),
                        expected,
                        "worker {worker}"
                    );
                    served += 1;
                    i += 1;
                }
                served
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for worker in workers {
        served += worker.await.expect("no worker panicked");
    }
    assert!(served > 100, "served {served} lookups");
    assert_eq!(cache.stats().l2_available, Some(false));
}
