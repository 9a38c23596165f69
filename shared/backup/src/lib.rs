//! The backup capability (B1-B5): logical, verified backups of the database and the
//! DynamoDB tables, ElastiCache snapshots, retention, and restore.

pub mod backup;

use chatkb_adapters::store;
use chatkb_core::observability;
