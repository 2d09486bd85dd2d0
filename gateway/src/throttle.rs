//! Warnings that could repeat many times a second (a full connection table, a Redis that times
//! out) let through at most once per period, so a flood of them cannot flood the log.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Lets one event through per `every`.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Throttle {
        Throttle { every, last: Mutex::new(None) }
    }

    /// True for the first call, then for the first call once `every` has passed since.
    pub fn allows(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < self.every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}
