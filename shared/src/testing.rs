//! Fresh databases for tests: a SQLite file in a temporary folder, or a new
//! PostgreSQL database created on `TEST_DATABASE_URL` and dropped afterwards.

use std::time::Duration;

use sqlx::Connection;

use crate::config::DatabaseKind;
use crate::store::Database;

/// The PostgreSQL server tests use.
pub fn test_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
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
            .unwrap_or_else(|e| panic!("PostgreSQL for tests is not reachable at TEST_DATABASE_URL ({e})"));
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
        Database::connect_lazy_with(&self.url, self.kind, 5, Duration::from_secs(5)).expect("valid test URL")
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
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
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
