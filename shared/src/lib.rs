//! The library every function shares: configuration, HTTP plumbing, auth, stores,
//! health checks and observability. Functions are thin adapters over it.

pub mod app;
pub mod auth;
pub mod cache;
pub mod chat;
pub mod config;
pub mod error;
#[cfg(feature = "fake-openai")]
pub mod fake_openai;
pub mod health;
pub mod http;
pub mod kb;
pub mod observability;
pub mod resilience;
pub mod runtime;
pub mod secret;
pub mod services;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use app::{AppContext, StartError, VERSION};
pub use error::ApiError;
