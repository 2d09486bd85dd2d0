use std::time::Duration;

use super::*;

const SECOND: u64 = 1_000_000_000;

fn settings(max_fails: u32) -> PassiveHealth {
    PassiveHealth { max_fails, fail_timeout: Duration::from_secs(10) }
}

#[test]
fn in_rotation_until_max_fails_in_a_row() {
    let (health, settings) = (Health::default(), settings(3));
    assert_eq!(health.connect_failed_at(0, &settings), Failed::Counted);
    assert_eq!(health.connect_failed_at(0, &settings), Failed::Counted);
    assert!(health.available_at(|| 0, &settings));
    assert!(health.in_rotation());
    assert_eq!(health.connect_failed_at(0, &settings), Failed::TakenOut);
    assert!(!health.available_at(|| SECOND, &settings));
    assert!(!health.in_rotation());
}

#[test]
fn a_connection_made_starts_the_count_again() {
    let (health, settings) = (Health::default(), settings(2));
    assert_eq!(health.connect_failed_at(0, &settings), Failed::Counted);
    assert!(!health.connected(), "it never left the rotation");
    assert_eq!(health.connect_failed_at(0, &settings), Failed::Counted, "not two in a row");
    assert_eq!(health.connect_failed_at(0, &settings), Failed::TakenOut);
}

#[test]
fn after_fail_timeout_one_request_tries_it() {
    let (health, settings) = (Health::default(), settings(1));
    assert_eq!(health.connect_failed_at(5 * SECOND, &settings), Failed::TakenOut);
    assert!(!health.available_at(|| 15 * SECOND - 1, &settings), "still out");
    assert!(health.available_at(|| 15 * SECOND, &settings), "the trial");
    assert!(!health.available_at(|| 15 * SECOND, &settings), "only one request tries it");
    assert!(!health.available_at(|| 25 * SECOND - 1, &settings), "the trial holds it out another period");
    assert!(health.available_at(|| 25 * SECOND, &settings), "the next trial");
}

#[test]
fn a_failed_trial_takes_it_out_again_and_a_connection_puts_it_back() {
    let (health, settings) = (Health::default(), settings(1));
    health.connect_failed_at(0, &settings);
    assert!(health.available_at(|| 10 * SECOND, &settings));
    assert_eq!(health.connect_failed_at(11 * SECOND, &settings), Failed::KeptOut, "it never came back");
    assert!(!health.available_at(|| 20 * SECOND, &settings), "out for fail_timeout from the failed trial");
    assert!(health.available_at(|| 21 * SECOND, &settings));
    assert!(!health.in_rotation(), "not yet: only its trial may go");
    assert!(health.connected(), "back in rotation");
    assert!(health.in_rotation());
    assert!(health.available_at(|| 21 * SECOND, &settings));
    assert!(health.available_at(|| 21 * SECOND, &settings), "for every request");
    assert!(!health.connected(), "already in rotation");
}

#[test]
fn max_fails_0_never_takes_it_out() {
    let (health, settings) = (Health::default(), settings(0));
    for _ in 0..100 {
        assert_eq!(health.connect_failed_at(0, &settings), Failed::Counted);
    }
    assert!(health.available_at(|| 0, &settings));
}

#[test]
fn in_rotation_the_clock_is_not_read() {
    let health = Health::default();
    assert!(health.available_at(|| unreachable!("read the clock"), &settings(1)));
}

#[test]
fn failures_while_out_keep_it_out_without_taking_it_out_again() {
    // Every endpoint out: the balancer tries one anyway, and its failures only extend the time out.
    let (health, settings) = (Health::default(), settings(1));
    assert_eq!(health.connect_failed_at(0, &settings), Failed::TakenOut);
    assert_eq!(health.connect_failed_at(SECOND, &settings), Failed::KeptOut);
    assert!(!health.available_at(|| 10 * SECOND, &settings), "out for fail_timeout from the last failure");
    assert!(health.available_at(|| 11 * SECOND, &settings));
}
