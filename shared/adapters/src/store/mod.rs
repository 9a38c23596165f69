//! Connections to managed services, built once per cold start and shared.

#[cfg(feature = "aws")]
pub mod aws;
pub mod database;
#[cfg(feature = "dynamodb")]
pub mod dynamo;
#[cfg(feature = "s3")]
pub mod objects;
pub mod redis;
pub mod tls;

pub use database::{Database, DatabaseKind, DatabaseUrl, Pool};
pub use redis::{RedisHandle, RedisUrl};

/// A dependency failed; the message is safe to log (no credentials).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The schema needs an extension the server lacks; the message says how to fix it.
    #[error("{0}")]
    MissingExtension(&'static str),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("{0} did not answer within {1} ms")]
    Timeout(&'static str, u128),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A DynamoDB call failed (the SDK's error, rendered with its cause).
    #[error("dynamodb: {0}")]
    DynamoDb(String),
    /// An adapter for one SQL dialect was given the other's database.
    #[error("a {0} adapter over another database")]
    WrongDialect(&'static str),
}
