//! Fresh databases for tests: a SQLite file in a temporary folder, or a new
//! PostgreSQL database created on `TEST_DATABASE_URL` and dropped afterwards.

use std::time::Duration;

use sqlx::Connection;

use shared::config::DatabaseKind;
use shared::store::Database;

/// Every table the migrations create, the same on both backends, in name order (what
/// `Database::table_names` and the deep check report).
pub const MIGRATED_TABLES: [&str; 10] = [
    "backup_runs",
    "chat_messages",
    "chunks",
    "documents",
    "events",
    "health_checks",
    "idempotency_records",
    "usage_hourly",
    "usage_records",
    "vector_indexes",
];

/// A TCP port that was free a moment ago, for servers a test starts itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A server process a test starts itself (its own Redis, moto's S3): waited for until
/// its port accepts connections, killed when dropped or stopped.
pub struct ServerProcess {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl ServerProcess {
    /// Runs `program args...` (where `{port}` in an argument becomes the port) and waits
    /// up to 10 s for 127.0.0.1:port; `what` names it in the panic if it cannot start.
    pub async fn start(program: &str, args: &[&str], port: u16, what: &str) -> Self {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let child = std::process::Command::new(program)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            port,
            child: Some(child),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ServerProcess {
    /// moto's AWS emulator (S3, DynamoDB) on a free port, with the process environment
    /// pointed at it (AWS_ENDPOINT_URL, test credentials, us-east-1): only one test per
    /// test binary may use it, since the environment is process-wide.
    pub async fn moto() -> (Self, String) {
        let moto = Self::start(
            "python3",
            &["-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"],
            free_port(),
            "moto's server (python3 -m pip install 'moto[server]'; .ci/run installs it)",
        )
        .await;
        let endpoint = format!("http://127.0.0.1:{}", moto.port);
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        (moto, endpoint)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The PostgreSQL server tests use.
pub fn test_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// The Redis server tests use.
pub fn test_redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A handle on the tests' Redis, each operation bounded by `timeout`. A call that
/// times out on a busy machine pauses Redis for this handle only 100 ms (the tests'
/// cache retry), not the production default, so a later step of the test still sees it.
pub fn test_redis(timeout: std::time::Duration) -> shared::store::RedisHandle {
    let url = shared::config::RedisUrl::parse(&test_redis_url()).expect("TEST_REDIS_URL parses");
    let pause = std::time::Duration::from_millis(100);
    shared::store::RedisHandle::with_pause(&url, timeout, pause).expect("Redis handle")
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub url: String,
    pub kind: DatabaseKind,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}/app.db", dir.path().display());
        Self {
            url,
            kind: DatabaseKind::Sqlite,
            postgres_name: None,
            _dir: Some(dir),
        }
    }

    /// Creates a uniquely named database on the test server. Panics with a clear
    /// message when the server is unreachable: store tests must run on both backends.
    pub async fn postgres() -> Self {
        let admin = test_database_url();
        let name = format!("chatkb_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL for tests is not reachable at TEST_DATABASE_URL ({e})")
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("TEST_DATABASE_URL must end with /<database>"),
        };
        Self {
            url,
            kind: DatabaseKind::Postgres,
            postgres_name: Some(name),
            _dir: None,
        }
    }

    /// One fresh database per backend, SQLite first.
    pub async fn both() -> Vec<Self> {
        vec![Self::sqlite(), Self::postgres().await]
    }

    pub fn database(&self) -> Database {
        Database::connect_lazy_with(&self.url, self.kind, 5, Duration::from_secs(5))
            .expect("valid test URL")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        let admin = test_database_url();
        // Drop runs outside async code, so use a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}

/// Settings from explicit variables (tests never mutate the process environment).
///
/// Timeouts default to 10 s so a slow, loaded CI machine cannot turn a success-path
/// test into a failure; tests of timeouts set them explicitly.
pub fn settings(function: &str, pairs: &[(&str, &str)]) -> shared::config::Settings {
    let mut vars: std::collections::HashMap<String, String> = [
        ("HEALTH_TIMEOUT_MS", "10000"),
        ("DATABASE_TIMEOUT_MS", "10000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vars.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    shared::config::Settings::from_vars(function, &vars).expect("test settings are valid")
}

/// A function context over explicit variables; clients are lazy, nothing is contacted.
pub fn context(function: &str, pairs: &[(&str, &str)]) -> std::sync::Arc<shared::AppContext> {
    shared::AppContext::new(settings(function, pairs)).expect("clients build")
}

/// Path of a sample event in the workspace's `events/` folder.
pub fn event_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../events")
        .join(name)
}

/// A sample event as raw JSON (for non-HTTP triggers and the Lambda dispatcher).
pub fn load_event_json(name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(event_path(name)).unwrap_or_else(|e| panic!("events/{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("events/{name} is not JSON: {e}"))
}

/// A sample HTTP event, deserialised the way Lambda hands it to the function.
pub fn load_event(name: &str) -> lambda_http::Request {
    let text =
        std::fs::read_to_string(event_path(name)).unwrap_or_else(|e| panic!("events/{name}: {e}"));
    lambda_http::request::from_str(&text)
        .unwrap_or_else(|e| panic!("events/{name} is not an HTTP event: {e}"))
}

/// A handled response, with the body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct TestResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub text: String,
    pub json: serde_json::Value,
}

/// Sends one request through a function's router.
pub async fn call<B>(router: &axum::Router, request: http::Request<B>) -> TestResponse
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("routers are infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    TestResponse {
        status,
        headers,
        text,
        json,
    }
}

/// Asserts that each sample event gets the JSON 501 of a capability that has not landed.
pub async fn assert_not_implemented(router: &axum::Router, events: &[&str]) {
    for event in events {
        let res = call(router, load_event(event)).await;
        assert_eq!(res.status, 501, "{event}: {}", res.text);
        assert_eq!(res.json["error"]["code"], "not_implemented", "{event}");
        assert!(res.headers.contains_key("x-request-id"), "{event}");
    }
}

/// The project's own OpenAI-compatible fake server: the only stand-in in the tests,
/// replacing the paid API. Embeddings come from the offline embedder, so they are
/// The fake OpenAI-compatible server (see the `fake-openai` crate).
pub mod fake_openai {
    pub use fake_openai::*;
}

/// A server that accepts connections and never answers (a frozen PostgreSQL or Redis):
/// its address, and how many connections it has been offered.
pub async fn frozen_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    (address, accepted)
}
