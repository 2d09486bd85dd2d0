//! The in-process limiter: a keyed `governor` GCRA bucket per key, for when Redis is not
//! configured or cannot answer (each gateway instance then counts on its own).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::Decision;
use crate::throttle::Throttle;

/// A sweep is considered once per this many checks (a power of two).
const SWEEP_EVERY: u64 = 4096;
/// Below this many keys a sweep is not worth its scan.
const SWEEP_MIN_KEYS: usize = 1024;
/// Keys one limit tracks at most (about 100 MB at ~100 bytes a key). Only many distinct keys
/// within one `window / limit` reach it: say, IPv6 addresses on a limit of a few requests a day.
const MAX_KEYS: usize = 1_000_000;

/// Forgetting every key is logged at most this often.
static FORGOT_ALL_WARNING: Throttle = Throttle::new(Duration::from_secs(60));

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// `limit` requests per `window` for each key, allowing a full burst: one request's worth of
/// budget comes back every `window / limit`.
///
/// Memory stays bounded without a background task: every [`SWEEP_EVERY`]th check looks at the
/// key count and, once it has doubled since the last sweep (and is at least [`SWEEP_MIN_KEYS`]),
/// drops the keys whose bucket is full again (`retain_recent`) and gives the memory back
/// (`shrink_to_fit`). The map so holds at most about twice the keys active within a window, and
/// the scans cost O(1) per check amortised.
///
/// More keys active than [`MAX_KEYS`] (a flood of distinct addresses) would hold memory without
/// bound. A sweep runs once they reach it, and when it leaves more than half of them, every key
/// is forgotten and counting starts over: like nginx's `limit_req` zone when full, the limit
/// gives way rather than the process.
pub struct LocalLimiter<C: Clock = DefaultClock> {
    limiter: ArcSwap<Keyed<C>>,
    quota: Quota,
    clock: C,
    max_keys: usize,
    /// Times every key was forgotten at once (for `/admin/ratelimit`).
    forgot_all: AtomicU64,
    limit: u32,
    window: Duration,
    /// One request's worth of budget (`window / limit`, at least 1 ns).
    period: Duration,
    checks: AtomicU64,
    /// Keys left by the last sweep: the next sweep waits until there are twice as many.
    swept_to: AtomicUsize,
}

impl LocalLimiter {
    /// A limiter on the real (monotonic) clock. `limit` below 1 counts as 1; `window` should be
    /// at least 1 s (config validation sees to that).
    pub fn new(limit: u32, window: Duration) -> LocalLimiter {
        LocalLimiter::with_clock(limit, window, DefaultClock::default(), MAX_KEYS)
    }
}

impl<C: Clock + Clone> LocalLimiter<C> {
    fn with_clock(limit: u32, window: Duration, clock: C, max_keys: usize) -> LocalLimiter<C> {
        let burst = NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN);
        let period = (window / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).map_or(Quota::per_second(burst), |q| q.allow_burst(burst));
        let limiter = RateLimiter::dashmap_with_clock(quota, clock.clone()).with_middleware();
        LocalLimiter {
            limiter: ArcSwap::from_pointee(limiter),
            quota,
            clock,
            max_keys,
            forgot_all: AtomicU64::new(0),
            limit: burst.get(),
            window,
            period,
            checks: AtomicU64::new(0),
            swept_to: AtomicUsize::new(0),
        }
    }

    /// Synchronous and cheap: the hot path when Redis is not configured.
    ///
    /// `reset` is an upper bound, within one `window / limit` (governor does not expose the exact
    /// refill time of an allowed request); for a denial it is exact.
    pub fn check(&self, key: &str) -> Decision {
        let limiter = self.limiter.load();
        let outcome = limiter.check_key(&key.to_owned());
        self.maybe_sweep(&limiter);
        match outcome {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity().min(self.limit);
                Decision {
                    allowed: true,
                    limit: self.limit,
                    remaining,
                    reset: self.period.saturating_mul(self.limit - remaining),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(limiter.clock().now()).max(Duration::from_millis(1));
                // Full again one burst (limit - 1 periods) after the next request would fit.
                let reset = retry_after.saturating_add(self.period.saturating_mul(self.limit - 1));
                Decision { allowed: false, limit: self.limit, remaining: 0, reset, retry_after }
            }
        }
    }

    /// Keys tracked now (for `/admin/ratelimit`).
    pub fn keys(&self) -> usize {
        self.limiter.load().len()
    }

    /// Times every key was forgotten because there were too many (see [`MAX_KEYS`]).
    pub fn forgot_all(&self) -> u64 {
        self.forgot_all.load(Ordering::Relaxed)
    }

    fn maybe_sweep(&self, limiter: &Keyed<C>) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        let keys = limiter.len();
        let doubled = keys >= SWEEP_MIN_KEYS && keys >= self.swept_to.load(Ordering::Relaxed).saturating_mul(2);
        if doubled || keys >= self.max_keys {
            self.sweep(limiter);
        }
        if keys >= self.max_keys {
            let kept = limiter.len();
            if kept >= self.max_keys / 2 {
                self.forget_all(kept);
            }
        }
    }

    /// Forgets the keys whose bucket is full again (governor keeps them one period longer).
    fn sweep(&self, limiter: &Keyed<C>) {
        limiter.retain_recent();
        limiter.shrink_to_fit();
        self.swept_to.store(limiter.len(), Ordering::Relaxed);
    }

    /// Starts counting over with no keys: `kept` of them were still within their window.
    fn forget_all(&self, kept: usize) {
        self.limiter.store(Arc::new(RateLimiter::dashmap_with_clock(self.quota, self.clock.clone()).with_middleware()));
        self.swept_to.store(0, Ordering::Relaxed);
        self.forgot_all.fetch_add(1, Ordering::Relaxed);
        if FORGOT_ALL_WARNING.allows() {
            tracing::warn!(
                keys = kept,
                max_keys = self.max_keys,
                "in-process rate limit: too many distinct keys within one window; forgot all of them and counts them again from zero"
            );
        }
    }
}

impl<C: Clock + Clone> fmt::Debug for LocalLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field("keys", &self.keys())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(limit: u32, window: Duration) -> (LocalLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (LocalLimiter::with_clock(limit, window, clock.clone(), MAX_KEYS), clock)
    }

    #[test]
    fn check_allows_limit_then_denies_with_retry_after() {
        let (limiter, _clock) = limiter(3, Duration::from_secs(3));
        let remaining: Vec<u32> = (0..3).map(|_| limiter.check("a")).map(|d| d.remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let denied = limiter.check("a");
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 0);
        assert_eq!(denied.retry_after, Duration::from_secs(1));
        assert_eq!(denied.reset, Duration::from_secs(3));
    }

    #[test]
    fn check_allowed_reports_reset_until_full() {
        let (limiter, _clock) = limiter(4, Duration::from_secs(4));
        let first = limiter.check("a");
        assert_eq!((first.allowed, first.limit, first.remaining), (true, 4, 3));
        assert_eq!(first.reset, Duration::from_secs(1));
        assert_eq!(first.retry_after, Duration::ZERO);
        assert_eq!(limiter.check("a").reset, Duration::from_secs(2));
    }

    #[test]
    fn check_budget_comes_back_one_period_at_a_time() {
        let (limiter, clock) = limiter(2, Duration::from_secs(10));
        assert!(limiter.check("a").allowed);
        assert!(limiter.check("a").allowed);
        assert!(!limiter.check("a").allowed);
        clock.advance(Duration::from_secs(5));
        let d = limiter.check("a");
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let denied = limiter.check("a");
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Duration::from_secs(5));
    }

    #[test]
    fn check_separate_keys_have_separate_budgets() {
        let (limiter, _clock) = limiter(1, Duration::from_secs(60));
        assert!(limiter.check("alice").allowed);
        assert!(!limiter.check("alice").allowed);
        assert!(limiter.check("bob").allowed);
        assert_eq!(limiter.keys(), 2);
    }

    #[test]
    fn check_limit_zero_counts_as_one() {
        let (limiter, _clock) = limiter(0, Duration::from_secs(1));
        let d = limiter.check("a");
        assert_eq!((d.allowed, d.limit), (true, 1));
        assert!(!limiter.check("a").allowed);
    }

    #[test]
    fn new_huge_limit_does_not_panic() {
        let limiter = LocalLimiter::new(u32::MAX, Duration::from_secs(1));
        assert!(limiter.check("a").allowed);
        assert!(format!("{limiter:?}").contains("LocalLimiter"));
    }

    #[test]
    fn sweep_forgets_keys_once_full_again() {
        let (limiter, clock) = limiter(2, Duration::from_secs(2));
        limiter.check("a");
        clock.advance(Duration::from_millis(500));
        limiter.sweep(&limiter.limiter.load());
        assert_eq!(limiter.keys(), 1, "not full yet: kept");
        clock.advance(Duration::from_secs(3));
        limiter.sweep(&limiter.limiter.load());
        assert_eq!(limiter.keys(), 0);
    }

    #[test]
    fn check_sweeps_stale_keys_every_4096_checks() {
        let (limiter, clock) = limiter(1, Duration::from_secs(1));
        for n in 0..SWEEP_EVERY - 1 {
            limiter.check(&n.to_string());
        }
        assert_eq!(limiter.keys(), 4095);
        clock.advance(Duration::from_secs(10));
        limiter.check("fresh");
        assert_eq!(limiter.keys(), 1);
    }

    #[test]
    fn check_does_not_sweep_until_keys_double() {
        let (limiter, clock) = limiter(1, Duration::from_secs(1));
        // 4096 live keys: the sweep at the 4096th check keeps them all.
        for n in 0..SWEEP_EVERY {
            limiter.check(&n.to_string());
        }
        assert_eq!(limiter.keys(), 4096);
        clock.advance(Duration::from_secs(10));
        // Stale now, but 4096 more checks on one key do not double the count: no sweep.
        for _ in 0..SWEEP_EVERY {
            limiter.check("one");
        }
        assert_eq!(limiter.keys(), 4097);
    }

    /// A limiter that tracks at most 8191 keys (checked at the 8192nd check), and `alice`, who
    /// has spent her budget.
    fn small(clock: &FakeRelativeClock) -> LocalLimiter<FakeRelativeClock> {
        let limiter = LocalLimiter::with_clock(1, Duration::from_secs(60), clock.clone(), 2 * SWEEP_EVERY as usize - 1);
        assert!(limiter.check("alice").allowed);
        assert!(!limiter.check("alice").allowed);
        limiter
    }

    #[test]
    fn check_forgets_every_key_when_too_many_are_live() {
        let clock = FakeRelativeClock::default();
        let limiter = small(&clock);
        for n in 2..2 * SWEEP_EVERY {
            limiter.check(&n.to_string());
        }
        assert_eq!((limiter.keys(), limiter.forgot_all()), (0, 1), "8191 live keys: all forgotten");
        assert!(limiter.check("alice").allowed, "counting starts over");
    }

    #[test]
    fn check_at_most_keys_keeps_counting_when_a_sweep_frees_enough() {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(1, Duration::from_secs(60), clock.clone(), 2 * SWEEP_EVERY as usize - 1);
        for n in 0..6000 {
            limiter.check(&n.to_string());
        }
        clock.advance(Duration::from_secs(121)); // governor keeps a full bucket one period longer
        assert!(limiter.check("alice").allowed);
        assert!(!limiter.check("alice").allowed);
        // The 8192nd check finds 8191 keys, 6000 of them stale: the sweep leaves far fewer.
        for n in 6000..8190 {
            limiter.check(&n.to_string());
        }
        assert_eq!((limiter.keys(), limiter.forgot_all()), (2191, 0));
        assert!(!limiter.check("alice").allowed, "still counted");
    }
}
