//! The health capability: dependency checks, readiness and the scheduled deep check.

pub mod health;
pub mod history;

use chatkb_adapters::store;
use chatkb_core::observability;
use chatkb_resilience::{cache, resilience};
