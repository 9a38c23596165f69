//! Adapters for managed services: the SQL database (SQLite | PostgreSQL), Redis and
//! DynamoDB (feature `dynamodb`), each built from its own small config.

pub mod store;

use chatkb_core::observability;
