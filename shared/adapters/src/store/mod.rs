//! Connections to managed services, built once per cold start and shared.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "blobs")]
pub mod blobs;
pub mod database;
#[cfg(feature = "dynamodb")]
pub mod dynamo;
#[cfg(feature = "elasticache")]
pub mod elasticache;
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
    /// Skipped: the dependency failed a moment ago and is in its pause.
    #[error("{0} is paused after a recent failure")]
    Paused(&'static str),
    /// Not tried: the dependency's circuit breaker is open after repeated failures; the
    /// message names the breaker and when it tries again.
    #[error("{0}")]
    BreakerOpen(String, std::time::Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A DynamoDB call failed (the SDK's error, rendered with its cause).
    #[error("dynamodb: {0}")]
    DynamoDb(String),
    /// An adapter for one SQL dialect was given the other's database.
    #[error("a {0} adapter over another database")]
    WrongDialect(&'static str),
}

impl StoreError {
    /// The dependency is down or not answering (what a circuit breaker counts), as
    /// opposed to a query or data it refused, or a set-up problem with its own message.
    pub fn is_unavailable(&self) -> bool {
        use sqlx::Error as E;
        match self {
            StoreError::Database(err) => match err {
                E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::Protocol(_) => true,
                E::WorkerCrashed => true,
                // Connection exceptions (08), shutdown (57P), insufficient resources (53).
                E::Database(db) => db.code().is_some_and(|code| {
                    code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
                }),
                _ => false,
            },
            StoreError::Timeout(..) | StoreError::Io(_) | StoreError::Paused(_) => true,
            StoreError::Redis(_) | StoreError::DynamoDb(_) => true,
            _ => false,
        }
    }

    /// The database refused the data itself (a constraint, a value it cannot hold such
    /// as NUL in PostgreSQL text): retrying cannot help, so it is the caller's request
    /// that failed, not the database. `Some` names the reason, safe to show.
    pub fn refused_data(&self) -> Option<&'static str> {
        use sqlx::error::ErrorKind;
        let StoreError::Database(sqlx::Error::Database(err)) = self else {
            return None;
        };
        match err.kind() {
            ErrorKind::UniqueViolation => Some("a unique constraint"),
            ErrorKind::ForeignKeyViolation => Some("a foreign key"),
            ErrorKind::NotNullViolation => Some("a required value"),
            ErrorKind::CheckViolation => Some("a check constraint"),
            // PostgreSQL's class 22, data exceptions: NUL in text or JSON, a value out
            // of range, a malformed number.
            _ if err.code().is_some_and(|code| code.starts_with("22")) => {
                Some("a value it cannot store")
            }
            _ => None,
        }
    }
}
