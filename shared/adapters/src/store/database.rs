//! One database handle over SQLite (embedded) and PostgreSQL (local and AWS).
//!
//! Connections are lazy: a database that is down at cold start does not stop the
//! function from starting. Migrations for the handle's dialect are embedded in the
//! binary and applied on first use, retried until they succeed.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, PgPool, SqlitePool};
use tokio::sync::OnceCell;

use super::StoreError;

/// Each dialect's migrations, embedded in the binary: (version, description, SQL). Built
/// without sqlx's `migrate!` proc macro, which would compile a second sqlx for both
/// dialects; same versions, descriptions and checksums, so migrated databases stay valid.
/// The list is written once for both dialects (each has a file of every migration); a
/// unit test checks that every file under `migrations/` is listed here, in order.
macro_rules! migrations {
    ($dialect:literal) => {
        migrations!($dialect:
            1 "0001_health_checks.sql" "health checks",
            2 "0002_knowledge_base.sql" "knowledge base",
            3 "0003_chat_sessions.sql" "chat sessions",
            4 "0004_idempotency.sql" "idempotency",
            5 "0005_usage.sql" "usage",
            6 "0006_vector_index.sql" "vector index",
            7 "0007_backup_runs.sql" "backup runs",
            8 "0008_usage_hourly.sql" "usage hourly",
            9 "0009_chunk_fts_rowid.sql" "chunk fts rowid",
        )
    };
    ($dialect:literal: $($version:literal $file:literal $description:literal),+ $(,)?) => {
        &[$(($version, $description, include_str!(concat!("../../migrations/", $dialect, "/", $file)))),+]
    };
}
const SQLITE_MIGRATION_FILES: &[(i64, &str, &str)] = migrations!("sqlite");
const POSTGRES_MIGRATION_FILES: &[(i64, &str, &str)] = migrations!("postgres");
static SQLITE_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| migrator(SQLITE_MIGRATION_FILES));
static POSTGRES_MIGRATIONS: LazyLock<Migrator> =
    LazyLock::new(|| migrator(POSTGRES_MIGRATION_FILES));

fn migrator(files: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}
/// How much of a SQLite file each connection maps into memory (`mmap_size`).
const SQLITE_MMAP_BYTES: u64 = 1 << 30;
/// Tries at migrating a SQLite file another process may be migrating at the same time.
const SQLITE_MIGRATION_ATTEMPTS: u64 = 5;
/// Longest wait for any PostgreSQL lock (rows, tables, advisory locks, the migration
/// lock): a lock that is never released fails the statement instead of hanging the caller.
pub const POSTGRES_LOCK_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest run of one statement on a pooled PostgreSQL connection. Work that may
/// legitimately take longer (the vector index build, migrations) lifts it for itself.
pub(crate) const POSTGRES_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// What a caller and `/health/ready` are told when the schema needs pgvector and the
/// server does not have it.
pub(crate) const MISSING_PGVECTOR: &str =
    "extension vector is not installed: run local/install-pgvector.sh, or use a PostgreSQL with pgvector";

/// Which relational backend `DATABASE_URL` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

/// A validated `DATABASE_URL`; `Display` hides any password.
#[derive(Clone)]
pub struct DatabaseUrl {
    raw: String,
    kind: DatabaseKind,
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let scheme = raw.split_once(':').map(|(s, _)| s).unwrap_or("");
        let kind = match scheme {
            "sqlite" => DatabaseKind::Sqlite,
            "postgres" | "postgresql" => DatabaseKind::Postgres,
            "" => return Err("expected a URL starting with sqlite:// or postgres://".into()),
            other => {
                return Err(format!(
                    "unsupported scheme `{other}`; use sqlite:// or postgres://"
                ))
            }
        };
        // Let sqlx validate the rest now, so a typo fails at cold start, not at first query.
        let checked = match kind {
            DatabaseKind::Sqlite => SqliteConnectOptions::from_str(raw).map(|_| ()),
            DatabaseKind::Postgres => PgConnectOptions::from_str(raw).map(|_| ()),
        };
        checked.map_err(|_| format!("not a valid {scheme} URL"))?;
        Ok(Self {
            raw: raw.to_string(),
            kind,
        })
    }

    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// The URL including credentials: only for opening connections, never for logs.
    pub fn expose(&self) -> &str {
        &self.raw
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::observability::redact::redact_url_credentials(
            &self.raw,
        ))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The pool of the configured dialect; stores match on it for dialect-specific SQL.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    migrated: OnceCell<()>,
    /// Bounds connecting for migrations, as `acquire_timeout` bounds the pool.
    timeout: Duration,
    sqlite_dir: Option<std::path::PathBuf>,
}

/// Cheap to clone; all clones share one pool.
#[derive(Debug, Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

impl Database {
    /// Builds the pool without connecting.
    pub fn connect_lazy_with(
        url: &str,
        kind: DatabaseKind,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let (pool, sqlite_dir) = match kind {
            DatabaseKind::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    // Pages read through a memory map instead of a read() call each
                    // (copied from the OS cache into a 2 MB cache per connection): a
                    // keyword search of a 10k-chunk corpus spent a third of its time in
                    // those calls. Address space, not memory: the OS keeps the pages.
                    .pragma("mmap_size", SQLITE_MMAP_BYTES.to_string());
                let dir = options
                    .get_filename()
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| p.to_path_buf());
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(timeout)
                    .connect_lazy_with(options);
                (Pool::Sqlite(pool), dir)
            }
            DatabaseKind::Postgres => {
                let options = PgConnectOptions::from_str(url)?
                    .application_name("chatkb")
                    .options([
                        ("lock_timeout", millis(POSTGRES_LOCK_TIMEOUT)),
                        ("statement_timeout", millis(POSTGRES_STATEMENT_TIMEOUT)),
                    ]);
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(timeout)
                    .connect_lazy_with(options);
                (Pool::Postgres(pool), None)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                migrated: OnceCell::new(),
                timeout,
                sqlite_dir,
            }),
        })
    }

    pub fn kind(&self) -> DatabaseKind {
        match self.inner.pool {
            Pool::Sqlite(_) => DatabaseKind::Sqlite,
            Pool::Postgres(_) => DatabaseKind::Postgres,
        }
    }

    /// The pool, after making sure the schema is migrated.
    pub async fn pool(&self) -> Result<&Pool, StoreError> {
        self.ensure_ready().await?;
        Ok(&self.inner.pool)
    }

    /// The SQLite pool, migrated. For adapters chosen by `kind()`: any other pool is a
    /// wiring bug, reported as an error rather than a panic.
    pub async fn sqlite(&self) -> Result<&sqlx::SqlitePool, StoreError> {
        match self.pool().await? {
            Pool::Sqlite(pool) => Ok(pool),
            Pool::Postgres(_) => Err(StoreError::WrongDialect("SQLite")),
        }
    }

    /// The PostgreSQL pool, migrated; see `sqlite`.
    pub async fn postgres(&self) -> Result<&sqlx::PgPool, StoreError> {
        match self.pool().await? {
            Pool::Postgres(pool) => Ok(pool),
            Pool::Sqlite(_) => Err(StoreError::WrongDialect("PostgreSQL")),
        }
    }

    /// Applies pending migrations once per process; a failure is retried on the next call.
    pub async fn ensure_ready(&self) -> Result<(), StoreError> {
        self.inner
            .migrated
            .get_or_try_init(|| async {
                match &self.inner.pool {
                    Pool::Sqlite(pool) => {
                        if let Some(dir) = &self.inner.sqlite_dir {
                            tokio::fs::create_dir_all(dir).await?;
                        }
                        // SQLite has no migration lock across processes: functions that
                        // start together on one file can race to apply the same migration,
                        // and the loser fails on its version row. Running again skips
                        // what the winner applied.
                        let mut attempt = 0;
                        while let Err(err) = SQLITE_MIGRATIONS.run(pool).await {
                            attempt += 1;
                            if attempt >= SQLITE_MIGRATION_ATTEMPTS {
                                return Err(err.into());
                            }
                            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                        }
                    }
                    Pool::Postgres(pool) => self.migrate_postgres(pool).await?,
                }
                tracing::info!(database = ?self.kind(), "database migrations applied");
                Ok::<(), StoreError>(())
            })
            .await?;
        Ok(())
    }

    /// Migrates on a connection of its own, closed afterwards whatever happened. sqlx
    /// takes a session-level advisory lock for the migration and does not release it
    /// when a migration fails; on a pooled connection that lock would outlive the
    /// failure and every retry (in any process) would wait for it forever.
    async fn migrate_postgres(&self, pool: &PgPool) -> Result<(), StoreError> {
        // Migrations may build indexes on large tables: no statement limit, but lock
        // waits (the migration lock included) stay bounded.
        let options = (*pool.connect_options())
            .clone()
            .options([("statement_timeout", "0")]);
        let mut conn =
            tokio::time::timeout(self.inner.timeout, PgConnection::connect_with(&options))
                .await
                .map_err(|_| StoreError::Timeout("database", self.inner.timeout.as_millis()))??;
        let migrated = POSTGRES_MIGRATIONS.run_direct(&mut conn).await;
        // Released here, synchronously: closing ends the session too, but the server
        // drops a closed session's locks a moment after the client has moved on, and a
        // retry in that moment would still find the lock held.
        let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        migrated.map_err(explain_migration_error)
    }

    /// Round trip to the database (after migrations): the readiness check.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self.pool().await? {
            Pool::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
            Pool::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Names of the tables the migrations created, for checks and backups.
    pub async fn table_names(&self) -> Result<Vec<String>, StoreError> {
        let names = match self.pool().await? {
            Pool::Sqlite(pool) => {
                // Plain tables only: not FTS5's virtual table nor its shadow tables, so
                // both dialects list the same tables.
                sqlx::query_scalar(
                    "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'table' \
                     AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
                )
                .fetch_all(pool)
                .await?
            }
            Pool::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = current_schema() AND table_name NOT LIKE '_sqlx%' \
                     ORDER BY table_name",
                )
                .fetch_all(pool)
                .await?
            }
        };
        Ok(names)
    }

    pub async fn close(&self) {
        match &self.inner.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

fn millis(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// Turns the failure a user can fix into a message that says how.
fn explain_migration_error(err: sqlx::migrate::MigrateError) -> StoreError {
    if names_missing_pgvector(&err.to_string()) {
        StoreError::MissingExtension(MISSING_PGVECTOR)
    } else {
        StoreError::Migration(err)
    }
}

/// PostgreSQL 15 says `could not open extension control file ".../vector.control"`,
/// 16 and later `extension "vector" is not available`.
fn names_missing_pgvector(message: &str) -> bool {
    message.contains("vector.control")
        || (message.contains("extension \"vector\"") && message.contains("is not available"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order_with_the_description_sqlx_gives_it() {
        for (dialect, listed) in [
            ("sqlite", SQLITE_MIGRATION_FILES),
            ("postgres", POSTGRES_MIGRATION_FILES),
        ] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dialect);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".sql"))
                .collect();
            files.sort();
            assert_eq!(files.len(), listed.len(), "{dialect}: {files:?}");
            for (file, &(version, description, sql)) in files.iter().zip(listed) {
                // sqlx's naming: `<version>_<description with underscores>.sql`.
                let (number, rest) = file.trim_end_matches(".sql").split_once('_').unwrap();
                assert_eq!(number.parse::<i64>().unwrap(), version, "{dialect}/{file}");
                assert_eq!(rest.replace('_', " "), description, "{dialect}/{file}");
                assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), sql);
            }
        }
    }

    const RAW_USAGE: &str = "INSERT INTO usage_records (key_name, model, prompt_tokens, completion_tokens, cached, cost_usd, day, created_at) VALUES \
        ('a', 'm', 10, 1, FALSE, 0.5, '2026-12-05', '2026-12-05T10:15:00Z'), \
        ('a', 'm', 20, 2, TRUE, 0.0, '2026-12-05', '2026-12-05T10:59:59Z'), \
        ('a', 'm', 30, 3, FALSE, 0.25, '2026-12-05', '2026-12-05T11:00:00Z')";
    const HOURLY: &str = "SELECT key_name || ' ' || model || ' ' || day || ' ' || CAST(hour AS TEXT) || ' ' || \
        CAST(requests AS TEXT) || ' ' || CAST(cached_requests AS TEXT) || ' ' || CAST(prompt_tokens AS TEXT) || ' ' || \
        CAST(completion_tokens AS TEXT) || ' ' || CAST(cost_usd AS TEXT) FROM usage_hourly ORDER BY hour";
    const FOLDED: [&str; 2] = [
        "a m 2026-12-05 10 2 1 30 3 0.5",
        "a m 2026-12-05 11 1 0 30 3 0.25",
    ];

    /// An in-memory database lives only as long as a connection to it: it is migrated
    /// where the pool sees it (a connection of its own would take the schema with it).
    #[tokio::test]
    async fn an_in_memory_database_keeps_its_schema() {
        let db = Database::connect_lazy_with(
            "sqlite::memory:",
            DatabaseKind::Sqlite,
            2,
            Duration::from_secs(5),
        )
        .unwrap();
        let tables = db.table_names().await.unwrap();
        assert!(tables.iter().any(|t| t == "usage_hourly"), "{tables:?}");
    }

    /// Migration 8 folds the answers of earlier versions into hours, on both dialects.
    #[tokio::test]
    async fn usage_rows_of_earlier_versions_are_folded_into_hours() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/m.db?mode=rwc", dir.path().display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        migrator(&SQLITE_MIGRATION_FILES[..7])
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(RAW_USAGE).execute(&pool).await.unwrap();
        SQLITE_MIGRATIONS.run(&pool).await.unwrap();
        let rows: Vec<String> = sqlx::query_scalar(HOURLY).fetch_all(&pool).await.unwrap();
        assert_eq!(rows, FOLDED);
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, 0);

        let admin_url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .expect("PostgreSQL for tests (TEST_DATABASE_URL)");
        let name = format!("chatkb_migration_{}", std::process::id());
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut admin)
            .await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let pool = sqlx::PgPool::connect(&format!("{base}/{name}"))
            .await
            .unwrap();
        migrator(&POSTGRES_MIGRATION_FILES[..7])
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(RAW_USAGE).execute(&pool).await.unwrap();
        POSTGRES_MIGRATIONS.run(&pool).await.unwrap();
        let rows: Vec<String> = sqlx::query_scalar(HOURLY).fetch_all(&pool).await.unwrap();
        pool.close().await;
        let _ = sqlx::query(&format!("DROP DATABASE {name}"))
            .execute(&mut admin)
            .await;
        assert_eq!(rows, FOLDED);
    }

    /// Migration 9 links the chunks of earlier versions to their keyword rows, so
    /// replacing or deleting such a document removes its rows by rowid.
    #[tokio::test]
    async fn chunks_of_earlier_versions_are_linked_to_their_keyword_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/m.db?mode=rwc", dir.path().display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        migrator(&SQLITE_MIGRATION_FILES[..8])
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO documents (id, title, content_hash, version, chunk_count, content_type, source, created_at, updated_at) \
             VALUES ('d', 'T', 'h', 1, 2, 'text/plain', 't', 'now', 'now'); \
             INSERT INTO chunks_fts (rowid, chunk_id, title, text) VALUES (7, 'other', 'T', 'x'), (41, 'd#0', 'T', 'a'), (42, 'd#1', 'T', 'b'); \
             INSERT INTO chunks (id, document_id, idx, text, model, dims, embedding) \
             VALUES ('d#1', 'd', 1, 'b', 'm', 1, x'00000000'), ('d#0', 'd', 0, 'a', 'm', 1, x'00000000')",
        )
        .execute(&pool)
        .await
        .unwrap();
        SQLITE_MIGRATIONS.run(&pool).await.unwrap();
        let links: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT id, fts_rowid FROM chunks ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            links,
            [("d#0".to_string(), Some(41)), ("d#1".to_string(), Some(42))]
        );
    }

    #[test]
    fn a_missing_pgvector_is_recognised_in_every_server_version() {
        assert!(names_missing_pgvector(
            "while executing migration 2: error returned from database: could not open extension \
             control file \"/usr/share/postgresql/15/extension/vector.control\": No such file or directory"
        ));
        assert!(names_missing_pgvector(
            "while executing migration 2: error returned from database: extension \"vector\" is not available"
        ));
        assert!(!names_missing_pgvector(
            "while executing migration 2: error returned from database: permission denied to create extension \"vector\""
        ));
    }
}
