//! Chunks per second of the local embedder (all-MiniLM-L6-v2) on Cranfield's prose: short
//! chunks (an abstract's first sentence, ~25 tokens) and chunks of the default size (the
//! abstract up to 1,000 characters, ~200 tokens), in batches as ingest sends them.
//! `RAYON_NUM_THREADS=1` measures one core (`make bench-embed` runs both).

use std::path::PathBuf;

use chatkb_local_embedder::{LocalEmbedder, Precision};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use support::model_dir;

#[path = "../tests/support/mod.rs"]
mod support;

/// The functions' allocator (their main.rs), so the figures are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Cranfield abstracts (eval/cranfield/corpus.jsonl), `count` of them.
fn abstracts(count: usize) -> Vec<String> {
    let corpus =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../eval/cranfield/corpus.jsonl");
    std::fs::read_to_string(corpus)
        .unwrap()
        .lines()
        .take(count)
        .map(|line| {
            let doc: serde_json::Value = serde_json::from_str(line).unwrap();
            doc["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// A line of /proc/self/status, in MB.
fn resident(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn bench(c: &mut Criterion) {
    let dir = model_dir();
    let started = std::time::Instant::now();
    let embedder = LocalEmbedder::load(&dir, Precision::Int8).expect("load the model");
    // What a cold start pays for the model (reading, hashing, quantising the weights),
    // and the memory it holds.
    eprintln!(
        "model loaded in {:.0} ms; resident {} MB, of which {} MB anonymous",
        started.elapsed().as_secs_f64() * 1e3,
        resident("VmRSS"),
        resident("RssAnon"),
    );
    let started = std::time::Instant::now();
    let exact = LocalEmbedder::load(&dir, Precision::F32).expect("load the model");
    eprintln!(
        "f32 model loaded in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let texts = abstracts(64);
    let short: Vec<String> = texts
        .iter()
        .map(|t| t.split(" . ").nth(1).unwrap_or(t).to_string())
        .collect();
    let default_size: Vec<String> = texts
        .iter()
        .map(|t| t.chars().take(1000).collect())
        .collect();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let mut group = c.benchmark_group(format!("local_embedder/threads_{threads}"));
    group.sample_size(10);
    for (precision, embedder) in [("int8", &embedder), ("f32", &exact)] {
        for (name, batch) in [
            ("short_chunks", &short),
            ("1000_char_chunks", &default_size),
        ] {
            group.throughput(Throughput::Elements(batch.len() as u64));
            group.bench_function(format!("{precision}/{name}"), |b| {
                b.iter(|| embedder.embed_blocking(batch).unwrap());
            });
        }
    }
    group.finish();
    eprintln!("peak resident {} MB", resident("VmHWM"));
}

criterion_group!(benches, bench);
criterion_main!(benches);
