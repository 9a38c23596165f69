//! Adapters for managed services: the SQL database (SQLite | PostgreSQL), Redis and
//! DynamoDB (feature `dynamodb`), each built from its own small config, and clients for
//! OpenAI-compatible APIs (feature `openai`).

#[cfg(feature = "openai")]
pub mod openai;
pub mod store;

use chatkb_core::observability;
#[cfg(feature = "openai")]
use chatkb_core::secret;
#[cfg(feature = "openai")]
use chatkb_core::shard;
