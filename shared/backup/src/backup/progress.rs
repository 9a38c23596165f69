//! How a running backup, verify or restore reports its progress: a terminal shows bars
//! (the backup command's own), Lambda and pipes get one JSON log line per table.

use std::time::Duration;

/// Called as files are written or read.
pub trait Progress: Send + Sync {
    /// A table starts; `rows` is its size when known (for an estimate of the time left).
    fn start(&self, _file: &str, _rows: Option<u64>) {}
    /// So far in this table: rows and uncompressed bytes.
    fn advance(&self, _file: &str, _rows: u64, _bytes: u64) {}
    /// The table is done.
    fn finish(&self, _file: &str, _rows: u64, _bytes: u64, _took: Duration) {}
}

/// Reports nothing (tests, and the HTTP routes, which answer with the result).
pub struct Quiet;
impl Progress for Quiet {}

/// One log line per table, with its rate: what Lambda and a pipe get.
pub struct LogProgress {
    pub operation: &'static str,
}

impl Progress for LogProgress {
    fn finish(&self, file: &str, rows: u64, bytes: u64, took: Duration) {
        let secs = took.as_secs_f64().max(1e-6);
        tracing::info!(
            operation = self.operation,
            file,
            rows,
            bytes,
            seconds = took.as_secs_f64(),
            rows_per_second = (rows as f64 / secs).round(),
            "table done"
        );
    }
}
