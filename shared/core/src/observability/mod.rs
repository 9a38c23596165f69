//! Logs and metrics (X2, X3).

pub mod logging;
pub mod metrics;
pub mod redact;

/// Version of the running build, reported by health, logs and `build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
