//! The cache and circuit-breaker layer: tiered cache with single-flight, breakers,
//! retries, rate and concurrency limits. No HTTP framework.

pub mod cache;
pub mod resilience;

use chatkb_adapters::store;
use chatkb_core::observability;
