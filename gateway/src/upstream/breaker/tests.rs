use super::*;

const WINDOW: Duration = Duration::from_secs(10);
const OPEN_FOR: Duration = Duration::from_secs(30);

fn breaker(failure_rate: f64, min_requests: u32) -> Arc<Breaker> {
    Arc::new(Breaker::new(&CircuitBreaker { failure_rate, min_requests, window: WINDOW, open_for: OPEN_FOR }))
}

/// One permitted request with the given outcome.
fn request(breaker: &Arc<Breaker>, success: bool) -> Option<State> {
    let permit = breaker.permit().unwrap();
    breaker.record(permit, success)
}

/// A breaker (rate 0.5, min 1) that one failure has just opened.
fn opened() -> Arc<Breaker> {
    let b = breaker(0.5, 1);
    assert_eq!(request(&b, false), Some(State::Open));
    b
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

#[test]
fn state_as_str_names_each_state() {
    assert_eq!(State::Closed.as_str(), "closed");
    assert_eq!(State::Open.as_str(), "open");
    assert_eq!(State::HalfOpen.as_str(), "half_open");
}

#[test]
fn permit_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Permit>();
    assert_send::<Arc<Breaker>>();
}

#[tokio::test(start_paused = true)]
async fn closed_below_min_requests_stays_closed_at_full_failure() {
    let b = breaker(0.5, 5);
    for _ in 0..4 {
        assert_eq!(request(&b, false), None);
    }
    assert_eq!(b.state(), State::Closed);
    assert!(b.permit().is_ok());
}

#[tokio::test(start_paused = true)]
async fn closed_at_threshold_opens() {
    let b = breaker(0.5, 4);
    assert_eq!(request(&b, true), None);
    assert_eq!(request(&b, true), None);
    assert_eq!(request(&b, false), None);
    // 4 requests, 2 failed: 0.5 >= 0.5.
    assert_eq!(request(&b, false), Some(State::Open));
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.permit().unwrap_err(), OPEN_FOR);
}

#[tokio::test(start_paused = true)]
async fn closed_below_failure_rate_stays_closed() {
    let b = breaker(0.3, 10);
    for _ in 0..8 {
        assert_eq!(request(&b, true), None);
    }
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), None);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn closed_at_exact_failure_rate_opens() {
    let b = breaker(0.3, 10);
    for _ in 0..7 {
        assert_eq!(request(&b, true), None);
    }
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), None);
    // 3 of 10 is exactly 0.3 (where `failures >= 0.3 * 10.0` would round the wrong way).
    assert_eq!(request(&b, false), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn closed_success_reaching_min_requests_opens() {
    let b = breaker(0.5, 4);
    for _ in 0..3 {
        assert_eq!(request(&b, false), None);
    }
    // The success brings the count to min_requests with 3 of 4 failed.
    assert_eq!(request(&b, true), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn closed_failure_rate_one_opens_only_on_all_failures() {
    let b = breaker(1.0, 3);
    assert_eq!(request(&b, true), None);
    for _ in 0..10 {
        assert_eq!(request(&b, false), None);
    }
    assert_eq!(b.state(), State::Closed);
    // Once the success has left the window, all failures open it.
    advance(WINDOW).await;
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn closed_outcomes_within_window_count() {
    let b = breaker(0.5, 4);
    for _ in 0..3 {
        request(&b, false);
    }
    advance(Duration::from_secs(9)).await;
    assert_eq!(request(&b, false), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn closed_outcomes_older_than_window_leave_it() {
    let b = breaker(0.5, 4);
    for _ in 0..3 {
        request(&b, false);
    }
    advance(WINDOW).await;
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn closed_outcomes_leave_window_bucket_by_bucket() {
    let b = breaker(0.5, 4);
    request(&b, false);
    request(&b, false);
    advance(Duration::from_secs(5)).await;
    request(&b, false);
    // At 10s the first two have left, the third (5s old) stays: 2 in the window.
    advance(Duration::from_secs(5)).await;
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn closed_window_idle_longer_than_window_starts_empty() {
    let b = breaker(0.5, 2);
    request(&b, false);
    advance(WINDOW * 7 + Duration::from_millis(300)).await;
    assert_eq!(request(&b, false), None);
    assert_eq!(request(&b, false), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn closed_dropped_permit_counts_nothing() {
    let b = breaker(0.5, 2);
    assert_eq!(request(&b, false), None);
    // Counted as a success it would make 1 of 2 (opens), as a failure 2 of 2 (opens).
    drop(b.permit().unwrap());
    assert_eq!(b.state(), State::Closed);
    assert_eq!(request(&b, false), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn open_retry_after_shrinks_as_time_passes() {
    let b = opened();
    assert_eq!(b.permit().unwrap_err(), OPEN_FOR);
    advance(Duration::from_secs(10)).await;
    assert_eq!(b.permit().unwrap_err(), Duration::from_secs(20));
    advance(Duration::from_millis(19_999)).await;
    assert_eq!(b.permit().unwrap_err(), Duration::from_millis(1));
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_after_open_for_reads_half_open() {
    let b = opened();
    advance(OPEN_FOR).await;
    assert_eq!(b.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn open_reading_state_leaves_the_transition_to_the_next_permit() {
    let b = opened();
    advance(OPEN_FOR).await;
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.state(), State::HalfOpen);
    let probe = b.permit().unwrap();
    assert!(probe.is_probe() && probe.half_opened(), "{probe:?}");
}

#[tokio::test(start_paused = true)]
async fn half_open_probe_sent_again_after_a_drop_is_no_second_transition() {
    let b = opened();
    advance(OPEN_FOR).await;
    let first = b.permit().unwrap();
    assert!(first.half_opened());
    drop(first);
    let second = b.permit().unwrap();
    assert!(second.is_probe() && !second.half_opened(), "{second:?}");
    // Its failure opens it again: the end of that open period is a transition of its own.
    assert_eq!(b.record(second, false), Some(State::Open));
    advance(OPEN_FOR).await;
    let third = b.permit().unwrap();
    assert!(third.half_opened());
    assert_eq!(b.record(third, true), Some(State::Closed));
    assert!(!b.permit().unwrap().half_opened(), "a closed breaker's permit");
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_one_probe_at_a_time() {
    let b = opened();
    advance(OPEN_FOR).await;
    let probe = b.permit().unwrap();
    assert!(probe.is_probe());
    assert_eq!(b.state(), State::HalfOpen);
    for _ in 0..3 {
        assert_eq!(b.permit().unwrap_err(), PROBE_BUSY_RETRY_AFTER);
    }
    assert_eq!(b.record(probe, true), Some(State::Closed));
    let permit = b.permit().unwrap();
    assert!(!permit.is_probe());
}

#[tokio::test(start_paused = true)]
async fn half_open_probe_success_closes_with_counts_reset() {
    // open_for shorter than window, so the failures that opened it would still be counted.
    let config = CircuitBreaker {
        failure_rate: 0.5,
        min_requests: 4,
        window: Duration::from_secs(60),
        open_for: Duration::from_secs(5),
    };
    let b = Arc::new(Breaker::new(&config));
    for _ in 0..3 {
        request(&b, false);
    }
    assert_eq!(request(&b, false), Some(State::Open));
    advance(config.open_for).await;
    assert_eq!(request(&b, true), Some(State::Closed));
    assert_eq!(b.state(), State::Closed);
    for _ in 0..3 {
        assert_eq!(request(&b, false), None);
    }
    assert_eq!(request(&b, false), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn half_open_probe_failure_reopens_for_full_open_for() {
    let b = opened();
    advance(OPEN_FOR).await;
    let probe = b.permit().unwrap();
    advance(Duration::from_secs(2)).await;
    assert_eq!(b.record(probe, false), Some(State::Open));
    assert_eq!(b.state(), State::Open);
    // Measured from the probe's failure, not from when the breaker first opened.
    assert_eq!(b.permit().unwrap_err(), OPEN_FOR);
    advance(OPEN_FOR - Duration::from_millis(1)).await;
    assert_eq!(b.permit().unwrap_err(), Duration::from_millis(1));
    advance(Duration::from_millis(1)).await;
    assert!(b.permit().unwrap().is_probe());
}

#[tokio::test(start_paused = true)]
async fn half_open_dropped_probe_frees_the_slot() {
    let b = opened();
    advance(OPEN_FOR).await;
    let probe = b.permit().unwrap();
    assert!(b.permit().is_err());
    drop(probe);
    assert_eq!(b.state(), State::HalfOpen);
    let probe = b.permit().unwrap();
    assert!(probe.is_probe());
    assert!(b.permit().is_err());
    assert_eq!(b.record(probe, true), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn stale_closed_permit_failing_while_open_is_ignored() {
    let b = breaker(0.5, 1);
    let stale = b.permit().unwrap();
    assert_eq!(request(&b, false), Some(State::Open));
    advance(Duration::from_secs(10)).await;
    assert_eq!(b.record(stale, false), None);
    // The open period is neither reset nor extended.
    assert_eq!(b.permit().unwrap_err(), Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn stale_closed_permit_succeeding_while_half_open_does_not_close() {
    let b = breaker(0.5, 1);
    let stale = b.permit().unwrap();
    assert_eq!(request(&b, false), Some(State::Open));
    advance(OPEN_FOR).await;
    let probe = b.permit().unwrap();
    assert_eq!(b.record(stale, true), None);
    assert_eq!(b.state(), State::HalfOpen);
    assert!(b.permit().is_err());
    assert_eq!(b.record(probe, false), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn stale_closed_permit_after_recovery_is_not_counted() {
    let b = breaker(1.0, 1);
    let stale = b.permit().unwrap();
    assert_eq!(request(&b, false), Some(State::Open));
    advance(OPEN_FOR).await;
    assert_eq!(request(&b, true), Some(State::Closed));
    // With min 1 and rate 1.0 any counted failure would open it again.
    assert_eq!(b.record(stale, false), None);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn record_permit_of_another_breaker_is_ignored() {
    let a = opened();
    let b = breaker(0.5, 1);
    advance(OPEN_FOR).await;
    let probe = a.permit().unwrap();
    assert_eq!(b.record(probe, false), None);
    assert_eq!(b.state(), State::Closed);
    // Dropped rather than recorded on `a`: its slot is free again.
    assert_eq!(a.state(), State::HalfOpen);
    assert!(a.permit().unwrap().is_probe());
}

#[tokio::test(start_paused = true)]
async fn breaker_poisoned_lock_still_works() {
    let b = breaker(0.5, 1);
    let b2 = Arc::clone(&b);
    let poisoned = std::thread::spawn(move || {
        let _guard = b2.inner.lock();
        panic!("poison the lock");
    })
    .join();
    assert!(poisoned.is_err());
    assert!(b.inner.is_poisoned());
    assert_eq!(request(&b, false), Some(State::Open));
    assert_eq!(b.state(), State::Open);
}

#[test]
fn breaker_shared_by_threads_counts_every_outcome() {
    // Real threads, so the real clock: a window of an hour keeps every outcome in it.
    let config =
        CircuitBreaker { failure_rate: 1.0, min_requests: 400, window: Duration::from_secs(3600), open_for: OPEN_FOR };
    let b = Arc::new(Breaker::new(&config));
    let transitions: usize = std::thread::scope(|scope| {
        let threads: Vec<_> =
            (0..4).map(|_| scope.spawn(|| (0..100).filter_map(|_| request(&b, false)).count())).collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(transitions, 1);
    assert_eq!(b.state(), State::Open);
}
