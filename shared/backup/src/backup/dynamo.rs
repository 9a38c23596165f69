//! The DynamoDB session and idempotency tables in a backup: scanned page by page into
//! the same JSON-lines files (items in DynamoDB's own JSON), and put back in batches.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::archive::{LinesReader, LinesWriter};
use super::manifest::FileEntry;
use super::BackupError;
use crate::store::dynamo::LazyDynamo;

/// A DynamoDB table a backup covers: what it stores (`sessions`) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoTable {
    pub store: String,
    pub table: String,
}

/// DynamoDB's batch write takes at most 25 items.
const WRITE_BATCH: usize = 25;

fn failed(table: &str, err: impl std::error::Error) -> BackupError {
    BackupError::Dynamo(format!(
        "{table}: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(err)
    ))
}

/// An attribute in DynamoDB JSON (`{"S": "..."}`), maps with sorted keys so the same
/// item always gives the same line.
pub(crate) fn to_json(value: &AttributeValue) -> Value {
    let b64 = |b: &Blob| base64::engine::general_purpose::STANDARD.encode(b.as_ref());
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": b64(b) }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::Ss(v) => json!({ "SS": v }),
        AttributeValue::Ns(v) => json!({ "NS": v }),
        AttributeValue::Bs(v) => json!({ "BS": v.iter().map(b64).collect::<Vec<_>>() }),
        AttributeValue::L(v) => json!({ "L": v.iter().map(to_json).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": item_to_json(m) }),
        _ => json!({ "NULL": true }),
    }
}

pub(crate) fn item_to_json(item: &HashMap<String, AttributeValue>) -> Value {
    let sorted: BTreeMap<&String, Value> = item.iter().map(|(k, v)| (k, to_json(v))).collect();
    Value::Object(
        sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), v))
            .collect::<Map<_, _>>(),
    )
}

pub(crate) fn from_json(value: &Value) -> Option<AttributeValue> {
    let (kind, inner) = value.as_object()?.iter().next()?;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str()?)
            .ok()
            .map(Blob::new)
    };
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    Some(match kind.as_str() {
        "S" => AttributeValue::S(inner.as_str()?.to_string()),
        "N" => AttributeValue::N(inner.as_str()?.to_string()),
        "B" => AttributeValue::B(b64(inner)?),
        "BOOL" => AttributeValue::Bool(inner.as_bool()?),
        "NULL" => AttributeValue::Null(true),
        "SS" => AttributeValue::Ss(strings(inner)?),
        "NS" => AttributeValue::Ns(strings(inner)?),
        "BS" => AttributeValue::Bs(inner.as_array()?.iter().map(b64).collect::<Option<_>>()?),
        "L" => AttributeValue::L(
            inner
                .as_array()?
                .iter()
                .map(from_json)
                .collect::<Option<_>>()?,
        ),
        "M" => AttributeValue::M(item_from_json(inner)?),
        _ => return None,
    })
}

pub(crate) fn item_from_json(value: &Value) -> Option<HashMap<String, AttributeValue>> {
    value
        .as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), from_json(v)?)))
        .collect()
}

/// Scans the table into the file, page by page (strongly consistent reads).
pub(crate) async fn export(
    dynamo: &LazyDynamo,
    table: &DynamoTable,
    out: &mut LinesWriter,
) -> Result<(), BackupError> {
    let client = dynamo.client().await;
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let page = client
            .scan()
            .table_name(&table.table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| failed(&table.table, e))?;
        for item in page.items() {
            out.push(&item_to_json(item).to_string()).await?;
        }
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(()),
        }
    }
}

/// Whether the table holds any item.
pub(crate) async fn has_items(dynamo: &LazyDynamo, table: &str) -> Result<bool, BackupError> {
    let page = dynamo
        .client()
        .await
        .scan()
        .table_name(table)
        .limit(1)
        .send()
        .await
        .map_err(|e| failed(table, e))?;
    Ok(!page.items().is_empty())
}

/// Puts the file's items back (items with the same key are replaced; others stay).
pub(crate) async fn import(
    dynamo: &LazyDynamo,
    entry: &FileEntry,
    table: &str,
    lines: &mut LinesReader,
) -> Result<u64, BackupError> {
    let client = dynamo.client().await;
    let mut written = 0u64;
    while let Some(batch) = lines.next_batch(WRITE_BATCH).await? {
        let mut requests = Vec::with_capacity(batch.len());
        for line in &batch {
            let item = serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| item_from_json(&v))
                .ok_or_else(|| BackupError::Corrupt {
                    file: entry.file.clone(),
                    detail: "a line is not a DynamoDB item".into(),
                })?;
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(|e| failed(table, e))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        let mut pending = HashMap::from([(table.to_string(), requests)]);
        for attempt in 0.. {
            let result = client
                .batch_write_item()
                .set_request_items(Some(pending))
                .send()
                .await
                .map_err(|e| failed(table, e))?;
            match result.unprocessed_items {
                Some(left) if left.values().any(|v| !v.is_empty()) && attempt < 8 => {
                    pending = left;
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
                Some(left) if left.values().any(|v| !v.is_empty()) => {
                    return Err(BackupError::Dynamo(format!(
                        "{table}: DynamoDB kept refusing writes (throttled)"
                    )))
                }
                _ => break,
            }
        }
        written += batch.len() as u64;
    }
    lines.check(entry)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attribute_kind_survives_the_round_trip_through_json() {
        let item = HashMap::from([
            ("s".to_string(), AttributeValue::S("héllo\n\"x\"".into())),
            ("n".to_string(), AttributeValue::N("12.50".into())),
            (
                "b".to_string(),
                AttributeValue::B(Blob::new(vec![0u8, 255, 7])),
            ),
            ("t".to_string(), AttributeValue::Bool(true)),
            ("z".to_string(), AttributeValue::Null(true)),
            (
                "ss".to_string(),
                AttributeValue::Ss(vec!["a".into(), "b".into()]),
            ),
            ("ns".to_string(), AttributeValue::Ns(vec!["1".into()])),
            (
                "bs".to_string(),
                AttributeValue::Bs(vec![Blob::new(vec![1u8])]),
            ),
            (
                "l".to_string(),
                AttributeValue::L(vec![
                    AttributeValue::S("x".into()),
                    AttributeValue::N("2".into()),
                ]),
            ),
            (
                "m".to_string(),
                AttributeValue::M(HashMap::from([(
                    "k".to_string(),
                    AttributeValue::S("v".into()),
                )])),
            ),
        ]);
        let line = item_to_json(&item).to_string();
        assert_eq!(line, item_to_json(&item).to_string(), "stable text");
        let back = item_from_json(&serde_json::from_str(&line).unwrap()).unwrap();
        assert_eq!(back, item);
        assert!(item_from_json(&json!({"x": {"Q": 1}})).is_none());
    }
}
