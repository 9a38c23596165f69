use super::*;
use std::sync::atomic::AtomicUsize;

fn l1_only() -> TieredCache {
    TieredCache::new(CacheConfig::default(), None)
}

#[tokio::test]
async fn l1_only_cache_hits_invalidates_and_keeps_types_apart() {
    let cache = l1_only();
    assert_eq!(cache.get::<String>(Namespace::Chat, "q").await, None);
    cache.set(Namespace::Chat, "q", &"answer".to_string()).await;
    assert_eq!(
        cache.get::<String>(Namespace::Chat, "q").await.as_deref(),
        Some("answer")
    );
    assert_eq!(
        cache.get::<String>(Namespace::Search, "q").await,
        None,
        "namespaces are separate"
    );
    assert_eq!(
        cache.get::<u64>(Namespace::Chat, "q").await,
        None,
        "another type is a miss"
    );
    cache.invalidate(Namespace::Chat, "q").await;
    assert_eq!(cache.get::<String>(Namespace::Chat, "q").await, None);

    cache.set(Namespace::Search, "a", &1u32).await;
    cache.set(Namespace::Search, "b", &2u32).await;
    cache.set(Namespace::Chat, "c", &3u32).await;
    cache.invalidate_namespace(Namespace::Search).await;
    assert_eq!(cache.get::<u32>(Namespace::Search, "a").await, None);
    assert_eq!(cache.get::<u32>(Namespace::Search, "b").await, None);
    assert_eq!(
        cache.get::<u32>(Namespace::Chat, "c").await,
        Some(3),
        "other namespaces keep their entries"
    );
    let stats = cache.stats();
    assert!(stats.l1_hits >= 2 && stats.misses >= 4, "{stats:?}");
}

#[tokio::test]
async fn a_copy_holds_the_same_value_and_only_of_a_current_entry() {
    let cache = l1_only();
    cache
        .set(Namespace::Chat, "source", &vec![1u32, 2, 3])
        .await;
    assert!(cache.copy(Namespace::Chat, "source", "copy").await);
    assert_eq!(
        cache.get::<Vec<u32>>(Namespace::Chat, "copy").await,
        Some(vec![1, 2, 3])
    );
    assert!(
        !cache.copy(Namespace::Search, "source", "elsewhere").await,
        "another namespace's key is another key"
    );
    cache.invalidate_namespace(Namespace::Chat).await;
    assert!(
        !cache.copy(Namespace::Chat, "source", "stale").await,
        "an entry of an older generation is not copied"
    );
    assert_eq!(cache.get::<Vec<u32>>(Namespace::Chat, "stale").await, None);
}

#[tokio::test]
async fn tiny_entries_are_weighed_with_their_bookkeeping() {
    // 256 KiB for entries of a few bytes: each really takes ~400 bytes, so the bound
    // holds a few hundred of them, not the ten thousand their JSON alone would allow.
    let cache = TieredCache::new(
        CacheConfig {
            l1_max_bytes: 256 * 1024,
            l1_max_entries: 1_000_000,
            ..CacheConfig::default()
        },
        None,
    );
    for i in 0..5_000u32 {
        cache.set(Namespace::Search, &format!("k{i}"), &i).await;
    }
    let held = cache.inner.l1.len();
    assert!(
        held > 0 && held <= 256 * 1024 / L1_ENTRY_OVERHEAD_BYTES,
        "{held} entries held"
    );
}

#[tokio::test]
async fn the_byte_bound_is_the_json_held_and_another_type_under_a_key_is_reloaded() {
    // 64 KiB of L1: answers of ~2 KiB of JSON each fit about 32 at a time, however
    // much more their decoded form would take.
    let cache = TieredCache::new(
        CacheConfig {
            l1_max_bytes: 64 * 1024,
            ..CacheConfig::default()
        },
        None,
    );
    let answer = |i: usize| serde_json::json!({"id": i, "choices": [{"message": {"content": "x".repeat(2000)}}]});
    for i in 0..200 {
        cache
            .set(Namespace::Chat, &format!("q{i}"), &answer(i))
            .await;
    }
    let held = cache.inner.l1.len();
    let weight = cache.inner.l1.weight();
    assert!(held > 0 && held <= 32, "{held} entries held");
    assert!(weight <= 64 * 1024, "{weight} bytes held");
    // What is held decodes as it was stored (the eviction policy picks which).
    let mut decoded = 0;
    for i in 0..200 {
        if let Some(value) = cache
            .get::<serde_json::Value>(Namespace::Chat, &format!("q{i}"))
            .await
        {
            assert_eq!(value, answer(i));
            decoded += 1;
        }
    }
    assert!(decoded > 0 && decoded as u64 <= held, "{decoded} of {held}");

    // A key cached as one type and loaded as another: the loader runs.
    cache.set(Namespace::Search, "k", &7u32).await;
    let loaded: Result<String, Arc<()>> = cache
        .get_or_load(Namespace::Search, "k", || async { Ok("text".to_string()) })
        .await;
    assert_eq!(loaded.unwrap(), "text");
    assert_eq!(
        cache.get::<String>(Namespace::Search, "k").await.as_deref(),
        Some("text")
    );
}

#[tokio::test]
async fn loader_errors_are_returned_and_not_cached() {
    let cache = l1_only();
    let calls = AtomicUsize::new(0);
    let failed: Result<String, Arc<&str>> = cache
        .get_or_load(Namespace::Chat, "k", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err("upstream down")
        })
        .await;
    assert_eq!(*failed.unwrap_err(), "upstream down");
    let ok: Result<String, Arc<&str>> = cache
        .get_or_load(Namespace::Chat, "k", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok("fine".to_string())
        })
        .await;
    assert_eq!(ok.unwrap(), "fine");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn entries_expire_with_their_namespace_ttl() {
    let mut config = CacheConfig::default();
    config.ttls[Namespace::Config.index()] = Duration::from_millis(50);
    let cache = TieredCache::new(config, None);
    cache.set(Namespace::Config, "flag", &true).await;
    cache.set(Namespace::Chat, "answer", &true).await;
    assert_eq!(
        cache.get::<bool>(Namespace::Config, "flag").await,
        Some(true)
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(cache.get::<bool>(Namespace::Config, "flag").await, None);
    assert_eq!(
        cache.get::<bool>(Namespace::Chat, "answer").await,
        Some(true)
    );
}

/// A caller of `search`/`q` whose load does not end, once it is in flight.
async fn a_load_that_never_ends(
    cache: &TieredCache,
) -> tokio::task::JoinHandle<Result<String, Arc<()>>> {
    let caller = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(Namespace::Search, "q", || async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, ()>("never".to_string())
                })
                .await
        })
    };
    all_joined(cache, &TieredCache::l1_key(Namespace::Search, "q"), 1).await;
    caller
}

/// A load whose only caller is dropped leaves no flight behind (keys asked for once
/// would otherwise pile up), and the next caller loads.
#[tokio::test]
async fn a_load_dropped_by_its_only_caller_leaves_nothing_behind() {
    let cache = l1_only();
    let lone = a_load_that_never_ends(&cache).await;
    lone.abort();
    assert!(lone.await.unwrap_err().is_cancelled());
    assert_eq!(cache.inner.l1.flights(), 0);
    let next: Result<String, Arc<()>> = cache
        .get_or_load(Namespace::Search, "q", || async { Ok("next".to_string()) })
        .await;
    assert_eq!(next.unwrap(), "next");
}

/// L1 is split into shards of at least 512 KiB, however many cores: an answer of
/// 300 KiB is held in the default 4 MiB (four shards per core would be 256 KiB each
/// from 4 cores on).
#[tokio::test]
async fn a_large_answer_fits_in_its_shard() {
    let cache = l1_only();
    let answer = "x".repeat(300 * 1024);
    cache.set(Namespace::Chat, "long", &answer).await;
    assert_eq!(
        cache
            .get::<String>(Namespace::Chat, "long")
            .await
            .as_deref(),
        Some(answer.as_str())
    );
    const MIB: u64 = 1024 * 1024;
    for (bytes, shards) in [(4 * MIB, 8), (3 * MIB, 4), (5 * MIB, 8), (3 * MIB / 2, 2)] {
        assert_eq!(l1::shards(bytes), shards, "{bytes}");
        assert!(bytes / shards as u64 >= 512 * 1024, "{bytes}");
    }
    assert_eq!(l1::shards(64 * 1024), 1);
    assert_eq!(l1::shards(1 << 40), 16);
}

#[tokio::test]
async fn l1_is_bounded_by_bytes() {
    let config = CacheConfig {
        l1_max_entries: 1000,
        l1_max_bytes: 64 * 1024,
        ..CacheConfig::default()
    };
    let cache = TieredCache::new(config, None);
    let big = "x".repeat(8 * 1024);
    for i in 0..100 {
        cache.set(Namespace::Chat, &format!("k{i}"), &big).await;
    }
    let weighted = cache.inner.l1.weight();
    assert!(weighted <= 64 * 1024, "weighted size {weighted}");
    assert!(cache.inner.l1.len() <= 8);
}

/// The cache's own calls reach its metric series: a load counts an L1 miss and a load,
/// the next lookup an L1 hit. The embedding namespace: no other test of this crate
/// counts in it (the series are the process's, shared with the tests beside this one).
#[tokio::test]
async fn misses_loads_and_hits_are_counted_in_their_series() {
    let cache = l1_only();
    let handle = crate::observability::metrics::install();
    let value = crate::observability::metrics::series_value;
    let misses = r#"cache_misses_total{namespace="embedding",tier="l1"}"#;
    let loads = r#"cache_loads_total{namespace="embedding"}"#;
    let hits = r#"cache_hits_total{namespace="embedding",tier="l1"}"#;
    let before = handle.render();
    let loaded: Result<u32, Arc<()>> = cache
        .get_or_load(Namespace::Embedding, "text", || async { Ok(7) })
        .await;
    assert_eq!(loaded.unwrap(), 7);
    let again: Result<u32, Arc<()>> = cache
        .get_or_load(Namespace::Embedding, "text", || async {
            unreachable!("the second lookup is a hit")
        })
        .await;
    assert_eq!(again.unwrap(), 7);
    let after = handle.render();
    let grew = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(grew(misses), 1.0, "{after}");
    assert_eq!(grew(loads), 1.0);
    assert_eq!(grew(hits), 1.0);
}

/// `callers` concurrent loads of `search`/`q`, each loader counted in `loads`, ending in
/// `outcome` once every caller has joined the load in flight (so a slow machine cannot
/// let one arrive after it ended and load again).
fn concurrent_loads(
    cache: &TieredCache,
    callers: usize,
    outcome: Result<&'static str, &'static str>,
    loads: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Result<String, Arc<String>>>> {
    (0..callers)
        .map(|_| {
            let (cache, loads) = (cache.clone(), loads.clone());
            tokio::spawn(async move {
                let key = TieredCache::l1_key(Namespace::Search, "q");
                cache
                    .get_or_load(Namespace::Search, "q", || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        all_joined(&cache, &key, callers).await;
                        outcome.map(str::to_string).map_err(str::to_string)
                    })
                    .await
            })
        })
        .collect()
}

/// Waits (10 s at most) until `callers` callers wait for the load in flight for `key`.
async fn all_joined(cache: &TieredCache, key: &str, callers: usize) {
    for _ in 0..10_000 {
        if cache.inner.l1.callers(key) >= callers {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("{callers} callers did not join");
}

/// After a namespace's generation moves on, concurrent callers that all find the old
/// entry replace it once: one load, every caller answered with its value, and the new
/// entry kept. A waiter that got a value loaded by another caller counts as a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outdated_entry_is_replaced_by_one_load_for_every_caller() {
    let cache = l1_only();
    cache.set(Namespace::Search, "q", &"old".to_string()).await;
    cache.invalidate_namespace(Namespace::Search).await;
    let loads = Arc::new(AtomicUsize::new(0));
    for caller in concurrent_loads(&cache, 32, Ok("new"), &loads) {
        assert_eq!(caller.await.unwrap().unwrap(), "new");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.get::<String>(Namespace::Search, "q").await.as_deref(),
        Some("new")
    );
    let stats = cache.stats();
    assert_eq!(stats.misses, 1, "{stats:?}");
}

/// A key held as another type is loaded again as the caller's type, once, and stored.
#[tokio::test]
async fn an_entry_of_another_type_is_replaced_by_the_callers_load() {
    let cache = l1_only();
    cache.set(Namespace::Search, "q", &7u32).await;
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ()>("text".to_string())
    };
    for _ in 0..2 {
        let got = cache.get_or_load(Namespace::Search, "q", load).await;
        assert_eq!(got.unwrap(), "text");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.inner.l1.flights(), 0);
}

/// Concurrent misses share one load's error: the loader runs once, every caller gets
/// its error, and nothing is cached (the next miss loads again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_share_one_failed_load() {
    let cache = l1_only();
    let loads = Arc::new(AtomicUsize::new(0));
    for caller in concurrent_loads(&cache, 16, Err("upstream down"), &loads) {
        assert_eq!(*caller.await.unwrap().unwrap_err(), "upstream down");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.inner.l1.flights(), 0, "a failed load lands too");
    let again: Result<String, Arc<&str>> = cache
        .get_or_load(Namespace::Search, "q", || async { Ok("fine".to_string()) })
        .await;
    assert_eq!(again.unwrap(), "fine", "the error was not kept");
}

/// A caller dropped in the middle of its load does not strand the callers waiting for
/// it: the next one runs its own loader, and its value is shared and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_whose_caller_is_dropped_is_run_by_a_waiting_caller() {
    let cache = l1_only();
    let first = a_load_that_never_ends(&cache).await;
    let waiting = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(Namespace::Search, "q", || async {
                    Ok::<_, ()>("second".to_string())
                })
                .await
        })
    };
    all_joined(&cache, &TieredCache::l1_key(Namespace::Search, "q"), 2).await;
    first.abort();
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting caller is not stranded");
    assert_eq!(got.unwrap().unwrap(), "second");
    assert_eq!(
        cache.get::<String>(Namespace::Search, "q").await.as_deref(),
        Some("second")
    );
    assert_eq!(cache.inner.l1.flights(), 0);
}

/// A caller whose view of the generation is behind the entry's (another instance's bump
/// adopted from Redis meanwhile) takes the entry as current instead of loading again.
#[tokio::test]
async fn an_entry_newer_than_the_callers_view_is_a_hit() {
    let cache = l1_only();
    cache.invalidate_namespace(Namespace::Search).await;
    cache.set(Namespace::Search, "q", &"new".to_string()).await;
    // The caller's view: one generation behind the entry.
    cache.inner.generations[Namespace::Search.index()].fetch_sub(1, Ordering::AcqRel);
    let got: Result<String, Arc<()>> = cache
        .get_or_load(Namespace::Search, "q", || async {
            unreachable!("a newer entry is current")
        })
        .await;
    assert_eq!(got.unwrap(), "new");
    assert_eq!(
        cache.get::<String>(Namespace::Search, "q").await.as_deref(),
        Some("new")
    );
}
