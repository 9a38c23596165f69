//! The HTTP edge: axum layers, API keys, `ApiError` and every mapping from a capability's
//! error to a status, and the Lambda/standalone runtime. Features `kb` and `chat` add
//! the mappings of those capabilities' errors.

pub mod auth;
pub mod error;
pub mod http;
pub mod runtime;
pub mod server;

use chatkb_adapters::store;
#[cfg(feature = "backup")]
use chatkb_backup::backup;
#[cfg(feature = "chat")]
use chatkb_chat::chat;
use chatkb_core::observability;
use chatkb_core::shard;
#[cfg(feature = "kb")]
use chatkb_kb::kb;
use chatkb_resilience::resilience;
