//! Idempotency keys (C8), after the AWS Lambda Powertools idempotency record: a record per
//! key (scoped to the API key) holding the request's hash, its status (in progress or
//! completed), the stored response and two expiries. The first request takes the key with
//! a conditional write; a repeat of a completed one gets the stored response, a repeat
//! while it is in progress gets 409, a repeat with another body 422. A failed first
//! attempt deletes the record so the key can be retried. Two adapters: the SQL database
//! (SQLite embedded, or PostgreSQL) and DynamoDB (`IDEMPOTENCY_TABLE`, TTL `expiration`).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::dynamo::{dynamo_error, LazyDynamo};
use crate::store::{Database, Pool, StoreError};

const IN_PROGRESS: &str = "INPROGRESS";
const COMPLETED: &str = "COMPLETED";

/// A response as stored and replayed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    /// Headers worth replaying (`x-degraded`, `x-cache`...).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// What taking a key found.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// This request owns the key: answer it, then `complete` or `release`.
    Started,
    /// The first request with this key is still being answered.
    InProgress,
    /// The first request finished; replay this.
    Completed(StoredResponse),
    /// The key was used with another request body.
    Mismatch,
}

/// The hash of a request body that ties it to its key.
pub fn payload_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Storage of idempotency records.
#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes `key` for a request with `hash`, unless a live record holds it.
    async fn begin(&self, key: &str, hash: &str) -> Result<Begin, StoreError>;
    async fn complete(&self, key: &str, response: &StoredResponse) -> Result<(), StoreError>;
    /// Frees the key after a failed first attempt.
    async fn release(&self, key: &str) -> Result<(), StoreError>;
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Interprets an existing record for a request with `hash`.
fn existing(status: &str, stored_hash: &str, response: Option<&str>, hash: &str) -> Begin {
    if stored_hash != hash {
        return Begin::Mismatch;
    }
    if status == COMPLETED {
        if let Some(r) = response.and_then(|r| serde_json::from_str(r).ok()) {
            return Begin::Completed(r);
        }
    }
    Begin::InProgress
}

/// Records in the SQL database (`idempotency_records`).
pub struct SqlIdempotencyStore {
    db: Database,
    ttl: Duration,
    in_progress_for: Duration,
}

impl SqlIdempotencyStore {
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
impl IdempotencyStore for SqlIdempotencyStore {
    async fn begin(&self, key: &str, hash: &str) -> Result<Begin, StoreError> {
        let now = now_millis();
        let expires = now + self.ttl.as_millis() as i64;
        let in_progress_until = now + self.in_progress_for.as_millis() as i64;
        // One statement: insert, or take over a record that expired (or whose owner
        // died in progress); a live record is left alone and read back.
        let taken = match self.db.pool().await? {
            Pool::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO idempotency_records (key, status, payload_hash, response, expires_at, in_progress_until) \
                     VALUES (?, 'INPROGRESS', ?, NULL, ?, ?) \
                     ON CONFLICT (key) DO UPDATE SET status = 'INPROGRESS', payload_hash = excluded.payload_hash, \
                     response = NULL, expires_at = excluded.expires_at, in_progress_until = excluded.in_progress_until \
                     WHERE idempotency_records.expires_at < ? \
                        OR (idempotency_records.status = 'INPROGRESS' AND idempotency_records.in_progress_until < ?)",
                )
                .bind(key)
                .bind(hash)
                .bind(expires)
                .bind(in_progress_until)
                .bind(now)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
            }
            Pool::Postgres(pool) => {
                sqlx::query(
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
                .rows_affected()
            }
        };
        if taken == 1 {
            return Ok(Begin::Started);
        }
        let row: Option<RecordRow> =
            match self.db.pool().await? {
                Pool::Sqlite(pool) => sqlx::query_as(
                    "SELECT status, payload_hash, response FROM idempotency_records WHERE key = ?",
                )
                .bind(key)
                .fetch_optional(pool)
                .await?,
                Pool::Postgres(pool) => sqlx::query_as(
                    "SELECT status, payload_hash, response FROM idempotency_records WHERE key = $1",
                )
                .bind(key)
                .fetch_optional(pool)
                .await?,
            };
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
        match self.db.pool().await? {
            Pool::Sqlite(pool) => {
                sqlx::query("UPDATE idempotency_records SET status = 'COMPLETED', response = ? WHERE key = ?")
                    .bind(body)
                    .bind(key)
                    .execute(pool)
                    .await?;
            }
            Pool::Postgres(pool) => {
                sqlx::query("UPDATE idempotency_records SET status = 'COMPLETED', response = $1 WHERE key = $2")
                    .bind(body)
                    .bind(key)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        match self.db.pool().await? {
            Pool::Sqlite(pool) => {
                sqlx::query(
                    "DELETE FROM idempotency_records WHERE key = ? AND status = 'INPROGRESS'",
                )
                .bind(key)
                .execute(pool)
                .await?;
            }
            Pool::Postgres(pool) => {
                sqlx::query(
                    "DELETE FROM idempotency_records WHERE key = $1 AND status = 'INPROGRESS'",
                )
                .bind(key)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }
}

/// Records in a DynamoDB table: partition key `id` (S), `status`, `payload_hash`,
/// `response` (S, JSON), `expiration` (N, epoch seconds, the table's TTL attribute) and
/// `in_progress_expiration` (N, epoch milliseconds), as Powertools names them.
pub struct DynamoIdempotencyStore {
    client: LazyDynamo,
    table: String,
    ttl: Duration,
    in_progress_for: Duration,
}

impl DynamoIdempotencyStore {
    pub fn new(table: &str, ttl: Duration, in_progress_for: Duration) -> Self {
        Self::with_client(LazyDynamo::default(), table, ttl, in_progress_for)
    }

    /// On a client shared with the function's other DynamoDB stores.
    pub fn with_client(
        client: LazyDynamo,
        table: &str,
        ttl: Duration,
        in_progress_for: Duration,
    ) -> Self {
        Self {
            client,
            table: table.to_string(),
            ttl,
            in_progress_for,
        }
    }
}

fn s(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for DynamoIdempotencyStore {
    async fn begin(&self, key: &str, hash: &str) -> Result<Begin, StoreError> {
        let now_ms = now_millis();
        let now_s = now_ms / 1000;
        let item: HashMap<String, AttributeValue> = [
            ("id", AttributeValue::S(key.to_string())),
            ("status", AttributeValue::S(IN_PROGRESS.to_string())),
            ("payload_hash", AttributeValue::S(hash.to_string())),
            (
                "expiration",
                AttributeValue::N((now_s + self.ttl.as_secs() as i64).to_string()),
            ),
            (
                "in_progress_expiration",
                AttributeValue::N((now_ms + self.in_progress_for.as_millis() as i64).to_string()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let result = self
            .client
            .client()
            .await
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(
                "attribute_not_exists(id) OR expiration < :now OR (#status = :in_progress AND in_progress_expiration < :now_ms)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":now", AttributeValue::N(now_s.to_string()))
            .expression_attribute_values(":now_ms", AttributeValue::N(now_ms.to_string()))
            .expression_attribute_values(":in_progress", AttributeValue::S(IN_PROGRESS.into()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Begin::Started),
            Err(err) => {
                let service = err.as_service_error();
                match service {
                    Some(e) if e.is_conditional_check_failed_exception() => {
                        let old = match e {
                            aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => c.item().cloned(),
                            _ => None,
                        };
                        let old = match old {
                            Some(old) => old,
                            // Emulators may not return the old item: read it.
                            None => self
                                .client
                                .client()
                                .await
                                .get_item()
                                .table_name(&self.table)
                                .key("id", AttributeValue::S(key.to_string()))
                                .consistent_read(true)
                                .send()
                                .await
                                .map_err(dynamo_error)?
                                .item()
                                .cloned()
                                .unwrap_or_default(),
                        };
                        Ok(existing(
                            &s(&old, "status").unwrap_or_default(),
                            &s(&old, "payload_hash").unwrap_or_default(),
                            s(&old, "response").as_deref(),
                            hash,
                        ))
                    }
                    _ => Err(dynamo_error(err)),
                }
            }
        }
    }

    async fn complete(&self, key: &str, response: &StoredResponse) -> Result<(), StoreError> {
        self.client
            .client()
            .await
            .update_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(key.to_string()))
            .update_expression("SET #status = :completed, #response = :response")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#response", "response")
            .expression_attribute_values(":completed", AttributeValue::S(COMPLETED.into()))
            .expression_attribute_values(
                ":response",
                AttributeValue::S(serde_json::to_string(response).unwrap_or_default()),
            )
            .send()
            .await
            .map_err(dynamo_error)?;
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .client()
            .await
            .delete_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(key.to_string()))
            .condition_expression("#status = :in_progress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":in_progress", AttributeValue::S(IN_PROGRESS.into()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(dynamo_error(err)),
        }
    }
}

/// A valid `Idempotency-Key`: 1-255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Records a streamed body as it passes; a stream that ends with `[DONE]` completes the
/// record, any other end (an upstream cut, or the caller going away) releases the key.
pub fn record_stream(
    body: futures_util::stream::BoxStream<'static, bytes::Bytes>,
    store: std::sync::Arc<dyn IdempotencyStore>,
    key: String,
    headers: Vec<(String, String)>,
) -> futures_util::stream::BoxStream<'static, bytes::Bytes> {
    use futures_util::StreamExt;

    /// Releases the key if the stream is dropped before it finished.
    struct Guard {
        store: std::sync::Arc<dyn IdempotencyStore>,
        key: String,
        buffer: Vec<u8>,
        headers: Vec<(String, String)>,
        finished: bool,
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            if !self.finished {
                let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        if let Err(err) = store.release(&key).await {
                            tracing::warn!(error = %err, "idempotency key not released");
                        }
                    });
                }
            }
        }
    }

    let guard = Guard {
        store,
        key,
        buffer: Vec::new(),
        headers,
        finished: false,
    };
    futures_util::stream::unfold((body, guard), |(mut body, mut guard)| async move {
        match body.next().await {
            Some(bytes) => {
                guard.buffer.extend_from_slice(&bytes);
                Some((bytes, (body, guard)))
            }
            None => {
                guard.finished = true;
                let text = String::from_utf8_lossy(&guard.buffer).into_owned();
                let result = if text.ends_with("data: [DONE]\n\n") {
                    let response = StoredResponse {
                        status: 200,
                        content_type: "text/event-stream".into(),
                        headers: std::mem::take(&mut guard.headers),
                        body: text,
                    };
                    guard.store.complete(&guard.key, &response).await
                } else {
                    guard.store.release(&guard.key).await
                };
                if let Err(err) = result {
                    tracing::warn!(error = %err, "idempotency record not updated");
                }
                None
            }
        }
    })
    .boxed()
}
