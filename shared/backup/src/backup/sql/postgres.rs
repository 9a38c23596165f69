//! Backups of PostgreSQL: `row_to_json` in one REPEATABLE READ transaction, loaded back
//! with `json_populate_recordset` (pgvector values travel as their text form).

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{
    json_array, load_error, quoted, quoted_list, FileOpener, ReadBack, SqlBackup, SqlSnapshot,
    TableSpec, TABLES,
};
use crate::backup::manifest::FileEntry;
use crate::backup::progress::Progress;
use crate::backup::BackupError;
use crate::store::{Database, StoreError};

pub(crate) struct PostgresBackup<'a>(pub &'a Database);

/// Statements of a backup or restore may run longer than a request's.
const LONG_STATEMENTS: &str = "SET LOCAL statement_timeout = '30min'";

async fn dump_batch(
    conn: &mut PgConnection,
    table: &TableSpec,
    columns: &[String],
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let name = quoted(table.name);
    let key = quoted_list(table.key);
    let filter = match after {
        Some(_) => format!(
            "WHERE ({key}) > (SELECT {key} FROM json_populate_record(NULL::{name}, $1::json))"
        ),
        None => String::new(),
    };
    let outer_key = table
        .key
        .iter()
        .map(|k| format!("t.{}", quoted(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT row_to_json(t)::text FROM (SELECT {} FROM {name} {filter} ORDER BY {key} LIMIT {limit}) t ORDER BY {outer_key}",
        quoted_list(columns)
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql);
    if let Some(after) = after {
        query = query.bind(after);
    }
    Ok(query.fetch_all(conn).await?)
}

async fn table_columns(
    conn: &mut PgConnection,
    table: &TableSpec,
    required_only: bool,
) -> Result<Vec<String>, StoreError> {
    let required = if required_only {
        "AND is_nullable = 'NO' AND column_default IS NULL AND identity_generation IS NULL"
    } else {
        ""
    };
    let columns: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 AND is_generated = 'NEVER' {required} \
         ORDER BY ordinal_position"
    ))
    .bind(table.name)
    .fetch_all(conn)
    .await?;
    Ok(columns
        .into_iter()
        .filter(|c| !table.skip.contains(&c.as_str()))
        .collect())
}

struct PgSnapshot(Transaction<'static, Postgres>);

#[async_trait]
impl SqlSnapshot for PgSnapshot {
    async fn columns(&mut self, table: &TableSpec) -> Result<Vec<String>, StoreError> {
        table_columns(&mut self.0, table, false).await
    }

    async fn batch(
        &mut self,
        table: &TableSpec,
        columns: &[String],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        dump_batch(&mut self.0, table, columns, after, limit).await
    }

    async fn count(&mut self, table: &TableSpec) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) FROM {}", quoted(table.name));
        let count: i64 = sqlx::query_scalar(&sql).fetch_one(&mut *self.0).await?;
        Ok(count.max(0) as u64)
    }

    async fn close(self: Box<Self>) -> Result<(), StoreError> {
        self.0.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl SqlBackup for PostgresBackup<'_> {
    fn dialect(&self) -> &'static str {
        "postgres"
    }

    async fn migration_version(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(self.0.postgres().await?)
        .await?)
    }

    async fn tables(&self) -> Result<Vec<String>, StoreError> {
        self.0.table_names().await
    }

    async fn columns(&self, table: &TableSpec) -> Result<Vec<String>, StoreError> {
        let mut conn = self.0.postgres().await?.acquire().await?;
        table_columns(&mut conn, table, false).await
    }

    async fn required_columns(&self, table: &TableSpec) -> Result<Vec<String>, StoreError> {
        let mut conn = self.0.postgres().await?.acquire().await?;
        table_columns(&mut conn, table, true).await
    }

    async fn snapshot(&self) -> Result<Box<dyn SqlSnapshot>, StoreError> {
        let mut tx = self.0.postgres().await?.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        // Times as UTC, so the same rows always give the same text (and hash).
        sqlx::query("SET LOCAL TIME ZONE 'UTC'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(LONG_STATEMENTS).execute(&mut *tx).await?;
        Ok(Box::new(PgSnapshot(tx)))
    }

    async fn non_empty(&self) -> Result<Vec<String>, StoreError> {
        let pool = self.0.postgres().await?;
        let mut found = Vec::new();
        for table in TABLES {
            let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", quoted(table.name));
            if sqlx::query_scalar::<_, bool>(&sql).fetch_one(pool).await? {
                found.push(table.name.to_string());
            }
        }
        Ok(found)
    }

    async fn restore_all(
        &self,
        plan: &[(&'static TableSpec, &FileEntry)],
        files: &dyn FileOpener,
        batch_rows: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<u64>, BackupError> {
        let mut tx = self
            .0
            .postgres()
            .await?
            .begin()
            .await
            .map_err(StoreError::from)?;
        for statement in [LONG_STATEMENTS, "SET LOCAL TIME ZONE 'UTC'"] {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        // Every table, children first (chunks before documents): one that a backup of an
        // earlier version does not hold (usage_hourly) would otherwise keep rows beside
        // the restored ones, and a table the backup holds nothing of is empty after it.
        for table in super::TABLES.iter().rev() {
            sqlx::query(&format!("DELETE FROM {}", quoted(table.name)))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        let mut restored = Vec::with_capacity(plan.len());
        for (table, entry) in plan {
            let started = std::time::Instant::now();
            progress.start(&entry.file, Some(entry.rows));
            let mut lines = files.open(entry).await?;
            load_table(&mut tx, table, entry, &mut lines, batch_rows).await?;
            restored.push(read_back(&mut tx, table, entry, batch_rows).await?);
            progress.finish(&entry.file, entry.rows, entry.bytes, started.elapsed());
        }
        // Sequences are not transactional: moved only once everything checked out, and
        // never backwards, so even a failed commit leaves no duplicate key behind.
        for (table, _) in plan {
            let Some(serial) = table.serial else { continue };
            let sequence: Option<String> =
                sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
                    .bind(table.name)
                    .bind(serial)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
            let Some(sequence) = sequence else { continue };
            sqlx::query(&format!(
                "SELECT setval($1::regclass, GREATEST((SELECT COALESCE(MAX({}), 1) FROM {}), (SELECT last_value FROM {sequence})))",
                quoted(serial),
                quoted(table.name)
            ))
            .bind(&sequence)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(restored)
    }
}

async fn load_table(
    tx: &mut PgConnection,
    table: &TableSpec,
    entry: &FileEntry,
    lines: &mut crate::backup::archive::LinesReader,
    batch_rows: usize,
) -> Result<(), BackupError> {
    let name = quoted(table.name);
    let columns = quoted_list(&entry.columns);
    let insert = format!(
        "INSERT INTO {name} ({columns}) SELECT {columns} FROM json_populate_recordset(NULL::{name}, $1::json)"
    );
    while let Some(batch) = lines.next_batch(batch_rows).await? {
        sqlx::query(&insert)
            .bind(json_array(&batch))
            .execute(&mut *tx)
            .await
            .map_err(|e| load_error(entry, e))?;
    }
    lines.check(entry)
}

/// The table as loaded, hashed as the backup hashed it, compared with the manifest.
async fn read_back(
    tx: &mut PgConnection,
    table: &TableSpec,
    entry: &FileEntry,
    batch_rows: usize,
) -> Result<u64, BackupError> {
    let mut back = ReadBack::default();
    let mut after: Option<String> = None;
    loop {
        let batch = dump_batch(tx, table, &entry.columns, after.as_deref(), batch_rows).await?;
        back.add(&batch);
        match batch.last() {
            Some(last) if batch.len() == batch_rows => after = Some(last.clone()),
            _ => return back.check(entry),
        }
    }
}
