//! The composition layer every function shares: typed settings, the instance context
//! built once per cold start, and the one place that chooses adapters. The layers below
//! are their own crates (docs/architecture.md) and are re-exported here under the paths
//! functions use. Features `kb` and `chat` add those capabilities, so a function links
//! only what it uses (health and backup: neither).

pub mod app;
pub mod config;
pub mod probes;
pub mod services;

pub use chatkb_adapters::store;
#[cfg(feature = "backup")]
pub use chatkb_backup::backup;
#[cfg(feature = "chat")]
pub use chatkb_chat::chat;
pub use chatkb_core::{observability, secret};
pub use chatkb_edge::{auth, error, http, runtime, server};
pub use chatkb_health::health;
#[cfg(feature = "kb")]
pub use chatkb_kb::kb;
pub use chatkb_resilience::{cache, resilience};

pub use app::{AppContext, StartError, VERSION};
pub use error::ApiError;
