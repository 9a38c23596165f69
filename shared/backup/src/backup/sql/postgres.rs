//! Backups of PostgreSQL: `row_to_json` in one REPEATABLE READ transaction, loaded back
//! with `json_populate_recordset` (pgvector values travel as their text form).

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{json_array, quoted, quoted_list, ReadBack, SqlBackup, SqlSnapshot, TableSpec, TABLES};
use crate::backup::archive::LinesReader;
use crate::backup::manifest::FileEntry;
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
    let sql = format!(
        "SELECT row_to_json(t)::text FROM (SELECT {} FROM {name} {filter} ORDER BY {key} LIMIT {limit}) t",
        quoted_list(columns)
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql);
    if let Some(after) = after {
        query = query.bind(after);
    }
    Ok(query.fetch_all(conn).await?)
}

struct PgSnapshot(Transaction<'static, Postgres>);

#[async_trait]
impl SqlSnapshot for PgSnapshot {
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
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 AND is_generated = 'NEVER' \
             ORDER BY ordinal_position",
        )
        .bind(table.name)
        .fetch_all(self.0.postgres().await?)
        .await?;
        Ok(columns
            .into_iter()
            .filter(|c| !table.skip.contains(&c.as_str()))
            .collect())
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

    async fn restore_table(
        &self,
        table: &TableSpec,
        entry: &FileEntry,
        lines: &mut LinesReader,
        batch_rows: usize,
    ) -> Result<u64, BackupError> {
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
        let name = quoted(table.name);
        sqlx::query(&format!("DELETE FROM {name}"))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let columns = quoted_list(&entry.columns);
        let insert = format!(
            "INSERT INTO {name} ({columns}) SELECT {columns} FROM json_populate_recordset(NULL::{name}, $1::json)"
        );
        while let Some(batch) = lines.next_batch(batch_rows).await? {
            sqlx::query(&insert)
                .bind(json_array(&batch))
                .execute(&mut *tx)
                .await
                .map_err(|e| BackupError::Load(entry.file.clone(), e.to_string()))?;
        }
        lines.check(entry)?;
        if let Some(serial) = table.serial {
            let column = quoted(serial);
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE(MAX({column}), 1), MAX({column}) IS NOT NULL) FROM {name}"
            ))
            .bind(table.name)
            .bind(serial)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        }
        let mut back = ReadBack::default();
        let mut after: Option<String> = None;
        loop {
            let batch =
                dump_batch(&mut tx, table, &entry.columns, after.as_deref(), batch_rows).await?;
            back.add(&batch);
            match batch.last() {
                Some(last) if batch.len() == batch_rows => after = Some(last.clone()),
                _ => break,
            }
        }
        let rows = back.check(entry)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(rows)
    }
}
