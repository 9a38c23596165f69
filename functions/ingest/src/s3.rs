//! S3 object-created events (I1): each new object is read (from S3, or from
//! `DOCUMENTS_DIR` in embedded mode: `store::objects`) and ingested like an HTTP upload.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use shared::kb::{IngestRequest, KbError, KnowledgeBase};
use shared::runtime::{BoxError, EventHandler};
use shared::store::objects::{ObjectError, ObjectSource};
use shared::AppContext;

#[derive(Debug, Deserialize)]
struct Notification {
    #[serde(rename = "Records", default)]
    records: Vec<Record>,
}

#[derive(Debug, Deserialize)]
struct Record {
    #[serde(rename = "eventSource", default)]
    event_source: String,
    #[serde(rename = "eventName", default)]
    event_name: String,
    s3: S3Entity,
}

#[derive(Debug, Deserialize)]
struct S3Entity {
    bucket: Bucket,
    object: Object,
}

#[derive(Debug, Deserialize)]
struct Bucket {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Object {
    key: String,
}

/// S3 event keys are URL-encoded with `+` for spaces.
pub fn decode_key(key: &str) -> String {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// A document id from an object key: same key, same document (so re-uploads update it).
pub fn document_id(key: &str) -> String {
    let id: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    id.trim_matches('-').to_string()
}

fn content_type(key: &str) -> &'static str {
    let lower = key.to_ascii_lowercase();
    if lower.ends_with(".md") || lower.ends_with(".markdown") {
        "text/markdown"
    } else {
        "text/plain"
    }
}

/// Builds the event handler; the S3 client is created on first use and then shared.
pub fn handler(ctx: Arc<AppContext>, kb: Arc<KnowledgeBase>) -> EventHandler {
    let source = Arc::new(match &ctx.settings.kb.documents_dir {
        Some(dir) => ObjectSource::Folder(dir.clone()),
        None => ObjectSource::s3(),
    });
    Arc::new(move |event| {
        let kb = kb.clone();
        let source = source.clone();
        Box::pin(async move { ingest_notification(&kb, &source, event).await })
    })
}

async fn ingest_notification(
    kb: &KnowledgeBase,
    source: &ObjectSource,
    event: Value,
) -> Result<Value, BoxError> {
    let notification: Notification =
        serde_json::from_value(event).map_err(|e| format!("not an S3 notification: {e}"))?;
    if notification.records.is_empty() {
        return Err("not an S3 notification: no Records".into());
    }
    let correlation_id = format!("s3-{}", uuid::Uuid::new_v4());
    let mut results = Vec::new();
    let mut retryable_failure = None;
    for record in notification.records {
        if record.event_source != "aws:s3" || !record.event_name.starts_with("ObjectCreated:") {
            continue;
        }
        let bucket = record.s3.bucket.name;
        let key = decode_key(&record.s3.object.key);
        let read = source
            // The knowledge base's limit, so an oversized object is not even downloaded.
            .read(&bucket, &key, kb.limits().max_document_bytes)
            .await;
        let outcome = match read {
            Err(error) => {
                tracing::warn!(bucket = %bucket, key = %key, error = %error, "S3 object not ingested");
                if let ObjectError::Unavailable(message) = &error {
                    // S3 or its configuration failed (a missing region, credentials, an
                    // unreachable endpoint): fail the invocation so Lambda retries it.
                    retryable_failure = Some(message.clone());
                }
                json!({"bucket": bucket, "key": key, "status": "failed", "error": error.to_string()})
            }
            Ok(bytes) => match String::from_utf8(bytes) {
                Err(_) => {
                    json!({"bucket": bucket, "key": key, "status": "failed", "error": "object is not UTF-8 text"})
                }
                Ok(text) => {
                    let request = IngestRequest {
                        id: Some(document_id(&key)),
                        title: None,
                        text,
                        content_type: content_type(&key).into(),
                        source: format!("s3://{bucket}/{key}"),
                        metadata: json!({"bucket": bucket, "key": key}),
                    };
                    match kb.ingest(request, &correlation_id).await {
                        Ok(result) => {
                            json!({"bucket": bucket, "key": key, "id": result.id, "status": result.status, "chunks": result.chunks, "version": result.version})
                        }
                        Err(KbError::Invalid(message) | KbError::TooLarge(message)) => {
                            json!({"bucket": bucket, "key": key, "status": "failed", "error": message})
                        }
                        Err(err) => {
                            // Dependencies down: fail the invocation so Lambda retries the event.
                            retryable_failure = Some(err.to_string());
                            json!({"bucket": bucket, "key": key, "status": "failed", "error": err.to_string()})
                        }
                    }
                }
            },
        };
        tracing::info!(event = "s3_ingest", outcome = %outcome, "S3 object processed");
        results.push(outcome);
    }
    if let Some(error) = retryable_failure {
        return Err(format!("S3 ingest failed and will be retried: {error}").into());
    }
    Ok(json!({ "records": results }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_and_become_ids() {
        assert_eq!(
            decode_key("handbook/refund+policy%281%29.md"),
            "handbook/refund policy(1).md"
        );
        assert_eq!(
            document_id("handbook/refund policy(1).md"),
            "handbook-refund-policy-1-.md"
        );
        assert_eq!(content_type("A.MD"), "text/markdown");
        assert_eq!(content_type("notes.txt"), "text/plain");
    }
}
