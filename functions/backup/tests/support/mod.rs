//! Test data for backups: every table filled with awkward values (unicode, quotes,
//! NULLs, large text, vectors, fractional numbers), and a fingerprint of every row read
//! with SQL of its own (not the backup's), to compare before and after a restore.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::backup::{BackupParts, BackupSettings, BackupUrl, Backups};
use shared::store::{Database, DatabaseKind, Pool};

pub const AWKWARD: &str =
    "héllo wörld 日本語 🎉 e\u{301} 'quoted' \"double\" back\\slash\ttab\nnew line \u{1} end";

/// Backups of `db` into `dir`, with a clock the test moves.
pub fn backups(
    db: &Database,
    dir: &std::path::Path,
    batch_rows: usize,
    clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
) -> Backups {
    let settings = BackupSettings {
        url: BackupUrl::Folder(dir.to_path_buf()),
        retention: Duration::from_secs(7 * 86_400),
        batch_rows,
        replication_group: None,
        dynamo_tables: Vec::new(),
        operator_keys: Vec::new(),
    };
    Backups::new(BackupParts {
        database: db.clone(),
        database_label: "test".into(),
        blobs: settings.url.open(),
        dynamo: Default::default(),
        snapshots: None,
        clock,
        settings,
    })
}

pub fn now() -> Arc<dyn Fn() -> DateTime<Utc> + Send + Sync> {
    Arc::new(Utc::now)
}

fn text(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn embedding(kind: DatabaseKind, seed: usize, dims: usize) -> String {
    let values: Vec<f32> = (0..dims)
        .map(|d| ((seed * 31 + d * 7) % 97) as f32 / 97.0 - 0.5 + 1e-7 * d as f32)
        .collect();
    match kind {
        DatabaseKind::Postgres => text(&format!(
            "[{}]",
            values
                .iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(",")
        )),
        DatabaseKind::Sqlite => format!(
            "X'{}'",
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    }
}

pub async fn execute(db: &Database, sql: &str) {
    match db.pool().await.expect("database") {
        Pool::Sqlite(pool) => {
            sqlx::raw_sql(sql)
                .execute(pool)
                .await
                .expect("sqlite batch");
        }
        Pool::Postgres(pool) => {
            sqlx::raw_sql(sql)
                .execute(pool)
                .await
                .expect("postgres batch");
        }
    }
}

/// One document with `chunks` chunks, in one transaction (what ingest writes).
pub fn document_sql(kind: DatabaseKind, id: usize, chunks: usize) -> String {
    document_sql_with(kind, id, chunks, 8)
}

/// The same with `dims`-dimensional embeddings (the benchmark uses 384, as MiniLM).
pub fn document_sql_with(kind: DatabaseKind, id: usize, chunks: usize, dims: usize) -> String {
    let title = if id.is_multiple_of(7) {
        format!("{AWKWARD} {id}")
    } else {
        format!("Document {id}")
    };
    let mut sql = format!(
        "BEGIN; INSERT INTO documents (id, title, content_hash, version, chunk_count, content_type, source, metadata, created_at, updated_at) \
         VALUES ('doc-{id}', {}, 'h{id}', {}, {chunks}, 'text/plain', 'http', {}, '2026-12-0{}T10:00:0{}.{:06}Z', '2026-12-05T11:00:00Z');",
        text(&title),
        id % 3 + 1,
        text(&format!("{{\"team\": \"t{}\", \"n\": {id}, \"tags\": [\"a\", \"é\"]}}", id % 4)),
        id % 9 + 1,
        id % 10,
        id * 37 % 1_000_000,
    );
    for c in 0..chunks {
        let body = if id == 3 && c == 0 {
            // Large text: 300 KB in one chunk.
            "lorem ipsum dolor sit amet ".repeat(11_000)
        } else if c % 5 == 0 {
            format!("{AWKWARD} chunk {c} of {id}")
        } else {
            format!("aerodynamic wing section {c} of document {id} turbulence boundary layer")
        };
        let title_column = match kind {
            DatabaseKind::Postgres => format!(", {}", text(&title)),
            DatabaseKind::Sqlite => String::new(),
        };
        let (title_name, fts) = match kind {
            DatabaseKind::Postgres => (", title", String::new()),
            DatabaseKind::Sqlite => (
                "",
                format!(
                    "INSERT INTO chunks_fts (chunk_id, title, text) VALUES ('doc-{id}#{c}', {}, {});",
                    text(&title),
                    text(&body)
                ),
            ),
        };
        sql.push_str(&format!(
            "INSERT INTO chunks (id, document_id, idx{title_name}, text, model, dims, embedding) VALUES ('doc-{id}#{c}', 'doc-{id}', {c}{title_column}, {}, 'offline', {dims}, {});{fts}",
            text(&body),
            embedding(kind, id * 100 + c, dims)
        ));
    }
    sql.push_str("COMMIT;");
    sql
}

/// One more chunk for document `id`, and its count, in one transaction.
pub fn grow_document_sql(kind: DatabaseKind, id: usize, n: usize) -> String {
    let (title_name, title_value) = match kind {
        DatabaseKind::Postgres => (", title", ", 'grown'"),
        DatabaseKind::Sqlite => ("", ""),
    };
    format!(
        "BEGIN; INSERT INTO chunks (id, document_id, idx{title_name}, text, model, dims, embedding) \
         VALUES ('doc-{id}#grow-{n}', 'doc-{id}', {}{title_value}, 'grown chunk {n}', 'offline', 8, {}); \
         UPDATE documents SET chunk_count = chunk_count + 1 WHERE id = 'doc-{id}'; COMMIT;",
        1000 + n,
        embedding(kind, n, 8)
    )
}

/// Thousands of rows across every table.
pub async fn seed(db: &Database, documents: usize) {
    seed_sized(db, documents, 8).await
}

/// `documents` documents of 4 chunks with `dims`-dimensional embeddings, and the other
/// tables' rows.
pub async fn seed_sized(db: &Database, documents: usize, dims: usize) {
    db.ensure_ready().await.expect("migrated");
    let kind = db.kind();
    for first in (0..documents).step_by(50) {
        let batch: String = (first..documents.min(first + 50))
            .map(|id| document_sql_with(kind, id, 4, dims))
            .collect();
        execute(db, &batch).await;
    }
    let mut sql = String::from("BEGIN;");
    for i in 0..1500 {
        let causation = if i % 3 == 0 {
            "NULL".to_string()
        } else {
            text(&format!("cause-{i}"))
        };
        sql.push_str(&format!(
            "INSERT INTO events (id, type, aggregate_id, aggregate_version, correlation_id, causation_id, payload, occurred_at) \
             VALUES ('evt-{i}', 'DocumentIngested', 'doc-{}', {}, 'corr-{i}', {causation}, {}, '2026-12-05T10:{:02}:00Z');",
            i % 50,
            i % 4 + 1,
            text(&format!("{{\"i\": {i}, \"text\": {}}}", serde_json::to_string(AWKWARD).unwrap())),
            i % 60
        ));
        sql.push_str(&format!(
            "INSERT INTO chat_messages (owner, session_id, seq, message, expires_at) VALUES ('key-{}', 'session-{}', {i}, {}, {});",
            i % 3,
            i % 40,
            text(&format!("{{\"role\": \"user\", \"content\": {}}}", serde_json::to_string(&format!("{AWKWARD} {i}")).unwrap())),
            1_900_000_000_000i64 + i as i64
        ));
        sql.push_str(&format!(
            "INSERT INTO usage_records (key_name, model, prompt_tokens, completion_tokens, cached, cost_usd, day, created_at) \
             VALUES ('key-{}', 'gpt-4o-mini', {}, {}, {}, {:?}, '2026-12-05', '2026-12-05T10:00:00Z');",
            i % 5,
            100 + i,
            i * 3,
            if i % 2 == 0 { "TRUE" } else { "FALSE" },
            0.1 + i as f64 * 1.3e-7
        ));
        if i % 10 == 0 {
            sql.push_str(&format!(
                "INSERT INTO usage_hourly (key_name, model, day, hour, requests, cached_requests, prompt_tokens, completion_tokens, cost_usd) \
                 VALUES ('key-{}', 'model-{i}', '2026-12-0{}', {}, {}, {}, {}, {}, {:?});",
                i % 5,
                1 + i % 5,
                i % 24,
                1 + i,
                i / 2,
                100 * i,
                7 * i,
                0.25 + i as f64 * 1.3e-7
            ));
        }
        if i % 3 == 0 {
            let response = if i % 2 == 0 {
                "NULL".to_string()
            } else {
                text(AWKWARD)
            };
            sql.push_str(&format!(
                "INSERT INTO idempotency_records (key, status, payload_hash, response, expires_at, in_progress_until) \
                 VALUES ('idem-{i}', '{}', 'p{i}', {response}, {}, 0);",
                if response == "NULL" { "INPROGRESS" } else { "COMPLETED" },
                1_900_000_000_000i64 + i as i64
            ));
        }
    }
    // Floats at the edges (PostgreSQL also NaN and the infinities; SQLite stores no NaN).
    let extremes: &[&str] = match kind {
        DatabaseKind::Postgres => &[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "-0.0",
            "1e308",
            "5e-324",
        ],
        DatabaseKind::Sqlite => &["-0.0", "1e308", "5e-324"],
    };
    for (i, value) in extremes.iter().enumerate() {
        sql.push_str(&format!(
            "INSERT INTO usage_records (key_name, model, prompt_tokens, completion_tokens, cached, cost_usd, day, created_at) \
             VALUES ('extreme-{i}', 'm', 0, 0, FALSE, {value}, '2026-12-05', '2026-12-05T10:00:00Z');"
        ));
    }
    for i in 0..20 {
        sql.push_str(&format!(
            "INSERT INTO health_checks (checked_at, status, report) VALUES ('2026-12-05T0{}:00:00Z', 'ok', {});",
            i % 10,
            text(&format!("{{\"n\": {i}}}"))
        ));
    }
    sql.push_str("COMMIT;");
    execute(db, &sql).await;
}

/// The tables' rows, each as text, in key order; read with our own SQL.
pub async fn fingerprint(db: &Database) -> BTreeMap<String, Vec<String>> {
    let mut tables = BTreeMap::new();
    match db.pool().await.expect("database") {
        Pool::Postgres(pool) => {
            for (table, columns, key) in [
                ("documents", "*", "id"),
                ("chunks", "id, document_id, idx, title, text, model, dims, embedding::text AS embedding, tsv::text AS tsv", "id"),
                ("events", "*", "seq"),
                ("chat_messages", "*", "owner, session_id, seq"),
                ("idempotency_records", "*", "key"),
                ("usage_records", "*", "id"),
                ("usage_hourly", "*", "key_name, day, hour, model"),
                ("health_checks", "*", "id"),
            ] {
                let sql = format!("SELECT t::text FROM (SELECT {columns} FROM {table}) t ORDER BY {}", key.split(", ").map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", "));
                let rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(pool).await.expect(table);
                tables.insert(table.to_string(), rows);
            }
        }
        Pool::Sqlite(pool) => {
            for (table, key) in [
                ("documents", "id"),
                ("chunks", "id"),
                ("chunks_fts", "chunk_id"),
                ("events", "seq"),
                ("chat_messages", "owner, session_id, seq"),
                ("idempotency_records", "key"),
                ("usage_records", "id"),
                ("usage_hourly", "key_name, day, hour, model"),
                ("health_checks", "id"),
            ] {
                // A chunk's link to its keyword row is rebuilt by a restore, not restored.
                let columns: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{table}') WHERE name <> 'fts_rowid' ORDER BY cid"))
                        .fetch_all(pool)
                        .await
                        .expect(table);
                let row = columns
                    .iter()
                    .map(|c| format!("CASE typeof(\"{c}\") WHEN 'real' THEN printf('%.17g', \"{c}\") ELSE quote(\"{c}\") END"))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT {row} FROM {table} ORDER BY {key}"))
                    .fetch_all(pool)
                    .await
                    .expect(table);
                tables.insert(table.to_string(), rows);
            }
        }
    }
    tables
}

pub fn total_rows(fingerprint: &BTreeMap<String, Vec<String>>) -> usize {
    fingerprint.values().map(Vec::len).sum()
}
