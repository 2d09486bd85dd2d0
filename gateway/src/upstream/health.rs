//! Passive health of one endpoint: after `max_fails` failed connects in a row it leaves the
//! rotation for `fail_timeout`; then one request tries it (the others still pass it by), and a
//! connection made puts it back. Like nginx's `max_fails` / `fail_timeout`, without probes of its
//! own: only real requests tell.
//!
//! Only failures to connect count. A response, even a 5xx, or a slow one, says the endpoint is
//! there: whether the upstream as a whole is failing is its circuit breaker's business.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::config::PassiveHealth;

#[derive(Debug, Default)]
pub(super) struct Health {
    /// Failed connects in a row.
    fails: AtomicU32,
    /// While out of rotation: when the next request may try it, as [`now`]'s nanoseconds;
    /// 0 while in rotation. Atomics, not a lock: every pick reads it.
    out_until: AtomicU64,
}

/// What a failed connect did to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failed {
    /// Still in rotation: fewer than `max_fails` in a row (or ejection is off).
    Counted,
    /// Taken out of rotation for `fail_timeout` from now.
    TakenOut,
    /// Already out (its trial failed, or every endpoint is out and it was tried anyway): out for
    /// `fail_timeout` from now.
    KeptOut,
}

impl Health {
    /// Whether a request may go to it: always while in rotation; while out, only once its time
    /// out has passed, and then to the one request that claims the trial (which pushes the next
    /// chance out by another `fail_timeout`, so a dead endpoint costs one request per period).
    pub(super) fn available(&self, settings: &PassiveHealth) -> bool {
        self.available_at(now, settings)
    }

    fn available_at(&self, now: impl FnOnce() -> u64, settings: &PassiveHealth) -> bool {
        let until = self.out_until.load(Ordering::Relaxed);
        if until == 0 {
            // In rotation: the clock is not even read.
            return true;
        }
        let now = now();
        now >= until
            && (self.out_until.compare_exchange(until, later(now, settings), Ordering::Relaxed, Ordering::Relaxed))
                .is_ok()
    }

    /// Not kept out, nor out for its trial.
    pub(super) fn in_rotation(&self) -> bool {
        self.out_until.load(Ordering::Relaxed) == 0
    }

    /// A connect failed: counts it, and takes the endpoint out at `max_fails` in a row.
    pub(super) fn connect_failed(&self, settings: &PassiveHealth) -> Failed {
        self.connect_failed_at(now(), settings)
    }

    fn connect_failed_at(&self, now: u64, settings: &PassiveHealth) -> Failed {
        let fails = self.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if settings.max_fails == 0 || fails < settings.max_fails {
            return Failed::Counted;
        }
        match self.out_until.swap(later(now, settings), Ordering::Relaxed) {
            0 => Failed::TakenOut,
            _ => Failed::KeptOut,
        }
    }

    /// A connection was made (or reused): the count starts again. True when this put the
    /// endpoint back in rotation.
    pub(super) fn connected(&self) -> bool {
        // Read first: the usual case writes nothing, so workers do not fight over the line.
        if self.fails.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.fails.store(0, Ordering::Relaxed);
        self.out_until.swap(0, Ordering::Relaxed) != 0
    }
}

/// `fail_timeout` from `now`, never 0 (which means "in rotation").
fn later(now: u64, settings: &PassiveHealth) -> u64 {
    let timeout = u64::try_from(settings.fail_timeout.as_nanos()).unwrap_or(u64::MAX);
    now.saturating_add(timeout).max(1)
}

/// Nanoseconds since the first call.
fn now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
