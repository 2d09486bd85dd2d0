//! Worker threads: one single-threaded runtime per core, each owning its connections.
//!
//! Like nginx workers and Envoy's worker threads, a connection stays on the worker that accepted
//! it, and each worker has its own upstream connection pools, so a request never crosses threads.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many workers to run: one per CPU this process may use (cgroup quotas included).
pub fn count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Marks the calling thread as worker `index`.
pub(crate) fn set_index(index: usize) {
    INDEX.with(|cell| cell.set(index));
}

/// The calling thread's worker index (0 on threads that are not workers).
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}
