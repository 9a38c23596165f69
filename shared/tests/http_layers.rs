//! The shared HTTP layers, exercised through a real router (X5, X6, C9 auth).

use axum::body::{Body, Bytes};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::{Json, Router};
use chatkb_testing::settings;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use shared::auth::{hash_key, require_api_key, ApiKeyName};
use tower::ServiceExt;

fn app(pairs: &[(&str, &str)]) -> Router {
    let settings = settings("test", pairs);
    let protected = Router::new()
        .route(
            "/private",
            get(|ApiKeyName(name): ApiKeyName| async move { name.to_string() }),
        )
        .layer(from_fn_with_state(
            settings.api_keys.clone(),
            require_api_key,
        ));
    let routes = Router::new()
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/json", post(|Json(v): Json<Value>| async move { Json(v) }))
        .route("/panic", get(|| async { panic!("boom") as &'static str }))
        .route("/ok", get(|| async { "ok" }))
        .merge(protected);
    shared::http::app(routes, &settings)
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, body)
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn assert_json_error(
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &Value,
    expected: u16,
    code: &str,
) {
    assert_eq!(status.as_u16(), expected, "body: {body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    assert_eq!(
        body["error"]["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
}

#[tokio::test]
async fn unknown_route_is_json_404() {
    let app = app(&[]);
    let (status, headers, body) = call(&app, get_req("/nope")).await;
    assert_json_error(status, &headers, &body, 404, "not_found");
    assert_eq!(body["error"]["message"], "no route for GET /nope");
}

#[tokio::test]
async fn wrong_method_is_json_405_with_allow() {
    let app = app(&[]);
    let (status, headers, body) =
        call(&app, Request::delete("/ok").body(Body::empty()).unwrap()).await;
    assert_json_error(status, &headers, &body, 405, "method_not_allowed");
    let allow = headers
        .get_all("allow")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert!(allow.contains("GET"), "allow: {allow:?}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("GET"),
        "{body}"
    );
}

#[tokio::test]
async fn oversized_body_is_json_413_and_never_reaches_the_handler() {
    let app = app(&[("MAX_BODY_BYTES", "1024")]);
    let big = vec![b'x'; 2048];
    let request = Request::post("/echo")
        .header("content-length", "2048")
        .body(Body::from(big.clone()))
        .unwrap();
    let (status, headers, body) = call(&app, request).await;
    assert_json_error(status, &headers, &body, 413, "payload_too_large");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1024 bytes"));
    // Without a content-length header the limit still applies while the body is read.
    let (status, headers, body) =
        call(&app, Request::post("/echo").body(Body::from(big)).unwrap()).await;
    assert_json_error(status, &headers, &body, 413, "payload_too_large");
    // Within the limit, the handler runs.
    let (status, _, body) = call(
        &app,
        Request::post("/echo").body(Body::from("hello")).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "hello");
}

#[tokio::test]
async fn json_extractor_rejections_are_json_errors() {
    let app = app(&[]);
    let no_type = Request::post("/json").body(Body::from("{}")).unwrap();
    let (status, headers, body) = call(&app, no_type).await;
    assert_json_error(status, &headers, &body, 415, "unsupported_media_type");
    let broken = Request::post("/json")
        .header("content-type", "application/json")
        .body(Body::from("{oops"))
        .unwrap();
    let (status, headers, body) = call(&app, broken).await;
    assert_json_error(status, &headers, &body, 400, "bad_request");
}

#[tokio::test]
async fn a_panic_is_a_json_500_and_the_service_keeps_serving() {
    let app = app(&[]);
    let (status, headers, body) = call(&app, get_req("/panic")).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "internal_error");
    assert_eq!(body["error"]["message"], "internal error");
    assert!(headers.contains_key("x-request-id"));
    let (status, _, _) = call(&app, get_req("/ok")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = app(&[]);
    let request = Request::get("/ok")
        .header("x-request-id", "client-abc.123")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = call(&app, request).await;
    assert_eq!(headers["x-request-id"], "client-abc.123");
    let forged = Request::get("/ok")
        .header("x-request-id", "evil\"}{")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = call(&app, forged).await;
    let generated = headers["x-request-id"].to_str().unwrap();
    assert_eq!(
        generated.len(),
        36,
        "a UUID replaces an unsafe id: {generated}"
    );
    let (_, again, _) = call(&app, get_req("/ok")).await;
    assert_ne!(again["x-request-id"], headers["x-request-id"]);
}

#[tokio::test]
async fn security_headers_are_on_every_response() {
    let app = app(&[]);
    for path in ["/ok", "/nope"] {
        let (_, headers, _) = call(&app, get_req(path)).await;
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert!(headers["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age="));
        assert!(headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        assert_eq!(headers["cache-control"], "no-store");
    }
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let router = app(&[("CORS_ORIGINS", "https://app.example.com")]);
    let allowed = Request::get("/ok")
        .header("origin", "https://app.example.com")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = call(&router, allowed).await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = Request::get("/ok")
        .header("origin", "https://evil.example.com")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = call(&router, other).await;
    assert!(!headers.contains_key("access-control-allow-origin"));
    let preflight = Request::options("/echo")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = call(&router, preflight).await;
    assert!(status.is_success());
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    // No origins configured: no CORS headers at all.
    let closed = app(&[]);
    let (_, headers, _) = call(
        &closed,
        Request::get("/ok")
            .header("origin", "https://app.example.com")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(!headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn api_keys_guard_protected_routes() {
    let keys = format!(
        "alice:{},bob:{}",
        hash_key("alice-key"),
        hash_key("bob-key")
    );
    let app = app(&[("API_KEYS", &keys)]);

    let (status, headers, body) = call(&app, get_req("/private")).await;
    assert_json_error(status, &headers, &body, 401, "unauthorized");
    assert_eq!(headers["www-authenticate"], "Bearer");

    let wrong = Request::get("/private")
        .header("authorization", "Bearer nope")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = call(&app, wrong).await;
    assert_json_error(status, &headers, &body, 401, "unauthorized");
    assert_eq!(body["error"]["message"], "invalid API key");

    let bearer = Request::get("/private")
        .header("authorization", "Bearer alice-key")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(&app, bearer).await;
    assert_eq!(status, 200);
    assert_eq!(body, "alice");

    let header = Request::get("/private")
        .header("x-api-key", "bob-key")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(&app, header).await;
    assert_eq!(status, 200);
    assert_eq!(body, "bob");

    // Public routes stay public.
    let (status, _, _) = call(&app, get_req("/ok")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn without_configured_keys_protected_routes_refuse_everyone() {
    let app = app(&[]);
    let request = Request::get("/private")
        .header("authorization", "Bearer anything")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = call(&app, request).await;
    assert_json_error(status, &headers, &body, 401, "unauthorized");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("API_KEYS"));
}

/// `protect` is the one way functions put routes behind keys and rate limits: the key is
/// checked first, and each key gets its own budget. Were the rate limit ever to run
/// before authentication, every caller would share an "anonymous" budget.
#[tokio::test]
async fn protected_routes_authenticate_before_rate_limiting_per_key() {
    let keys = format!("alice:{},bob:{}", hash_key("key-a"), hash_key("key-b"));
    let settings = settings("test", &[("API_KEYS", &keys)]);
    let limiter = std::sync::Arc::new(shared::resilience::limits::RateLimiter::new(
        1,
        std::time::Duration::from_secs(60),
        None,
        "test",
    ));
    let routes = Router::new().route(
        "/private",
        get(|ApiKeyName(name): ApiKeyName| async move { name.to_string() }),
    );
    let app = shared::http::app(
        shared::http::protect(
            routes,
            settings.api_keys.clone(),
            Some(limiter.clone()),
            limiter,
        ),
        &settings,
    );
    let with_key = |key: &str| {
        Request::get("/private")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap()
    };

    let (status, _, body) = call(&app, with_key("key-a")).await;
    assert_eq!((status, body), (StatusCode::OK, Value::from("alice")));
    let refused = app.clone().oneshot(with_key("key-a")).await.unwrap();
    // The request log names the key that was limited (it reads the response's key name).
    assert_eq!(
        refused
            .extensions()
            .get::<ApiKeyName>()
            .map(|k| k.0.as_ref()),
        Some("alice")
    );
    let status = refused.status();
    let headers = refused.headers().clone();
    let bytes = refused.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_json_error(status, &headers, &body, 429, "rate_limited");
    // Bob has a budget of his own: alice spending hers does not refuse him.
    let (status, _, body) = call(&app, with_key("key-b")).await;
    assert_eq!((status, body), (StatusCode::OK, Value::from("bob")));
    // No key and a wrong key are refused by authentication, never counted or limited.
    for request in [get_req("/private"), with_key("key-z")] {
        let (status, headers, body) = call(&app, request).await;
        assert_json_error(status, &headers, &body, 401, "unauthorized");
    }
}

/// Under Lambda (buffered), a response body that fails while being read fails the
/// invocation; the caller never gets a 200 with the answer silently cut short.
#[tokio::test]
async fn a_response_body_that_fails_fails_the_lambda_invocation() {
    let failing = || async {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"{\"partial\":")),
            Err(std::io::Error::other("upstream cut")),
        ];
        Body::from_stream(futures_util::stream::iter(chunks))
    };
    let whole = || async { Json(serde_json::json!({"ok": true})) };
    let router = Router::new()
        .route("/health", get(failing))
        .route("/health/live", get(whole));
    let event = |name: &str| {
        lambda_runtime::LambdaEvent::new(
            chatkb_testing::load_event_json(name),
            lambda_runtime::Context::default(),
        )
    };
    let result = shared::runtime::dispatch(router.clone(), None, event("health-get.json")).await;
    assert!(result.is_err(), "{result:?}");
    let ok = shared::runtime::dispatch(router, None, event("health-live.json"))
        .await
        .unwrap();
    assert_eq!(ok["statusCode"], 200);
    assert!(ok["body"].as_str().unwrap().contains("\"ok\":true"), "{ok}");
}
