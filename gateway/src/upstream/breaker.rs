//! Circuit breaker: stops sending requests to an upstream that keeps failing, then probes it.
//!
//! - Closed -> Open when, within the rolling `window`, at least `min_requests` outcomes were
//!   recorded and the failed share of them reaches `failure_rate`.
//! - Open -> HalfOpen once `open_for` has passed. There is no background task: `state` reads an
//!   open breaker whose `open_for` has passed as half-open, and the next `permit` makes the change.
//! - HalfOpen lets one request through at a time (the probe). Its success closes the breaker
//!   with empty counts; its failure opens it for another full `open_for`.
//!
//! Every transition starts a new *generation*. A permit remembers the generation it was issued
//! in, and its outcome counts only while the breaker is still in that generation. So a request
//! sent while closed that fails after the breaker opened neither extends the open period nor,
//! after recovery, lands in the fresh counts of the next closed period: it tells nothing about
//! the upstream as it is now.
//!
//! Transitions are reported by return value, not callbacks: `record` returns `Some(new_state)`
//! when it caused one. Open -> HalfOpen is time-driven: `Permit::half_opened` marks the permit
//! whose call made it (once per open period, however many probes follow because earlier ones were
//! dropped), and `Permit::is_probe` marks each request sent as the probe.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CircuitBreaker;

/// The rolling window is this many buckets of `window / BUCKETS` each.
const BUCKETS: usize = 10;

/// Retry-after given while a half-open probe is out: its answer is usually close.
const PROBE_BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Whether requests may go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests go through; their outcomes are counted.
    Closed,
    /// Requests are refused until `open_for` has passed.
    Open,
    /// One probe request at a time goes through; its outcome decides.
    HalfOpen,
}

impl State {
    /// The name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// One upstream's circuit breaker, shared by all worker threads (behind an `Arc`).
#[derive(Debug)]
pub struct Breaker {
    config: CircuitBreaker,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped on every transition; see the module docs.
    generation: u64,
    /// Outcomes of the current closed period.
    window: Window,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { since: Instant },
    HalfOpen { probe_out: bool },
}

impl Breaker {
    /// A closed breaker with empty counts.
    pub fn new(config: &CircuitBreaker) -> Breaker {
        let inner = Inner { phase: Phase::Closed, generation: 0, window: Window::new(config.window, Instant::now()) };
        Breaker { config: config.clone(), inner: Mutex::new(inner) }
    }

    /// What it was built from.
    pub fn config(&self) -> &CircuitBreaker {
        &self.config
    }

    /// Permission to send one request upstream; report its outcome with [`Breaker::record`].
    ///
    /// `Err(retry_after)` while open: how long until a probe may go (always > 0). While half-open
    /// only one probe is out at a time; others get `Err` of one second.
    pub fn permit(self: &Arc<Self>) -> Result<Permit, Duration> {
        let now = Instant::now();
        let mut inner = self.lock();
        let half_opened = inner.end_open_period(now, self.config.open_for);
        let issue = |generation, probe| Permit { breaker: Arc::clone(self), generation, probe, half_opened };
        match inner.phase {
            Phase::Closed => Ok(issue(inner.generation, false)),
            // Still open, so `now - since < open_for` and the difference is > 0.
            Phase::Open { since } => Err(self.config.open_for.saturating_sub(now.saturating_duration_since(since))),
            Phase::HalfOpen { probe_out: true } => Err(PROBE_BUSY_RETRY_AFTER),
            Phase::HalfOpen { probe_out: false } => {
                inner.phase = Phase::HalfOpen { probe_out: true };
                Ok(issue(inner.generation, true))
            }
        }
    }

    /// Records how a permitted request went; `Some(new_state)` when this caused a transition.
    ///
    /// Closed: the outcome goes into the rolling window, which may open the breaker. Half-open
    /// (the probe): success closes it with empty counts, failure opens it for a full `open_for`.
    /// Permits from an earlier generation, or from another breaker, count nothing.
    pub fn record(&self, mut permit: Permit, success: bool) -> Option<State> {
        if !std::ptr::eq(Arc::as_ptr(&permit.breaker), self) {
            // Its own breaker frees its probe slot when it drops.
            return None;
        }
        // Its outcome settles the probe slot (by a transition), so its drop need not lock again.
        permit.probe = false;
        let now = Instant::now();
        let mut inner = self.lock();
        if permit.generation != inner.generation {
            return None;
        }
        match inner.phase {
            Phase::Closed => {
                inner.window.add(now, success);
                if self.should_open(&inner.window) {
                    inner.open(now);
                    return Some(State::Open);
                }
                None
            }
            Phase::HalfOpen { .. } if success => {
                inner.close();
                Some(State::Closed)
            }
            Phase::HalfOpen { .. } => {
                inner.open(now);
                Some(State::Open)
            }
            // No permit is issued in an open generation.
            Phase::Open { .. } => None,
        }
    }

    /// The current state; an open breaker whose `open_for` has passed reads as half-open. It only
    /// reads: the change itself is left to the next `permit`, which reports it (see the module docs).
    pub fn state(&self) -> State {
        let now = Instant::now();
        let inner = self.lock();
        match inner.phase {
            Phase::Closed => State::Closed,
            Phase::Open { since } if now.saturating_duration_since(since) < self.config.open_for => State::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    fn should_open(&self, window: &Window) -> bool {
        let (requests, failures) = window.totals();
        // Division, not `failures >= rate * requests`: 0.3 * 10.0 is 3.0000000000000004.
        requests > 0
            && requests >= u64::from(self.config.min_requests)
            && failures as f64 / requests as f64 >= self.config.failure_rate
    }

    /// Frees the probe slot if `generation` is still the half-open one that issued it.
    fn release_probe(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.generation == generation {
            if let Phase::HalfOpen { probe_out: true } = inner.phase {
                inner.phase = Phase::HalfOpen { probe_out: false };
            }
        }
    }

    /// The state is a few plain fields that every step leaves consistent, so a panic elsewhere
    /// while the lock was held leaves nothing half-done: recover from poisoning.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open { since: now };
        self.generation += 1;
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.generation += 1;
        self.window.clear();
    }

    /// Half-opens an open breaker whose `open_for` has passed; whether it did.
    fn end_open_period(&mut self, now: Instant, open_for: Duration) -> bool {
        match self.phase {
            Phase::Open { since } if now.saturating_duration_since(since) >= open_for => {
                self.phase = Phase::HalfOpen { probe_out: false };
                self.generation += 1;
                true
            }
            _ => false,
        }
    }
}

/// A request's permission to go upstream; report how it went with [`Breaker::record`]. Dropping
/// it unrecorded (the client went away, or the failure was not the upstream's) counts nothing,
/// but frees a half-open probe slot.
pub struct Permit {
    breaker: Arc<Breaker>,
    generation: u64,
    /// Holds the half-open probe slot until recorded or dropped.
    probe: bool,
    /// Its `permit` call half-opened the breaker.
    half_opened: bool,
}

impl Permit {
    /// Whether this request is the half-open probe that decides whether the breaker closes.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Whether asking for this permit moved the breaker from open to half-open. A probe sent again
    /// because the first was dropped (its client went away) is no second transition.
    pub fn half_opened(&self) -> bool {
        self.half_opened
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("generation", &self.generation)
            .field("probe", &self.probe)
            .field("half_opened", &self.half_opened)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.release_probe(self.generation);
        }
    }
}

/// Successes and failures of the last `window`, in buckets advanced lazily by time.
#[derive(Debug)]
struct Window {
    epoch: Instant,
    bucket_nanos: u128,
    /// Number of the newest bucket, counted in bucket lengths since `epoch`; it lives in
    /// `buckets[head % BUCKETS]`. An outcome leaves the window at most `window` after it was
    /// added (when its bucket is reused), and never before 9/10 of `window`.
    head: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    successes: u32,
    failures: u32,
}

impl Window {
    fn new(window: Duration, now: Instant) -> Window {
        let bucket_nanos = (window.as_nanos() / BUCKETS as u128).max(1);
        Window { epoch: now, bucket_nanos, head: 0, buckets: [Bucket::default(); BUCKETS] }
    }

    fn add(&mut self, now: Instant, success: bool) {
        self.advance(now);
        let bucket = &mut self.buckets[(self.head % BUCKETS as u64) as usize];
        if success {
            bucket.successes = bucket.successes.saturating_add(1);
        } else {
            bucket.failures = bucket.failures.saturating_add(1);
        }
    }

    /// Clears the buckets that `now` has moved past since the last call.
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos() / self.bucket_nanos;
        let index = u64::try_from(elapsed).unwrap_or(u64::MAX);
        // A thread that read the clock just before another one adds to the newest bucket.
        if index <= self.head {
            return;
        }
        for n in self.head + 1..=index.min(self.head + BUCKETS as u64) {
            self.buckets[(n % BUCKETS as u64) as usize] = Bucket::default();
        }
        self.head = index;
    }

    /// (requests, failures) in the window.
    fn totals(&self) -> (u64, u64) {
        self.buckets.iter().fold((0, 0), |(requests, failures), b| {
            (requests + u64::from(b.successes) + u64::from(b.failures), failures + u64::from(b.failures))
        })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[cfg(test)]
mod tests;
