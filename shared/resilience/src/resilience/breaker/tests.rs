use super::*;

fn breaker(config: BreakerConfig) -> (CircuitBreaker, Arc<ManualClock>) {
    let clock = ManualClock::new(1_000_000);
    (CircuitBreaker::new("test", config, clock.clone()), clock)
}

fn fail(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        let permit = b.try_acquire().expect("admitted");
        b.record_sync(permit, true);
    }
}

fn succeed(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        let permit = b.try_acquire().expect("admitted");
        b.record_sync(permit, false);
    }
}

#[test]
fn opens_after_consecutive_failures_and_recovers_through_half_open() {
    let (b, clock) = breaker(BreakerConfig::default());
    fail(&b, 4);
    assert_eq!(b.state(), BreakerState::Closed);
    succeed(&b, 1); // resets the consecutive count
    fail(&b, 4);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);

    let err = b.try_acquire().expect_err("open rejects");
    assert_eq!(err.retry_after, Duration::from_secs(60));
    clock.advance(Duration::from_secs(59));
    assert!(b.try_acquire().is_err());
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.state(), BreakerState::HalfOpen);

    let trial = b.try_acquire().expect("one trial call");
    assert!(b.try_acquire().is_err(), "only one trial at a time");
    b.record_sync(trial, false);
    assert_eq!(b.state(), BreakerState::Closed);
    succeed(&b, 3);
}

#[test]
fn a_failed_trial_reopens_for_a_full_cool_down() {
    let (b, clock) = breaker(BreakerConfig::default());
    fail(&b, 5);
    clock.advance(Duration::from_secs(60));
    let trial = b.try_acquire().unwrap();
    b.record_sync(trial, true);
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(30));
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(30));
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

#[test]
fn opens_on_failure_rate_without_consecutive_failures() {
    let (b, _) = breaker(BreakerConfig {
        failure_threshold: 100,
        failure_rate: 0.5,
        window_size: 10,
        min_calls: 10,
        ..BreakerConfig::default()
    });
    for _ in 0..4 {
        succeed(&b, 1);
        fail(&b, 1);
    }
    succeed(&b, 1);
    assert_eq!(b.state(), BreakerState::Closed, "9 calls: below min_calls");
    fail(&b, 1); // 10 calls, 5 failures = 50 %
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn several_trial_calls_must_all_succeed() {
    let (b, clock) = breaker(BreakerConfig {
        half_open_calls: 3,
        ..BreakerConfig::default()
    });
    fail(&b, 5);
    clock.advance(Duration::from_secs(60));
    let trials: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    assert!(b.try_acquire().is_err());
    let mut trials = trials.into_iter();
    b.record_sync(trials.next().unwrap(), false);
    b.record_sync(trials.next().unwrap(), false);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    b.record_sync(trials.next().unwrap(), false);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn a_cancelled_trial_frees_its_slot_and_late_results_are_ignored() {
    let (b, clock) = breaker(BreakerConfig::default());
    let before_open = b.try_acquire().unwrap();
    fail(&b, 5);
    b.record_sync(before_open, false); // admitted while closed: ignored while open
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(60));
    let trial = b.try_acquire().unwrap();
    drop(trial);
    assert!(
        b.try_acquire().is_ok(),
        "the dropped trial's slot is free again"
    );
}

#[test]
fn state_is_exported_as_a_metric() {
    crate::observability::metrics::install();
    let b = CircuitBreaker::new(
        "metric-test",
        BreakerConfig::default(),
        Arc::new(SystemClock),
    );
    fail(&b, 5);
    let text = crate::observability::metrics::render();
    assert!(
        text.contains("circuit_breaker_state{breaker=\"metric-test\"} 1"),
        "{text}"
    );
}

/// Issue 15, item 5: with a fixed 60 s cool-down, a primary down for 6 s stayed unused
/// for the whole minute. The cool-down now starts short and doubles on each trip in a
/// row, up to the longest; closing starts it over.
#[test]
fn the_cool_down_grows_on_trips_in_a_row_and_starts_over_once_closed() {
    let (b, clock) = breaker(BreakerConfig {
        failure_threshold: 1,
        open_min: Duration::from_secs(5),
        open_for: Duration::from_secs(30),
        ..BreakerConfig::default()
    });
    fail(&b, 1);
    for expected in [5, 10, 20, 30, 30] {
        assert_eq!(b.state(), BreakerState::Open);
        let err = b.try_acquire().expect_err("open rejects");
        assert_eq!(err.retry_after, Duration::from_secs(expected));
        clock.advance(Duration::from_secs(expected) - Duration::from_millis(1));
        assert_eq!(b.state(), BreakerState::Open, "open {expected} s");
        clock.advance(Duration::from_millis(1));
        let trial = b.try_acquire().expect("half-open trial");
        b.record_sync(trial, true); // the dependency is still down
    }
    clock.advance(Duration::from_secs(30));
    let trial = b.try_acquire().expect("half-open trial");
    b.record_sync(trial, false);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b, 1);
    let err = b.try_acquire().expect_err("open again");
    assert_eq!(
        err.retry_after,
        Duration::from_secs(5),
        "a new outage starts from the shortest cool-down"
    );
}
