//! Chat gateway load benchmark (issue 5 targets), standalone server mode: the release
//! `chat` binary as its own process, the project's fake OpenAI server (in this process)
//! answering after a fixed delay, and an open-loop load generator.
//!
//! Measures: gateway overhead (x-overhead-ms, and latency minus the upstream delay) on
//! cache misses at a fixed rate; cached response latency; resident memory; cold start
//! (process start to first answered request). `CHAT_BENCH_RATE` (default 500 req/s),
//! `CHAT_BENCH_SECS` (10), `CHAT_BENCH_DELAY_MS` (50), `CHAT_BENCH_DOCS` (documents in the
//! knowledge base, default 200), `CHAT_BENCH_RETRIEVAL` (`true` puts retrieval on the
//! request path under load; default `false`, its cost is measured alone first); `CHAT_BENCH_ENV_<NAME>=value` sets
//! `NAME` for the server (e.g. `CHAT_BENCH_ENV_CACHE_L1_MAX_BYTES`). Run with `make bench`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatkb_testing::fake_openai::{Behaviour, FakeOpenAi};
use serde_json::json;

const KEY: &str = "bench-key";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        values.len(),
        percentile(&values, 0.5),
        percentile(&values, 0.95),
        percentile(&values, 0.99),
        values.last().copied().unwrap_or(f64::NAN)
    );
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Starts the chat binary and waits for its first answered request; returns the server
/// and the time from spawn to that answer.
async fn start_chat(client: &reqwest::Client, vars: &[(String, String)]) -> (Server, Duration) {
    let port = chatkb_testing::free_port();
    let started = Instant::now();
    // CHAT_BENCH_BIN runs another build of the server (e.g. one with line tables), and
    // CHAT_BENCH_WRAPPER runs it under a tool (e.g. `heaptrack`), to see where memory goes.
    let binary = std::env::var("CHAT_BENCH_BIN").unwrap_or(env!("CARGO_BIN_EXE_chat").into());
    let wrapper = std::env::var("CHAT_BENCH_WRAPPER").unwrap_or_default();
    let mut command = match wrapper.split_whitespace().collect::<Vec<_>>().split_first() {
        Some((tool, args)) => {
            let mut command = Command::new(tool);
            command.args(args).arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    let child = command
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PORT", port.to_string())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // CHAT_BENCH_ENV_<NAME>=value passes NAME=value to the server.
        .envs(std::env::vars().filter_map(|(k, v)| {
            k.strip_prefix("CHAT_BENCH_ENV_")
                .map(|name| (name.to_string(), v))
        }))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the chat binary starts");
    let server = Server { child, port };
    let url = format!("http://127.0.0.1:{port}/v1/models");
    loop {
        if let Ok(res) = client.get(&url).bearer_auth(KEY).send().await {
            if res.status().is_success() {
                return (server, started.elapsed());
            }
        }
        if started.elapsed() > Duration::from_secs(20) {
            panic!("chat did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Requests started on schedule at `rate` per second for `secs`, whatever the previous
/// ones are doing (open loop), each a unique cache miss: (success, latency, the
/// gateway's x-overhead-ms header or NaN).
async fn open_loop(
    client: &reqwest::Client,
    url: &Arc<String>,
    key: Option<&'static str>,
    rate: u64,
    secs: u64,
) -> Vec<(bool, Duration, f64)> {
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total as usize);
    // Unique to this run, so no prompt was seen (and cached) before.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    for i in 0..total {
        ticker.tick().await;
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": format!("question {run}-{i}: how do refunds of order {} work?", i % 200)}]});
            let t = Instant::now();
            let mut request = client.post(url.as_str()).json(&body);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let res = request.send().await.expect("request");
            let overhead: f64 = res
                .headers()
                .get("x-overhead-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            let ok = res.status().is_success();
            let _ = res.bytes().await;
            (ok, t.elapsed(), overhead)
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// What the gateway adds at one offered rate: its client-side latency percentiles minus
/// the upstream's, called directly at the same rate (issue 16: p50 ≤ 0.2 ms, p99 ≤ 1 ms
/// at 1,000 req/s).
fn print_added(rate: u64, direct: &[(bool, Duration, f64)], mut gateway_ms: Vec<f64>) {
    let mut direct_ms: Vec<f64> = direct.iter().map(|r| r.1.as_secs_f64() * 1000.0).collect();
    direct_ms.sort_by(f64::total_cmp);
    gateway_ms.sort_by(f64::total_cmp);
    let failed = direct.iter().filter(|r| !r.0).count();
    let at = |v: &[f64], p: f64| percentile(v, p / 100.0);
    println!(
        "  direct at {rate} req/s: p50 {:.3} ms, p99 {:.3} ms ({failed} failed); through the gateway: p50 {:.3} ms, p99 {:.3} ms; added: p50 {:+.3} ms, p99 {:+.3} ms",
        at(&direct_ms, 50.0),
        at(&direct_ms, 99.0),
        at(&gateway_ms, 50.0),
        at(&gateway_ms, 99.0),
        at(&gateway_ms, 50.0) - at(&direct_ms, 50.0),
        at(&gateway_ms, 99.0) - at(&direct_ms, 99.0),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rate: u64 = env_or("CHAT_BENCH_RATE", 500);
    let secs: u64 = env_or("CHAT_BENCH_SECS", 10);
    let delay_ms: u64 = env_or("CHAT_BENCH_DELAY_MS", 50);
    let docs: usize = env_or("CHAT_BENCH_DOCS", 200).max(1);
    let retrieval: bool = env_or("CHAT_BENCH_RETRIEVAL", false);

    let fake = FakeOpenAi::start().await;
    fake.set_behaviour(Behaviour {
        latency_ms: delay_ms,
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}/bench.db", dir.path().display());

    // A knowledge base for retrieval, written through the library like ingest would.
    {
        let ctx = chatkb_testing::context("ingest", &[("DATABASE_URL", db_url.as_str())]);
        let kb = ctx.knowledge_base();
        let mut requests: Vec<shared::kb::IngestRequest> = (0..docs)
            .map(|i| shared::kb::IngestRequest {
                id: Some(format!("doc-{i}")),
                title: Some(format!("Topic {i}")),
                text: format!(
                    "Document {i} explains procedure {i}: step one checks the account, step two \
                     opens ticket {i}, step three confirms the refund of order {i} within {} days.",
                    i % 30 + 1
                ),
                content_type: "text/plain".into(),
                source: "bench".into(),
                metadata: json!({}),
            })
            .collect();
        // In batches the ingest limit allows (MAX_BATCH_DOCUMENTS, 100 by default).
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().min(100));
            kb.ingest_batch(requests, "bench").await.expect("ingest");
            requests = rest;
        }
        // Retrieval alone, in this process, one query at a time.
        let (mut took, mut answered) = (Vec::new(), 0);
        for i in 0..500 {
            let t = Instant::now();
            let found = kb
                .retrieve(
                    &format!("question {i}: how do refunds of order {} work?", i % 200),
                    4,
                )
                .await
                .expect("retrieve");
            took.push(t.elapsed().as_secs_f64() * 1000.0);
            answered += usize::from(!found.is_empty());
        }
        // Passages under the relevance floor are not returned: say how many questions got one.
        summary(
            &format!(
                "retrieval alone (in process, SQLite; {answered} of 500 questions found a passage)"
            ),
            took,
        );
        let store = kb.store().clone();
        let embedder = kb.embedder().clone();
        let (mut kw, mut vec, mut emb) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..300 {
            let q = format!("question {i}: how do refunds of order {} work?", i % 200);
            let t = Instant::now();
            let v = embedder
                .embed(std::slice::from_ref(&q))
                .await
                .unwrap()
                .remove(0);
            emb.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            store.keyword_search(&q, 20, None).await.unwrap();
            kw.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            store
                .vector_search(&v, embedder.model(), 20, None)
                .await
                .unwrap();
            vec.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        summary("  embed the question", emb);
        summary("  keyword list (FTS5)", kw);
        summary("  vector list (exact scan)", vec);
    }

    let vars: Vec<(String, String)> = [
        ("DATABASE_URL", db_url.as_str()),
        (
            "API_KEYS",
            &format!("bench:{}", shared::auth::hash_key(KEY)),
        ),
        ("LLM_BASE_URL", fake.base_url.as_str()),
        ("LLM_MODEL", "gpt-4o-mini"),
        ("RATE_LIMIT_REQUESTS", "1000000"),
        ("MAX_CONCURRENT_SESSIONS", "10000"),
        (
            "RETRIEVAL_ENABLED",
            if retrieval { "true" } else { "false" },
        ),
        ("LOG_LEVEL", "info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();

    // Cold start: process start to first answered request, five times.
    let mut cold = Vec::new();
    for _ in 0..5 {
        let (_server, took) = start_chat(&client, &vars).await;
        cold.push(took.as_secs_f64() * 1000.0);
    }
    summary("cold start (spawn to first answered GET /v1/models)", cold);

    let (server, _) = start_chat(&client, &vars).await;
    let url = Arc::new(format!(
        "http://127.0.0.1:{}/v1/chat/completions",
        server.port
    ));
    let pid = server.child.id();
    println!("rss after start: {} KiB", rss_kib(pid, "VmRSS:"));

    // Warm-up: connections and caches of the process.
    for i in 0..200 {
        let body = json!({"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": format!("warm-up {i}: how do refunds of order {i} work?")}]});
        client
            .post(url.as_str())
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
    }

    // Cache misses at a fixed rate, first to the upstream directly and then through the
    // gateway: what the gateway adds is the difference at the same offered rate.
    let direct_url = Arc::new(format!("{}/chat/completions", fake.base_url));
    let direct = open_loop(&client, &direct_url, None, rate, secs).await;
    let total = rate * secs;
    let run_started = Instant::now();
    let results = open_loop(&client, &url, Some(KEY), rate, secs).await;
    let mut latency_minus_delay = Vec::new();
    let mut overheads = Vec::new();
    let mut failures = 0;
    for (ok, took, overhead) in results {
        if !ok {
            failures += 1;
        }
        latency_minus_delay.push(took.as_secs_f64() * 1000.0 - delay_ms as f64);
        overheads.push(overhead);
    }
    let achieved = total as f64 / run_started.elapsed().as_secs_f64();
    println!(
        "cache misses: {total} requests at {rate} req/s offered ({achieved:.0} achieved), upstream delay {delay_ms} ms, retrieval {}, {failures} failed",
        if retrieval { format!("over {docs} documents") } else { "off".to_string() }
    );
    summary("  gateway overhead (x-overhead-ms)", overheads);
    let gateway_ms: Vec<f64> = latency_minus_delay
        .iter()
        .map(|v| v + delay_ms as f64)
        .collect();
    print_added(rate, &direct, gateway_ms);
    summary(
        "  latency minus upstream delay (client side)",
        latency_minus_delay,
    );
    println!(
        "rss after load: {} KiB (peak {} KiB)",
        rss_kib(pid, "VmRSS:"),
        rss_kib(pid, "VmHWM:")
    );

    // Cached answers: one question asked again and again, one at a time.
    let body = json!({"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "question 1: how do refunds of order 1 work?"}]});
    // Ask until the answer is served from the cache (L1 may have evicted it while the
    // load above filled it), then measure.
    let ask = || {
        client
            .post(url.as_str())
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };
    let mut tries = 0;
    loop {
        let res = ask().await.unwrap();
        if res.headers()["x-cache"] == "hit" {
            break;
        }
        tries += 1;
        assert!(tries < 20, "the answer was never served from the cache");
    }
    let mut latencies = Vec::new();
    let mut overheads = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let res = ask().await.unwrap();
        assert_eq!(res.headers()["x-cache"], "hit");
        let overhead: f64 = res.headers()["x-overhead-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let _ = res.bytes().await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        overheads.push(overhead);
    }
    summary("cached answers: client latency", latencies);
    summary("cached answers: x-overhead-ms", overheads);
    println!(
        "rss at the end: {} KiB (peak {} KiB; anonymous {} KiB, file-backed {} KiB); fake upstream calls: {}",
        rss_kib(pid, "VmRSS:"),
        rss_kib(pid, "VmHWM:"),
        rss_kib(pid, "RssAnon:"),
        rss_kib(pid, "RssFile:"),
        fake.chat_completions()
    );
    // CHAT_BENCH_SMAPS=<file>: the server's memory map at the end, to see where it goes.
    if let Ok(path) = std::env::var("CHAT_BENCH_SMAPS") {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        std::fs::write(path, smaps).expect("CHAT_BENCH_SMAPS is writable");
    }
}
