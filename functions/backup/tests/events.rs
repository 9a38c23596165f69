//! The backup function as callers use it: HTTP routes behind API keys (the sample events
//! in `events/`), the daily schedule and on-demand events, the command line, its metrics
//! and the backup age on `/health/detailed`.

mod support;

use chatkb_testing::{call, context, load_event, load_event_json, TestDatabase};
use lambda_runtime::{Context, LambdaEvent};
use shared::auth::hash_key;

fn request(method: &str, uri: &str, body: &str, key: bool) -> http::Request<axum::body::Body> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if key {
        builder = builder.header("x-api-key", "local-dev-key");
    }
    builder
        .body(axum::body::Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn the_routes_back_up_list_show_verify_and_restore_with_json_errors() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let keys = format!(
        "ops:{},chat-client:{}",
        hash_key("local-dev-key"),
        hash_key("client-key")
    );
    let ctx = context(
        "backup",
        &[
            ("DATABASE_URL", &db.url),
            ("API_KEYS", &keys),
            ("BACKUP_URL", &url),
            ("BACKUP_OPERATOR_KEYS", "ops"),
        ],
    );
    support::seed(&db.database(), 20).await;
    let router = backup::router(ctx.clone());

    for (method, uri) in [
        ("GET", "/backups"),
        ("POST", "/backups"),
        ("GET", "/backups/latest"),
        ("POST", "/backups/latest/verify"),
        ("POST", "/backups/latest/restore"),
    ] {
        let res = call(&router, request(method, uri, "", false)).await;
        assert_eq!(res.status, 401, "{method} {uri}: {}", res.text);
    }
    // A valid key that is not an operator's may not touch backups.
    for (method, uri) in [("GET", "/backups"), ("POST", "/backups/latest/restore")] {
        let other = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("x-api-key", "client-key")
            .body(axum::body::Body::empty())
            .unwrap();
        let res = call(&router, other).await;
        assert_eq!(res.status, 403, "{method} {uri}: {}", res.text);
        assert_eq!(res.json["error"]["code"], "forbidden");
        assert!(res.text.contains("BACKUP_OPERATOR_KEYS"), "{}", res.text);
    }
    let res = call(&router, load_event("backup-get-latest.json")).await;
    assert_eq!(res.status, 404, "{}", res.text);
    assert_eq!(res.json["error"]["message"], "no good backup yet");

    let res = call(&router, load_event("backup-create.json")).await;
    assert_eq!(res.status, 201, "{}", res.text);
    let id = res.json["backup"]["id"].as_str().unwrap().to_string();
    assert_eq!(res.json["backup"]["trigger"], "api");
    assert_eq!(res.json["backup"]["tables"].as_array().unwrap().len(), 8);
    assert_eq!(res.json["retention"]["kept"][0], id.as_str());

    let res = call(&router, load_event("backup-list.json")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json["backups"][0]["id"], id.as_str());
    assert_eq!(res.json["backups"][0]["status"], "complete");
    assert_eq!(res.json["location"], url.as_str());

    let res = call(&router, load_event("backup-get-latest.json")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json["id"], id.as_str());
    assert_eq!(res.json["source"]["dialect"], "sqlite");

    for (uri, status) in [
        ("/backups/..%2F..%2Fetc", 400),
        ("/backups/not-an-id", 400),
        ("/backups/20200101-000000-abcdef", 404),
    ] {
        let res = call(&router, request("GET", uri, "", true)).await;
        assert_eq!(res.status, status, "{uri}: {}", res.text);
        assert!(res.json["error"]["message"].is_string(), "{}", res.text);
    }

    let res = call(&router, load_event("backup-verify.json")).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["verified"]["files"], 8);

    let restore = format!("/backups/{id}/restore");
    let res = call(&router, request("POST", &restore, "", true)).await;
    assert_eq!(res.status, 409, "{}", res.text);
    assert!(
        res.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not empty"),
        "{}",
        res.text
    );
    let res = call(
        &router,
        request("POST", &restore, r#"{"forse": true}"#, true),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.text);
    let res = call(&router, request("POST", &restore, "[1", true)).await;
    assert_eq!(res.status, 400, "{}", res.text);
    // An array is not options (serde would read `[true]` as `{"force": true}`).
    let res = call(&router, request("POST", &restore, "[true]", true)).await;
    assert_eq!(res.status, 400, "{}", res.text);
    let res = call(&router, load_event("backup-restore.json")).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["status"], "restored");

    // A damaged file: 422 naming it, for verify and restore alike.
    let file = dir.path().join(&id).join("db/documents.jsonl.gz");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    for event in ["backup-verify.json", "backup-restore.json"] {
        let res = call(&router, load_event(event)).await;
        assert_eq!(res.status, 422, "{event}: {}", res.text);
        assert!(
            res.json["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("db/documents.jsonl.gz: "),
            "{}",
            res.text
        );
    }

    // What operators watch: the metrics and the age of the last good backup.
    // Each function serves its own metrics, without a key, for Prometheus to scrape.
    let res = call(&router, request("GET", "/health/metrics", "", false)).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let exposition = res.text;
    assert!(
        exposition.contains("backup_last_success_timestamp_seconds"),
        "{exposition}"
    );
    assert!(
        exposition.contains("backup_failures_total{operation=\"verify\"}"),
        "{exposition}"
    );
    let detailed = shared::health::detailed(&*ctx, false).await;
    assert_eq!(detailed["backup"]["last_good"], id.as_str(), "{detailed}");
    assert_eq!(detailed["backup"]["stale"], false);
}

#[tokio::test]
async fn the_schedule_and_on_demand_events_run_and_a_bad_event_fails_the_invocation() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let ctx = context("backup", &[("DATABASE_URL", &db.url), ("BACKUP_URL", &url)]);
    support::seed(&db.database(), 5).await;
    let handler = backup::on_event(ctx.clone());
    let invoke = |payload: serde_json::Value| {
        shared::runtime::dispatch(
            backup::router(ctx.clone()),
            Some(handler.clone()),
            LambdaEvent::new(payload, Context::default()),
        )
    };

    let done = invoke(load_event_json("backup-scheduled.json"))
        .await
        .unwrap();
    assert_eq!(done["backup"]["trigger"], "schedule");
    let id = done["backup"]["id"].as_str().unwrap().to_string();
    // Outside Lambda the standalone schedule runs soon after each start: while the last
    // good backup is recent, a scheduled run is skipped rather than another backup taken.
    let again = invoke(load_event_json("backup-scheduled.json"))
        .await
        .unwrap();
    assert_eq!(
        again["skipped"], "a good backup is recent enough",
        "{again}"
    );
    assert_eq!(again["last_good"], id.as_str());

    let listed = invoke(load_event_json("backup-invoke-list.json"))
        .await
        .unwrap();
    assert_eq!(listed["backups"][0]["id"], id.as_str());
    let verified = invoke(load_event_json("backup-invoke-verify.json"))
        .await
        .unwrap();
    assert_eq!(verified["verified"]["id"], id.as_str());
    let refused = invoke(load_event_json("backup-invoke-restore.json"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("not empty"), "{refused}");

    for bad in [
        serde_json::json!({"action": "explode"}),
        serde_json::json!({"action": "verify", "id": "../x"}),
        serde_json::json!({"hello": 1}),
    ] {
        assert!(invoke(bad.clone()).await.is_err(), "{bad}");
    }
}

#[tokio::test]
async fn the_command_line_runs_lists_and_verifies_and_refuses_bad_usage() {
    let db = TestDatabase::sqlite();
    support::seed(&db.database(), 5).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_backup"))
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("BACKUP_URL", &url)
            .env("LOG_LEVEL", "info")
            .env("METRICS_EXPORT", "emf")
            .env("METRICS_NAMESPACE", "ChatKb-test")
            .output()
            .unwrap()
    };
    let out = run(&["run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    // Piped: one JSON log line per table, then the result.
    let tables = stdout
        .lines()
        .filter(|l| l.contains("\"table done\""))
        .count();
    assert_eq!(tables, 8, "{stdout}");
    // On AWS (EMF) the backup's metrics reach CloudWatch: one EMF line for the good
    // backup, with the function as its dimension (what the stale-backup alarm reads).
    let emf: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l.get("backup_last_success_timestamp_seconds").is_some())
        .unwrap_or_else(|| panic!("no EMF line for the backup: {stdout}"));
    assert_eq!(emf["function"], "backup");
    let spec = &emf["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(spec["Namespace"], "ChatKb-test");
    assert_eq!(spec["Dimensions"][0], serde_json::json!(["function"]));
    assert!(emf["backup_bytes"].as_f64().unwrap() > 0.0, "{emf}");
    let start = stdout.find("{\n").unwrap();
    let result: serde_json::Value = serde_json::from_str(&stdout[start..]).unwrap();
    let id = result["backup"].as_str().unwrap().to_string();

    let out = run(&["verify", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let out = run(&["restore", "latest"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    for bad in [
        &["verify", "a", "b"][..],
        &["run", "--force"],
        &["list", "x"],
    ] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: backup"));
    }
}
