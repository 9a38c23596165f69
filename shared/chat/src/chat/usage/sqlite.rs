//! Usage records in SQLite (`usage_records`).

use chrono::NaiveDate;

use super::{per_hour, totals_from_row, TotalsRow, UsageRecord, UsageStore, UsageTotals};
use crate::store::{Database, StoreError};

pub struct SqliteUsageStore {
    db: Database,
}

impl SqliteUsageStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl UsageStore for SqliteUsageStore {
    async fn insert(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        // One statement, prepared once per connection, per key, model and hour in the
        // batch: a multi-row insert of every answer was a new statement for each batch
        // size, and the statement cache kept hundreds of them, hundreds of KB each.
        let mut tx = self.db.sqlite().await?.begin().await?;
        for group in per_hour(batch) {
            sqlx::query(
                "INSERT INTO usage_hourly (key_name, model, day, hour, requests, cached_requests, \
                 prompt_tokens, completion_tokens, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (key_name, day, hour, model) DO UPDATE SET \
                 requests = requests + excluded.requests, \
                 cached_requests = cached_requests + excluded.cached_requests, \
                 prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = completion_tokens + excluded.completion_tokens, \
                 cost_usd = cost_usd + excluded.cost_usd",
            )
            .bind(&group.key)
            .bind(&group.model)
            .bind(&group.day)
            .bind(group.hour)
            .bind(group.requests)
            .bind(group.cached_requests)
            .bind(group.prompt_tokens)
            .bind(group.completion_tokens)
            .bind(group.cost_usd)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn totals(
        &self,
        key: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<UsageTotals, StoreError> {
        // The hours, and any answers a backup of an earlier version brought back.
        let row: TotalsRow = sqlx::query_as(
            "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(prompt_tokens), 0), \
             COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cached_requests), 0), \
             COALESCE(SUM(cost_usd), 0.0) FROM ( \
             SELECT requests, prompt_tokens, completion_tokens, cached_requests, cost_usd \
             FROM usage_hourly WHERE key_name = ?1 AND day >= ?2 AND day <= ?3 \
             UNION ALL SELECT 1, prompt_tokens, completion_tokens, \
             CASE WHEN cached THEN 1 ELSE 0 END, cost_usd \
             FROM usage_records WHERE key_name = ?1 AND day >= ?2 AND day <= ?3)",
        )
        .bind(key)
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_one(self.db.sqlite().await?)
        .await?;
        Ok(totals_from_row(row))
    }
}
