//! Logs, metrics and traces (X2, X3, X7).

mod json_line;
pub mod kept_counters;
pub mod logging;
pub mod metrics;
pub mod redact;
pub mod request_scope;
mod stdout_lines;
pub mod traces;

/// Version of the running build, reported by health, logs and `build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
