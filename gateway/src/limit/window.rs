//! Sliding-window-counter math (the Cloudflare approximation): pure functions, no I/O, no clock.
//!
//! Time is cut into fixed windows (`index = now_ms / window_ms`), one counter per window. At
//! `elapsed` ms into the current window the estimate is
//! `previous * (window - elapsed) / window + current`: the previous window's count fades linearly
//! as the current one fills. A request is allowed when `estimate + 1 <= limit`; only allowed
//! requests are counted. All comparisons are done exactly, multiplied out by `window` in `u128`
//! (the Redis script uses the same multiplied-out form).

use std::time::Duration;

use super::Decision;

/// Where `now_ms` falls: `(window index, ms elapsed into that window)`. A zero window counts as 1 ms.
pub(crate) fn position(now_ms: u64, window_ms: u64) -> (u64, u64) {
    let window_ms = window_ms.max(1);
    (now_ms / window_ms, now_ms % window_ms)
}

/// The rule both stores apply: one more request fits when
/// `previous * (window - elapsed) + (current + 1) * window <= limit * window`.
pub(super) fn allows(limit: u32, window_ms: u64, elapsed_ms: u64, previous: u64, current: u64) -> bool {
    let w = Window::new(window_ms, elapsed_ms);
    w.faded(previous).saturating_add(w.scaled(current.saturating_add(1))) <= w.scaled(limit.into())
}

/// The decision the store made (`allowed`), with what the headers report. `current_after` is the
/// current window's count after this request: incremented when allowed, untouched when denied.
///
/// - `remaining`: `floor(limit - estimate)` with this request counted, at least 0; 0 when denied.
/// - `reset`: until the estimate is 0 again (the budget whole) if no more requests come: the
///   current count weighs on until the end of the *next* window, the previous count only until
///   the end of this one.
/// - `retry_after` (denials only): until `estimate + 1 <= limit` holds again if no more requests
///   come, following the previous count's fading and the rollovers; at least 1 ms.
pub(crate) fn decide(
    limit: u32,
    window_ms: u64,
    elapsed_ms: u64,
    previous: u64,
    current_after: u64,
    allowed: bool,
) -> Decision {
    let w = Window::new(window_ms, elapsed_ms);
    let reset_ms = if current_after > 0 {
        w.left.saturating_add(w.len)
    } else if previous > 0 {
        w.left
    } else {
        0
    };
    let (remaining, retry_after) = if allowed {
        let budget = w.scaled(limit.into());
        let used = w.faded(previous).saturating_add(w.scaled(current_after));
        let remaining = budget.saturating_sub(used) / u128::from(w.len);
        (u32::try_from(remaining).unwrap_or(limit).min(limit), Duration::ZERO)
    } else {
        (0, Duration::from_millis(w.retry_after_ms(limit, previous, current_after)))
    };
    Decision { allowed, limit, remaining, reset: Duration::from_millis(reset_ms), retry_after }
}

/// One window's length and how much of it is left, both in ms (`1 <= left <= len`).
#[derive(Debug, Clone, Copy)]
struct Window {
    len: u64,
    left: u64,
}

impl Window {
    /// An `elapsed_ms` past the window's end is taken as its last millisecond.
    fn new(window_ms: u64, elapsed_ms: u64) -> Window {
        let len = window_ms.max(1);
        Window { len, left: len - elapsed_ms.min(len - 1) }
    }

    /// `count * window`: a count on the multiplied-out scale.
    fn scaled(self, count: u64) -> u128 {
        u128::from(count) * u128::from(self.len)
    }

    /// `previous * left`: the previous window's count, faded, on the multiplied-out scale.
    fn faded(self, previous: u64) -> u128 {
        u128::from(previous) * u128::from(self.left)
    }

    /// Until one more request fits (at least 1 ms), for a denial with counts `previous`, `current`.
    ///
    /// Still in this window, the previous count fades: the request fits once the weight left,
    /// `w`, satisfies `previous * w <= (limit - current - 1) * window`. Otherwise at the next
    /// window `current` becomes the fading previous count and the new current is 0; failing that,
    /// one window later both counts are gone. (A limit of 0 never fits: that last horizon is given.)
    fn retry_after_ms(self, limit: u32, previous: u64, current: u64) -> u64 {
        let limit = u64::from(limit);
        let until_next = self.left;
        if let Some(room) = limit.checked_sub(current.saturating_add(1)) {
            // `previous > 0` here, else this request would have fit.
            let max_weight = self.scaled(room) / u128::from(previous.max(1));
            if max_weight > 0 {
                let max_weight = u64::try_from(max_weight).unwrap_or(u64::MAX);
                return self.left.saturating_sub(max_weight).max(1);
            }
        }
        if limit >= 1 {
            let room = self.scaled(limit - 1);
            let max_weight = if current == 0 { u128::MAX } else { room / u128::from(current) };
            let max_weight = u64::try_from(max_weight).unwrap_or(u64::MAX);
            if max_weight > 0 {
                return until_next.saturating_add(self.len.saturating_sub(max_weight));
            }
        }
        until_next.saturating_add(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000;

    /// Walks time forward ms by ms (no requests) until `allows`: the reference for retry_after.
    fn brute_retry_after(limit: u32, window: u64, elapsed: u64, previous: u64, current: u64) -> u64 {
        let (mut elapsed, mut previous, mut current) = (elapsed, previous, current);
        for waited in 0..=3 * window {
            if allows(limit, window, elapsed, previous, current) {
                return waited;
            }
            elapsed += 1;
            if elapsed == window {
                (elapsed, previous, current) = (0, current, 0);
            }
        }
        u64::MAX
    }

    #[test]
    fn position_splits_index_and_elapsed() {
        assert_eq!(position(0, W), (0, 0));
        assert_eq!(position(W - 1, W), (0, W - 1));
        assert_eq!(position(W, W), (1, 0));
        assert_eq!(position(5 * W + 7, W), (5, 7));
        assert_eq!(position(u64::MAX, 1), (u64::MAX, 0));
    }

    #[test]
    fn position_zero_window_counts_as_one_ms() {
        assert_eq!(position(42, 0), (42, 0));
    }

    #[test]
    fn allows_fresh_key_up_to_limit() {
        assert!(allows(3, W, 0, 0, 0));
        assert!(allows(3, W, 0, 0, 2));
        assert!(!allows(3, W, 0, 0, 3));
    }

    #[test]
    fn allows_previous_weight_fades_over_window() {
        // previous 10, limit 10: at elapsed 0 the full 10 weighs; half way, 5 weigh.
        assert!(!allows(10, W, 0, 10, 0));
        assert!(allows(10, W, W / 2, 10, 4));
        assert!(!allows(10, W, W / 2, 10, 5));
        // last ms: previous still weighs 10 * 1/60000, so 8 current + 1 fit but 9 + 1 do not.
        assert!(allows(10, W, W - 1, 10, 8));
        assert!(!allows(10, W, W - 1, 10, 9));
    }

    #[test]
    fn allows_boundary_is_exact() {
        // previous 3 over a 4 ms window at elapsed 1: 3 * 3/4 = 2.25; + current 1 + 1 = 4.25 > 4.
        assert!(!allows(4, 4, 1, 3, 1));
        // elapsed 2: 1.5 + 1 + 1 = 3.5 <= 4.
        assert!(allows(4, 4, 2, 3, 1));
        // previous 4 at elapsed 2 of 4: exactly 2 + 1 + 1 = 4 <= 4.
        assert!(allows(4, 4, 2, 4, 1));
    }

    #[test]
    fn decide_allowed_counts_remaining_floored() {
        let d = decide(10, W, 0, 0, 1, true);
        assert_eq!(
            d,
            Decision {
                allowed: true,
                limit: 10,
                remaining: 9,
                reset: Duration::from_millis(2 * W),
                retry_after: Duration::ZERO,
            }
        );
        // previous 5 at a third of the window weighs 3.33; + 2 current: 10 - 5.33 = 4.67 -> 4.
        assert_eq!(decide(10, W, W / 3, 5, 2, true).remaining, 4);
    }

    #[test]
    fn decide_allowed_last_request_leaves_zero() {
        let d = decide(3, W, 10, 0, 3, true);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn decide_reset_follows_which_counts_weigh() {
        // current counts weigh until the end of the next window.
        assert_eq!(decide(5, W, 1_000, 7, 1, true).reset, Duration::from_millis(W - 1_000 + W));
        // only the previous count: until the end of this window.
        assert_eq!(decide(5, W, 1_000, 7, 0, false).reset, Duration::from_millis(W - 1_000));
        assert_eq!(decide(5, W, 1_000, 0, 0, false).reset, Duration::ZERO);
    }

    #[test]
    fn decide_denied_has_zero_remaining_and_retry_after() {
        let d = decide(3, W, 100, 0, 3, false);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // current 3 becomes previous at rollover and must fade to 2: 1/3 of the next window.
        assert_eq!(d.retry_after, Duration::from_millis(W - 100 + W / 3));
    }

    #[test]
    fn decide_denied_retry_within_window_as_previous_fades() {
        // limit 10, previous 10, current 5, elapsed 0: needs previous weight <= 4, i.e. 40% left.
        let d = decide(10, W, 0, 10, 5, false);
        assert_eq!(d.retry_after, Duration::from_millis(W * 6 / 10));
    }

    #[test]
    fn decide_limit_one_waits_a_full_window_after_rollover() {
        // limit 1: the previous count must fade out completely.
        let d = decide(1, W, 0, 0, 1, false);
        assert_eq!(d.retry_after, Duration::from_millis(2 * W));
        let d = decide(1, W, W - 1, 0, 1, false);
        assert_eq!(d.retry_after, Duration::from_millis(1 + W));
        // previous 1 in the last ms: fits at the rollover, 1 ms on.
        let d = decide(1, W, W - 1, 1, 0, false);
        assert_eq!(d.retry_after, Duration::from_millis(1));
    }

    #[test]
    fn decide_retry_after_is_never_zero_for_a_denial() {
        for limit in 1..=4 {
            for elapsed in 0..4 {
                for previous in 0..=6 {
                    for current in 0..=6 {
                        if allows(limit, 4, elapsed, previous, current) {
                            continue;
                        }
                        let d = decide(limit, 4, elapsed, previous, current, false);
                        assert!(d.retry_after >= Duration::from_millis(1));
                    }
                }
            }
        }
    }

    #[test]
    fn decide_retry_after_matches_brute_force() {
        for window in [1, 2, 3, 7, 10] {
            for limit in 0..=5 {
                for elapsed in 0..window {
                    for previous in 0..=12 {
                        for current in 0..=7 {
                            if allows(limit, window, elapsed, previous, current) {
                                continue;
                            }
                            let got = decide(limit, window, elapsed, previous, current, false);
                            let want = brute_retry_after(limit, window, elapsed, previous, current);
                            // limit 0 never fits: the two-window horizon is reported instead.
                            let want = if limit == 0 { 2 * window - elapsed } else { want };
                            assert_eq!(
                                got.retry_after.as_millis(),
                                u128::from(want),
                                "limit {limit} window {window} elapsed {elapsed} prev {previous} cur {current}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn decide_huge_counts_do_not_overflow() {
        let d = decide(u32::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX, false);
        assert!(d.retry_after >= Duration::from_millis(1));
        assert_eq!(d.reset, Duration::from_millis(u64::MAX));
        let d = decide(u32::MAX, u64::MAX, 0, 0, 1, true);
        assert_eq!(d.remaining, u32::MAX - 1);
        assert!(!allows(u32::MAX, u64::MAX, 0, u64::MAX, u64::MAX));
        assert!(allows(u32::MAX, u64::MAX, 0, 0, u64::from(u32::MAX) - 1));
    }

    #[test]
    fn decide_elapsed_past_window_is_clamped() {
        assert_eq!(decide(3, 10, 25, 0, 1, true), decide(3, 10, 9, 0, 1, true));
    }
}
