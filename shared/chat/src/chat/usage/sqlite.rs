//! Usage records in SQLite (`usage_records`).

use chrono::NaiveDate;

use super::{totals_from_row, TotalsRow, UsageRecord, UsageStore, UsageTotals};
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
        let mut builder = sqlx::QueryBuilder::new(
            "INSERT INTO usage_records (key_name, model, prompt_tokens, completion_tokens, cached, cost_usd, day, created_at) ",
        );
        builder.push_values(batch, |mut row, r| {
            row.push_bind(&r.key)
                .push_bind(&r.model)
                .push_bind(r.prompt_tokens as i64)
                .push_bind(r.completion_tokens as i64)
                .push_bind(r.cached)
                .push_bind(r.cost_usd)
                .push_bind(r.at.date_naive().to_string())
                .push_bind(r.at.to_rfc3339());
        });
        builder.build().execute(self.db.sqlite().await?).await?;
        Ok(())
    }

    async fn totals(
        &self,
        key: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<UsageTotals, StoreError> {
        let row: TotalsRow = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), \
             COALESCE(SUM(CASE WHEN cached THEN 1 ELSE 0 END), 0), COALESCE(SUM(cost_usd), 0.0) \
             FROM usage_records WHERE key_name = ? AND day >= ? AND day <= ?",
        )
        .bind(key)
        .bind(from.to_string())
        .bind(to.to_string())
        .fetch_one(self.db.sqlite().await?)
        .await?;
        Ok(totals_from_row(row))
    }
}
