//! Taking a backup: every table from one snapshot, the DynamoDB stores, an ElastiCache
//! snapshot, and the manifest last. A failure removes what was written.

use std::time::Instant;

use super::archive::LinesWriter;
use super::manifest::{self, BackupId, FileEntry, Manifest, SnapshotRecord, Source};
use super::progress::Progress;
use super::sql::{self, SqlBackup, SqlSnapshot, TableSpec, TABLES};
use super::{runs, BackupError, Backups};
use crate::observability::metrics::names;
use crate::observability::VERSION;

impl Backups {
    /// Takes a backup now. `trigger` is recorded in the manifest (`schedule`, `api`,
    /// `event`, `cli`).
    pub async fn run(
        &self,
        trigger: &str,
        progress: &dyn Progress,
    ) -> Result<Manifest, BackupError> {
        let _running = self.exclusive("backup or restore")?;
        let started = Instant::now();
        let result = self.take(trigger, progress).await;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(manifest) => {
                metrics::histogram!(names::BACKUP_DURATION_SECONDS, "outcome" => "ok")
                    .record(seconds);
                metrics::gauge!(names::BACKUP_BYTES).set(manifest.bytes as f64);
                metrics::gauge!(names::BACKUP_LAST_SUCCESS_TIMESTAMP_SECONDS)
                    .set(manifest.finished_at.timestamp() as f64);
                crate::observability::metrics::emf(
                    &[
                        (
                            names::BACKUP_LAST_SUCCESS_TIMESTAMP_SECONDS,
                            manifest.finished_at.timestamp() as f64,
                            "Seconds",
                        ),
                        (names::BACKUP_BYTES, manifest.bytes as f64, "Bytes"),
                        (names::BACKUP_DURATION_SECONDS, seconds, "Seconds"),
                    ],
                    &[],
                );
                tracing::info!(
                    backup = %manifest.id,
                    rows = manifest.rows(),
                    bytes = manifest.bytes,
                    seconds,
                    location = %self.location(),
                    "backup complete"
                );
            }
            Err(err) => {
                metrics::histogram!(names::BACKUP_DURATION_SECONDS, "outcome" => "failed")
                    .record(seconds);
                super::count_failure("backup");
                tracing::error!(error = %err, "backup failed");
            }
        }
        result
    }

    async fn take(&self, trigger: &str, progress: &dyn Progress) -> Result<Manifest, BackupError> {
        let started_at = self.now();
        let id = BackupId::new(started_at);
        self.parts.database.ensure_ready().await?;
        let sql = sql::for_database(&self.parts.database);
        let mut written = Vec::new();
        let files = self
            .write_files(&id, sql.as_ref(), progress, &mut written)
            .await;
        let (tables, dynamodb, migration_version) = match files {
            Ok(files) => files,
            Err(err) => {
                self.remove(&written).await;
                return Err(err);
            }
        };
        let elasticache_snapshot = self.snapshot(&id).await;
        let bytes = tables.iter().chain(&dynamodb).map(|f| f.bytes).sum();
        let manifest = Manifest {
            format: manifest::FORMAT,
            id: id.clone(),
            started_at,
            finished_at: self.now(),
            trigger: trigger.to_string(),
            tool_version: VERSION.to_string(),
            compression: "gzip".into(),
            source: Source {
                dialect: sql.dialect().to_string(),
                database: self.parts.database_label.clone(),
                migration_version,
            },
            tables,
            dynamodb,
            elasticache_snapshot,
            bytes,
        };
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| BackupError::Internal(format!("manifest: {e}")))?;
        if let Err(err) = self
            .parts
            .blobs
            .put(&format!("{id}/{}", manifest::MANIFEST), &body)
            .await
        {
            self.remove(&written).await;
            return Err(err.into());
        }
        if let Err(err) = runs::record(&self.parts.database, &manifest, &self.location()).await {
            // The backup itself is whole; only its age on /health/detailed lags.
            tracing::warn!(backup = %id, error = %err, "backup not recorded in backup_runs");
        }
        Ok(manifest)
    }

    /// The database's tables from one snapshot, then the DynamoDB stores.
    async fn write_files(
        &self,
        id: &BackupId,
        sql: &dyn SqlBackup,
        progress: &dyn Progress,
        written: &mut Vec<String>,
    ) -> Result<(Vec<FileEntry>, Vec<FileEntry>, i64), BackupError> {
        let migration_version = sql.migration_version().await?;
        let uncovered = sql::uncovered(&sql.tables().await?);
        if !uncovered.is_empty() {
            tracing::warn!(tables = ?uncovered, "tables that backups do not cover");
        }
        let mut snapshot = sql.snapshot().await?;
        let mut tables = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let file = format!("db/{}.jsonl.gz", table.name);
            let key = format!("{id}/{file}");
            let mut out = LinesWriter::new(self.parts.blobs.writer(&key).await?, table.name, &file);
            written.push(key);
            let started = Instant::now();
            let copied = async {
                let columns = snapshot.columns(table).await?;
                let rows = snapshot.count(table).await?;
                progress.start(&file, Some(rows));
                self.copy_table(
                    snapshot.as_mut(),
                    table,
                    &columns,
                    &mut out,
                    progress,
                    &file,
                )
                .await?;
                Ok::<_, BackupError>(columns)
            }
            .await;
            let columns = match copied {
                Ok(columns) => columns,
                Err(err) => {
                    out.abort().await;
                    return Err(err);
                }
            };
            let entry = out.finish(columns).await?;
            progress.finish(&file, entry.rows, entry.bytes, started.elapsed());
            tables.push(entry);
        }
        snapshot.close().await?;
        let mut dynamodb = Vec::new();
        for table in &self.parts.settings.dynamo_tables {
            let file = format!("dynamodb/{}.jsonl.gz", table.store);
            let key = format!("{id}/{file}");
            let mut out =
                LinesWriter::new(self.parts.blobs.writer(&key).await?, &table.store, &file);
            written.push(key);
            progress.start(&file, None);
            let started = Instant::now();
            if let Err(err) = super::dynamo::export(&self.parts.dynamo, table, &mut out).await {
                out.abort().await;
                return Err(err);
            }
            let mut entry = out.finish(Vec::new()).await?;
            entry.table = Some(table.table.clone());
            progress.finish(&file, entry.rows, entry.bytes, started.elapsed());
            dynamodb.push(entry);
        }
        Ok((tables, dynamodb, migration_version))
    }

    async fn copy_table(
        &self,
        snapshot: &mut dyn SqlSnapshot,
        table: &TableSpec,
        columns: &[String],
        out: &mut LinesWriter,
        progress: &dyn Progress,
        file: &str,
    ) -> Result<(), BackupError> {
        let batch_rows = self.parts.settings.batch_rows;
        let mut after: Option<String> = None;
        loop {
            let batch = snapshot
                .batch(table, columns, after.as_deref(), batch_rows)
                .await?;
            for line in &batch {
                out.push(line).await?;
            }
            progress.advance(file, out.rows(), out.raw_bytes);
            match batch.last() {
                Some(last) if batch.len() == batch_rows => after = Some(last.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// An ElastiCache snapshot named after the backup. A failure is recorded in the
    /// manifest and counted, but the logical backup stays good.
    async fn snapshot(&self, id: &BackupId) -> Option<SnapshotRecord> {
        let snapshots = self.parts.snapshots.as_ref()?;
        let name = id.snapshot_name();
        Some(match snapshots.create(&name).await {
            Ok(info) => SnapshotRecord {
                source: snapshots.source(),
                name: info.name,
                status: info.status,
            },
            Err(err) => {
                super::count_failure("snapshot");
                tracing::error!(backup = %id, error = %err, "ElastiCache snapshot failed");
                SnapshotRecord {
                    source: snapshots.source(),
                    name,
                    status: format!("failed: {err}"),
                }
            }
        })
    }

    /// Tables of the database a backup does not cover (a new migration's table that
    /// neither `TABLES` nor `NOT_BACKED_UP` lists).
    pub async fn uncovered_tables(&self) -> Result<Vec<String>, BackupError> {
        self.parts.database.ensure_ready().await?;
        let sql = sql::for_database(&self.parts.database);
        Ok(sql::uncovered(&sql.tables().await?))
    }

    /// Removes a failed backup's files.
    pub(crate) async fn remove(&self, keys: &[String]) {
        for key in keys {
            if let Err(err) = self.parts.blobs.delete(key).await {
                tracing::warn!(key, error = %err, "could not remove a file of a failed backup");
            }
        }
    }
}
