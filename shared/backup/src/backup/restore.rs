//! Verify (every file re-read against its manifest) and restore (checks first, so a bad
//! backup or an unsuitable target changes nothing; then one transaction per table).

use std::time::Instant;

use serde::Serialize;

use super::archive::LinesReader;
use super::manifest::{BackupId, FileEntry, Manifest};
use super::progress::Progress;
use super::sql::{self, FileOpener, SqlBackup, TABLES};
use super::{BackupError, Backups};
use crate::store::blobs::BlobError;

/// What verify found: every file whole.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub id: BackupId,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// Rows restored into one table.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredTable {
    pub name: String,
    pub rows: u64,
}

/// What restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub id: BackupId,
    pub tables: Vec<RestoredTable>,
    pub dynamodb: Vec<RestoredTable>,
    pub seconds: f64,
}

fn failure_counted<T>(
    operation: &'static str,
    result: Result<T, BackupError>,
) -> Result<T, BackupError> {
    match &result {
        Err(err) if err.is_callers() => {
            tracing::info!(operation, error = %err, "backup operation refused")
        }
        Err(err) => {
            super::count_failure(operation);
            tracing::error!(operation, error = %err, "backup operation failed");
        }
        Ok(_) => {}
    }
    result
}

/// Opens the files of the backup being restored.
struct Opener<'a> {
    backups: &'a Backups,
    id: &'a BackupId,
}

#[async_trait::async_trait]
impl FileOpener for Opener<'_> {
    async fn open(&self, entry: &FileEntry) -> Result<LinesReader, BackupError> {
        self.backups.open(self.id, entry).await
    }
}

impl Backups {
    /// Re-reads every file of a backup (`latest`: the newest good one) and checks hashes
    /// and row counts against its manifest.
    pub async fn verify(
        &self,
        id: &str,
        progress: &dyn Progress,
    ) -> Result<VerifyReport, BackupError> {
        failure_counted("verify", self.verify_inner(id, progress).await)
    }

    async fn verify_inner(
        &self,
        id: &str,
        progress: &dyn Progress,
    ) -> Result<VerifyReport, BackupError> {
        let manifest = self.manifest(id).await?;
        self.check_files(&manifest, progress).await?;
        Ok(VerifyReport {
            id: manifest.id.clone(),
            files: manifest.files().count(),
            rows: manifest.rows(),
            bytes: manifest.bytes,
        })
    }

    async fn open(&self, id: &BackupId, entry: &FileEntry) -> Result<LinesReader, BackupError> {
        let reader = self
            .parts
            .blobs
            .reader(&format!("{id}/{}", entry.file))
            .await
            .map_err(|err| match err {
                BlobError::NotFound(_) => BackupError::Corrupt {
                    file: entry.file.clone(),
                    detail: "the file is missing".into(),
                },
                other => other.into(),
            })?;
        Ok(LinesReader::new(reader, &entry.file))
    }

    /// Every file checked; all damaged files are named together.
    async fn check_files(
        &self,
        manifest: &Manifest,
        progress: &dyn Progress,
    ) -> Result<(), BackupError> {
        let mut damaged = Vec::new();
        for entry in manifest.files() {
            let started = Instant::now();
            progress.start(&entry.file, Some(entry.rows));
            let checked = async {
                let mut lines = self.open(&manifest.id, entry).await?;
                let mut rows = 0;
                while let Some(batch) = lines.next_batch(self.parts.settings.batch_rows).await? {
                    rows += batch.len() as u64;
                    progress.advance(&entry.file, rows, 0);
                }
                lines.check(entry)
            }
            .await;
            match checked {
                Ok(()) => progress.finish(&entry.file, entry.rows, entry.bytes, started.elapsed()),
                Err(BackupError::Corrupt { file, detail }) => damaged.push((file, detail)),
                Err(other) => return Err(other),
            }
        }
        if damaged.is_empty() {
            return Ok(());
        }
        Err(BackupError::Corrupt {
            file: damaged
                .iter()
                .map(|(f, _)| f.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            detail: damaged
                .iter()
                .map(|(_, d)| d.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// Restores a backup (`latest`: the newest good one) into this function's database
    /// and DynamoDB tables. Refuses a target that holds rows unless `force`.
    pub async fn restore(
        &self,
        id: &str,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<RestoreReport, BackupError> {
        let _running = self.exclusive("backup or restore")?;
        failure_counted("restore", self.restore_inner(id, force, progress).await)
    }

    async fn restore_inner(
        &self,
        id: &str,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<RestoreReport, BackupError> {
        let started = Instant::now();
        let manifest = self.manifest(id).await?;
        self.parts.database.ensure_ready().await?;
        let sql = sql::for_database(&self.parts.database);
        self.check_target(&manifest, sql.as_ref(), force).await?;
        // Every file whole before anything is written.
        self.check_files(&manifest, progress).await?;
        let plan: Vec<_> = TABLES
            .iter()
            .filter_map(|table| {
                let entry = manifest.tables.iter().find(|e| e.name == table.name)?;
                Some((table, entry))
            })
            .collect();
        let opener = Opener {
            backups: self,
            id: &manifest.id,
        };
        let rows = sql
            .restore_all(&plan, &opener, self.parts.settings.batch_rows, progress)
            .await?;
        let tables = plan
            .iter()
            .zip(rows)
            .map(|((_, entry), rows)| RestoredTable {
                name: entry.name.clone(),
                rows,
            })
            .collect();
        let mut dynamodb = Vec::new();
        for entry in &manifest.dynamodb {
            let table = self.dynamo_target(entry)?;
            let mut lines = self.open(&manifest.id, entry).await?;
            let rows = super::dynamo::import(&self.parts.dynamo, entry, &table, &mut lines).await?;
            dynamodb.push(RestoredTable {
                name: entry.name.clone(),
                rows,
            });
        }
        let report = RestoreReport {
            id: manifest.id.clone(),
            tables,
            dynamodb,
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(backup = %report.id, seconds = report.seconds, "restore complete");
        Ok(report)
    }

    fn dynamo_target(&self, entry: &FileEntry) -> Result<String, BackupError> {
        self.parts
            .settings
            .dynamo_tables
            .iter()
            .find(|t| t.store == entry.name)
            .map(|t| t.table.clone())
            .ok_or_else(|| {
                BackupError::Incompatible(format!(
                    "the backup holds the DynamoDB {} store, and no table is configured for it here",
                    entry.name
                ))
            })
    }

    /// The target can take the backup: same dialect, a schema at least as new with
    /// every column, and (unless forced) no rows yet.
    async fn check_target(
        &self,
        manifest: &Manifest,
        sql: &dyn SqlBackup,
        force: bool,
    ) -> Result<(), BackupError> {
        if manifest.source.dialect != sql.dialect() {
            return Err(BackupError::Incompatible(format!(
                "backup {} is of a {} database and this one is {}",
                manifest.id,
                manifest.source.dialect,
                sql.dialect()
            )));
        }
        let version = sql.migration_version().await?;
        if version < manifest.source.migration_version {
            return Err(BackupError::Incompatible(format!(
                "backup {} needs schema version {} and this database is at {version}: deploy the newer version first",
                manifest.id, manifest.source.migration_version
            )));
        }
        for entry in &manifest.tables {
            let Some(table) = TABLES.iter().find(|t| t.name == entry.name) else {
                return Err(BackupError::Incompatible(format!(
                    "backup {} holds table {}, which this version does not know",
                    manifest.id, entry.name
                )));
            };
            let columns = sql.columns(table).await?;
            if let Some(missing) = entry.columns.iter().find(|c| !columns.contains(c)) {
                return Err(BackupError::Incompatible(format!(
                    "table {} here has no column {missing}",
                    entry.name
                )));
            }
            // A newer schema's column that needs a value the backup cannot give.
            let required = sql.required_columns(table).await?;
            if let Some(unfilled) = required.iter().find(|c| !entry.columns.contains(c)) {
                return Err(BackupError::Incompatible(format!(
                    "table {} here needs a value for column {unfilled}, which backup {} does not hold",
                    entry.name, manifest.id
                )));
            }
        }
        for entry in &manifest.dynamodb {
            self.dynamo_target(entry)?;
        }
        if force {
            return Ok(());
        }
        let mut non_empty = sql.non_empty().await?;
        for entry in &manifest.dynamodb {
            let table = self.dynamo_target(entry)?;
            if super::dynamo::has_items(&self.parts.dynamo, &table).await? {
                non_empty.push(format!("dynamodb:{table}"));
            }
        }
        if non_empty.is_empty() {
            Ok(())
        } else {
            Err(BackupError::NotEmpty(non_empty))
        }
    }
}
