//! Chat sessions (C2): the conversation history of a `session_id`, per API key, behind
//! one trait with one adapter per backend: SQLite (embedded), PostgreSQL, and DynamoDB
//! (`SESSIONS_TABLE`, TTL attribute `expires_at`). A new column is added once per dialect.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::store::{Database, DatabaseKind, StoreError};

mod dynamo;
mod postgres;
mod sqlite;

pub use dynamo::DynamoSessionStore;
pub use postgres::PostgresSessionStore;
pub use sqlite::SqliteSessionStore;

/// Where session history lives.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// The backend's OpenTelemetry `db.system.name` (`sqlite`, `postgresql`,
    /// `aws.dynamodb`), for the spans of its calls.
    fn db_system(&self) -> &'static str;
    /// The newest `limit` messages of the session, oldest first.
    async fn history(
        &self,
        owner: &str,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError>;
    /// Appends messages (in order) and pushes the session's expiry forward.
    async fn append(
        &self,
        owner: &str,
        session_id: &str,
        messages: &[Value],
    ) -> Result<(), StoreError>;
}

/// The session store on the function's SQL database, in its dialect.
pub fn sql_session_store(db: Database, ttl: Duration) -> Arc<dyn SessionStore> {
    match db.kind() {
        DatabaseKind::Sqlite => Arc::new(SqliteSessionStore::new(db, ttl)),
        DatabaseKind::Postgres => Arc::new(PostgresSessionStore::new(db, ttl)),
    }
}

/// Monotonic-enough sequence numbers: nanoseconds since the epoch, plus the index of the
/// message within one append.
pub(super) fn sequence(index: usize) -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    nanos + index as i64
}

pub(super) fn expiry(ttl: Duration) -> i64 {
    chrono::Utc::now().timestamp() + ttl.as_secs() as i64
}

/// Keeps the newest messages that fit in `max_tokens` (estimated), oldest first.
pub fn window(history: Vec<Value>, max_tokens: usize) -> Vec<Value> {
    let mut kept = Vec::new();
    let mut used = 0;
    for m in history.into_iter().rev() {
        let cost = super::retrieval::estimate_tokens(&super::request::message_text(&m)) + 4;
        if used + cost > max_tokens {
            break;
        }
        used += cost;
        kept.push(m);
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_window_keeps_the_newest_messages_within_the_token_budget() {
        let history: Vec<Value> = (0..10)
            .map(|i| json!({"role": "user", "content": format!("{i}{}", "x".repeat(39))}))
            .collect();
        // Each message costs 10 + 4 tokens: 30 tokens keep the newest two.
        let kept = window(history, 30);
        assert_eq!(kept.len(), 2);
        assert!(kept[0]["content"].as_str().unwrap().starts_with('8'));
        assert!(kept[1]["content"].as_str().unwrap().starts_with('9'));
    }
}
