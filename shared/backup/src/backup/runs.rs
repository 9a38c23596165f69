//! `backup_runs`: one row per good backup, so `/health/detailed` (another function)
//! reports the age of the last one from the database it already reads.

use super::manifest::Manifest;
use crate::store::{Database, DatabaseKind, StoreError};

/// Rows older than this are pruned as new ones are written.
const KEEP_DAYS: i64 = 90;

pub(crate) async fn record(
    db: &Database,
    manifest: &Manifest,
    location: &str,
) -> Result<(), StoreError> {
    let prune_before = manifest.finished_at - chrono::Duration::days(KEEP_DAYS);
    let (id, bytes, rows) = (
        manifest.id.as_str(),
        manifest.bytes as i64,
        manifest.rows() as i64,
    );
    match db.kind() {
        DatabaseKind::Sqlite => {
            let mut tx = db.sqlite().await?.begin().await?;
            sqlx::query("INSERT INTO backup_runs (id, finished_at, bytes, row_count, location) VALUES (?, ?, ?, ?, ?)")
                .bind(id)
                .bind(manifest.finished_at.to_rfc3339())
                .bind(bytes)
                .bind(rows)
                .bind(location)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM backup_runs WHERE finished_at < ?")
                .bind(prune_before.to_rfc3339())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        DatabaseKind::Postgres => {
            let mut tx = db.postgres().await?.begin().await?;
            sqlx::query("INSERT INTO backup_runs (id, finished_at, bytes, row_count, location) VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(manifest.finished_at)
                .bind(bytes)
                .bind(rows)
                .bind(location)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM backup_runs WHERE finished_at < $1")
                .bind(prune_before)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}
