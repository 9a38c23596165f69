//! Retention (B4): backups and the function's own ElastiCache snapshots older than
//! `BACKUP_RETENTION_DAYS` go; the newest good backup (and its snapshot) always stays.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::manifest::{self, BackupId};
use super::{BackupError, BackupSummary, Backups};

/// An incomplete backup this old is a failed run, not one still running.
const INCOMPLETE_AFTER: chrono::Duration = chrono::Duration::hours(24);

/// What retention did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    pub deleted: Vec<BackupId>,
    pub kept: Vec<BackupId>,
    pub snapshots_deleted: Vec<String>,
    /// Deletions that failed (retried at the next run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The backups to delete at `now` (`backups` newest first): good ones past the
/// retention but the newest good one, and incomplete ones older than a day or the
/// retention, whichever is shorter. Damaged ones are never deleted.
pub fn plan_retention(
    backups: &[BackupSummary],
    now: DateTime<Utc>,
    retention: std::time::Duration,
) -> Vec<BackupId> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let newest_good = backups.iter().find(|b| b.is_good()).map(|b| &b.id);
    backups
        .iter()
        .filter(|b| {
            let age = now - b.started_at;
            match b.status {
                "complete" => age > retention && Some(&b.id) != newest_good,
                "incomplete" => age > retention.min(INCOMPLETE_AFTER),
                // A damaged manifest may be a newer format or a flipped byte: an operator
                // decides, retention never does.
                _ => false,
            }
        })
        .map(|b| b.id.clone())
        .collect()
}

impl Backups {
    /// Applies retention to the store and to this function's snapshots.
    pub async fn prune(&self) -> Result<RetentionReport, BackupError> {
        let now = self.now();
        let backups = self.list().await?;
        let doomed = plan_retention(&backups, now, self.parts.settings.retention);
        let mut report = RetentionReport {
            kept: backups
                .iter()
                .filter(|b| !doomed.contains(&b.id))
                .map(|b| b.id.clone())
                .collect(),
            ..Default::default()
        };
        let blobs = self.parts.blobs.list().await?;
        for id in doomed {
            let prefix = format!("{id}/");
            let manifest_key = format!("{prefix}{}", manifest::MANIFEST);
            // The manifest first: a half-deleted backup must look incomplete, never good.
            let mut keys: Vec<&str> = vec![manifest_key.as_str()];
            keys.extend(
                blobs
                    .iter()
                    .map(|b| b.key.as_str())
                    .filter(|k| k.starts_with(&prefix) && *k != manifest_key),
            );
            let mut failed = false;
            for key in keys {
                if let Err(err) = self.parts.blobs.delete(key).await {
                    report.errors.push(format!("{key}: {err}"));
                    failed = true;
                    break;
                }
            }
            if !failed {
                report.deleted.push(id);
            }
        }
        let keep_snapshot = backups
            .iter()
            .find(|b| b.is_good())
            .and_then(|b| b.snapshot.clone());
        self.prune_snapshots(now, keep_snapshot, &mut report).await;
        if !report.errors.is_empty() {
            super::count_failure("retention");
        }
        tracing::info!(
            deleted = ?report.deleted,
            kept = report.kept.len(),
            snapshots_deleted = ?report.snapshots_deleted,
            errors = ?report.errors,
            "retention applied"
        );
        Ok(report)
    }

    async fn prune_snapshots(
        &self,
        now: DateTime<Utc>,
        keep: Option<String>,
        report: &mut RetentionReport,
    ) {
        let Some(snapshots) = &self.parts.snapshots else {
            return;
        };
        let retention = chrono::Duration::from_std(self.parts.settings.retention)
            .unwrap_or(chrono::Duration::MAX);
        let listed = match snapshots.list(manifest::SNAPSHOT_PREFIX).await {
            Ok(listed) => listed,
            Err(err) => {
                report.errors.push(err.to_string());
                return;
            }
        };
        for snapshot in listed {
            let Some(id) = BackupId::of_snapshot(&snapshot.name) else {
                continue;
            };
            if now - id.started_at() <= retention || keep.as_deref() == Some(&snapshot.name) {
                continue;
            }
            match snapshots.delete(&snapshot.name).await {
                Ok(()) => report.snapshots_deleted.push(snapshot.name),
                Err(err) => report.errors.push(format!("{}: {err}", snapshot.name)),
            }
        }
    }
}
