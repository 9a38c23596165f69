//! Sessions in DynamoDB.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;

use super::{expiry, sequence, SessionStore};
use crate::store::dynamo::{dynamo_error, LazyDynamo};
use crate::store::StoreError;

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
    fn db_system(&self) -> &'static str {
        "aws.dynamodb"
    }

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
