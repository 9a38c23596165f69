//! Costs the foundation adds to every request: redaction of a log line, API-key
//! verification, the shared HTTP layer stack, and configuration parsing at cold start.
//! Run with `make bench`; results are recorded in docs/benchmarks.md.

use std::hint::black_box;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use chatkb_testing::settings;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use shared::auth::{hash_key, ApiKeys};
use shared::observability::redact::redact;
use tower::ServiceExt;

const CLEAN_LINE: &str = r#"{"timestamp":"2026-11-23T07:30:03.123456Z","level":"INFO","message":"request completed","request_id":"550e8400-e29b-41d4-a716-446655440000","function":"chat","method":"POST","route":"/v1/chat/completions","status":200,"duration_ms":12.5,"cold_start":false,"target":"shared::http"}"#;
const SECRET_LINE: &str = r#"{"timestamp":"2026-11-23T07:30:03.123456Z","level":"WARN","message":"upstream said: invalid key sk-proj-ABCDEF0123456789 for jane.doe@example.com","authorization":"Bearer abcdef0123456789","database":"postgres://app:hunter2@db:5432/app","card":"4111 1111 1111 1111"}"#;

fn redaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("redact");
    group.bench_function("clean_request_log_line", |b| {
        b.iter(|| redact(black_box(CLEAN_LINE)))
    });
    group.bench_function("line_with_five_secrets", |b| {
        b.iter(|| redact(black_box(SECRET_LINE)))
    });
    group.finish();
}

fn api_keys(c: &mut Criterion) {
    let raw: Vec<String> = (0..10)
        .map(|i| format!("key{i}:{}", hash_key(&format!("secret-{i}"))))
        .collect();
    let keys = ApiKeys::parse(&raw.join(",")).unwrap();
    let mut group = c.benchmark_group("api_keys");
    group.bench_function("verify_hit_of_10", |b| {
        b.iter(|| keys.verify(black_box("secret-7")))
    });
    group.bench_function("verify_miss_of_10", |b| {
        b.iter(|| keys.verify(black_box("wrong")))
    });
    group.finish();
}

fn http_stack(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    shared::observability::metrics::install();
    let config = settings("bench", &[("CORS_ORIGINS", "https://app.example.com")]);
    let bare = Router::new().route("/ok", get(|| async { "ok" }));
    let layered = shared::http::app(Router::new().route("/ok", get(|| async { "ok" })), &config);
    let request = || {
        Request::get("/ok")
            .header("origin", "https://app.example.com")
            .body(Body::empty())
            .unwrap()
    };
    let mut group = c.benchmark_group("http");
    group.bench_function("bare_axum_route", |b| {
        b.to_async(&runtime)
            .iter(|| async { bare.clone().oneshot(request()).await.unwrap() })
    });
    group.bench_function("shared_layer_stack", |b| {
        b.to_async(&runtime)
            .iter(|| async { layered.clone().oneshot(request()).await.unwrap() })
    });
    group.bench_function("json_404", |b| {
        b.to_async(&runtime).iter(|| async {
            layered
                .clone()
                .oneshot(Request::get("/missing").body(Body::empty()).unwrap())
                .await
                .unwrap()
        })
    });
    group.finish();
}

fn configuration(c: &mut Criterion) {
    let keys = format!("a:{},b:{}", hash_key("a"), hash_key("b"));
    let pairs = [
        ("DATABASE_URL", "postgres://app:pw@127.0.0.1:5432/app"),
        ("REDIS_URL", "redis://127.0.0.1:6379/0"),
        ("API_KEYS", keys.as_str()),
        (
            "CORS_ORIGINS",
            "https://a.example.com,https://b.example.com",
        ),
    ];
    c.bench_function("config/from_vars_full", |b| {
        b.iter(|| settings("bench", black_box(&pairs)))
    });
}

criterion_group!(benches, redaction, api_keys, http_stack, configuration);
criterion_main!(benches);
