//! Foundation: logs, metrics, redaction, secrets. No HTTP framework, no settings.

pub mod canonical;
pub mod observability;
pub mod secret;
pub mod shard;
