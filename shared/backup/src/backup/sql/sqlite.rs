//! Backups of SQLite: `json_object` rows in one read transaction (a WAL snapshot, so
//! writers carry on), BLOBs as hex; loaded back through `json_each`.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{Sqlite, SqliteConnection, Transaction};

use super::{
    json_array, load_error, quoted, quoted_list, FileOpener, ReadBack, SqlBackup, SqlSnapshot,
    TableSpec, TABLES,
};
use crate::backup::archive::LinesReader;
use crate::backup::manifest::FileEntry;
use crate::backup::progress::Progress;
use crate::backup::BackupError;
use crate::store::{Database, StoreError};

pub(crate) struct SqliteBackup<'a>(pub &'a Database);

/// A column and whether it holds bytes (carried as hex text).
async fn column_types(
    conn: &mut SqliteConnection,
    table: &str,
) -> Result<Vec<(String, bool)>, StoreError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT name, upper(type) FROM pragma_table_info(?) ORDER BY cid")
            .bind(table)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(name, kind)| (name, kind == "BLOB"))
        .collect())
}

/// The table's columns a backup holds (all, or only those that need a value: NOT NULL
/// without a default, outside the primary key).
async fn table_columns(
    conn: &mut SqliteConnection,
    table: &TableSpec,
    required_only: bool,
) -> Result<Vec<String>, StoreError> {
    let filter = if required_only {
        "WHERE \"notnull\" = 1 AND dflt_value IS NULL AND pk = 0"
    } else {
        ""
    };
    let columns: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM pragma_table_info(?) {filter} ORDER BY cid"
    ))
    .bind(table.name)
    .fetch_all(conn)
    .await?;
    Ok(columns
        .into_iter()
        .filter(|c| !table.skip.contains(&c.as_str()))
        .collect())
}

fn json_path(column: &str) -> String {
    format!(
        "'$.\"{}\"'",
        column.replace('\'', "''").replace('"', "\\\"")
    )
}

/// The statement that reads one batch of `table` (`after`: past a row of the previous
/// batch); built once per table and shape, since it needs the column types.
async fn dump_sql(
    conn: &mut SqliteConnection,
    table: &TableSpec,
    columns: &[String],
    after: bool,
    limit: usize,
) -> Result<String, StoreError> {
    let types = column_types(conn, table.name).await?;
    let fields = columns
        .iter()
        .map(|c| {
            let blob = types.iter().any(|(name, blob)| name == c && *blob);
            let value = if blob {
                format!(
                    "CASE WHEN {0} IS NULL THEN NULL ELSE lower(hex({0})) END",
                    quoted(c)
                )
            } else {
                // REAL as its exact text (json_object keeps only 15 digits).
                format!(
                    "CASE WHEN typeof({0}) = 'real' THEN json(printf('%!.17g', {0})) ELSE {0} END",
                    quoted(c)
                )
            };
            format!("'{}', {value}", c.replace('\'', "''"))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let key = quoted_list(table.key);
    let filter = match after {
        true => format!(
            "WHERE ({key}) > ({})",
            table
                .key
                .iter()
                .map(|k| format!("json_extract(?1, {})", json_path(k)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        false => String::new(),
    };
    Ok(format!(
        "SELECT json_object({fields}) FROM {} {filter} ORDER BY {key} LIMIT {limit}",
        quoted(table.name)
    ))
}

async fn dump_batch(
    conn: &mut SqliteConnection,
    sql: &str,
    after: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut query = sqlx::query_scalar::<_, String>(sql);
    if let Some(after) = after {
        query = query.bind(after);
    }
    Ok(query.fetch_all(conn).await?)
}

/// The read transaction, and the batch statements built so far (by table, shape, size).
struct LiteSnapshot(
    Transaction<'static, Sqlite>,
    HashMap<(&'static str, bool, usize), String>,
);

#[async_trait]
impl SqlSnapshot for LiteSnapshot {
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
        let shape = (table.name, after.is_some(), limit);
        if !self.1.contains_key(&shape) {
            let sql = dump_sql(&mut self.0, table, columns, after.is_some(), limit).await?;
            self.1.insert(shape, sql);
        }
        dump_batch(&mut self.0, &self.1[&shape], after).await
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

/// The keyword index is derived from chunks and their documents' titles: rebuilt, not
/// backed up.
async fn rebuild_keyword_index(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM chunks_fts")
        .execute(&mut *conn)
        .await?;
    // Each chunk's keyword row gets the chunk's rowid, which the chunk records.
    sqlx::query("UPDATE chunks SET fts_rowid = rowid")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO chunks_fts (rowid, chunk_id, title, text) \
         SELECT c.fts_rowid, c.id, d.title, c.text FROM chunks c JOIN documents d ON d.id = c.document_id",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl SqlBackup for SqliteBackup<'_> {
    fn dialect(&self) -> &'static str {
        "sqlite"
    }

    async fn migration_version(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(self.0.sqlite().await?)
        .await?)
    }

    async fn tables(&self) -> Result<Vec<String>, StoreError> {
        self.0.table_names().await
    }

    async fn columns(&self, table: &TableSpec) -> Result<Vec<String>, StoreError> {
        let mut conn = self.0.sqlite().await?.acquire().await?;
        table_columns(&mut conn, table, false).await
    }

    async fn required_columns(&self, table: &TableSpec) -> Result<Vec<String>, StoreError> {
        let mut conn = self.0.sqlite().await?.acquire().await?;
        table_columns(&mut conn, table, true).await
    }

    async fn snapshot(&self) -> Result<Box<dyn SqlSnapshot>, StoreError> {
        let mut tx = self.0.sqlite().await?.begin().await?;
        // The snapshot starts at the first read: take it now, before any table.
        sqlx::query("SELECT COUNT(*) FROM sqlite_schema")
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(LiteSnapshot(tx, HashMap::new())))
    }

    async fn non_empty(&self) -> Result<Vec<String>, StoreError> {
        let pool = self.0.sqlite().await?;
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
            .sqlite()
            .await?
            .begin()
            .await
            .map_err(StoreError::from)?;
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
            if table.name == "chunks" {
                rebuild_keyword_index(&mut tx).await?;
            }
            restored.push(read_back(&mut tx, table, entry, batch_rows).await?);
            progress.finish(&entry.file, entry.rows, entry.bytes, started.elapsed());
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(restored)
    }
}

async fn load_table(
    tx: &mut SqliteConnection,
    table: &TableSpec,
    entry: &FileEntry,
    lines: &mut LinesReader,
    batch_rows: usize,
) -> Result<(), BackupError> {
    let types = column_types(tx, table.name).await?;
    let values = entry
        .columns
        .iter()
        .map(|c| {
            let value = format!("json_extract(value, {})", json_path(c));
            if types.iter().any(|(name, blob)| name == c && *blob) {
                format!("unhex({value})")
            } else {
                value
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let insert = format!(
        "INSERT INTO {} ({}) SELECT {values} FROM json_each(?)",
        quoted(table.name),
        quoted_list(&entry.columns)
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
    tx: &mut SqliteConnection,
    table: &TableSpec,
    entry: &FileEntry,
    batch_rows: usize,
) -> Result<u64, BackupError> {
    let first = dump_sql(tx, table, &entry.columns, false, batch_rows).await?;
    let next = dump_sql(tx, table, &entry.columns, true, batch_rows).await?;
    let mut back = ReadBack::default();
    let mut after: Option<String> = None;
    loop {
        let sql = if after.is_some() { &next } else { &first };
        let batch = dump_batch(tx, sql, after.as_deref()).await?;
        back.add(&batch);
        match batch.last() {
            Some(last) if batch.len() == batch_rows => after = Some(last.clone()),
            _ => return back.check(entry),
        }
    }
}
