//! Code shared by integration tests (and `make eval`, which includes `relevance.rs`).

// `make eval` uses parts of it that the tests do not.
#[allow(dead_code)]
pub mod relevance;
