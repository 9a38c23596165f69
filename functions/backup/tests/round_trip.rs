//! Backup, wipe, restore, compare every row: on SQLite and on the real PostgreSQL, with
//! thousands of rows of unicode, NULLs, large text and vectors; a corrupted or truncated
//! file refused by name with the target left as it was; a backup taken while writes go
//! on is consistent; retention with a moved clock.

mod support;

use std::sync::{Arc, Mutex};

use chatkb_testing::TestDatabase;
use chrono::{DateTime, Utc};
use shared::backup::{sql::NOT_BACKED_UP, BackupError, Quiet};
use support::{backups, fingerprint, now, seed, total_rows};

/// A new, empty database of the same kind.
async fn empty_like(source: &TestDatabase) -> TestDatabase {
    match source.kind {
        shared::store::DatabaseKind::Sqlite => TestDatabase::sqlite(),
        shared::store::DatabaseKind::Postgres => TestDatabase::postgres().await,
    }
}

async fn round_trip(source: TestDatabase) {
    let db = source.database();
    seed(&db, 260).await;
    let before = fingerprint(&db).await;
    assert!(total_rows(&before) > 5000, "{}", total_rows(&before));
    let dir = tempfile::tempdir().unwrap();
    let taker = backups(&db, dir.path(), 300, now());
    assert!(
        taker.uncovered_tables().await.unwrap().is_empty(),
        "a table no backup covers"
    );
    let manifest = taker.run("test", &Quiet).await.unwrap();
    assert_eq!(manifest.source.migration_version, 9);
    let chunks = manifest.tables.iter().find(|t| t.name == "chunks").unwrap();
    assert_eq!(chunks.rows, 260 * 4);
    assert!(!chunks.columns.contains(&"segment".to_string()));
    taker.verify(manifest.id.as_str(), &Quiet).await.unwrap();

    // Lost: a new, empty database restored from the backup.
    let fresh = empty_like(&source).await;
    let target = fresh.database();
    let restorer = backups(&target, dir.path(), 300, now());
    let report = restorer.restore("latest", false, &Quiet).await.unwrap();
    assert_eq!(report.tables.len(), 8);
    let after = fingerprint(&target).await;
    for (table, rows) in &before {
        assert_eq!(rows.len(), after[table].len(), "{table}");
        for (i, (a, b)) in rows.iter().zip(&after[table]).enumerate() {
            assert_eq!(a, b, "{table} row {i}");
        }
    }
    // Sequences continue past the restored rows.
    support::execute(
        &target,
        "INSERT INTO usage_records (key_name, model, prompt_tokens, completion_tokens, cached, cost_usd, day, created_at) \
         VALUES ('k', 'm', 1, 1, FALSE, 0.5, '2026-12-06', '2026-12-06T00:00:00Z')",
    )
    .await;

    // The original, still full: refused without force, replaced with it.
    let err = taker
        .restore(manifest.id.as_str(), false, &Quiet)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackupError::NotEmpty(ref t) if t.contains(&"documents".to_string())),
        "{err}"
    );
    support::execute(
        &db,
        "DELETE FROM chat_messages WHERE seq < 100; UPDATE documents SET title = 'changed'",
    )
    .await;
    taker.restore("latest", true, &Quiet).await.unwrap();
    assert_eq!(fingerprint(&db).await, before);
}

#[tokio::test]
async fn sqlite_round_trip_gives_back_every_row() {
    round_trip(TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn postgres_round_trip_gives_back_every_row() {
    round_trip(TestDatabase::postgres().await).await;
}

#[tokio::test]
async fn every_table_is_backed_up_or_left_out_for_a_stated_reason() {
    for source in TestDatabase::both().await {
        let db = source.database();
        let dir = tempfile::tempdir().unwrap();
        let uncovered = backups(&db, dir.path(), 100, now())
            .uncovered_tables()
            .await
            .unwrap();
        assert!(uncovered.is_empty(), "{:?}: {uncovered:?}", source.kind);
        let tables = db.table_names().await.unwrap();
        for (table, _) in NOT_BACKED_UP {
            assert!(
                tables.contains(&table.to_string()),
                "{table} is gone: drop it from NOT_BACKED_UP"
            );
        }
    }
}

/// A damaged file is named by verify and restore, and restore changes nothing.
#[tokio::test]
async fn a_corrupted_or_truncated_file_fails_by_name_and_leaves_the_target_unchanged() {
    for source in TestDatabase::both().await {
        let db = source.database();
        seed(&db, 30).await;
        let before = fingerprint(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let taker = backups(&db, dir.path(), 50, now());
        let manifest = taker.run("test", &Quiet).await.unwrap();
        let file = dir
            .path()
            .join(manifest.id.as_str())
            .join("db/events.jsonl.gz");
        let original = std::fs::read(&file).unwrap();

        let mut flipped = original.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x20;
        let truncated = original[..original.len() * 2 / 3].to_vec();
        for damaged in [flipped, truncated] {
            std::fs::write(&file, &damaged).unwrap();
            let err = taker.verify("latest", &Quiet).await.unwrap_err();
            assert!(err.to_string().starts_with("db/events.jsonl.gz: "), "{err}");
            // Forced over the full original: nothing changes, not even the tables
            // before events in restore order.
            support::execute(&db, "DELETE FROM documents WHERE id = 'doc-1'").await;
            let changed = fingerprint(&db).await;
            let err = taker.restore("latest", true, &Quiet).await.unwrap_err();
            assert!(
                matches!(err, BackupError::Corrupt { ref file, .. } if file == "db/events.jsonl.gz"),
                "{err}"
            );
            assert_eq!(
                fingerprint(&db).await,
                changed,
                "{:?}: the target changed",
                source.kind
            );
            // Into an empty database: still empty.
            let fresh = TestDatabase::sqlite();
            if source.kind == shared::store::DatabaseKind::Sqlite {
                let target = fresh.database();
                let err = backups(&target, dir.path(), 50, now())
                    .restore("latest", false, &Quiet)
                    .await
                    .unwrap_err();
                assert!(matches!(err, BackupError::Corrupt { .. }), "{err}");
                assert_eq!(total_rows(&fingerprint(&target).await), 0);
            }
        }
        std::fs::write(&file, &original).unwrap();
        taker.restore("latest", true, &Quiet).await.unwrap();
        assert_eq!(fingerprint(&db).await, before);
    }
}

/// Writers keep adding documents with their chunks while a slow backup (small batches)
/// runs; the backup holds each document with exactly its chunks and nothing later.
#[tokio::test]
async fn a_backup_taken_while_writes_continue_is_consistent() {
    for source in TestDatabase::both().await {
        let db = source.database();
        seed(&db, 40).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let (db, stop, written) = (db.clone(), stop.clone(), written.clone());
            tokio::spawn(async move {
                let mut id = 10_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    support::execute(&db, &support::document_sql(db.kind(), id, 1 + id % 5)).await;
                    // And an older document grows by a chunk, with its count, in one
                    // transaction: a backup reading documents and chunks at different
                    // moments would hold a count that disagrees with the chunks.
                    support::execute(&db, &support::grow_document_sql(db.kind(), id % 40, id))
                        .await;
                    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    id += 1;
                }
            })
        };
        while written.load(std::sync::atomic::Ordering::Relaxed) < 5 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let at_start = written.load(std::sync::atomic::Ordering::Relaxed);
        let manifest = backups(&db, dir.path(), 10, now())
            .run("test", &Quiet)
            .await
            .unwrap();
        let at_end = written.load(std::sync::atomic::Ordering::Relaxed);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.await.unwrap();
        assert!(
            at_end > at_start,
            "no write happened during the backup ({at_start} -> {at_end})"
        );

        let fresh = empty_like(&source).await;
        let target = fresh.database();
        backups(&target, dir.path(), 500, now())
            .restore("latest", false, &Quiet)
            .await
            .unwrap();
        let documents = manifest
            .tables
            .iter()
            .find(|t| t.name == "documents")
            .unwrap()
            .rows;
        assert!(documents as usize >= 40 + at_start, "{documents}");
        let mismatched = match target.pool().await.unwrap() {
            shared::store::Pool::Sqlite(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM documents d WHERE chunk_count <> (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id)",
            )
            .fetch_one(pool)
            .await
            .unwrap(),
            shared::store::Pool::Postgres(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM documents d WHERE chunk_count <> (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id)",
            )
            .fetch_one(pool)
            .await
            .unwrap(),
        };
        assert_eq!(
            mismatched, 0,
            "{:?}: documents whose chunks were cut by the backup",
            source.kind
        );
    }
}

/// Backups taken at three moved times; retention a week after the last keeps the
/// recent ones, deletes the old ones and an abandoned incomplete one, and a month later
/// still keeps the newest good backup.
#[tokio::test]
async fn retention_with_moved_time_keeps_the_newest_good_backup() {
    let source = TestDatabase::sqlite();
    let db = source.database();
    seed(&db, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let time = Arc::new(Mutex::new(
        DateTime::parse_from_rfc3339("2026-11-01T02:00:00Z")
            .unwrap()
            .to_utc(),
    ));
    let clock = {
        let time = time.clone();
        Arc::new(move || *time.lock().unwrap()) as Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>
    };
    let taker = backups(&db, dir.path(), 100, clock);
    let set = |at: &str| *time.lock().unwrap() = DateTime::parse_from_rfc3339(at).unwrap().to_utc();
    let first = taker.run("test", &Quiet).await.unwrap().id;
    set("2026-11-20T02:00:00Z");
    let second = taker.run("test", &Quiet).await.unwrap().id;
    // A run that died before its manifest.
    std::fs::create_dir_all(dir.path().join("20261121-020000-0000aa/db")).unwrap();
    std::fs::write(
        dir.path()
            .join("20261121-020000-0000aa/db/documents.jsonl.gz"),
        b"partial",
    )
    .unwrap();
    set("2026-11-24T02:00:00Z");
    let third = taker.run("test", &Quiet).await.unwrap().id;
    let listed = taker.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.status).collect::<Vec<_>>(),
        ["complete", "incomplete", "complete", "complete"]
    );
    let err = taker
        .restore("20261121-020000-0000aa", true, &Quiet)
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::Incomplete(_)), "{err}");

    set("2026-11-26T02:00:00Z");
    let report = taker.prune().await.unwrap();
    assert_eq!(
        report
            .deleted
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        ["20261121-020000-0000aa".to_string(), first.to_string()]
    );
    assert_eq!(report.kept, vec![third.clone(), second.clone()]);

    set("2027-01-29T02:00:00Z");
    let report = taker.prune().await.unwrap();
    assert_eq!(report.deleted, vec![second]);
    assert_eq!(report.kept, vec![third.clone()]);
    let left: Vec<_> = taker
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(left, vec![third]);
    assert!(!dir.path().join(first.as_str()).exists());
}

/// A manifest that cannot be read marks the backup damaged: never used, never deleted by
/// retention, and named by verify.
#[tokio::test]
async fn a_damaged_manifest_is_named_kept_and_never_used() {
    let source = TestDatabase::sqlite();
    let db = source.database();
    seed(&db, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let taker = backups(&db, dir.path(), 100, now());
    let older = taker.run("test", &Quiet).await.unwrap().id;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let newer = taker.run("test", &Quiet).await.unwrap().id;
    let manifest = dir.path().join(newer.as_str()).join("manifest.json");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.replace_range(0..1, "[");
    std::fs::write(&manifest, text).unwrap();

    let listed = taker.list().await.unwrap();
    assert_eq!(listed[0].id, newer);
    assert_eq!(listed[0].status, "damaged");
    let problem = listed[0].problem.clone().unwrap();
    assert!(problem.starts_with("manifest.json: "), "{problem}");
    // `latest` is the newest good one; the damaged one is named when asked for.
    assert_eq!(taker.verify("latest", &Quiet).await.unwrap().id, older);
    let err = taker.verify(newer.as_str(), &Quiet).await.unwrap_err();
    assert!(err.to_string().contains("manifest.json"), "{err}");
    let err = taker
        .restore(newer.as_str(), true, &Quiet)
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::Corrupt { .. }), "{err}");
    // Long past retention: the damaged one stays for an operator, and so does the
    // newest good one.
    let later = Arc::new(|| Utc::now() + chrono::Duration::days(60))
        as Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;
    let report = backups(&db, dir.path(), 100, later).prune().await.unwrap();
    assert!(report.kept.contains(&newer), "{report:?}");
    assert!(report.kept.contains(&older), "{report:?}");
}

/// A target whose newer schema needs a value the backup cannot give is refused before
/// anything is written; a restore that fails while loading rolls everything back.
#[tokio::test]
async fn a_restore_that_cannot_complete_leaves_the_target_as_it_was() {
    for source in TestDatabase::both().await {
        let db = source.database();
        seed(&db, 20).await;
        let dir = tempfile::tempdir().unwrap();
        backups(&db, dir.path(), 50, now())
            .run("test", &Quiet)
            .await
            .unwrap();

        let target_db = empty_like(&source).await;
        let target = target_db.database();
        seed(&target, 2).await;
        let restorer = backups(&target, dir.path(), 50, now());
        // A newer migration's NOT NULL column without a default, and a nullable one.
        support::execute(&target, "ALTER TABLE events ADD COLUMN region TEXT").await;
        support::execute(
            &target,
            "ALTER TABLE chunks ADD COLUMN lang TEXT NOT NULL DEFAULT 'en'",
        )
        .await;
        if source.kind == shared::store::DatabaseKind::Postgres {
            support::execute(&target, "ALTER TABLE chunks ALTER COLUMN lang DROP DEFAULT").await;
            let before = fingerprint(&target).await;
            let err = restorer.restore("latest", true, &Quiet).await.unwrap_err();
            assert!(
                matches!(err, BackupError::Incompatible(ref m) if m.contains("lang")),
                "{err}"
            );
            assert_eq!(fingerprint(&target).await, before);
            support::execute(
                &target,
                "ALTER TABLE chunks ALTER COLUMN lang SET DEFAULT 'en'",
            )
            .await;
        }
        // A row the target refuses, in the last table loaded: nothing changes at all,
        // not even the tables loaded before it.
        let (refuse, allow) = match source.kind {
            shared::store::DatabaseKind::Sqlite => (
                "CREATE TRIGGER refuse_checks BEFORE INSERT ON health_checks BEGIN SELECT RAISE(ABORT, 'refused'); END",
                "DROP TRIGGER refuse_checks",
            ),
            shared::store::DatabaseKind::Postgres => (
                "ALTER TABLE health_checks ADD CONSTRAINT refuse_checks CHECK (status <> 'ok') NOT VALID",
                "ALTER TABLE health_checks DROP CONSTRAINT refuse_checks",
            ),
        };
        support::execute(&target, refuse).await;
        let before = fingerprint(&target).await;
        let err = restorer.restore("latest", true, &Quiet).await.unwrap_err();
        assert!(
            matches!(err, BackupError::Load(ref file, _) if file == "db/health_checks.jsonl.gz"),
            "{err}"
        );
        assert_eq!(
            fingerprint(&target).await,
            before,
            "{:?}: the target changed",
            source.kind
        );
        // Without the obstacle, the newer schema takes the backup (defaults fill the rest).
        support::execute(&target, allow).await;
        restorer.restore("latest", true, &Quiet).await.unwrap();
        assert_eq!(
            fingerprint(&target).await["documents"],
            fingerprint(&db).await["documents"]
        );
    }
}

/// A backup of an earlier version holds no `usage_hourly` (migration 0008 folded its
/// answers into it): restored over a database that has hours, they are emptied, not
/// kept beside the restored answers (which would count them twice).
#[tokio::test]
async fn a_forced_restore_empties_the_tables_the_backup_does_not_hold() {
    for source in TestDatabase::both().await {
        let db = source.database();
        seed(&db, 3).await;
        let dir = tempfile::tempdir().unwrap();
        let taker = backups(&db, dir.path(), 100, now());
        let id = taker.run("test", &Quiet).await.unwrap().id;
        let path = dir.path().join(id.as_str()).join("manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        manifest["tables"]
            .as_array_mut()
            .unwrap()
            .retain(|t| t["name"] != "usage_hourly");
        std::fs::write(&path, manifest.to_string()).unwrap();
        let before = fingerprint(&db).await;
        assert!(!before["usage_hourly"].is_empty());

        taker.restore(id.as_str(), true, &Quiet).await.unwrap();
        let after = fingerprint(&db).await;
        assert!(after["usage_hourly"].is_empty(), "{:?}", source.kind);
        assert_eq!(after["usage_records"], before["usage_records"]);
        assert_eq!(after["documents"], before["documents"]);
    }
}
