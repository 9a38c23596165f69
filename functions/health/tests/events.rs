//! The health function's handlers, driven by the sample events in `events/`.

use chatkb_testing::{call, context, load_event, load_event_json, TestDatabase};
use lambda_runtime::{Context, LambdaEvent};

#[tokio::test]
async fn every_health_route_answers_its_sample_event() {
    let db = TestDatabase::sqlite();
    let router = health::router(context("health", &[("DATABASE_URL", &db.url)]));

    let res = call(&router, load_event("health-get.json")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json["status"], "ok");
    assert_eq!(res.json["function"], "health");

    let res = call(&router, load_event("health-live.json")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json["status"], "alive");

    let res = call(&router, load_event("health-ready.json")).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["status"], "ready");
    assert_eq!(
        res.headers["x-request-id"], "evt-ready-0001",
        "the caller's request id is echoed"
    );
    assert_eq!(res.json["dependencies"][0]["name"], "database");
    assert_eq!(res.json["dependencies"][0]["status"], "up");

    let res = call(&router, load_event("health-detailed.json")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json["status"], "ok");
    assert_eq!(res.json["version"], shared::VERSION);
    assert!(res.json["uptime_seconds"].is_u64());
    assert!(res.json["cold_start"].is_boolean());
    let deps = res.json["dependencies"].as_array().unwrap();
    assert_eq!(deps.len(), 2);
    assert!(deps[0]["latency_ms"].is_number());
    assert_eq!(deps[1]["status"], "disabled");
    assert_eq!(res.json["cache"]["l2"], "disabled");
    assert_eq!(res.json["cache"]["scope"], "service");
    assert_eq!(res.json["concurrent_sessions"]["limit"], 100);
    assert!(res.json["breakers"].is_array());

    let res = call(&router, load_event("health-metrics.json")).await;
    assert_eq!(res.status, 200);
    assert!(res.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert!(res.text.contains(
        "http_requests_total{function=\"health\",route=\"/health/ready\",status=\"200\"}"
    ));
    let scrape = prometheus_parse::Scrape::parse(res.text.lines().map(|l| Ok(l.to_string())));
    assert!(scrape.is_ok(), "metrics must parse as Prometheus text");
}

#[tokio::test]
async fn wrong_method_and_unknown_route_are_json_errors() {
    let router = health::router(context(
        "health",
        &[("DATABASE_URL", &TestDatabase::sqlite().url)],
    ));
    let res = call(&router, load_event("health-wrong-method.json")).await;
    assert_eq!(res.status, 405);
    assert_eq!(res.json["error"]["code"], "method_not_allowed");
    assert!(res.headers["allow"].to_str().unwrap().contains("GET"));
    let res = call(&router, load_event("health-unknown-route.json")).await;
    assert_eq!(res.status, 404);
    assert_eq!(res.json["error"]["code"], "not_found");
}

#[tokio::test]
async fn ready_is_503_naming_postgres_when_it_is_unreachable() {
    let router = health::router(context(
        "health",
        &[
            ("DATABASE_URL", "postgres://postgres:hunter2@127.0.0.1:1/x"),
            ("DATABASE_TIMEOUT_MS", "300"),
        ],
    ));
    let res = call(&router, load_event("health-ready.json")).await;
    assert_eq!(res.status, 503);
    assert_eq!(res.json["status"], "not_ready");
    assert_eq!(res.json["failing"], serde_json::json!(["database"]));
    assert_eq!(res.json["error"]["code"], "service_unavailable");
    assert!(res.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("database"));
    assert!(
        !res.text.contains("hunter2"),
        "no secret in a response: {}",
        res.text
    );
    let res = call(&router, load_event("health-detailed.json")).await;
    assert_eq!(
        res.status, 200,
        "detailed always answers, with the status inside"
    );
    assert_eq!(res.json["status"], "down");
}

/// Issue 14, finding 6: Redis down made readiness 503, so a load balancer would pull
/// every instance although every route answers through its in-process fallback. Now it
/// is `degraded` (200), and 503 only where `REDIS_REQUIRED` says Redis is a must.
#[tokio::test]
async fn redis_down_is_degraded_not_unready_unless_it_is_required() {
    let db = TestDatabase::sqlite();
    let vars = [
        ("DATABASE_URL", db.url.as_str()),
        ("REDIS_URL", "redis://127.0.0.1:1"),
        ("REDIS_TIMEOUT_MS", "200"),
    ];
    let router = health::router(context("health", &vars));
    let res = call(&router, load_event("health-ready.json")).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["status"], "degraded");
    assert_eq!(res.json["degraded"], serde_json::json!(["redis"]));
    let res = call(&router, load_event("health-detailed.json")).await;
    assert_eq!(res.json["status"], "degraded");

    let mut required = vars.to_vec();
    required.push(("REDIS_REQUIRED", "true"));
    let router = health::router(context("health", &required));
    let res = call(&router, load_event("health-ready.json")).await;
    assert_eq!(res.status, 503, "{}", res.text);
    assert_eq!(res.json["failing"], serde_json::json!(["redis"]));
}

#[tokio::test]
async fn ready_is_200_with_real_postgres_and_redis() {
    let db = TestDatabase::postgres().await;
    let redis = chatkb_testing::test_redis_url();
    let router = health::router(context(
        "health",
        &[("DATABASE_URL", &db.url), ("REDIS_URL", &redis)],
    ));
    let res = call(&router, load_event("health-ready.json")).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let names: Vec<_> = res.json["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].clone())
        .collect();
    assert_eq!(names, vec!["database", "redis"]);
}

#[tokio::test]
async fn the_scheduled_event_runs_and_records_the_deep_check() {
    let db = TestDatabase::sqlite();
    let ctx = context("health", &[("DATABASE_URL", &db.url)]);
    let router = health::router(ctx.clone());
    let event = LambdaEvent::new(load_event_json("health-scheduled.json"), Context::default());
    let result = shared::runtime::dispatch(
        router.clone(),
        Some(health::on_schedule(ctx.clone())),
        event,
    )
    .await
    .unwrap();
    assert_eq!(result["status"], "ok");
    assert_eq!(
        result["tables"],
        serde_json::json!(chatkb_testing::MIGRATED_TABLES)
    );
    assert_eq!(
        shared::health::deep_check_count(&ctx.database)
            .await
            .unwrap(),
        1
    );
    let res = call(&router, load_event("health-detailed.json")).await;
    assert_eq!(res.json["last_deep_check"]["status"], "ok");
    let metrics = call(&router, load_event("health-metrics.json")).await.text;
    assert!(
        metrics.contains("health_deep_checks_total{status=\"ok\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn http_events_through_the_lambda_dispatcher_become_gateway_responses() {
    let db = TestDatabase::sqlite();
    let ctx = context("health", &[("DATABASE_URL", &db.url)]);
    let event = LambdaEvent::new(load_event_json("health-ready.json"), Context::default());
    let result = shared::runtime::dispatch(health::router(ctx.clone()), None, event)
        .await
        .unwrap();
    assert_eq!(result["statusCode"], 200);
    assert_eq!(result["headers"]["x-request-id"], "evt-ready-0001");
    let body: serde_json::Value = serde_json::from_str(result["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["status"], "ready");
    // A scheduled event for a function without a schedule handler is an invocation error, not a panic.
    let event = LambdaEvent::new(load_event_json("health-scheduled.json"), Context::default());
    assert!(shared::runtime::dispatch(health::router(ctx), None, event)
        .await
        .is_err());
}

#[tokio::test]
async fn detailed_reports_breaker_states_and_cache_hit_rate() {
    let db = TestDatabase::sqlite();
    // The cache's counts are the whole service's: another instance (here, a cache built
    // beside the health function, as chat's would be) publishes them to Redis.
    let prefix = format!("hc{}", std::process::id());
    let redis_url = chatkb_testing::test_redis_url();
    let ctx = context(
        "health",
        &[
            ("DATABASE_URL", &db.url),
            ("REDIS_URL", &redis_url),
            ("CACHE_PREFIX", &prefix),
            ("BREAKER_SHARED", "false"),
        ],
    );
    let router = health::router(ctx.clone());
    let breaker = ctx.breakers.get("openai");
    for _ in 0..5 {
        let permit = breaker.acquire().await.unwrap();
        breaker.record(permit, true).await;
    }
    let redis = chatkb_testing::test_redis(std::time::Duration::from_secs(1));
    let mut conn = redis.connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(shared::cache::service_counts_key(&prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let config = shared::cache::CacheConfig {
        prefix: prefix.clone(),
        ..Default::default()
    };
    let chat_cache = shared::cache::TieredCache::new(config, Some(redis));
    let res = call(&router, load_event("health-detailed.json")).await;
    assert_eq!(res.json["cache"]["l2"], "up");
    assert_eq!(
        res.json["cache"]["hit_rate"],
        serde_json::Value::Null,
        "no lookup yet"
    );

    chat_cache
        .set(shared::cache::Namespace::Chat, "q", &"a".to_string())
        .await;
    let _: Option<String> = chat_cache.get(shared::cache::Namespace::Chat, "q").await;
    let _: Option<String> = chat_cache
        .get(shared::cache::Namespace::Chat, "missing")
        .await;
    chat_cache.publish_counts().await;
    chat_cache.publish_counts().await; // nothing new: counted once

    let res = call(&router, load_event("health-detailed.json")).await;
    assert_eq!(
        res.json["breakers"],
        serde_json::json!([{"name": "openai", "state": "open"}])
    );
    assert_eq!(res.json["cache"]["hit_rate"], 0.5);
    assert_eq!(res.json["cache"]["l1_hits"], 1);
    assert_eq!(res.json["cache"]["misses"], 1);
    let metrics = call(&router, load_event("health-metrics.json")).await.text;
    assert!(
        metrics.contains("circuit_breaker_state{breaker=\"openai\"} 1"),
        "{metrics}"
    );
    // Every cache series exists from the start; this one has counted the hit.
    let hits = r#"cache_hits_total{namespace="chat",tier="l1"}"#;
    assert!(
        shared::observability::metrics::series_value(&metrics, hits) >= 1.0,
        "{metrics}"
    );
}

/// Issue 12, finding 2: a function whose configuration is wrong answers at once with a
/// JSON 503 naming the problem (under Lambda it keeps serving that, not hanging).
#[tokio::test]
async fn a_misconfigured_function_answers_a_json_503_naming_the_problem() {
    let problem =
        "invalid configuration (1 problem): DATABASE_URL: expected sqlite:// or postgres://";
    let router = shared::app::misconfigured(problem);
    let res = call(&router, load_event("health-ready.json")).await;
    assert_eq!(res.status, 503, "{}", res.text);
    let message = res.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("DATABASE_URL"), "{message}");
}

/// `make run` runs each function with `--check-config` first: a bad variable is one
/// line naming it and a non-zero exit, before anything is served.
#[test]
fn check_config_names_every_bad_variable_and_exits_non_zero() {
    let binary = env!("CARGO_BIN_EXE_health");
    let bad = std::process::Command::new(binary)
        .arg("--check-config")
        .env_clear()
        .env("DATABASE_URL", "mysql://x")
        .env("PORT", "abc")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&bad.stdout),
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(
        said.contains("DATABASE_URL") && said.contains("PORT"),
        "{said}"
    );
    assert!(!said.contains("mysql://x"), "URLs are never echoed: {said}");

    let dir = tempfile::tempdir().unwrap();
    let good = std::process::Command::new(binary)
        .arg("--check-config")
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/app.db", dir.path().display()),
        )
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("valid"));
}

/// Containers have no EventBridge: the standalone server runs the deep check itself,
/// every `SCHEDULE_EVERY_SECS` (five minutes by default, as the template's schedule).
#[tokio::test]
async fn the_standalone_server_runs_its_scheduled_deep_check_itself() {
    let db = TestDatabase::sqlite();
    let port = chatkb_testing::free_port();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_health"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .env("DATABASE_URL", &db.url)
        .env("SCHEDULE_EVERY_SECS", "1")
        .env("LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the health binary starts");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/health/detailed");
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let Ok(response) = client.get(&url).send().await else {
            continue;
        };
        last = response.json().await.unwrap_or_default();
        if last["last_deep_check"]["status"] == "ok" {
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(last["last_deep_check"]["status"], "ok", "{last}");
}
