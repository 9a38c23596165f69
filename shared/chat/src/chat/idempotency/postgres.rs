//! Idempotency records in PostgreSQL (`idempotency_records`).

use std::time::Duration;

use super::{existing, now_millis, Begin, IdempotencyStore, StoredResponse};
use crate::store::{Database, StoreError};

pub struct PostgresIdempotencyStore {
    db: Database,
    ttl: Duration,
    in_progress_for: Duration,
}

impl PostgresIdempotencyStore {
    pub fn new(db: Database, ttl: Duration, in_progress_for: Duration) -> Self {
        Self {
            db,
            ttl,
            in_progress_for,
        }
    }
}

type RecordRow = (String, String, Option<String>);

#[async_trait::async_trait]
impl IdempotencyStore for PostgresIdempotencyStore {
    fn db_system(&self) -> &'static str {
        "postgresql"
    }

    async fn begin(&self, key: &str, hash: &str) -> Result<Begin, StoreError> {
        let now = now_millis();
        let expires = now + self.ttl.as_millis() as i64;
        let in_progress_until = now + self.in_progress_for.as_millis() as i64;
        let pool = self.db.postgres().await?;
        // One statement: insert, or take over a record that expired (or whose owner
        // died in progress); a live record is left alone and read back.
        let taken = sqlx::query(
            "INSERT INTO idempotency_records (key, status, payload_hash, response, expires_at, in_progress_until) \
             VALUES ($1, 'INPROGRESS', $2, NULL, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET status = 'INPROGRESS', payload_hash = excluded.payload_hash, \
             response = NULL, expires_at = excluded.expires_at, in_progress_until = excluded.in_progress_until \
             WHERE idempotency_records.expires_at < $5 \
                OR (idempotency_records.status = 'INPROGRESS' AND idempotency_records.in_progress_until < $5)",
        )
        .bind(key)
        .bind(hash)
        .bind(expires)
        .bind(in_progress_until)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected();
        if taken == 1 {
            return Ok(Begin::Started);
        }
        let row: Option<RecordRow> = sqlx::query_as(
            "SELECT status, payload_hash, response FROM idempotency_records WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(pool)
        .await?;
        Ok(match row {
            Some((status, stored_hash, response)) => {
                existing(&status, &stored_hash, response.as_deref(), hash)
            }
            // Released between the two statements: the caller may simply retry.
            None => Begin::InProgress,
        })
    }

    async fn complete(&self, key: &str, response: &StoredResponse) -> Result<(), StoreError> {
        let body = serde_json::to_string(response).unwrap_or_default();
        sqlx::query(
            "UPDATE idempotency_records SET status = 'COMPLETED', response = $1 WHERE key = $2",
        )
        .bind(body)
        .bind(key)
        .execute(self.db.postgres().await?)
        .await?;
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_records WHERE key = $1 AND status = 'INPROGRESS'")
            .bind(key)
            .execute(self.db.postgres().await?)
            .await?;
        Ok(())
    }
}
