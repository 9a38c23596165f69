//! Deep checks in SQLite.

use chrono::{DateTime, Utc};

use super::HealthHistory;
use crate::health::DeepCheck;
use crate::store::{Database, StoreError};

pub(crate) struct SqliteHealthHistory<'a>(pub &'a Database);

#[async_trait::async_trait]
impl HealthHistory for SqliteHealthHistory<'_> {
    async fn record(
        &self,
        report: &DeepCheck,
        prune_before: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_string(report).expect("report serialises");
        let mut tx = self.0.sqlite().await?.begin().await?;
        sqlx::query("INSERT INTO health_checks (checked_at, status, report) VALUES (?, ?, ?)")
            .bind(report.checked_at.to_rfc3339())
            .bind(report.status.as_str())
            .bind(&body)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM health_checks WHERE checked_at < ?")
            .bind(prune_before.to_rfc3339())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn last(&self) -> Result<Option<DeepCheck>, StoreError> {
        let body: Option<String> = sqlx::query_scalar(
            "SELECT report FROM health_checks ORDER BY checked_at DESC, id DESC LIMIT 1",
        )
        .fetch_optional(self.0.sqlite().await?)
        .await?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    async fn count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM health_checks")
            .fetch_one(self.0.sqlite().await?)
            .await?)
    }

    async fn last_backup(&self) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT id, finished_at FROM backup_runs ORDER BY finished_at DESC LIMIT 1",
        )
        .fetch_optional(self.0.sqlite().await?)
        .await?;
        Ok(row.and_then(|(id, at)| {
            DateTime::parse_from_rfc3339(&at)
                .ok()
                .map(|at| (id, at.to_utc()))
        }))
    }
}
