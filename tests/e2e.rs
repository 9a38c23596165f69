//! End-to-end: the function binaries as processes, called over HTTP.

use std::time::Duration;

use chatkb_testing::TestDatabase;
use integration_tests::Function;
use serde_json::Value;

async fn get(url: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let res = reqwest::get(url).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

fn json_lines(function: &Function) -> Vec<Value> {
    function
        .output()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[tokio::test]
async fn all_functions_serve_json_over_http_on_the_embedded_default() {
    let db = TestDatabase::sqlite();
    let keys = format!("e2e:{}", shared::auth::hash_key("e2e-key"));
    let backups = tempfile::tempdir().unwrap();
    let backup_url = format!("file://{}", backups.path().display());
    let vars = [
        ("DATABASE_URL", db.url.as_str()),
        ("API_KEYS", keys.as_str()),
        ("BACKUP_URL", backup_url.as_str()),
        ("BACKUP_OPERATOR_KEYS", "e2e"),
    ];
    let health = Function::start("health", &vars).await;
    let chat = Function::start("chat", &vars).await;
    let ingest = Function::start("ingest", &vars).await;
    let backup = Function::start("backup", &vars).await;

    let (status, body, headers) = get(&health.url("/health/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(headers["x-content-type-options"], "nosniff");

    let (status, body, _) = get(&health.url("/health")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let (status, body, _) = get(&backup.url("/backups")).await;
    assert_eq!(status, 401, "backups need a key: {body}");
    let res = reqwest::Client::new()
        .get(backup.url("/backups"))
        .header("x-api-key", "e2e-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["backups"], serde_json::json!([]), "{body}");
    let (status, body, _) = get(&chat.url("/v1/models")).await;
    assert_eq!(status, 401, "chat needs a key: {body}");

    // The knowledge base over HTTP: a key is required; ingest, then search.
    let (status, body, _) = get(&ingest.url("/search?q=x")).await;
    assert_eq!(status, 401, "{body}");
    let client = reqwest::Client::new();
    let posted = client
        .post(ingest.url("/documents?id=e2e-doc&title=Parking"))
        .header("x-api-key", "e2e-key")
        .header("content-type", "text/plain")
        .body("Staff parking is in the basement garage, level minus two.")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let found: Value = client
        .get(ingest.url("/search?q=basement%20garage"))
        .header("x-api-key", "e2e-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["results"][0]["document_id"], "e2e-doc", "{found}");

    // The chat function (another process on the same database) retrieves what ingest
    // stored; with no provider configured the answer is flagged retrieval-only.
    let answer = client
        .post(chat.url("/v1/chat/completions"))
        .bearer_auth("e2e-key")
        .json(&serde_json::json!({"messages": [{"role": "user", "content": "Where is staff parking?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-degraded"], "retrieval-only");
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["sources"][0], "e2e-doc", "{answer}");

    let res = client
        .delete(health.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert!(res.headers()["allow"].to_str().unwrap().contains("GET"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    let (status, body, _) = get(&chat.url("/v2/unknown")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    // Metrics parse as Prometheus text and count the requests above.
    let text = reqwest::get(health.url("/health/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition");
    let ready = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "http_requests_total"
                && s.labels.get("route") == Some("/health/ready")
                && s.labels.get("status") == Some("200")
        })
        .expect("ready requests counted");
    assert!(matches!(ready.value, prometheus_parse::Value::Counter(v) if v >= 1.0));
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric.starts_with("http_request_duration_seconds")));

    // Every request leaves one structured log line with the required fields.
    let line = health
        .wait_for_line(|l| {
            l.contains("\"route\":\"/health/ready\"") && l.contains("request completed")
        })
        .await;
    let log: Value = serde_json::from_str(&line).unwrap();
    for field in [
        "request_id",
        "function",
        "route",
        "status",
        "duration_ms",
        "cold_start",
        "timestamp",
        "level",
    ] {
        assert!(log.get(field).is_some(), "{field} missing from {line}");
    }
    assert_eq!(log["function"], "health");
    assert_eq!(log["status"], 200);
    assert!(json_lines(&health).iter().any(|l| l["cold_start"] == true));
}

#[tokio::test]
async fn ready_is_503_naming_the_database_when_postgres_is_unreachable() {
    let health = Function::start(
        "health",
        &[
            ("DATABASE_URL", "postgres://postgres:hunter2@127.0.0.1:1/x"),
            ("DATABASE_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let (status, body, _) = get(&health.url("/health/ready")).await;
    assert_eq!(status, 503);
    assert_eq!(body["failing"], serde_json::json!(["database"]));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("database"));
    // The function still serves everything that does not need the database.
    let (status, _, _) = get(&health.url("/health/live")).await;
    assert_eq!(status, 200);
    let (status, body, _) = get(&health.url("/health/detailed")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("down")));
    let output = health.output().join("\n");
    assert!(!output.contains("hunter2"), "password in logs: {output}");
    assert!(!body.to_string().contains("hunter2"));
}

/// Redis down is `degraded`, not unready: every route answers through its fallback.
#[tokio::test]
async fn ready_is_200_degraded_naming_redis_when_configured_but_down() {
    let db = TestDatabase::sqlite();
    let health = Function::start(
        "health",
        &[
            ("DATABASE_URL", &db.url),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("REDIS_TIMEOUT_MS", "200"),
        ],
    )
    .await;
    let (status, body, _) = get(&health.url("/health/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["degraded"], serde_json::json!(["redis"]));
}

#[tokio::test]
async fn real_postgres_and_redis_backends_are_ready() {
    let db = TestDatabase::postgres().await;
    let redis = chatkb_testing::test_redis_url();
    let health = Function::start(
        "health",
        &[("DATABASE_URL", &db.url), ("REDIS_URL", &redis)],
    )
    .await;
    let (status, body, _) = get(&health.url("/health/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dependencies"][0]["backend"], "postgres");
    assert_eq!(body["dependencies"][1]["name"], "redis");
    assert_eq!(body["dependencies"][1]["status"], "up");
}

#[tokio::test]
async fn configuration_errors_stop_start_up_with_one_error_naming_every_variable() {
    let mut health = Function::spawn(
        "health",
        &[
            ("DATABASE_URL", "mysql://root:hunter2@db/x"),
            ("LOG_LEVEL", "loud[["),
            ("CORS_ORIGINS", "not-an-origin"),
            ("API_KEYS", "plaintext-key"),
        ],
    );
    let status = health.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    let output = health.output();
    let error = output
        .iter()
        .find(|l| l.contains("invalid configuration"))
        .unwrap_or_else(|| panic!("no configuration error in: {output:?}"));
    for variable in ["DATABASE_URL", "LOG_LEVEL", "CORS_ORIGINS", "API_KEYS"] {
        assert!(error.contains(variable), "{variable} not named in {error}");
    }
    assert!(error.contains("4 problems"), "{error}");
    let all = output.join("\n");
    assert!(
        !all.contains("hunter2") && !all.contains("plaintext-key"),
        "secret echoed: {all}"
    );
}

#[tokio::test]
async fn emf_metric_lines_are_written_when_enabled() {
    let db = TestDatabase::sqlite();
    let health = Function::start(
        "health",
        &[("DATABASE_URL", &db.url), ("METRICS_EXPORT", "emf")],
    )
    .await;
    let (status, _, _) = get(&health.url("/health")).await;
    assert_eq!(status, 200);
    let line = health.wait_for_line(|l| l.contains("\"_aws\"")).await;
    let emf: Value = serde_json::from_str(&line).unwrap();
    let directive = &emf["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "ChatKb");
    assert_eq!(emf["function"], "health");
    assert_eq!(emf["route"], "/health");
    assert_eq!(emf["http_requests_total"], 1.0);
    assert!(emf["http_request_duration_seconds"].as_f64().unwrap() > 0.0);
}

/// The request log line is written without a whole-line redaction pass, so each value a
/// caller or an operator chose is redacted on its own: a key-shaped request id, a
/// card-number method and a key named like a provider key reach neither the log line
/// nor the EMF metrics line (printed as they are), while a plain id and the service's
/// own values are logged as they are.
#[tokio::test]
async fn the_request_line_redacts_each_value_a_caller_or_operator_chose() {
    let db = TestDatabase::sqlite();
    let keys = format!(
        "sk-live-operator0123:{}",
        shared::auth::hash_key("e2e-secret")
    );
    let chat = Function::start(
        "chat",
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("API_KEYS", keys.as_str()),
            ("METRICS_EXPORT", "emf"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let send = |method: &[u8], id: Option<&str>| {
        let mut request = client
            .request(
                reqwest::Method::from_bytes(method).unwrap(),
                chat.url("/v1/models"),
            )
            .bearer_auth("e2e-secret");
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let status = |response: reqwest::Response| response.status().as_u16();
    assert_eq!(
        status(
            send(b"GET", Some("sk-live-0123456789abcdef"))
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(send(b"GET", Some("plain-id-42")).await.unwrap()),
        200
    );
    assert_eq!(
        status(send(b"4111111111111111", Some("odd-method")).await.unwrap()),
        405
    );
    let generated_id = send(b"GET", None).await.unwrap().headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(uuid_shaped(&generated_id), "{generated_id}");

    let line_of = |id: String| {
        chat.wait_for_line(move |l| l.contains("request completed") && l.contains(&id))
    };
    let plain: Value = serde_json::from_str(&line_of("\"plain-id-42\"".into()).await).unwrap();
    assert_eq!(plain["method"], "GET");
    assert_eq!(plain["route"], "/v1/models");
    assert_eq!(plain["key"], "[REDACTED_KEY]", "{plain}");
    let odd: Value = serde_json::from_str(&line_of("\"odd-method\"".into()).await).unwrap();
    assert_eq!(odd["method"], "[REDACTED_CARD]", "{odd}");
    assert_eq!(odd["status"], 405);
    // The service's own id is logged whole (and is the one echoed on the response).
    let generated: Value = serde_json::from_str(&line_of(generated_id.clone()).await).unwrap();
    assert_eq!(generated["request_id"], generated_id.as_str());
    assert_eq!(generated["method"], "GET");
    // The key-shaped id: four request lines and four EMF lines, one with the id redacted.
    let redacted_ids = |kind: &str| {
        json_lines(&chat)
            .into_iter()
            .filter(|l| match kind {
                "log" => l["message"] == "request completed",
                _ => l.get("_aws").is_some() && l.get("route").is_some(),
            })
            .map(|l| l["request_id"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    chat.wait_for_line(|l| l.contains("_aws") && l.contains(&generated_id))
        .await;
    for kind in ["log", "emf"] {
        let ids = redacted_ids(kind);
        assert_eq!(ids.len(), 4, "{kind}: {ids:?}");
        assert!(
            ids.contains(&"[REDACTED_KEY]".to_string()),
            "{kind}: {ids:?}"
        );
    }

    let output = chat.output().join("\n");
    for secret in [
        "sk-live-0123456789abcdef",
        "4111111111111111",
        "sk-live-operator0123",
    ] {
        assert!(!output.contains(secret), "{secret} was logged: {output}");
    }
}

/// 8-4-4-4-12 lower-case hex digits.
fn uuid_shaped(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        })
}
