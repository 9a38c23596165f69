//! Idempotency keys (C8), after the AWS Lambda Powertools idempotency record: a record per
//! key (scoped to the API key) holding the request's hash, its status (in progress or
//! completed), the stored response and two expiries. The first request takes the key with
//! a conditional write; a repeat of a completed one gets the stored response, a repeat
//! while it is in progress gets 409, a repeat with another body 422. A failed first
//! attempt deletes the record so the key can be retried. One adapter per backend: SQLite
//! (embedded), PostgreSQL and DynamoDB (`IDEMPOTENCY_TABLE`, TTL `expiration`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::observability::traces::db_span;
use crate::store::{Database, DatabaseKind, StoreError};
use tracing::Instrument;

mod dynamo;
mod postgres;
mod sqlite;

pub use dynamo::DynamoIdempotencyStore;
pub use postgres::PostgresIdempotencyStore;
pub use sqlite::SqliteIdempotencyStore;

pub(super) const IN_PROGRESS: &str = "INPROGRESS";
pub(super) const COMPLETED: &str = "COMPLETED";

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

/// The hash of a request body that ties it to its key. A JSON body is hashed in its
/// canonical form, so a retry that re-serialised the same request (other whitespace,
/// other key order) is the same request; any other body byte for byte.
pub fn payload_hash(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => hex::encode(Sha256::digest(
            crate::canonical::canonical_json(&json).as_bytes(),
        )),
        Err(_) => hex::encode(Sha256::digest(body)),
    }
}

/// Storage of idempotency records.
#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// The backend's OpenTelemetry `db.system.name` (`sqlite`, `postgresql`,
    /// `aws.dynamodb`), for the spans of its calls.
    fn db_system(&self) -> &'static str;
    /// Takes `key` for a request with `hash`, unless a live record holds it.
    async fn begin(&self, key: &str, hash: &str) -> Result<Begin, StoreError>;
    async fn complete(&self, key: &str, response: &StoredResponse) -> Result<(), StoreError>;
    /// Frees the key after a failed first attempt.
    async fn release(&self, key: &str) -> Result<(), StoreError>;
}

pub(super) fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Interprets an existing record for a request with `hash`.
pub(super) fn existing(
    status: &str,
    stored_hash: &str,
    response: Option<&str>,
    hash: &str,
) -> Begin {
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

/// The idempotency store on the function's SQL database, in its dialect.
pub fn sql_idempotency_store(
    db: Database,
    ttl: Duration,
    in_progress_for: Duration,
) -> Arc<dyn IdempotencyStore> {
    match db.kind() {
        DatabaseKind::Sqlite => Arc::new(SqliteIdempotencyStore::new(db, ttl, in_progress_for)),
        DatabaseKind::Postgres => Arc::new(PostgresIdempotencyStore::new(db, ttl, in_progress_for)),
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
    let recorded =
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
                        let span =
                            db_span(guard.store.db_system(), "UPDATE", "idempotency_records");
                        guard
                            .store
                            .complete(&guard.key, &response)
                            .instrument(span)
                            .await
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
        .boxed();
    super::telemetry::in_current_span(recorded)
}
