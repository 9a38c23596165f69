//! Chat sessions (C2): the conversation history of a `session_id`, per API key, behind
//! one trait with two adapters: the configured SQL database (SQLite embedded, or
//! PostgreSQL) and DynamoDB (`SESSIONS_TABLE`, TTL attribute `expires_at`).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;

use crate::store::dynamo::{dynamo_error, LazyDynamo};
use crate::store::{Database, Pool, StoreError};

/// Where session history lives.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
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

/// Monotonic-enough sequence numbers: nanoseconds since the epoch, plus the index of the
/// message within one append.
fn sequence(index: usize) -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    nanos + index as i64
}

fn expiry(ttl: Duration) -> i64 {
    chrono::Utc::now().timestamp() + ttl.as_secs() as i64
}

/// Sessions in the SQL database (`chat_messages`).
pub struct SqlSessionStore {
    db: Database,
    ttl: Duration,
}

impl SqlSessionStore {
    pub fn new(db: Database, ttl: Duration) -> Self {
        Self { db, ttl }
    }
}

#[async_trait::async_trait]
impl SessionStore for SqlSessionStore {
    async fn history(
        &self,
        owner: &str,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let now = chrono::Utc::now().timestamp();
        let mut rows: Vec<String> = match self.db.pool().await? {
            Pool::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT message FROM chat_messages WHERE owner = ? AND session_id = ? AND expires_at > ? \
                     ORDER BY seq DESC LIMIT ?",
                )
                .bind(owner)
                .bind(session_id)
                .bind(now)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?
            }
            Pool::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT message::text FROM chat_messages WHERE owner = $1 AND session_id = $2 AND expires_at > $3 \
                     ORDER BY seq DESC LIMIT $4",
                )
                .bind(owner)
                .bind(session_id)
                .bind(now)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?
            }
        };
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
        match self.db.pool().await? {
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
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
                sqlx::query(
                    "UPDATE chat_messages SET expires_at = ? WHERE owner = ? AND session_id = ?",
                )
                .bind(expires_at)
                .bind(owner)
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for (i, m) in messages.iter().enumerate() {
                    sqlx::query("INSERT INTO chat_messages (owner, session_id, seq, message, expires_at) VALUES ($1, $2, $3, $4, $5)")
                        .bind(owner)
                        .bind(session_id)
                        .bind(sequence(i))
                        .bind(m)
                        .bind(expires_at)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(
                    "UPDATE chat_messages SET expires_at = $1 WHERE owner = $2 AND session_id = $3",
                )
                .bind(expires_at)
                .bind(owner)
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// Sessions in a DynamoDB table: partition key `pk` (S, `owner#session`), sort key `seq`
/// (N), `message` (S, JSON), `expires_at` (N, the table's TTL attribute).
pub struct DynamoSessionStore {
    client: LazyDynamo,
    table: String,
    ttl: Duration,
}

impl DynamoSessionStore {
    pub fn new(table: &str, ttl: Duration) -> Self {
        Self::with_client(LazyDynamo::default(), table, ttl)
    }

    /// On a client shared with the function's other DynamoDB stores.
    pub fn with_client(client: LazyDynamo, table: &str, ttl: Duration) -> Self {
        Self {
            client,
            table: table.to_string(),
            ttl,
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for DynamoSessionStore {
    async fn history(
        &self,
        owner: &str,
        session_id: &str,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let now = chrono::Utc::now().timestamp();
        let output = self
            .client
            .client()
            .await
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .filter_expression("expires_at > :now")
            .expression_attribute_values(":pk", AttributeValue::S(format!("{owner}#{session_id}")))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .scan_index_forward(false)
            .limit(limit as i32)
            .send()
            .await
            .map_err(dynamo_error)?;
        let mut messages: Vec<Value> = output
            .items()
            .iter()
            .filter_map(|item| match item.get("message") {
                Some(AttributeValue::S(text)) => serde_json::from_str(text).ok(),
                _ => None,
            })
            .collect();
        messages.reverse();
        Ok(messages)
    }

    async fn append(
        &self,
        owner: &str,
        session_id: &str,
        messages: &[Value],
    ) -> Result<(), StoreError> {
        let expires_at = expiry(self.ttl).to_string();
        let pk = format!("{owner}#{session_id}");
        for (i, m) in messages.iter().enumerate() {
            let item: HashMap<String, AttributeValue> = [
                ("pk".to_string(), AttributeValue::S(pk.clone())),
                (
                    "seq".to_string(),
                    AttributeValue::N(sequence(i).to_string()),
                ),
                ("message".to_string(), AttributeValue::S(m.to_string())),
                (
                    "expires_at".to_string(),
                    AttributeValue::N(expires_at.clone()),
                ),
            ]
            .into_iter()
            .collect();
            self.client
                .client()
                .await
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .send()
                .await
                .map_err(dynamo_error)?;
        }
        Ok(())
    }
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
