//! Draining a worker's connections on shutdown: each is asked to finish (HTTP/2 sends GOAWAY,
//! HTTP/1.1 closes once its response is out), and the worker waits until all have gone.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Set once the workers drain (one server per process): until then a connection need not poll
/// its [`Draining::started`] again after the first time, which registered it to be woken.
static BEGUN: AtomicBool = AtomicBool::new(false);

/// Whether the drain has begun: a load, where polling the watch costs hundreds of instructions.
pub(super) fn begun() -> bool {
    BEGUN.load(Ordering::SeqCst)
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
