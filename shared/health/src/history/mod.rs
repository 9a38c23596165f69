//! The deep checks' history (`health_checks`): one adapter per SQL dialect.

use chrono::{DateTime, Utc};

use crate::health::DeepCheck;
use crate::store::{Database, DatabaseKind, StoreError};

mod postgres;
mod sqlite;

/// Where deep checks are kept.
#[async_trait::async_trait]
pub trait HealthHistory: Send + Sync {
    /// Stores a check and removes those from before `prune_before`, in one transaction.
    async fn record(
        &self,
        report: &DeepCheck,
        prune_before: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The most recent check, if any.
    async fn last(&self) -> Result<Option<DeepCheck>, StoreError>;
    async fn count(&self) -> Result<i64, StoreError>;
    /// The newest good backup the backup function recorded (`backup_runs`): id and
    /// when it finished.
    async fn last_backup(&self) -> Result<Option<(String, DateTime<Utc>)>, StoreError>;
}

/// The history on the function's SQL database, in its dialect.
pub fn history(db: &Database) -> Box<dyn HealthHistory + '_> {
    match db.kind() {
        DatabaseKind::Sqlite => Box::new(sqlite::SqliteHealthHistory(db)),
        DatabaseKind::Postgres => Box::new(postgres::PostgresHealthHistory(db)),
    }
}
