//! Why the gateway refuses a request. The edge (`crate::error`) maps each to its status;
//! the gateway itself knows nothing of HTTP.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The model asked for is not offered here.
    #[error("{0}")]
    UnknownModel(String),
    /// More messages than the gateway accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The provider refused the caller's request; its status (a 4xx, or 503) is kept.
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// The API key's daily budget is spent until `retry_after` has passed.
    #[error("{message}")]
    OverBudget {
        message: String,
        retry_after: Duration,
    },
}
