//! Backups (B1-B5): a logical, compressed, hashed copy of every table of the database
//! (and of the DynamoDB stores), an ElastiCache snapshot beside it, retention, verify and
//! restore. Built from parts (`BackupParts`), never from the application's settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::blobs::{BlobError, BlobStore, FolderBlobs, S3Blobs};
use crate::store::dynamo::LazyDynamo;
use crate::store::elasticache::{CacheSnapshots, SnapshotError};
use crate::store::{Database, StoreError};

mod archive;
pub mod dynamo;
pub mod manifest;
mod progress;
mod restore;
mod retention;
mod run;
mod runs;
pub mod sql;

pub use dynamo::DynamoTable;
pub use manifest::{BackupId, FileEntry, Manifest};
pub use progress::{LogProgress, Progress, Quiet};
pub use restore::{RestoreReport, VerifyReport};
pub use retention::{plan_retention, RetentionReport};

/// Where backups go (`BACKUP_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupUrl {
    /// `file:///path` or `file://relative/path`.
    Folder(PathBuf),
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
}

impl BackupUrl {
    /// The embedded default: a folder beside the SQLite database.
    pub const DEFAULT: &'static str = "file://.data/backups";

    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Some(path) = raw.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// needs a path, like file:///var/backups".into());
            }
            return Ok(BackupUrl::Folder(PathBuf::from(path)));
        }
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid {
                return Err(format!("`{bucket}` is not an S3 bucket name"));
            }
            return Ok(BackupUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        Err("expected s3://bucket/prefix or file:///path".into())
    }

    /// The store this URL names.
    pub fn open(&self) -> Arc<dyn BlobStore> {
        match self {
            BackupUrl::Folder(path) => Arc::new(FolderBlobs::new(path)),
            BackupUrl::S3 { bucket, prefix } => Arc::new(S3Blobs::new(bucket, prefix)),
        }
    }
}

/// The backup capability's settings (`BACKUP_*`).
#[derive(Debug, Clone)]
pub struct BackupSettings {
    pub url: BackupUrl,
    /// Backups (and snapshots) older than this are deleted, never the newest good one.
    pub retention: Duration,
    /// Rows per read and per insert.
    pub batch_rows: usize,
    /// `ELASTICACHE_REPLICATION_GROUP_ID`: snapshot this group with each backup.
    pub replication_group: Option<String>,
    /// DynamoDB stores to export (`SESSIONS_TABLE`, `IDEMPOTENCY_TABLE`).
    pub dynamo_tables: Vec<DynamoTable>,
    /// Names of the API keys allowed to use the backup routes (`BACKUP_OPERATOR_KEYS`):
    /// a restore replaces the database, so a chat client's key may not. Empty: no key.
    pub operator_keys: Vec<String>,
}

impl BackupSettings {
    pub const DEFAULT_RETENTION_DAYS: u64 = 7;
    pub const DEFAULT_BATCH_ROWS: usize = 1000;
}

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no backup {0}")]
    NotFound(String),
    #[error("{0}")]
    BadId(String),
    #[error("backup {0} is incomplete (it has no manifest) and cannot be used")]
    Incomplete(String),
    #[error("no good backup yet")]
    NoneYet,
    /// Another backup or restore is running in this instance.
    #[error("a {0} is already running")]
    Busy(&'static str),
    #[error("the target database is not empty (tables with rows: {}); restore with force to replace them", .0.join(", "))]
    NotEmpty(Vec<String>),
    /// The backup cannot go into this database (dialect, schema).
    #[error("{0}")]
    Incompatible(String),
    /// A file is damaged or does not match its manifest; names the file.
    #[error("{file}: {detail}")]
    Corrupt { file: String, detail: String },
    /// What a restore read back differs from the backup.
    #[error("{0}")]
    Mismatch(String),
    /// The database refused a row of this file.
    #[error("{0}: the database refused a row: {1}")]
    Load(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup store: {0}")]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("dynamodb: {0}")]
    Dynamo(String),
    #[error("{0}")]
    Internal(String),
}

impl BackupError {
    /// The caller asked for something that cannot be done as asked (an unknown or bad
    /// id, a target with rows, another run in progress): not a failure of the backups,
    /// so neither counted in `backup_failures_total` nor logged as an error.
    pub fn is_callers(&self) -> bool {
        matches!(
            self,
            BackupError::NotFound(_)
                | BackupError::BadId(_)
                | BackupError::NoneYet
                | BackupError::Busy(_)
                | BackupError::NotEmpty(_)
                | BackupError::Incomplete(_)
        )
    }
}

/// What the capability is built from.
pub struct BackupParts {
    pub database: Database,
    /// The database URL without credentials, for the manifest.
    pub database_label: String,
    pub blobs: Arc<dyn BlobStore>,
    pub settings: BackupSettings,
    /// The DynamoDB client (when `dynamo_tables` is not empty).
    pub dynamo: LazyDynamo,
    pub snapshots: Option<Arc<dyn CacheSnapshots>>,
    /// Where "now" comes from (retention tests move it).
    pub clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

/// One backup as listed.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub id: BackupId,
    /// `complete` (it has a manifest), `incomplete` (none: a run that failed or is
    /// running) or `damaged` (a manifest that cannot be read: kept, never used).
    pub status: &'static str,
    pub started_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    pub files: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why a `damaged` backup (its manifest exists but cannot be read) is not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl BackupSummary {
    pub fn is_good(&self) -> bool {
        self.status == "complete"
    }
}

/// The backup capability of one function instance.
pub struct Backups {
    parts: BackupParts,
    /// One backup or restore at a time per instance.
    running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Backups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backups")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

impl Backups {
    pub fn new(parts: BackupParts) -> Self {
        Self {
            parts,
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn location(&self) -> String {
        self.parts.blobs.location()
    }

    pub fn settings(&self) -> &BackupSettings {
        &self.parts.settings
    }

    fn now(&self) -> DateTime<Utc> {
        (self.parts.clock)()
    }

    fn exclusive(
        &self,
        what: &'static str,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, BackupError> {
        self.running.try_lock().map_err(|_| BackupError::Busy(what))
    }

    /// Every backup in the store, newest first; incomplete ones included and marked.
    pub async fn list(&self) -> Result<Vec<BackupSummary>, BackupError> {
        let blobs = self.parts.blobs.list().await?;
        let mut groups: std::collections::BTreeMap<BackupId, (u64, usize, bool)> =
            Default::default();
        for blob in &blobs {
            let Some((first, rest)) = blob.key.split_once('/') else {
                continue;
            };
            let Ok(id) = first.parse::<BackupId>() else {
                continue;
            };
            let group = groups.entry(id).or_default();
            group.0 += blob.size;
            group.1 += 1;
            group.2 |= rest == manifest::MANIFEST;
        }
        let mut found = Vec::with_capacity(groups.len());
        for (id, (bytes, files, has_manifest)) in groups.into_iter().rev() {
            let manifest = match has_manifest {
                false => Ok(None),
                true => match self.read_manifest(&id).await {
                    Ok(manifest) => Ok(Some(manifest)),
                    // Present but unreadable: damaged, never taken for incomplete (which
                    // retention deletes). A store that fails fails the whole listing.
                    Err(BackupError::Corrupt { detail, .. }) => Err(detail),
                    Err(BackupError::Incomplete(_)) => Ok(None),
                    Err(other) => return Err(other),
                },
            };
            found.push(match manifest {
                Ok(Some(m)) => BackupSummary {
                    id,
                    status: "complete",
                    started_at: m.started_at,
                    finished_at: Some(m.finished_at),
                    bytes,
                    rows: Some(m.rows()),
                    files,
                    snapshot: m.elasticache_snapshot.map(|s| s.name),
                    problem: None,
                },
                other => BackupSummary {
                    started_at: id.started_at(),
                    id,
                    status: if other.is_ok() {
                        "incomplete"
                    } else {
                        "damaged"
                    },
                    finished_at: None,
                    bytes,
                    rows: None,
                    files,
                    snapshot: None,
                    problem: other.err().map(|detail| format!("manifest.json: {detail}")),
                },
            });
        }
        Ok(found)
    }

    async fn read_manifest(&self, id: &BackupId) -> Result<Manifest, BackupError> {
        let key = format!("{id}/{}", manifest::MANIFEST);
        let bytes = self.parts.blobs.get(&key).await.map_err(|e| match e {
            BlobError::NotFound(_) => BackupError::Incomplete(id.to_string()),
            other => other.into(),
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
                file: key.clone(),
                detail: format!("not a manifest: {e}"),
            })?;
        if manifest.format > manifest::FORMAT || manifest.id != *id {
            return Err(BackupError::Corrupt {
                file: key,
                detail: "a manifest of another backup or a newer format".into(),
            });
        }
        Ok(manifest)
    }

    /// The manifest of a backup; `latest` names the newest good one.
    pub async fn manifest(&self, id: &str) -> Result<Manifest, BackupError> {
        let id = self.resolve(id).await?;
        match self.read_manifest(&id).await {
            // No manifest: an incomplete backup, or none at all (only then a listing).
            Err(BackupError::Incomplete(_)) => {
                let prefix = format!("{id}/");
                let listed = self.parts.blobs.list().await?;
                if listed.iter().any(|b| b.key.starts_with(&prefix)) {
                    Err(BackupError::Incomplete(id.to_string()))
                } else {
                    Err(BackupError::NotFound(id.to_string()))
                }
            }
            other => other,
        }
    }

    /// A backup id from a caller: an id, or `latest` for the newest good backup.
    pub async fn resolve(&self, raw: &str) -> Result<BackupId, BackupError> {
        if raw == "latest" {
            return self
                .newest_good()
                .await?
                .map(|b| b.id)
                .ok_or(BackupError::NoneYet);
        }
        raw.parse().map_err(BackupError::BadId)
    }

    async fn newest_good(&self) -> Result<Option<BackupSummary>, BackupError> {
        Ok(self.list().await?.into_iter().find(BackupSummary::is_good))
    }

    /// The newest good backup, if it finished less than `age` ago: the standalone
    /// schedule, which runs soon after every start, skips a run then.
    pub async fn good_within(
        &self,
        age: std::time::Duration,
    ) -> Result<Option<BackupId>, BackupError> {
        let now = self.now();
        Ok(self.newest_good().await?.and_then(|b| {
            let finished = b.finished_at?;
            let elapsed = (now - finished).to_std().ok()?;
            (elapsed < age).then_some(b.id)
        }))
    }
}

/// Counts a failed backup, verify, restore, snapshot or retention, for Prometheus and
/// (on AWS) CloudWatch.
pub(crate) fn count_failure(operation: &'static str) {
    use crate::observability::metrics::{emf, names};
    metrics::counter!(names::BACKUP_FAILURES_TOTAL, "operation" => operation).increment(1);
    emf(
        &[(names::BACKUP_FAILURES_TOTAL, 1.0, "Count")],
        &[("operation", operation)],
    );
}

#[cfg(test)]
mod tests;
