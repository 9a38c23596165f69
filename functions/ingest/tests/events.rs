//! The ingest function's handlers, driven by the sample events in `events/` on both
//! database backends, plus the S3 trigger from a local folder and from moto's S3.

use std::sync::Arc;

use chatkb_testing::{call, context, load_event, load_event_json, TestDatabase};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{json, Value};
use shared::auth::hash_key;

fn api_keys() -> String {
    format!("example:{}", hash_key("local-dev-key"))
}

fn router_for(
    db: &TestDatabase,
    extra: &[(&str, &str)],
) -> (axum::Router, Arc<shared::AppContext>) {
    let keys = api_keys();
    let mut vars: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("API_KEYS", keys.as_str()),
    ];
    vars.extend_from_slice(extra);
    let ctx = context("ingest", &vars);
    (ingest::router(ctx.clone()), ctx)
}

fn request(
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: &str,
) -> http::Request<axum::body::Body> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", "local-dev-key");
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder
        .body(axum::body::Body::from(body.to_string()))
        .unwrap()
}

fn post_json(body: &serde_json::Value) -> http::Request<axum::body::Body> {
    request(
        "POST",
        "/documents",
        Some("application/json"),
        &body.to_string(),
    )
}

/// Issue 12, finding 3: documents sharing a first line (every Debian copyright file starts
/// with the same `Format:` line) are separate documents when posted without ids.
#[tokio::test]
async fn documents_sharing_a_first_line_never_replace_each_other() {
    let db = TestDatabase::sqlite();
    let (router, _) = router_for(&db, &[]);
    let first_line = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/";
    let mut ids = Vec::new();
    for package in ["curl", "apt", "bash", "coreutils", "dpkg"] {
        let body = format!("{first_line}\nUpstream-Name: {package}\n\nFiles: *\nLicense: GPL");
        let res = call(
            &router,
            request("POST", "/documents", Some("text/plain"), &body),
        )
        .await;
        assert_eq!(res.status, 201, "{}", res.text);
        assert_eq!(res.json["documents"][0]["status"], "created");
        assert_eq!(res.json["documents"][0]["version"], 1);
        ids.push(res.json["documents"][0]["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "five documents, five ids: {ids:?}");
    let list = call(&router, request("GET", "/documents?limit=50", None, "")).await;
    assert_eq!(list.json["documents"].as_array().unwrap().len(), 5);
    // The title is still the first line, for display.
    let one = call(
        &router,
        request("GET", &format!("/documents/{}", ids[0]), None, ""),
    )
    .await;
    assert_eq!(one.json["title"], first_line);

    // The same text again is the same document; a file name gives the id.
    let body = format!("{first_line}\nUpstream-Name: curl\n\nFiles: *\nLicense: GPL");
    let again = call(
        &router,
        request("POST", "/documents", Some("text/plain"), &body),
    )
    .await;
    assert_eq!(again.json["documents"][0]["status"], "unchanged");
    let named = http::Request::builder()
        .method("POST")
        .uri("/documents")
        .header("x-api-key", "local-dev-key")
        .header("content-type", "text/markdown")
        .header(
            "content-disposition",
            "attachment; filename=\"copyright curl.md\"",
        )
        .body(axum::body::Body::from(
            "---\ntitle: curl copyright\n---\nFormat: x",
        ))
        .unwrap();
    let res = call(&router, named).await;
    assert_eq!(res.status, 201, "{}", res.text);
    assert_eq!(res.json["documents"][0]["id"], "copyright-curl.md");
    let doc = call(
        &router,
        request("GET", "/documents/copyright-curl.md", None, ""),
    )
    .await;
    assert_eq!(
        doc.json["title"], "curl copyright",
        "front matter's title is used"
    );
}

#[tokio::test]
async fn the_document_lifecycle_through_sample_events_on_both_backends() {
    for db in TestDatabase::both().await {
        let (router, _) = router_for(&db, &[]);

        let res = call(&router, load_event("ingest-documents-post.json")).await;
        assert_eq!(res.status, 201, "{}", res.text);
        assert_eq!(res.json["documents"][0]["id"], "refund-policy");
        assert_eq!(res.json["documents"][0]["status"], "created");
        assert_eq!(res.json["documents"][0]["version"], 1);

        let res = call(&router, load_event("ingest-documents-markdown.json")).await;
        assert_eq!(res.status, 201, "{}", res.text);
        assert_eq!(res.json["documents"][0]["id"], "handbook-shipping");
        let res = call(&router, load_event("ingest-documents-batch.json")).await;
        assert_eq!(res.json["documents"].as_array().unwrap().len(), 2);

        // Same document again: unchanged, no new events.
        let events_before = call(&router, load_event("ingest-events.json")).await.json["events"]
            .as_array()
            .unwrap()
            .len();
        let res = call(&router, load_event("ingest-documents-post.json")).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.json["documents"][0]["status"], "unchanged");
        let events = call(&router, load_event("ingest-events.json")).await;
        assert_eq!(
            events.json["events"].as_array().unwrap().len(),
            events_before
        );
        assert_eq!(events.json["events"][0]["type"], "document.uploaded");
        assert!(events.json["next_after"].as_i64().unwrap() > 0);

        let res = call(&router, load_event("ingest-search.json")).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.json["mode"], "hybrid");
        assert_eq!(res.json["results"][0]["document_id"], "refund-policy");
        for field in [
            "document_id",
            "chunk_id",
            "title",
            "score",
            "similarity",
            "snippet",
        ] {
            assert!(res.json["results"][0].get(field).is_some(), "{field}");
        }

        let res = call(&router, load_event("ingest-document-get.json")).await;
        assert_eq!(res.json["title"], "Refund policy");
        assert_eq!(res.json["chunk_count"], 1);
        let res = call(&router, load_event("ingest-documents-list.json")).await;
        assert_eq!(res.json["documents"].as_array().unwrap().len(), 4);
        assert!(res.json["next_cursor"].is_null());
        let page = call(&router, request("GET", "/documents?limit=3", None, "")).await;
        // Ordered by id: coffee, handbook-shipping, refund-policy | wifi.
        assert_eq!(page.json["next_cursor"], "refund-policy");
        let rest = call(
            &router,
            request("GET", "/documents?limit=3&cursor=refund-policy", None, ""),
        )
        .await;
        assert_eq!(rest.json["documents"][0]["id"], "wifi");
        assert!(rest.json["next_cursor"].is_null());

        let res = call(&router, load_event("ingest-document-delete.json")).await;
        assert_eq!(res.json["status"], "deleted");
        let res = call(&router, load_event("ingest-document-get.json")).await;
        assert_eq!(res.status, 404);
        let res = call(&router, load_event("ingest-document-delete.json")).await;
        assert_eq!(res.status, 404);
        let filtered = call(
            &router,
            request("GET", "/search?q=password&filter=team:it", None, ""),
        )
        .await;
        assert_eq!(filtered.json["results"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn every_bad_input_gets_its_status_and_nothing_is_written() {
    let db = TestDatabase::sqlite();
    let (router, ctx) = router_for(
        &db,
        &[("MAX_DOCUMENT_BYTES", "64"), ("MAX_BATCH_DOCUMENTS", "2")],
    );
    let cases: Vec<(http::Request<axum::body::Body>, u16)> = vec![
        (
            request("POST", "/documents", Some("application/pdf"), "%PDF"),
            415,
        ),
        (request("POST", "/documents", None, "text"), 415),
        (
            request("POST", "/documents", Some("text/plain"), "   \n "),
            422,
        ),
        (
            request(
                "POST",
                "/documents",
                Some("application/json"),
                r#"{"title": "No text"}"#,
            ),
            422,
        ),
        (
            request(
                "POST",
                "/documents",
                Some("application/json"),
                r#"{"text": "x", "metadata": [1]}"#,
            ),
            422,
        ),
        (
            request("POST", "/documents", Some("application/json"), "{broken"),
            400,
        ),
        (
            request(
                "POST",
                "/documents",
                Some("application/json"),
                r#"{"id": "bad id!", "text": "x"}"#,
            ),
            422,
        ),
        (
            request(
                "POST",
                "/documents",
                Some("text/plain"),
                &"long ".repeat(20),
            ),
            413,
        ),
        (
            request(
                "POST",
                "/documents",
                Some("application/json"),
                r#"[{"text":"a"},{"text":"b"},{"text":"c"}]"#,
            ),
            413,
        ),
        // One bad document in a batch: the good one is not written either.
        (
            request(
                "POST",
                "/documents",
                Some("application/json"),
                r#"[{"id":"good","text":"fine"},{"id":"bad","text":" "}]"#,
            ),
            422,
        ),
        (request("GET", "/documents/missing", None, ""), 404),
        (request("DELETE", "/documents/missing", None, ""), 404),
        (request("GET", "/search", None, ""), 400),
        (request("GET", "/search?q=x&k=500", None, ""), 400),
        (
            request("GET", &format!("/search?q={}", "x".repeat(2001)), None, ""),
            400,
        ),
        (request("GET", "/search?q=x&filter=nocolon", None, ""), 400),
        (request("GET", "/events?limit=0", None, ""), 400),
        (request("PUT", "/documents", Some("text/plain"), "x"), 405),
    ];
    for (req, expected) in cases {
        let label = format!("{} {}", req.method(), req.uri());
        let res = call(&router, req).await;
        assert_eq!(res.status.as_u16(), expected, "{label}: {}", res.text);
        assert!(
            res.json["error"]["message"].is_string(),
            "{label}: JSON error expected, got {}",
            res.text
        );
    }
    // The limit is 2000 characters, not bytes: 1001 two-byte characters are fine.
    let accented = "%C3%A9".repeat(1001);
    let res = call(
        &router,
        request("GET", &format!("/search?q={accented}"), None, ""),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text);
    let kb = ctx.knowledge_base();
    assert!(
        kb.store().documents(None, 10).await.unwrap().is_empty(),
        "nothing was written"
    );
    assert!(kb.store().events_after(0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn every_route_needs_an_api_key() {
    let db = TestDatabase::sqlite();
    let (router, _) = router_for(&db, &[]);
    for (method, uri) in [
        ("GET", "/search?q=x"),
        ("POST", "/documents"),
        ("GET", "/documents"),
        ("GET", "/events"),
    ] {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = call(&router, req).await;
        assert_eq!(res.status, 401, "{method} {uri}");
    }
}

/// Issue 14, finding 8: wrong keys were never limited. The function's own stack counts
/// failed authentications per client address (`AUTH_FAILURES_PER_MINUTE`), and then
/// refuses that address even with the right key; another address is not affected.
#[tokio::test]
async fn failed_authentications_are_limited_per_client_address() {
    let db = TestDatabase::sqlite();
    let (router, _) = router_for(&db, &[("AUTH_FAILURES_PER_MINUTE", "3")]);
    let from = |address: &str, key: &str| {
        let mut req = http::Request::builder()
            .uri("/documents")
            .header("x-api-key", key)
            .body(axum::body::Body::empty())
            .unwrap();
        let peer: std::net::SocketAddr = format!("{address}:40000").parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        req
    };
    for _ in 0..3 {
        let res = call(&router, from("198.51.100.7", "guess")).await;
        assert_eq!(res.status, 401, "{}", res.text);
    }
    let res = call(&router, from("198.51.100.7", "guess")).await;
    assert_eq!(res.status, 429, "{}", res.text);
    assert!(res.headers.contains_key("retry-after"));
    let res = call(&router, from("198.51.100.7", "local-dev-key")).await;
    assert_eq!(
        res.status, 429,
        "refused even with the right key: {}",
        res.text
    );
    let res = call(&router, from("203.0.113.9", "local-dev-key")).await;
    assert_eq!(res.status, 200, "{}", res.text);
}

#[tokio::test]
async fn requests_over_the_rate_limit_get_429_with_retry_after() {
    let db = TestDatabase::sqlite();
    let (router, _) = router_for(
        &db,
        &[
            ("RATE_LIMIT_REQUESTS", "3"),
            ("RATE_LIMIT_WINDOW_SECS", "60"),
        ],
    );
    for _ in 0..3 {
        assert_eq!(
            call(&router, request("GET", "/events", None, ""))
                .await
                .status,
            200
        );
    }
    let res = call(&router, request("GET", "/events", None, "")).await;
    assert_eq!(res.status, 429);
    assert!(res.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn an_s3_event_ingests_the_object_from_the_local_folder() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("handbook")).unwrap();
    std::fs::write(
        dir.path().join("handbook/refund policy.md"),
        "# Refund policy\n\nRefunds are paid within 14 days.",
    )
    .unwrap();
    let folder = dir.path().display().to_string();
    let (router, ctx) = router_for(&db, &[("DOCUMENTS_DIR", &folder)]);
    let handler = ingest::on_event(ctx.clone());
    let event = LambdaEvent::new(
        load_event_json("ingest-s3-object-created.json"),
        Context::default(),
    );
    let result = shared::runtime::dispatch(router.clone(), Some(handler.clone()), event)
        .await
        .unwrap();
    assert_eq!(result["records"][0]["status"], "created", "{result}");
    assert_eq!(result["records"][0]["id"], "handbook-refund-policy.md");
    let found = call(
        &router,
        request("GET", "/search?q=refunds%2014%20days", None, ""),
    )
    .await;
    assert_eq!(
        found.json["results"][0]["document_id"],
        "handbook-refund-policy.md"
    );

    // A key that escapes the folder is refused, not read.
    let mut escape = load_event_json("ingest-s3-object-created.json");
    escape["Records"][0]["s3"]["object"]["key"] = json!("../../etc/passwd");
    let result = handler(escape).await.unwrap();
    assert_eq!(result["records"][0]["status"], "failed");
    // Not an S3 notification: an invocation error, not a panic.
    assert!(handler(json!({"hello": "world"})).await.is_err());
}

#[tokio::test]
async fn an_s3_event_ingests_the_object_from_s3() {
    // moto's S3 emulator, started for this test and stopped when dropped; the SDK
    // reads the environment it sets (only this test in this binary talks to AWS).
    let (mut moto, _endpoint) = chatkb_testing::ServerProcess::moto().await;
    let config = shared::store::aws::load_config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket("chatkb-documents")
        .send()
        .await
        .unwrap();
    s3.put_object()
        .bucket("chatkb-documents")
        .key("handbook/refund policy.md")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"# Refund policy\n\nRefunds reach the original card within 14 days.",
        ))
        .send()
        .await
        .unwrap();

    let db = TestDatabase::sqlite();
    let (router, ctx) = router_for(&db, &[]);
    let handler = ingest::on_event(ctx);
    let event: Value = load_event_json("ingest-s3-object-created.json");
    let result = handler(event.clone()).await.unwrap();
    assert_eq!(result["records"][0]["status"], "created", "{result}");
    let again = handler(event).await.unwrap();
    assert_eq!(again["records"][0]["status"], "unchanged");
    let found = call(
        &router,
        request("GET", "/search?q=original%20card", None, ""),
    )
    .await;
    assert_eq!(
        found.json["results"][0]["document_id"],
        "handbook-refund-policy.md"
    );

    // A missing object is reported, not fatal.
    let mut missing = load_event_json("ingest-s3-object-created.json");
    missing["Records"][0]["s3"]["object"]["key"] = json!("nope.md");
    let result = handler(missing).await.unwrap();
    assert_eq!(result["records"][0]["status"], "failed");

    // S3 itself unreachable (issue 12, finding 9): the invocation fails, so Lambda
    // retries the event, instead of reporting success with a failed record.
    moto.stop();
    let mut later = load_event_json("ingest-s3-object-created.json");
    later["Records"][0]["s3"]["object"]["key"] = json!("handbook/later.md");
    let err = handler(later).await.unwrap_err();
    assert!(err.to_string().contains("will be retried"), "{err}");
}

/// The scheduled event indexes what bulk writes left outside the HNSW index (PostgreSQL)
/// and finds nothing to do on SQLite.
#[tokio::test]
async fn the_scheduled_event_maintains_the_vector_index() {
    for db in TestDatabase::both().await {
        let (router, ctx) = router_for(&db, &[("VECTOR_INDEX_BACKGROUND", "false")]);
        for event in ["ingest-documents-batch.json", "ingest-documents-post.json"] {
            let res = call(&router, load_event(event)).await;
            assert_eq!(res.status, 201, "{}", res.text);
        }
        let handler = ingest::on_event(ctx.clone());
        let scheduled =
            || LambdaEvent::new(load_event_json("ingest-scheduled.json"), Context::default());
        let result = shared::runtime::dispatch(router.clone(), Some(handler.clone()), scheduled())
            .await
            .unwrap();
        match db.kind {
            shared::config::DatabaseKind::Postgres => {
                let pass = &result["vector_index"][0];
                assert_eq!(pass["dims"], 384, "{result}");
                assert_eq!(pass["maintenance"]["outcome"], "built", "{result}");
                assert_eq!(pass["maintenance"]["generation"], 1, "{result}");
            }
            shared::config::DatabaseKind::Sqlite => {
                assert_eq!(result, json!({"vector_index": []}))
            }
        }
        // Nothing left to do the next time; search still answers from the index.
        let again = shared::runtime::dispatch(router.clone(), Some(handler), scheduled())
            .await
            .unwrap();
        assert_eq!(again, json!({"vector_index": []}));
        let found = call(&router, load_event("ingest-search.json")).await;
        assert_eq!(found.status, 200);
        assert_eq!(found.json["results"][0]["document_id"], "refund-policy");
    }
}

/// Issue 14, finding 2: NUL anywhere a request can carry it (an id in the path, a cursor,
/// a filter, the query, metadata) got 503 on PostgreSQL and 200/404 on SQLite. Now 400
/// (or 422 for a document's field) alike on both, and nothing is written.
#[tokio::test]
async fn nul_characters_are_refused_alike_on_both_backends() {
    for db in TestDatabase::both().await {
        let (router, ctx) = router_for(&db, &[]);
        for uri in [
            "/documents/a%00b",
            "/documents?cursor=x%00",
            "/search?q=refunds&filter=team:a%00",
            "/search?q=ref%00unds",
        ] {
            let res = call(&router, request("GET", uri, None, "")).await;
            assert_eq!(res.status, 400, "{:?} {uri}: {}", db.kind, res.text);
            assert!(res.text.contains("NUL character"), "{}", res.text);
        }
        let res = call(&router, request("DELETE", "/documents/a%00", None, "")).await;
        assert_eq!(res.status, 400, "{:?}: {}", db.kind, res.text);

        let body = json!({"id": "nul-meta", "text": "Refunds take 14 days.", "metadata": {"team": "a\u{0}b"}});
        let res = call(&router, post_json(&body)).await;
        assert_eq!(res.status, 422, "{:?}: {}", db.kind, res.text);
        assert!(
            res.text.contains("metadata.team contains a NUL"),
            "{}",
            res.text
        );

        // NUL in a document's text is a control character: dropped like the others.
        let body = json!({"id": "nul-text", "text": "Refunds\u{0} take 14 days."});
        let res = call(&router, post_json(&body)).await;
        assert_eq!(res.status, 201, "{:?}: {}", db.kind, res.text);
        let kb = ctx.knowledge_base();
        let stored = kb.store().documents(None, 10).await.unwrap();
        let ids: Vec<&str> = stored.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["nul-text"], "{:?}", db.kind);
    }
}

/// Issue 14, finding 1: identical passages in one document (200 identical log lines, a
/// disclaimer on every page) collided on one chunk id and got 503 on both backends.
#[tokio::test]
async fn a_document_repeating_its_text_is_stored_whole_on_both_backends() {
    for db in TestDatabase::both().await {
        let (router, _) = router_for(&db, &[]);
        let line = "2026-12-03T10:00:00Z WARN disk usage above 90% on /var/lib/postgresql";
        let log = vec![line; 200].join("\n\n");
        let disclaimer = "This message is confidential and intended only for its addressee. \
            If you received it in error, delete it and tell the sender at once.";
        let pages: Vec<String> = (1..=10)
            .map(|page| format!("Page {page} of the handbook.\n\n{disclaimer}"))
            .collect();
        for (id, text) in [("disk-log", log), ("handbook", pages.join("\n\n"))] {
            let uri = format!("/documents?id={id}");
            let res = call(&router, request("POST", &uri, Some("text/plain"), &text)).await;
            assert_eq!(res.status, 201, "{:?} {id}: {}", db.kind, res.text);
            let created: Value = serde_json::from_str(&res.text).unwrap();
            let created = &created["documents"][0];
            assert_eq!(created["status"], "created", "{}", res.text);
            assert!(created["chunks"].as_i64().unwrap() > 1, "{}", res.text);
            let again = call(&router, request("POST", &uri, Some("text/plain"), &text)).await;
            assert_eq!(again.status, 200, "{}", again.text);
            assert!(again.text.contains("\"unchanged\""), "{}", again.text);
        }
        let res = call(
            &router,
            request("GET", "/search?q=disk%20usage%20postgresql", None, ""),
        )
        .await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert!(res.text.contains("disk-log"), "{}", res.text);
    }
}

/// Issue 14, finding 5 (the chaos script's measure): with PostgreSQL down, every ingest
/// and search request waited for a connection (`DATABASE_TIMEOUT_MS`) before its 503.
/// The knowledge store's breaker now opens after the failures, and later requests get
/// their 503 with `Retry-After` at once: the frozen server is offered no connection.
#[tokio::test]
async fn a_database_that_stops_answering_is_not_waited_for_once_its_breaker_opens() {
    use std::sync::atomic::Ordering;
    let (address, accepted) = chatkb_testing::frozen_server().await;
    let frozen = format!("postgres://postgres@{address}/frozen");
    let db = TestDatabase::sqlite();
    let (router, _) = router_for(
        &db,
        &[
            ("DATABASE_URL", frozen.as_str()),
            ("DATABASE_TIMEOUT_MS", "200"),
            ("BREAKER_FAILURE_THRESHOLD", "2"),
        ],
    );
    let doc = json!({"id": "wing", "text": "Boundary layers on swept wings."});
    for _ in 0..2 {
        let res = call(&router, post_json(&doc)).await;
        assert_eq!(res.status, 503, "{}", res.text);
    }
    let offered = accepted.load(Ordering::SeqCst);
    assert!(offered > 0, "the database was tried");
    for uri in ["/documents", "/search?q=wings"] {
        let res = if uri == "/documents" {
            call(&router, post_json(&doc)).await
        } else {
            call(&router, request("GET", uri, None, "")).await
        };
        assert_eq!(res.status, 503, "{uri}: {}", res.text);
        assert!(res.headers.contains_key("retry-after"), "{uri}");
        assert!(
            res.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("the database is unavailable"),
            "{}",
            res.text
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        offered,
        "no connection is attempted while the breaker is open"
    );
    // The container's own readiness, without a key: ingest cannot serve without its
    // database, so a load balancer pulls it.
    let ready = call(
        &router,
        http::Request::get("/health/ready")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(ready.json["failing"], json!(["database"]));
}

/// Issue 14, finding 5, as the function is wired: with the embeddings endpoint failing,
/// search answered keyword-only only after each query's timeout and retries. The
/// function's embedder is behind the `embeddings` breaker: once it is open, searches
/// are keyword-only without calling the endpoint at all.
#[tokio::test]
async fn search_stops_calling_a_failing_embeddings_endpoint_once_its_breaker_opens() {
    use chatkb_testing::fake_openai::{FakeOpenAi, Mode};
    let fake = FakeOpenAi::start().await;
    let db = TestDatabase::sqlite();
    let (router, ctx) = router_for(
        &db,
        &[
            ("EMBEDDINGS_BASE_URL", fake.base_url.as_str()),
            ("EMBEDDINGS_DIMENSIONS", "64"),
            ("BREAKER_FAILURE_THRESHOLD", "2"),
            ("RETRY_MAX_ATTEMPTS", "1"),
        ],
    );
    fake.set_mode(Mode::Fail);
    for query in ["wings", "flutter"] {
        let res = call(
            &router,
            request("GET", &format!("/search?q={query}"), None, ""),
        )
        .await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.json["mode"], "keyword");
    }
    let open = ctx
        .breakers
        .states()
        .into_iter()
        .any(|(name, state)| name == "embeddings" && state.as_str() == "open");
    assert!(open, "{:?}", ctx.breakers.states());
    let calls = fake.embedding_requests();
    let res = call(&router, request("GET", "/search?q=boundary", None, "")).await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.json["mode"], "keyword");
    assert_eq!(fake.embedding_requests(), calls, "not called while open");
}
