//! The stores layer against real SQLite, PostgreSQL and Redis.

use std::time::Duration;

use chatkb_testing::{settings, TestDatabase};
use shared::config::{DatabaseKind, RedisUrl};
use shared::health::{self, DependencyState, OverallStatus};
use shared::store::{Database, Pool, RedisHandle, StoreError};
use shared::AppContext;

use chatkb_testing::MIGRATED_TABLES as TABLES;

use chatkb_testing::test_redis_url as redis_url;

#[tokio::test]
async fn migrations_run_once_and_are_idempotent_on_both_backends() {
    for test_db in TestDatabase::both().await {
        let db = test_db.database();
        db.ensure_ready().await.unwrap();
        db.ensure_ready().await.unwrap();
        assert_eq!(
            db.table_names().await.unwrap(),
            TABLES.to_vec(),
            "{:?}",
            test_db.kind
        );
        // A second process (new handle) finds the schema already migrated.
        let again = test_db.database();
        again.ping().await.unwrap();
        assert_eq!(again.table_names().await.unwrap(), TABLES.to_vec());
        db.close().await;
        again.close().await;
    }
}

/// Finding: a failed migration left sqlx's session-level migration lock on an idle pooled
/// connection, and every later attempt (another handle, another process) waited for it
/// forever.
#[tokio::test]
async fn a_failed_postgres_migration_releases_its_lock_and_later_attempts_do_not_hang() {
    use sqlx::Connection;
    let test_db = TestDatabase::postgres().await;
    let mut admin = sqlx::PgConnection::connect(&test_db.url).await.unwrap();
    // A view where the schema wants the chunks table: the knowledge-base migration fails.
    sqlx::query("CREATE VIEW chunks AS SELECT 1 AS id")
        .execute(&mut admin)
        .await
        .unwrap();
    let db = test_db.database();
    let failed = db.ensure_ready().await;
    assert!(
        matches!(failed, Err(StoreError::Migration(_))),
        "{failed:?}"
    );
    let advisory_locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(advisory_locks, 0, "the failed migration released its lock");

    // Another instance tries again and gets the same answer, not a wait.
    let other = test_db.database();
    let again = tokio::time::timeout(Duration::from_secs(30), other.ensure_ready())
        .await
        .expect("a retry after a failed migration never waits for a lock");
    assert!(matches!(again, Err(StoreError::Migration(_))), "{again:?}");

    // Fixed by the operator: the next attempt migrates.
    sqlx::query("DROP VIEW chunks")
        .execute(&mut admin)
        .await
        .unwrap();
    other
        .ensure_ready()
        .await
        .expect("migrates once the cause is gone");
    db.ensure_ready()
        .await
        .expect("and so does the first handle");
    let _ = admin.close().await;
    db.close().await;
    other.close().await;
}

/// A lock that another session never releases fails the statement after the lock
/// timeout: migrations and ordinary queries alike.
#[tokio::test]
async fn postgres_lock_waits_are_bounded() {
    use sqlx::Connection;
    let test_db = TestDatabase::postgres().await;
    let db = test_db.database();
    db.ensure_ready().await.unwrap();
    let mut holder = sqlx::PgConnection::connect(&test_db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations, documents IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();

    let limit = shared::store::database::POSTGRES_LOCK_TIMEOUT + Duration::from_secs(15);
    let starting = test_db.database();
    let migrated = tokio::time::timeout(limit, starting.ensure_ready())
        .await
        .expect("the migration lock wait is bounded");
    assert!(migrated.is_err(), "{migrated:?}");

    let Pool::Postgres(pool) = db.pool().await.unwrap() else {
        unreachable!("a PostgreSQL test database")
    };
    let counted = tokio::time::timeout(
        limit,
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM documents").fetch_one(pool),
    )
    .await
    .expect("a query's lock wait is bounded");
    let err = counted.expect_err("the table stays locked");
    assert!(err.to_string().contains("lock timeout"), "{err}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let _ = holder.close().await;
}

#[tokio::test]
async fn functions_starting_together_migrate_one_sqlite_file_without_errors() {
    // `make run` starts every function at once on one embedded database: each process
    // migrates it, and one may apply a migration while another is applying the same one.
    for _ in 0..10 {
        let db = TestDatabase::sqlite();
        let instances: Vec<Database> = (0..4).map(|_| db.database()).collect();
        let results =
            futures_util::future::join_all(instances.iter().map(|d| d.ensure_ready())).await;
        for result in results {
            result.expect("every instance finds the schema migrated");
        }
        assert_eq!(instances[0].table_names().await.unwrap(), TABLES.to_vec());
    }
}

#[tokio::test]
async fn sqlite_creates_its_folder_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/deeper/app.db", dir.path().display());
    let db =
        Database::connect_lazy_with(&url, DatabaseKind::Sqlite, 2, Duration::from_secs(2)).unwrap();
    assert!(
        !dir.path().join("nested").exists(),
        "nothing happens before first use"
    );
    db.ping().await.unwrap();
    assert!(dir.path().join("nested/deeper/app.db").exists());
}

#[tokio::test]
async fn deep_checks_are_recorded_and_pruned_on_both_backends() {
    for test_db in TestDatabase::both().await {
        let ctx = AppContext::new(settings("test", &[("DATABASE_URL", &test_db.url)])).unwrap();
        let first = health::run_deep_check(&ctx).await;
        assert_eq!(first.status, OverallStatus::Ok);
        assert_eq!(first.tables, TABLES.to_vec());
        assert_eq!(health::deep_check_count(&ctx.database).await.unwrap(), 1);

        // A report older than the retention is pruned by the next recording.
        let mut old = first.clone();
        old.checked_at -= chrono::Duration::days(health::DEEP_CHECK_RETENTION_DAYS + 1);
        insert_raw(&ctx.database, &old).await;
        assert_eq!(health::deep_check_count(&ctx.database).await.unwrap(), 2);
        let second = health::run_deep_check(&ctx).await;
        assert_eq!(
            health::deep_check_count(&ctx.database).await.unwrap(),
            2,
            "old row pruned, new row added"
        );

        let last = health::last_deep_check(&ctx.database)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last.checked_at, second.checked_at);
        assert_eq!(last.function, "test");
        ctx.database.close().await;
    }
}

/// Inserts a report without pruning, to set up an expired row.
async fn insert_raw(db: &Database, report: &health::DeepCheck) {
    let body = serde_json::to_string(report).unwrap();
    match db.pool().await.unwrap() {
        Pool::Sqlite(pool) => {
            sqlx::query("INSERT INTO health_checks (checked_at, status, report) VALUES (?, ?, ?)")
                .bind(report.checked_at.to_rfc3339())
                .bind("ok")
                .bind(body)
                .execute(pool)
                .await
                .unwrap();
        }
        Pool::Postgres(pool) => {
            sqlx::query(
                "INSERT INTO health_checks (checked_at, status, report) VALUES ($1, $2, $3::jsonb)",
            )
            .bind(report.checked_at)
            .bind("ok")
            .bind(body)
            .execute(pool)
            .await
            .unwrap();
        }
    }
}

#[tokio::test]
async fn an_unreachable_database_does_not_stop_start_up_and_reports_down() {
    let ctx = AppContext::new(settings(
        "test",
        &[
            (
                "DATABASE_URL",
                "postgres://postgres:hunter2@127.0.0.1:1/nothing",
            ),
            ("DATABASE_TIMEOUT_MS", "300"),
            ("HEALTH_TIMEOUT_MS", "1000"),
        ],
    ))
    .expect("building clients never touches the network");
    let checks = health::check_dependencies(&ctx).await;
    let database = checks.iter().find(|c| c.name == "database").unwrap();
    assert_eq!(database.status, DependencyState::Down);
    assert!(!database.error.as_deref().unwrap().contains("hunter2"));
    assert_eq!(health::overall(&checks), OverallStatus::Down);
    assert_eq!(health::failing(&checks), vec!["database"]);
    // The deep check still completes and reports, without recording.
    let report = health::run_deep_check(&ctx).await;
    assert_eq!(report.status, OverallStatus::Down);
    assert!(report.tables.is_empty());
}

#[tokio::test]
async fn the_database_recovers_after_being_unreachable_at_start() {
    // A handle whose first use fails keeps retrying: point SQLite at a folder that
    // cannot be created yet, then make it possible.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("later");
    std::fs::write(&blocker, b"a file where a folder should be").unwrap();
    let url = format!("sqlite://{}/app.db", blocker.display());
    let db =
        Database::connect_lazy_with(&url, DatabaseKind::Sqlite, 2, Duration::from_secs(1)).unwrap();
    assert!(db.ping().await.is_err());
    std::fs::remove_file(&blocker).unwrap();
    db.ping()
        .await
        .expect("second attempt succeeds once the cause is gone");
}

#[tokio::test]
async fn redis_answers_ping_on_the_local_server() {
    let url = RedisUrl::parse(&redis_url()).unwrap();
    let redis = RedisHandle::new(&url, Duration::from_millis(500)).unwrap();
    redis.ping().await.unwrap();
    // The connection is shared: a second ping reuses it.
    redis.ping().await.unwrap();
}

#[tokio::test]
async fn redis_down_is_reported_within_the_timeout_and_health_is_degraded() {
    let test_db = TestDatabase::sqlite();
    let ctx = AppContext::new(settings(
        "test",
        &[
            ("DATABASE_URL", &test_db.url),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("REDIS_TIMEOUT_MS", "200"),
        ],
    ))
    .unwrap();
    let checks = health::check_dependencies(&ctx).await;
    let redis = checks.iter().find(|c| c.name == "redis").unwrap();
    assert_eq!(redis.status, DependencyState::Down);
    assert!(redis.error.is_some());
    assert_eq!(health::overall(&checks), OverallStatus::Degraded);
    assert_eq!(health::failing(&checks), vec!["redis"]);
    assert!(health::not_ready(&checks, false, true).is_empty());
    assert_eq!(health::not_ready(&checks, true, true), vec!["redis"]);
}

#[tokio::test]
async fn health_is_ok_with_real_postgres_and_redis() {
    let test_db = TestDatabase::postgres().await;
    let ctx = AppContext::new(settings(
        "test",
        &[("DATABASE_URL", &test_db.url), ("REDIS_URL", &redis_url())],
    ))
    .unwrap();
    let checks = health::check_dependencies(&ctx).await;
    assert!(
        checks.iter().all(|c| c.status == DependencyState::Up),
        "{checks:?}"
    );
    assert_eq!(
        checks
            .iter()
            .find(|c| c.name == "database")
            .unwrap()
            .backend
            .as_deref(),
        Some("postgres")
    );
    let detailed = health::detailed(&ctx, false).await;
    assert_eq!(detailed["status"], "ok");
    assert_eq!(detailed["dependencies"].as_array().unwrap().len(), 2);
    ctx.database.close().await;
}

/// Usage is kept per key, model and hour: a flush of 20,000 answers (more than one
/// multi-row statement may bind, which lost answers before) is counted whole, and the
/// table holds one row per key, model and hour, on both backends.
#[tokio::test]
async fn usage_grows_with_hours_not_answers_and_a_big_flush_loses_nothing() {
    use shared::chat::usage::{
        sql_usage_store, BudgetPolicy, UsageRecord, UsageRecorder, UsageRows,
    };
    for test_db in TestDatabase::both().await {
        let db = test_db.database();
        db.ensure_ready().await.unwrap();
        let recorder = UsageRecorder::new(
            sql_usage_store(db.clone()),
            Default::default(),
            BudgetPolicy::default(),
            UsageRows::Buffered,
        );
        let start = chrono::Utc::now() - chrono::Duration::hours(2);
        for i in 0..20_000u64 {
            recorder
                .record(UsageRecord {
                    key: format!("key-{}", i % 2),
                    model: format!("model-{}", (i / 2) % 2),
                    prompt_tokens: 10,
                    completion_tokens: 1 + i % 3,
                    cached: i % 10 == 0,
                    cost_usd: 0.001,
                    // Spread over three hours, within today or yesterday.
                    at: start + chrono::Duration::minutes((i % 3) as i64 * 60),
                })
                .await;
        }
        recorder.flush().await.unwrap();
        // A second flush adds to the same rows.
        recorder
            .record(UsageRecord {
                key: "key-0".into(),
                model: "model-0".into(),
                prompt_tokens: 10,
                completion_tokens: 1,
                cached: false,
                cost_usd: 0.5,
                at: start,
            })
            .await;
        recorder.flush().await.unwrap();
        let from = start.date_naive();
        let to = chrono::Utc::now().date_naive();
        let a = recorder.totals("key-0", from, to).await.unwrap();
        let b = recorder.totals("key-1", from, to).await.unwrap();
        assert_eq!(a.requests + b.requests, 20_001, "{:?}", test_db.kind);
        assert_eq!(a.prompt_tokens + b.prompt_tokens, 200_010);
        assert_eq!(a.cached_requests + b.cached_requests, 2_000);
        assert!((a.cost_usd + b.cost_usd - 20.5).abs() < 1e-6, "{a:?} {b:?}");
        let count = "SELECT COUNT(*) FROM usage_hourly";
        let rows: i64 = match db.pool().await.unwrap() {
            Pool::Sqlite(pool) => sqlx::query_scalar(count).fetch_one(pool).await.unwrap(),
            Pool::Postgres(pool) => sqlx::query_scalar(count).fetch_one(pool).await.unwrap(),
        };
        assert_eq!(rows, 2 * 2 * 3, "{:?}", test_db.kind);
    }
}
