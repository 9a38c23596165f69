//! Keeping a flaky dependency from taking the service down: circuit breakers (C6),
//! retries (C7), rate limits and concurrency limits (C9).

pub mod breaker;

pub use breaker::{
    BreakerConfig, BreakerOpen, BreakerState, Breakers, CircuitBreaker, Clock, ManualClock,
    SystemClock,
};
pub mod limits;
pub mod retry;
