//! Logs and metrics (X2, X3).

pub mod logging;
pub mod metrics;
pub mod redact;
