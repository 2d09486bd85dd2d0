//! The in-process limiter: a keyed `governor` GCRA bucket per key, for when Redis is not
//! configured or cannot answer (each gateway instance then counts on its own).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::Decision;

/// A sweep is considered once per this many checks (a power of two).
const SWEEP_EVERY: u64 = 4096;
/// Below this many keys a sweep is not worth its scan.
const SWEEP_MIN_KEYS: usize = 1024;

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// `limit` requests per `window` for each key, allowing a full burst: one request's worth of
/// budget comes back every `window / limit`.
///
/// Memory stays bounded without a background task: every [`SWEEP_EVERY`]th check looks at the
/// key count and, once it has doubled since the last sweep (and is at least [`SWEEP_MIN_KEYS`]),
/// drops the keys whose bucket is full again (`retain_recent`) and gives the memory back
/// (`shrink_to_fit`). The map so holds at most about twice the keys active within a window, and
/// the scans cost O(1) per check amortised.
pub struct LocalLimiter<C: Clock = DefaultClock> {
    limiter: Keyed<C>,
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
        LocalLimiter::with_clock(limit, window, DefaultClock::default())
    }
}

impl<C: Clock> LocalLimiter<C> {
    fn with_clock(limit: u32, window: Duration, clock: C) -> LocalLimiter<C> {
        let burst = NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN);
        let period = (window / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period).map_or(Quota::per_second(burst), |q| q.allow_burst(burst));
        let limiter = RateLimiter::dashmap_with_clock(quota, clock).with_middleware();
        LocalLimiter {
            limiter,
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
        let outcome = self.limiter.check_key(&key.to_owned());
        self.maybe_sweep();
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
                let retry_after = not_until.wait_time_from(self.limiter.clock().now()).max(Duration::from_millis(1));
                // Full again one burst (limit - 1 periods) after the next request would fit.
                let reset = retry_after.saturating_add(self.period.saturating_mul(self.limit - 1));
                Decision { allowed: false, limit: self.limit, remaining: 0, reset, retry_after }
            }
        }
    }

    /// Keys tracked now (for `/admin/ratelimit`).
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    fn maybe_sweep(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        let keys = self.limiter.len();
        if keys >= SWEEP_MIN_KEYS && keys >= self.swept_to.load(Ordering::Relaxed).saturating_mul(2) {
            self.sweep();
        }
    }

    /// Forgets the keys whose bucket is full again (governor keeps them one period longer).
    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.swept_to.store(self.limiter.len(), Ordering::Relaxed);
    }
}

impl<C: Clock> fmt::Debug for LocalLimiter<C> {
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
        (LocalLimiter::with_clock(limit, window, clock.clone()), clock)
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
        limiter.sweep();
        assert_eq!(limiter.keys(), 1, "not full yet: kept");
        clock.advance(Duration::from_secs(3));
        limiter.sweep();
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
}
