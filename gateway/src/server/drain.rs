//! Draining a worker's connections on shutdown: each is asked to finish (HTTP/2 sends GOAWAY,
//! HTTP/1.1 closes once its response is out), and the worker waits until all have gone.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Set once the workers drain (one server per process): until then a connection need not poll
/// its [`Draining::started`] again after the first time, which registered it to be woken.
static BEGUN: AtomicBool = AtomicBool::new(false);

/// Whether the drain has begun: a load, where polling the watch costs hundreds of instructions.
pub(super) fn begun() -> bool {
    BEGUN.load(Ordering::SeqCst)
}

thread_local! {
    /// Set on a worker whose drain ran out of time, before its remaining connections are dropped.
    static TIMED_OUT: Cell<bool> = const { Cell::new(false) };
}

/// Whether this worker's drain timed out: a request ending now was cut off by the gateway, not
/// left by its client.
pub(crate) fn timed_out() -> bool {
    TIMED_OUT.with(Cell::get)
}

/// Set when any worker's drain ran out of time.
static CUT_SHORT: AtomicBool = AtomicBool::new(false);

/// Whether any worker's drain timed out.
pub fn cut_short() -> bool {
    CUT_SHORT.load(Ordering::Relaxed)
}

pub(super) fn mark_timed_out() {
    TIMED_OUT.with(|flag| flag.set(true));
    CUT_SHORT.store(true, Ordering::Relaxed);
}

/// The worker's side: starts the drain and counts the connections still open.
#[derive(Debug)]
pub(super) struct Drain(watch::Sender<bool>);

/// A connection's side: held for as long as the connection is open.
#[derive(Debug)]
pub(super) struct Draining(watch::Receiver<bool>);

impl Drain {
    pub(super) fn new() -> Drain {
        Drain(watch::channel(false).0)
    }

    pub(super) fn watcher(&self) -> Draining {
        Draining(self.0.subscribe())
    }

    pub(super) fn connections(&self) -> usize {
        self.0.receiver_count()
    }

    /// Asks every connection to finish and returns once all have closed.
    pub(super) async fn run(self) {
        BEGUN.store(true, Ordering::SeqCst);
        self.0.send_replace(true);
        self.0.closed().await;
    }
}

impl Draining {
    /// Completes when the drain starts (or the worker is gone).
    pub(super) async fn started(&mut self) {
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}
