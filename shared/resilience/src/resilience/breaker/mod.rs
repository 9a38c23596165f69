//! Circuit breaker per dependency (C6).
//!
//! Closed -> open after N consecutive failures or a failure rate over a sliding window
//! of recent calls; open for a cool-down; then half-open, letting a limited number of
//! trial calls through: their success closes the breaker, a failure re-opens it.
//!
//! With Redis, instances share the open state (`open_until`) and only one instance
//! probes in half-open (a `SET NX` probe lock). If Redis is unreachable each instance
//! falls back to its local breaker. Time comes from a [`Clock`], so tests drive the
//! state machine without sleeping.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::RedisHandle;
mod clock;
pub use clock::{Clock, ManualClock, SystemClock};
mod shared_state;

/// Thresholds of a breaker.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// Failure ratio over the window that opens the breaker (0 < rate <= 1).
    pub failure_rate: f64,
    /// How many recent calls the failure rate is computed over.
    pub window_size: usize,
    /// Fewer calls than this in the window never open the breaker by rate.
    pub min_calls: usize,
    /// The longest cool-down before half-open (`BREAKER_OPEN_SECS`).
    pub open_for: Duration,
    /// The first cool-down (`BREAKER_OPEN_MIN_SECS`): it doubles on each trip in a row
    /// (a failed trial re-opens the breaker) up to `open_for`, and starts again from here
    /// once the breaker closes. A dependency down for seconds is back in use within
    /// seconds; one down for long is probed at most every `open_for`.
    pub open_min: Duration,
    /// Trial calls allowed in half-open; all must succeed to close.
    pub half_open_calls: u32,
    /// How often shared state is read from Redis (zero: before every call).
    pub shared_sync: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_rate: 0.5,
            window_size: 20,
            min_calls: 10,
            open_for: Duration::from_secs(60),
            open_min: Duration::from_secs(60),
            half_open_calls: 1,
            shared_sync: Duration::from_secs(1),
        }
    }
}

/// Breaker state; the metric value is 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub(crate) fn metric_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A call was refused because the breaker is open (or its half-open trials are taken).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{name}` is open; retry in {} s", retry_after.as_secs_f64().ceil())]
pub struct BreakerOpen {
    pub name: String,
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Local {
    state: BreakerState,
    consecutive_failures: u32,
    /// Recent outcomes, `true` for a failure.
    window: VecDeque<bool>,
    /// When the current open period ends (ms on the breaker's clock).
    open_until: u64,
    /// Openings since the breaker was last closed: each one doubles the cool-down.
    trips: u32,
    trials_in_flight: u32,
    trial_successes: u32,
    /// Bumped on every transition, so results of calls admitted in an earlier state are ignored.
    epoch: u64,
    last_sync: Option<u64>,
}

/// What happened to the state when a call was recorded; the shared layer publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    None,
    Opened { until: u64 },
    Closed,
}

struct Inner {
    name: String,
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    local: Mutex<Local>,
    shared: Option<Shared>,
}

struct Shared {
    redis: RedisHandle,
    open_key: String,
    probe_key: String,
    /// For logging only the changes between reachable and unreachable.
    healthy: AtomicBool,
}

/// A named breaker; clones share state.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish()
    }
}

/// Admission to make one call; report its outcome with [`CircuitBreaker::record`].
/// Dropping it unreported (a cancelled call) frees a half-open slot without counting.
#[must_use = "report the call's outcome with CircuitBreaker::record"]
pub struct Permit {
    breaker: CircuitBreaker,
    epoch: u64,
    trial: bool,
    shared_probe: bool,
    done: bool,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.inner.name)
            .field("trial", &self.trial)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.trial {
            let mut local = self.breaker.inner.local.lock().expect("breaker lock");
            if local.epoch == self.epoch {
                local.trials_in_flight = local.trials_in_flight.saturating_sub(1);
            }
        }
    }
}

impl CircuitBreaker {
    pub fn new(name: &str, config: BreakerConfig, clock: Arc<dyn Clock>) -> Self {
        Self::build(name, config, clock, None, "chatkb")
    }

    /// A breaker whose open state is shared through Redis with every instance using `prefix`.
    pub fn shared(
        name: &str,
        config: BreakerConfig,
        clock: Arc<dyn Clock>,
        redis: RedisHandle,
        prefix: &str,
    ) -> Self {
        Self::build(name, config, clock, Some(redis), prefix)
    }

    fn build(
        name: &str,
        config: BreakerConfig,
        clock: Arc<dyn Clock>,
        redis: Option<RedisHandle>,
        prefix: &str,
    ) -> Self {
        let shared = redis.map(|redis| Shared {
            redis,
            open_key: format!("{prefix}:breaker:{name}:open_until"),
            probe_key: format!("{prefix}:breaker:{name}:probe"),
            healthy: AtomicBool::new(true),
        });
        let breaker = Self {
            inner: Arc::new(Inner {
                name: name.to_string(),
                config,
                clock,
                local: Mutex::new(Local {
                    state: BreakerState::Closed,
                    consecutive_failures: 0,
                    window: VecDeque::new(),
                    open_until: 0,
                    trips: 0,
                    trials_in_flight: 0,
                    trial_successes: 0,
                    epoch: 0,
                    last_sync: None,
                }),
                shared,
            }),
        };
        breaker.export_state(BreakerState::Closed);
        breaker
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The state as of now (an open breaker past its cool-down reports half-open).
    pub fn state(&self) -> BreakerState {
        let mut local = self.inner.local.lock().expect("breaker lock");
        self.advance_time(&mut local);
        local.state
    }

    fn export_state(&self, state: BreakerState) {
        metrics::gauge!(crate::observability::metrics::names::BREAKER_STATE, "breaker" => self.inner.name.clone())
            .set(state.metric_value());
        crate::observability::metrics::emf(
            &[(
                crate::observability::metrics::names::BREAKER_STATE,
                state.metric_value(),
                "None",
            )],
            &[("breaker", &self.inner.name)],
        );
    }

    fn transition(&self, local: &mut Local, to: BreakerState, why: &str) {
        let from = local.state;
        if from == to {
            return;
        }
        local.state = to;
        local.epoch += 1;
        local.trials_in_flight = 0;
        local.trial_successes = 0;
        match to {
            BreakerState::Open => {
                local.trips = local.trips.saturating_add(1);
                local.open_until =
                    self.inner.clock.now_millis() + self.cool_down(local.trips).as_millis() as u64;
            }
            BreakerState::Closed => {
                local.consecutive_failures = 0;
                local.window.clear();
                local.trips = 0;
            }
            BreakerState::HalfOpen => {}
        }
        self.export_state(to);
        metrics::counter!(
            crate::observability::metrics::names::BREAKER_TRANSITIONS_TOTAL,
            "breaker" => self.inner.name.clone(),
            "from" => from.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
        if to == BreakerState::Open {
            tracing::warn!(breaker = %self.inner.name, from = from.as_str(), to = to.as_str(), reason = why, "circuit breaker transition");
        } else {
            tracing::info!(breaker = %self.inner.name, from = from.as_str(), to = to.as_str(), reason = why, "circuit breaker transition");
        }
    }

    /// The cool-down of the `trips`-th opening in a row: `open_min`, doubled each time,
    /// at most `open_for`.
    fn cool_down(&self, trips: u32) -> Duration {
        let config = &self.inner.config;
        let doublings = trips.saturating_sub(1).min(31);
        config
            .open_min
            .saturating_mul(1u32 << doublings)
            .min(config.open_for)
            .max(Duration::from_millis(1))
    }

    /// Open -> half-open once the cool-down has passed.
    fn advance_time(&self, local: &mut Local) {
        if local.state == BreakerState::Open && self.inner.clock.now_millis() >= local.open_until {
            self.transition(local, BreakerState::HalfOpen, "cool-down elapsed");
        }
    }

    fn rejected(&self, local: &Local) -> BreakerOpen {
        metrics::counter!(crate::observability::metrics::names::BREAKER_REJECTIONS_TOTAL, "breaker" => self.inner.name.clone())
            .increment(1);
        // While it stays open, each refused call reports the state again (a transition
        // alone would leave CloudWatch without data points after the first minute).
        crate::observability::metrics::emf(
            &[(
                crate::observability::metrics::names::BREAKER_STATE,
                local.state.metric_value(),
                "None",
            )],
            &[("breaker", &self.inner.name)],
        );
        let now = self.inner.clock.now_millis();
        let retry_after = match local.state {
            BreakerState::Open => {
                Duration::from_millis(local.open_until.saturating_sub(now).max(1000))
            }
            _ => Duration::from_secs(1),
        };
        BreakerOpen {
            name: self.inner.name.clone(),
            retry_after,
        }
    }

    /// Local admission decision only, without any I/O: the hot path.
    pub fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        let mut local = self.inner.local.lock().expect("breaker lock");
        self.advance_time(&mut local);
        match local.state {
            BreakerState::Closed => Ok(self.permit(&local, false)),
            BreakerState::Open => Err(self.rejected(&local)),
            BreakerState::HalfOpen => {
                if local.trials_in_flight < self.inner.config.half_open_calls {
                    local.trials_in_flight += 1;
                    Ok(self.permit(&local, true))
                } else {
                    Err(self.rejected(&local))
                }
            }
        }
    }

    fn permit(&self, local: &Local, trial: bool) -> Permit {
        Permit {
            breaker: self.clone(),
            epoch: local.epoch,
            trial,
            shared_probe: false,
            done: false,
        }
    }

    /// Admission including the shared state: follows other instances' open state and
    /// lets only one instance probe in half-open.
    pub async fn acquire(&self) -> Result<Permit, BreakerOpen> {
        if self.inner.shared.is_some() {
            self.sync_from_shared().await;
        }
        let mut permit = self.try_acquire()?;
        if permit.trial {
            if let Some(shared) = &self.inner.shared {
                match self.claim_probe(shared).await {
                    Some(true) => permit.shared_probe = true,
                    Some(false) => {
                        // Another instance is probing: this one waits like an open breaker.
                        let local = self.inner.local.lock().expect("breaker lock");
                        let err = self.rejected(&local);
                        drop(local);
                        drop(permit);
                        return Err(err);
                    }
                    None => {} // Redis unreachable: probe locally.
                }
            }
        }
        Ok(permit)
    }

    /// Reports a call's outcome (`failed` as the caller classifies it: 5xx, 429 and
    /// timeouts usually; a 400 is the caller's fault, not the dependency's).
    pub async fn record(&self, permit: Permit, failed: bool) {
        let probe = permit.shared_probe;
        let transition = self.record_local(permit, failed);
        if let Some(shared) = &self.inner.shared {
            self.publish(shared, transition, probe).await;
        }
    }

    /// Local part of [`Self::record`], without I/O.
    pub fn record_sync(&self, permit: Permit, failed: bool) {
        let _ = self.record_local(permit, failed);
    }

    fn record_local(&self, mut permit: Permit, failed: bool) -> Transition {
        permit.done = true;
        let config = &self.inner.config;
        let mut local = self.inner.local.lock().expect("breaker lock");
        if local.epoch != permit.epoch {
            return Transition::None; // admitted under an earlier state
        }
        match local.state {
            BreakerState::Closed => {
                local.window.push_back(failed);
                while local.window.len() > config.window_size {
                    local.window.pop_front();
                }
                if !failed {
                    local.consecutive_failures = 0;
                    return Transition::None;
                }
                local.consecutive_failures += 1;
                let failures = local.window.iter().filter(|f| **f).count();
                let rate = failures as f64 / local.window.len() as f64;
                let reason = if local.consecutive_failures >= config.failure_threshold {
                    Some("consecutive failures")
                } else if local.window.len() >= config.min_calls && rate >= config.failure_rate {
                    Some("failure rate")
                } else {
                    None
                };
                match reason {
                    Some(reason) => {
                        self.transition(&mut local, BreakerState::Open, reason);
                        Transition::Opened {
                            until: local.open_until,
                        }
                    }
                    None => Transition::None,
                }
            }
            BreakerState::HalfOpen if permit.trial => {
                local.trials_in_flight = local.trials_in_flight.saturating_sub(1);
                if failed {
                    self.transition(&mut local, BreakerState::Open, "trial call failed");
                    Transition::Opened {
                        until: local.open_until,
                    }
                } else {
                    local.trial_successes += 1;
                    if local.trial_successes >= config.half_open_calls {
                        self.transition(&mut local, BreakerState::Closed, "trial calls succeeded");
                        Transition::Closed
                    } else {
                        Transition::None
                    }
                }
            }
            _ => Transition::None,
        }
    }

    /// Runs `call` through the breaker; `failed` classifies its result.
    pub async fn call<T, E, F, Fut>(
        &self,
        call: F,
        failed: impl Fn(&Result<T, E>) -> bool,
    ) -> Result<Result<T, E>, BreakerOpen>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let permit = self.acquire().await?;
        let result = call().await;
        let is_failure = failed(&result);
        self.record(permit, is_failure).await;
        Ok(result)
    }
}

/// Breakers by dependency name, created on first use with one configuration.
#[derive(Clone)]
pub struct Breakers {
    config: BreakerConfig,
    clock: Arc<dyn Clock>,
    redis: Option<RedisHandle>,
    prefix: String,
    by_name: Arc<Mutex<HashMap<String, CircuitBreaker>>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("config", &self.config)
            .finish()
    }
}

impl Breakers {
    pub fn new(
        config: BreakerConfig,
        clock: Arc<dyn Clock>,
        redis: Option<RedisHandle>,
        prefix: &str,
    ) -> Self {
        Self {
            config,
            clock,
            redis,
            prefix: prefix.to_string(),
            by_name: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn get(&self, name: &str) -> CircuitBreaker {
        let mut map = self.by_name.lock().expect("breakers lock");
        map.entry(name.to_string())
            .or_insert_with(|| match &self.redis {
                Some(redis) => CircuitBreaker::shared(
                    name,
                    self.config.clone(),
                    self.clock.clone(),
                    redis.clone(),
                    &self.prefix,
                ),
                None => CircuitBreaker::new(name, self.config.clone(), self.clock.clone()),
            })
            .clone()
    }

    /// Every breaker's name and state, for `/health/detailed`.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let map = self.by_name.lock().expect("breakers lock");
        let mut states: Vec<_> = map
            .values()
            .map(|b| (b.name().to_string(), b.state()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }
}

#[cfg(test)]
mod tests;
