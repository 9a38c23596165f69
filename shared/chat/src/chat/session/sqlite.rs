//! Sessions in SQLite (`chat_messages`).

use std::time::Duration;

use serde_json::Value;

use super::{expiry, sequence, SessionStore};
use crate::store::{Database, StoreError};

pub struct SqliteSessionStore {
    db: Database,
    ttl: Duration,
}

impl SqliteSessionStore {
    pub fn new(db: Database, ttl: Duration) -> Self {
        Self { db, ttl }
    }
}

#[async_trait::async_trait]
impl SessionStore for SqliteSessionStore {
    fn db_system(&self) -> &'static str {
        "sqlite"
    }

    async fn history(
        &self,
        owner: &str,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let now = chrono::Utc::now().timestamp();
        let mut rows: Vec<String> = sqlx::query_scalar(
            "SELECT message FROM chat_messages WHERE owner = ? AND session_id = ? AND expires_at > ? \
             ORDER BY seq DESC LIMIT ?",
        )
        .bind(owner)
        .bind(session_id)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(self.db.sqlite().await?)
        .await?;
        rows.reverse();
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }

    async fn append(
        &self,
        owner: &str,
        session_id: &str,
        messages: &[Value],
    ) -> Result<(), StoreError> {
        let expires_at = expiry(self.ttl);
        let mut tx = self.db.sqlite().await?.begin().await?;
        for (i, m) in messages.iter().enumerate() {
            sqlx::query("INSERT INTO chat_messages (owner, session_id, seq, message, expires_at) VALUES (?, ?, ?, ?, ?)")
                .bind(owner)
                .bind(session_id)
                .bind(sequence(i))
                .bind(m.to_string())
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE chat_messages SET expires_at = ? WHERE owner = ? AND session_id = ?")
            .bind(expires_at)
            .bind(owner)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
