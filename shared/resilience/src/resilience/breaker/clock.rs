//! Time for the breakers: the system clock, and a manual one for tests of the state machine.

use super::*;

/// Wall-clock milliseconds; shared state compares these across instances.
pub trait Clock: Send + Sync + 'static {
    fn now_millis(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    /// The current wall-clock time, to start a [`ManualClock`] near real time.
    pub fn now_millis_for_tests(&self) -> u64 {
        Clock::now_millis(self)
    }
}

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock tests move by hand.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_millis: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(start_millis)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
