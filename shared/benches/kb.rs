//! Knowledge-base throughput and latency on PostgreSQL + pgvector with the offline
//! embedder (issue 4 targets): ingest >= 2,000 chunks/s; search p95 < 15 ms at 100k chunks.
//! Needs PostgreSQL with pgvector on TEST_DATABASE_URL; creates and drops its own database.
//! `KB_BENCH_CHUNKS` sets the corpus size (default 100000), `KB_BENCH_DIMS` the embedding
//! size (default 384, the EMBEDDINGS_DIMENSIONS default), `KB_BENCH_BATCH` the documents
//! per ingest call (default 20). Run with `make bench`.
//! `KB_BENCH_REDIS_URL` adds Redis under the embedding cache, as deployed.
//! `KB_BENCH_KEEP=1` keeps the database and prints its URL; `KB_BENCH_REUSE=<that URL>`
//! then measures search alone on it (same corpus, nothing ingested), for search changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatkb_testing::TestDatabase;
use shared::cache::{CacheConfig, Namespace, TieredCache};
use shared::kb::embed::OfflineEmbedder;
use shared::kb::store::knowledge_store_with;
use shared::kb::text::ChunkConfig;
use shared::kb::vector_index::{Maintenance, VectorIndexConfig};
use shared::kb::{IngestRequest, KnowledgeBase};

const WORDS: &[&str] = &[
    "refund",
    "invoice",
    "shipping",
    "password",
    "account",
    "billing",
    "delivery",
    "warehouse",
    "support",
    "ticket",
    "policy",
    "customer",
    "order",
    "payment",
    "card",
    "plan",
    "upgrade",
    "cancel",
    "export",
    "import",
    "report",
    "dashboard",
    "webhook",
    "signature",
    "token",
    "session",
    "browser",
    "mobile",
    "offline",
    "sync",
    "calendar",
    "meeting",
    "email",
    "notification",
    "digest",
    "language",
    "search",
    "filter",
    "archive",
    "backup",
    "restore",
    "region",
    "latency",
    "uptime",
    "incident",
    "status",
    "credit",
    "discount",
    "coupon",
    "tax",
    "vat",
    "receipt",
    "contract",
    "renewal",
    "license",
    "seat",
    "team",
    "role",
    "admin",
    "member",
    "invite",
    "security",
    "audit",
    "retention",
    "privacy",
    "consent",
    "cookie",
    "analytics",
    "integration",
    "api",
    "limit",
    "quota",
    "error",
    "timeout",
    "retry",
    "queue",
    "worker",
    "schedule",
    "holiday",
    "vacation",
    "expense",
    "travel",
    "hotel",
    "taxi",
];

/// Deterministic pseudo-random words (xorshift), so runs are comparable. Like real
/// text, word frequencies follow Zipf's law: the 90 common support words above are
/// frequent, and thousands of rarer words make up the long tail.
struct Words(u64);

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "fi", "do", "be", "gr", "st",
];

impl Words {
    fn random(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn next(&mut self) -> String {
        // Zipf-like rank: 1/r distribution over 5,000 ranks via inverse transform.
        let u = (self.random() % 1_000_000) as f64 / 1_000_000.0;
        let rank = (5000f64.powf(u)) as usize;
        if rank < WORDS.len() {
            return WORDS[rank].to_string();
        }
        let mut n = rank;
        let mut word = String::new();
        while n > 0 || word.len() < 4 {
            word.push_str(SYLLABLES[n % SYLLABLES.len()]);
            n /= SYLLABLES.len();
        }
        word
    }

    fn sentence(&mut self, n: usize) -> String {
        let mut s: String = (0..n).map(|_| self.next()).collect::<Vec<_>>().join(" ");
        s.push('.');
        s
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list / test harness probing
    }
    let target_chunks: usize = std::env::var("KB_BENCH_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dims: usize = std::env::var("KB_BENCH_DIMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(384);
    let reuse = std::env::var("KB_BENCH_REUSE").ok();
    let db = TestDatabase::postgres().await;
    let database = match &reuse {
        Some(url) => shared::store::Database::connect_lazy_with(
            url,
            shared::config::DatabaseKind::Postgres,
            5,
            Duration::from_secs(5),
        )
        .expect("KB_BENCH_REUSE is a PostgreSQL URL"),
        None => db.database(),
    };
    // As the standalone server runs it: bulk writes skip the HNSW index and a background
    // maintainer indexes them (VECTOR_INDEX_* defaults; 1 GB build memory as for a
    // 100k-chunk corpus).
    let store = knowledge_store_with(
        &database,
        VectorIndexConfig {
            background: true,
            build_memory_mb: 1024,
            ..VectorIndexConfig::default()
        },
    );
    // KB_BENCH_REDIS_URL: the embedding cache's second tier in Redis, as deployed.
    let redis = std::env::var("KB_BENCH_REDIS_URL").ok().map(|url| {
        shared::store::RedisHandle::new(
            &shared::config::RedisUrl::parse(&url).expect("KB_BENCH_REDIS_URL is a Redis URL"),
            Duration::from_millis(500),
        )
        .expect("Redis handle")
    });
    let mut cache_config = CacheConfig {
        prefix: format!("kb-bench-{}", std::process::id()),
        ..CacheConfig::default()
    };
    // The bench's ~400 MB of vectors leave Redis within minutes, not a week.
    let embedding = Namespace::ALL
        .iter()
        .position(|n| *n == Namespace::Embedding)
        .expect("the embedding namespace");
    cache_config.ttls[embedding] = Duration::from_secs(600);
    let cache = TieredCache::new(cache_config, redis);
    let kb = Arc::new(KnowledgeBase::new(
        store.clone(),
        Arc::new(OfflineEmbedder::new(dims)),
        cache,
        ChunkConfig {
            size: 500,
            overlap: 50,
        },
    ));

    // The embedder alone, for scale.
    {
        let embedder = OfflineEmbedder::new(dims);
        let mut words = Words(7);
        let texts: Vec<String> = (0..2000)
            .map(|_| {
                (0..9)
                    .map(|_| words.sentence(9))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let t = Instant::now();
        for text in &texts {
            std::hint::black_box(embedder.vector(text));
        }
        println!(
            "offline embedder: {:.0} chunks/s on one core",
            texts.len() as f64 / t.elapsed().as_secs_f64()
        );
    }

    // Documents of ~2,000 characters (5 chunks each), posted in batches as a bulk
    // import through `POST /documents` would (`KB_BENCH_BATCH`, default 20 documents).
    let batch_size: usize = std::env::var("KB_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let docs_needed = target_chunks / 5;
    let workers = 4;
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let kb = kb.clone();
            let reuse = reuse.clone();
            tokio::spawn(async move {
                let mut words = Words(0x9E3779B97F4A7C15 ^ (w as u64 + 1));
                let mut chunks = 0i64;
                // Every 50th document is kept to ask for it later.
                let mut samples = Vec::new();
                let mut batch = Vec::with_capacity(batch_size);
                let ids: Vec<usize> = (w..docs_needed).step_by(workers).collect();
                for (n, i) in ids.iter().enumerate() {
                    let text = (0..30)
                        .map(|_| words.sentence(9))
                        .collect::<Vec<_>>()
                        .join(" ");
                    if i % 50 == 0 {
                        samples.push((format!("doc-{i}"), text.clone()));
                    }
                    batch.push(IngestRequest {
                        id: Some(format!("doc-{i}")),
                        title: Some(format!("{} {}", words.next(), words.next())),
                        text,
                        content_type: "text/plain".into(),
                        source: "bench".into(),
                        metadata: serde_json::json!({}),
                    });
                    if reuse.is_some() {
                        // The same documents as the kept run, generated but not ingested.
                        chunks += 5;
                        batch.clear();
                    } else if batch.len() == batch_size || n + 1 == ids.len() {
                        let results = kb
                            .ingest_batch(std::mem::take(&mut batch), "bench")
                            .await
                            .expect("ingest");
                        chunks += results.iter().map(|r| r.chunks).sum::<i64>();
                    }
                }
                (chunks, samples)
            })
        })
        .collect();
    let mut total_chunks = 0;
    let mut samples = Vec::new();
    for t in tasks {
        let (chunks, kept) = t.await.unwrap();
        total_chunks += chunks;
        samples.extend(kept);
    }
    let elapsed = started.elapsed();
    if reuse.is_none() {
        println!(
            "ingest: {total_chunks} chunks in {:.1} s = {:.0} chunks/s ({docs_needed} documents, batches of {batch_size}, {workers} concurrent writers)",
            elapsed.as_secs_f64(),
            total_chunks as f64 / elapsed.as_secs_f64()
        );
    }

    // Everything above was committed and searchable; now wait until the HNSW index
    // covers it all (the background maintainer, or this pass if it is idle).
    let indexing = Instant::now();
    loop {
        let passes = store.maintain_vector_index(true).await.expect("maintain");
        if passes.is_empty() {
            break;
        }
        for (_, pass) in &passes {
            if let Maintenance::Built { rows, seconds, .. } = pass {
                println!("index built over {rows} chunks in {seconds:.1} s");
            }
        }
        if passes.iter().any(|(_, p)| *p == Maintenance::Busy) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let indexed = started.elapsed();
    if reuse.is_none() {
        println!(
            "fully indexed {:.1} s after the last write: {:.0} chunks/s from first write to indexed",
            indexing.elapsed().as_secs_f64(),
            total_chunks as f64 / indexed.as_secs_f64()
        );
    }

    // Analyse once after the bulk load, as an operator would.
    if let shared::store::Pool::Postgres(pool) = database.pool().await.unwrap() {
        sqlx::query("ANALYZE chunks").execute(pool).await.unwrap();
        if reuse.is_some() {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks")
                .fetch_one(pool)
                .await
                .unwrap();
            total_chunks = count;
        }
    }

    // The index was just built: its pages are not in PostgreSQL's buffers yet. Warm up
    // with 300 searches for other words (not measured), as a running service would be,
    // then measure.
    let mut warmup_words = Words(4242);
    let warmup = Instant::now();
    for i in 0..300 {
        let query = format!(
            "{} {} {} w{i}",
            warmup_words.next(),
            warmup_words.next(),
            warmup_words.next()
        );
        kb.search(&query, 5, None).await.expect("search");
    }
    println!(
        "warm-up: 300 searches in {:.1} s",
        warmup.elapsed().as_secs_f64()
    );

    // Where a search's time goes: each list alone, straight from the store (k = 20, the
    // candidates a k = 5 search asks each list for), on phrase-like queries.
    {
        let embedder = OfflineEmbedder::new(dims);
        let model = shared::kb::embed::Embedder::model(&embedder).to_string();
        let mut profile_words = Words(777);
        let (mut keyword, mut vector) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            let query = profile_words.sentence(4);
            let t = Instant::now();
            store
                .keyword_search(&query, 20, None)
                .await
                .expect("keyword");
            keyword.push(t.elapsed());
            let v = embedder.vector(&query);
            let t = Instant::now();
            store
                .vector_search(&v, &model, 20, None)
                .await
                .expect("vector");
            vector.push(t.elapsed());
        }
        keyword.sort();
        vector.sort();
        println!(
            "lists alone (200 four-word queries, k=20): keyword p50 {:.2} ms, p95 {:.2} ms; vector p50 {:.2} ms, p95 {:.2} ms",
            percentile(&keyword, 0.5).as_secs_f64() * 1000.0,
            percentile(&keyword, 0.95).as_secs_f64() * 1000.0,
            percentile(&vector, 0.5).as_secs_f64() * 1000.0,
            percentile(&vector, 0.95).as_secs_f64() * 1000.0
        );
    }

    // Known-item queries: four consecutive words from a sentence of a kept document, as
    // a user searching for a phrase they remember; the hit rate is the share of searches
    // whose top 5 holds that document.
    let mut words = Words(42);
    let mut latencies = Vec::new();
    let mut slowest = Vec::new();
    let mut found = 0;
    let queries = samples.len().min(300);
    for (i, (id, text)) in samples.iter().take(queries).enumerate() {
        let sentence: Vec<&str> = text
            .split(". ")
            .nth(i % 30)
            .unwrap_or(text)
            .split(' ')
            .collect();
        let start = (words.random() as usize) % sentence.len().saturating_sub(4).max(1);
        let query = sentence[start..(start + 4).min(sentence.len())].join(" ");
        let t = Instant::now();
        let response = kb.search(&query, 5, None).await.expect("search");
        let took = t.elapsed();
        latencies.push(took);
        let hit = response.results.iter().any(|r| &r.document_id == id);
        if hit {
            found += 1;
        }
        slowest.push((took, query, hit));
    }
    latencies.sort();
    // The tail, for whoever works on it next: the slowest phrases and whether they hit.
    slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (took, query, hit) in slowest.iter().take(5) {
        println!(
            "  slow phrase: {:.2} ms {query:?}{}",
            took.as_secs_f64() * 1000.0,
            if *hit { "" } else { " (missed)" }
        );
    }
    println!(
        "search for a remembered phrase (hybrid, k=5, {total_chunks} chunks, {queries} queries): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms; document in the top 5: {:.1} %",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.95).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        100.0 * found as f64 / queries as f64
    );

    // Three random words: mostly no chunk has all of them, so the keyword list widens to
    // any word (the slow path).
    let mut latencies = Vec::new();
    for i in 0..300 {
        let query = format!("{} {} {} q{i}", words.next(), words.next(), words.next());
        let t = Instant::now();
        let response = kb.search(&query, 5, None).await.expect("search");
        latencies.push(t.elapsed());
        assert!(!response.results.is_empty());
    }
    latencies.sort();
    println!(
        "search for random words (hybrid, k=5, {total_chunks} chunks, 300 distinct queries): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.95).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0
    );
    if std::env::var("KB_BENCH_KEEP").is_ok() {
        println!("kept database: {}", db.url);
        std::mem::forget(db);
    }
}
