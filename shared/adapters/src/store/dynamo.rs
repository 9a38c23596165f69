//! A DynamoDB client built on first use (so a cold start never waits on AWS
//! configuration it may not need) and shared afterwards; `AWS_ENDPOINT_URL` selects a
//! local emulator such as moto's server.

use tokio::sync::OnceCell;

use super::StoreError;

/// Clones share one client (one AWS configuration load per instance).
#[derive(Clone, Default)]
pub struct LazyDynamo(std::sync::Arc<OnceCell<aws_sdk_dynamodb::Client>>);

impl LazyDynamo {
    pub async fn client(&self) -> &aws_sdk_dynamodb::Client {
        self.0
            .get_or_init(|| async {
                aws_sdk_dynamodb::Client::new(&super::aws::load_config().await)
            })
            .await
    }
}

/// A failed DynamoDB call, rendered with its cause.
pub fn dynamo_error(err: impl std::error::Error) -> StoreError {
    StoreError::DynamoDb(aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string())
}
