//! Idempotency records in DynamoDB.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::{
    existing, now_millis, Begin, IdempotencyStore, StoredResponse, COMPLETED, IN_PROGRESS,
};
use crate::store::dynamo::{dynamo_error, LazyDynamo};
use crate::store::StoreError;

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
    fn db_system(&self) -> &'static str {
        "aws.dynamodb"
    }

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
